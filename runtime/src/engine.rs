//! The engine: one per process, shared by all jobs.
//!
//! It owns the wasmtime engine (pooling allocator, copy-on-write memory
//! images, epoch interruption, on-disk compiled-artifact cache), the linker,
//! the egress, and a thread that advances the epoch. Components are compiled
//! once into an `InstancePre`; each step instantiates a fresh store from it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use rustls::pki_types::CertificateDer;
use wasmtime::component::Linker;

use crate::bindings::StepPre;
use crate::budget::StepBudget;
use crate::egress::addr::AddressPolicy;
use crate::egress::{
    self, Connector, Egress, EgressLimits, Resolver, SystemResolver, TcpConnector,
};
use crate::error::{Error, Result};
use crate::grants::Grants;
use crate::host_impl::StepState;
use crate::job::{Job, JobOptions};

/// How often the epoch advances; the granularity of time limits.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Configures an [`Engine`]. Deny by default.
///
/// Defaults, as set by [`EngineBuilder::new`]:
/// - no on-disk compilation cache (set [`EngineBuilder::cache_dir`]);
/// - step timeout 30 s, at most 15 min for any step's `timeout` grant;
/// - step memory 128 MiB, at most 1 GiB for any step's `memory` grant;
/// - up to 256 steps running at once (the instance pool size);
/// - egress: the webpki roots, no operator CA, every non-public address
///   refused, the system resolver, plain TCP, [`EgressLimits::default`];
/// - 1 MiB of log per step (guest log, stdout and stderr together);
/// - a host-side budget per step, [`StepBudget::default`]: 4096 resource
///   table entries, 4 MiB held by `wasi:http` objects, 10,000 events and
///   4 MiB of events, the first 20 refusals recorded, URLs and reasons cut
///   at 512 bytes ([`EngineBuilder::step_budget`]);
/// - 16 MiB of each pooled memory kept resident between steps
///   ([`EngineBuilder::keep_resident`]).
#[derive(Clone)]
pub struct EngineBuilder {
    cache_dir: Option<PathBuf>,
    default_timeout: Duration,
    max_timeout: Duration,
    default_memory: u64,
    max_memory: u64,
    max_concurrent_steps: u32,
    extra_roots: Vec<CertificateDer<'static>>,
    webpki_roots: bool,
    allowed_ranges: Vec<IpNet>,
    resolver: Arc<dyn Resolver>,
    connector: Arc<dyn Connector>,
    egress_limits: EgressLimits,
    log_limit: usize,
    step_budget: StepBudget,
    keep_resident: usize,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder::new()
    }
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("cache_dir", &self.cache_dir)
            .field("default_timeout", &self.default_timeout)
            .field("default_memory", &self.default_memory)
            .field("allowed_ranges", &self.allowed_ranges)
            .finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// A builder with the defaults listed on [`EngineBuilder`].
    pub fn new() -> EngineBuilder {
        EngineBuilder {
            cache_dir: None,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(15 * 60),
            default_memory: 128 << 20,
            max_memory: 1 << 30,
            max_concurrent_steps: 256,
            extra_roots: Vec::new(),
            webpki_roots: true,
            allowed_ranges: Vec::new(),
            resolver: Arc::new(SystemResolver),
            connector: Arc::new(TcpConnector),
            egress_limits: EgressLimits::default(),
            log_limit: 1 << 20,
            step_budget: StepBudget::default(),
            keep_resident: 16 << 20,
        }
    }

    /// Keeps compiled components in this directory, keyed by a hash of the
    /// component and the engine settings: a second load skips compilation.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Time limit of a step that sets none.
    pub fn default_timeout(mut self, limit: Duration) -> Self {
        self.default_timeout = limit;
        self
    }

    /// Largest `timeout` grant accepted.
    pub fn max_timeout(mut self, limit: Duration) -> Self {
        self.max_timeout = limit;
        self
    }

    /// Memory limit (bytes) of a step that sets none.
    pub fn default_memory(mut self, bytes: u64) -> Self {
        self.default_memory = bytes;
        self
    }

    /// Largest `memory` grant accepted (bytes); also the size of each slot
    /// of the instance pool.
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.max_memory = bytes;
        self
    }

    /// How many steps may run at once in this engine.
    pub fn max_concurrent_steps(mut self, n: u32) -> Self {
        self.max_concurrent_steps = n;
        self
    }

    /// Trusts an additional CA (PEM, one or more certificates) for egress.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the PEM holds no certificate or is malformed.
    pub fn add_ca_pem(mut self, pem: &[u8]) -> Result<Self> {
        let mut reader = pem;
        let certs: Vec<_> = rustls_pemfile::certs(&mut reader)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Config(format!("operator CA: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Config(
                "operator CA: no certificate in the PEM data".into(),
            ));
        }
        self.extra_roots.extend(certs);
        Ok(self)
    }

    /// Whether to trust the public webpki roots (default: yes).
    pub fn webpki_roots(mut self, yes: bool) -> Self {
        self.webpki_roots = yes;
        self
    }

    /// Allows egress to a non-public address range, such as `127.0.0.0/8`
    /// for tests or `10.1.0.0/16` for an on-premises target. Nothing is
    /// allowed by default.
    pub fn allow_range(mut self, net: IpNet) -> Self {
        self.allowed_ranges.push(net);
        self
    }

    /// Resolves host names with this resolver.
    pub fn resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Opens connections with this connector.
    pub fn connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connector = connector;
        self
    }

    /// Egress sizes, counts and timeouts.
    pub fn egress_limits(mut self, limits: EgressLimits) -> Self {
        self.egress_limits = limits;
        self
    }

    /// Bytes of log kept per step.
    pub fn log_limit(mut self, bytes: usize) -> Self {
        self.log_limit = bytes;
        self
    }

    /// What one step may make the host hold besides its linear memory:
    /// resource-table entries, bytes held by `wasi:http` objects, events and
    /// refusals (see [`StepBudget`] for the defaults). A step over the table
    /// or `wasi:http` budget fails with [`Error::ResourceLimit`]; events and
    /// refusals beyond theirs are counted in a summary event.
    pub fn step_budget(mut self, budget: StepBudget) -> Self {
        self.step_budget = budget;
        self
    }

    /// Bytes of each pooled linear memory kept resident when a step ends:
    /// they are reset in place rather than handed back to the kernel, which
    /// spares the next step the page faults (a warm Python step: 1.5 ms
    /// without, 0.9 ms with 16 MiB). Every slot is reset either way; the
    /// cost is resident memory, up to this much per pool slot that has been
    /// used. 0 hands everything back.
    pub fn keep_resident(mut self, bytes: usize) -> Self {
        self.keep_resident = bytes;
        self
    }

    /// Builds the engine.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a zero or inconsistent limit, an unusable
    /// cache directory or CA, or a wasmtime configuration failure.
    pub fn build(self) -> Result<Engine> {
        let cfg = |m: String| Error::Config(m);
        if self.default_timeout.is_zero() || self.default_timeout > self.max_timeout {
            return Err(cfg(
                "the default timeout must be above zero and at most the maximum".into(),
            ));
        }
        if self.default_memory == 0 || self.default_memory > self.max_memory {
            return Err(cfg(
                "the default memory must be above zero and at most the maximum".into(),
            ));
        }
        self.step_budget.validate().map_err(cfg)?;
        if self.max_concurrent_steps == 0 {
            return Err(cfg("max_concurrent_steps must be above zero".into()));
        }
        let max_memory =
            usize::try_from(self.max_memory).map_err(|_| cfg("max_memory is too large".into()))?;

        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.memory_init_cow(true);
        // A component has several core instances and memories; size the pool
        // for `max_concurrent_steps` components.
        let n = self.max_concurrent_steps;
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        // Components built from other languages carry their runtime as
        // several core modules (componentize-py: 14 core instances).
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(16))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(4))
            .total_stacks(n)
            .max_memories_per_component(2)
            .max_tables_per_component(4)
            .max_core_instances_per_component(32)
            .max_memory_size(max_memory)
            .linear_memory_keep_resident(self.keep_resident)
            .table_keep_resident(self.keep_resident.min(1 << 20))
            // Without PAGEMAP_SCAN (Linux 6.7+), resetting a pooled memory
            // copies the whole kept-resident region back from the image after
            // every step; with it only the pages the step dirtied are reset.
            // `Auto` falls back to the copy where the kernel lacks the ioctl.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .table_elements(20_000);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let cache = if let Some(dir) = &self.cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| cfg(format!("cache directory {}: {e}", dir.display())))?;
            let mut cache_config = wasmtime::CacheConfig::new();
            cache_config.with_directory(dir);
            let cache = wasmtime::Cache::new(cache_config)
                .map_err(|e| cfg(format!("cache directory {}: {e}", dir.display())))?;
            config.cache(Some(cache.clone()));
            Some(cache)
        } else {
            None
        };
        let engine = wasmtime::Engine::new(&config).map_err(|e| cfg(format!("wasmtime: {e}")))?;

        let mut linker = Linker::<StepState>::new(&engine);
        let link = |e: wasmtime::Error| cfg(format!("linker: {e}"));
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link)?;
        crate::bindings::add_wrun_to_linker(&mut linker).map_err(link)?;

        let tls = egress::client_config(&self.extra_roots, self.webpki_roots).map_err(cfg)?;
        let mut policy = AddressPolicy::deny_non_public();
        for net in &self.allowed_ranges {
            policy = policy.allow(*net);
        }
        let egress = Egress::new(
            tls,
            policy,
            self.resolver,
            self.connector,
            self.egress_limits,
        );

        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop_ticker = stop.clone();
        std::thread::Builder::new()
            .name("wrun-epoch".into())
            .spawn(move || {
                while !stop_ticker.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| cfg(format!("epoch thread: {e}")))?;

        Ok(Engine {
            inner: Arc::new(EngineInner {
                wasmtime: engine,
                linker,
                egress: Arc::new(egress),
                default_timeout: self.default_timeout,
                max_timeout: self.max_timeout,
                default_memory: self.default_memory,
                max_memory: self.max_memory,
                log_limit: self.log_limit,
                step_budget: self.step_budget,
                cache,
                stop,
            }),
        })
    }
}

pub(crate) struct EngineInner {
    pub(crate) wasmtime: wasmtime::Engine,
    pub(crate) linker: Linker<StepState>,
    pub(crate) egress: Arc<Egress>,
    pub(crate) default_timeout: Duration,
    pub(crate) max_timeout: Duration,
    pub(crate) default_memory: u64,
    pub(crate) max_memory: u64,
    pub(crate) log_limit: usize,
    pub(crate) step_budget: StepBudget,
    cache: Option<wasmtime::Cache>,
    stop: Arc<AtomicBool>,
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The wrun engine. Cheap to clone; create one per process.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// A compiled step component, ready to be instantiated many times.
#[derive(Clone)]
pub struct Component {
    pub(crate) name: Arc<str>,
    pub(crate) pre: StepPre<StepState>,
    imports: Arc<[String]>,
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component")
            .field("name", &self.name)
            .field("imports", &self.imports)
            .finish_non_exhaustive()
    }
}

impl Component {
    /// The name the component was loaded under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interfaces the component imports, e.g. `wrun:recipe/secrets@0.1.0`.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }
}

/// A component bound to a step: its name and checked grants.
#[derive(Debug, Clone)]
pub struct Step {
    pub(crate) name: Arc<str>,
    pub(crate) component: Component,
    pub(crate) grants: Arc<Grants>,
    pub(crate) timeout: Duration,
    pub(crate) memory: u64,
}

impl Step {
    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The step's grants.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// The step's component.
    pub fn component(&self) -> &Component {
        &self.component
    }
}

/// Which grant an import needs, if any.
///
/// `wasi:sockets` is linked but inert: language runtimes (CPython's libc)
/// import it whether or not a step uses it, and the WASI context of every
/// step refuses TCP, UDP, name lookups and every address. The only way out
/// of a step is `wasi:http` through the egress.
fn grant_for(import: &str) -> Option<&'static str> {
    let base = import.split('@').next().unwrap_or(import);
    match base {
        "wasi:http/outgoing-handler" => Some("net"),
        "wrun:recipe/secrets" => Some("secrets"),
        "wrun:recipe/properties" => Some("env"),
        _ => None,
    }
}

impl Engine {
    /// A builder with the defaults listed on [`EngineBuilder`].
    pub fn builder() -> EngineBuilder {
        EngineBuilder::new()
    }

    /// Compiles a component (or takes it from the on-disk cache) and checks
    /// that it fits the `wrun:recipe/step` world.
    ///
    /// # Errors
    ///
    /// [`Error::Compile`] for bytes that are not a valid component;
    /// [`Error::WitMismatch`] for an import wrun does not provide or a
    /// missing `actions` export.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Component> {
        let _span = tracing::info_span!("load", component = name).entered();
        if !wasmparser_is_component(bytes) {
            return Err(Error::Compile {
                component: name.into(),
                reason: "not a WebAssembly component (a core module or other bytes); build the step for wasm32-wasip2".into(),
            });
        }
        let component =
            wasmtime::component::Component::new(&self.inner.wasmtime, bytes).map_err(|e| {
                Error::Compile {
                    component: name.into(),
                    reason: format!("{e:#}"),
                }
            })?;
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.inner.wasmtime)
            .map(|(n, _)| n.to_string())
            .collect();
        let instance_pre =
            self.inner
                .linker
                .instantiate_pre(&component)
                .map_err(|e| Error::WitMismatch {
                    component: name.into(),
                    reason: format!("{e:#}"),
                })?;
        let pre = StepPre::new(instance_pre).map_err(|e| Error::WitMismatch {
            component: name.into(),
            reason: format!("{e:#} (a step must export wrun:recipe/actions@0.1.0)"),
        })?;
        Ok(Component {
            name: name.into(),
            pre,
            imports: imports.into(),
        })
    }

    /// Binds a component to a step with its grants, checking every import of
    /// the component against them.
    ///
    /// # Errors
    ///
    /// [`Error::MissingGrant`] for an import the step has no grant for (for
    /// example `wasi:http/outgoing-handler` without `net`);
    /// [`Error::InvalidGrant`] for a timeout or memory grant above the
    /// operator's maximum.
    pub fn step(&self, name: &str, component: &Component, grants: Grants) -> Result<Step> {
        for import in component.imports.iter() {
            let missing = match grant_for(import) {
                Some("net") if grants.net.is_empty() => Some("net"),
                Some("secrets") if grants.secrets.is_empty() => Some("secrets"),
                Some("env") if grants.env.is_empty() => Some("env"),
                _ => None,
            };
            if let Some(grant) = missing {
                return Err(Error::MissingGrant {
                    step: name.into(),
                    import: import.clone(),
                    grant,
                });
            }
        }
        let timeout = grants.timeout.unwrap_or(self.inner.default_timeout);
        if timeout > self.inner.max_timeout {
            return Err(Error::InvalidGrant {
                step: name.into(),
                grant: "timeout",
                reason: format!(
                    "{timeout:?} is above the operator's maximum of {:?}",
                    self.inner.max_timeout
                ),
            });
        }
        let memory = grants.memory.unwrap_or(self.inner.default_memory);
        if memory > self.inner.max_memory {
            return Err(Error::InvalidGrant {
                step: name.into(),
                grant: "memory",
                reason: format!(
                    "{memory} bytes is above the operator's maximum of {} bytes",
                    self.inner.max_memory
                ),
            });
        }
        Ok(Step {
            name: name.into(),
            component: component.clone(),
            grants: Arc::new(grants),
            timeout,
            memory,
        })
    }

    /// A client for OAuth2 token endpoints that sends through this engine's
    /// egress (address policy, roots and operator CAs, timeouts).
    pub fn token_client(&self) -> crate::oauth::TokenClient {
        crate::oauth::TokenClient::new(self.inner.egress.clone())
    }

    /// Sends a request on the host's own behalf (an operator's alert
    /// webhook) under the egress rules of guest requests: HTTPS only, every
    /// resolved address classified, the same roots, operator CAs and
    /// timeouts, no redirect followed; the body is read up to `max_body`.
    ///
    /// # Errors
    ///
    /// The request was refused or got no answer; the message names the host.
    pub async fn send_host(
        &self,
        request: http::Request<Vec<u8>>,
        max_body: usize,
    ) -> std::result::Result<http::Response<Vec<u8>>, crate::egress::HostRequestError> {
        self.inner.egress.send_host(request, max_body).await
    }

    /// Starts a job: the unit that owns placeholders and the mask set.
    pub fn job(&self, options: JobOptions) -> Job {
        Job::new(self.clone(), options)
    }

    /// Compilation cache hits and misses so far (`None` without a cache).
    pub fn cache_stats(&self) -> Option<(usize, usize)> {
        self.inner
            .cache
            .as_ref()
            .map(|c| (c.cache_hits(), c.cache_misses()))
    }
}

/// A component starts with the wasm magic and the component-model layer
/// (version 0x0d, layer 1); a core module has version 1, layer 0.
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00]
}
