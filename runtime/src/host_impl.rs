//! The store data of a running step and the host side of wrun's interfaces.
//!
//! Each step gets a fresh [`StepState`] in a fresh store: its WASI context
//! (no preopens, no environment, no arguments, no network, empty stdin,
//! captured stdout/stderr), its resource table, its egress hooks and its
//! limiter. Nothing in it outlives the step.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime::ResourceLimiter;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::bindings::{log, mask, properties, secrets};
use crate::budget::{BODY_CHUNK, EventLog, Footprint};
use crate::egress::{Egress, Scope};
use crate::events::{Event, Level, LogSource};
use crate::job::JobShared;
use crate::misuse::{Channel, StepMisuse};
use crate::secrets::JobSecret;

/// The host object behind a `secret` resource: which alias, which secret.
// `pub` because the generated bindings re-export it; the module is private.
#[allow(unreachable_pub)]
#[derive(Debug)]
pub struct SecretHandle {
    alias: String,
    secret: Arc<JobSecret>,
}

/// Per-step store data.
pub(crate) struct StepState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) hooks: EgressHooks,
    pub(crate) limiter: StepLimiter,
    pub(crate) guest: GuestScope,
    /// The resource-table budget, checked before host calls.
    pub(crate) footprint: Footprint,
}

/// What wrun's own interfaces may see of the job.
pub(crate) struct GuestScope {
    pub(crate) step: String,
    pub(crate) job: Arc<JobShared>,
    /// Alias -> the job's secret for the connection it names.
    pub(crate) secrets: HashMap<String, Arc<JobSecret>>,
    pub(crate) env: BTreeSet<String>,
    pub(crate) events: Arc<EventLog>,
    pub(crate) log_budget: usize,
    /// The step's misuse watch.
    pub(crate) misuse: Arc<StepMisuse>,
}

impl GuestScope {
    pub(crate) fn push_log(&mut self, level: Level, source: LogSource, message: &str) {
        // Runtime lines may carry names the guest chose (an alias, a
        // property): they are searched like the guest's own lines.
        let channel = match source {
            LogSource::Stdout => Channel::Stdout,
            LogSource::Stderr => Channel::Stderr,
            LogSource::Guest | LogSource::Runtime => Channel::Log,
        };
        if self.misuse.check(channel, message.as_bytes()) {
            return;
        }
        let masked = self.job.mask().mask_str(message).into_owned();
        if self.log_budget == 0 {
            return;
        }
        let message = if masked.len() > self.log_budget {
            self.log_budget = 0;
            format!(
                "{}… [log limit reached, further lines dropped]",
                truncate(&masked, 1024)
            )
        } else {
            self.log_budget -= masked.len();
            masked
        };
        self.events.push(Event::Log {
            step: self.step.clone(),
            level,
            source,
            message,
        });
    }
}

/// Cuts a string at a character boundary at or below `max` bytes.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.footprint.check(&mut self.table);
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StepState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        self.footprint.check(&mut self.table);
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Routes every outgoing request of the step through [`Egress::send`].
pub(crate) struct EgressHooks {
    pub(crate) egress: Arc<Egress>,
    pub(crate) scope: Arc<Scope>,
}

impl WasiHttpHooks for EgressHooks {
    // Every scheme reaches `send_request`, which refuses anything but HTTPS
    // with a message that says so (the stock check only says "protocol error").
    fn is_supported_scheme(&mut self, _scheme: &http::uri::Scheme) -> bool {
        true
    }

    // Small chunks bound what an unsent request body buffers (two chunks
    // per body, counted by the step's footprint).
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK
    }

    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        let egress = self.egress.clone();
        let scope = self.scope.clone();
        Box::new(async move {
            let response = egress.send(scope, request).await?;
            let io: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, io))
        })
    }
}

/// Caps all memories of a step together, plus tables and instances.
pub(crate) struct StepLimiter {
    pub(crate) memory_limit: usize,
    pub(crate) memory_used: usize,
    pub(crate) exceeded: bool,
    pub(crate) table_elements: usize,
    pub(crate) instances: usize,
    pub(crate) tables: usize,
    pub(crate) memories: usize,
}

/// The error a memory growth beyond the cap traps with.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded")]
pub(crate) struct MemoryLimitExceeded;

impl ResourceLimiter for StepLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.memory_used - current.min(self.memory_used) + desired;
        if after > self.memory_limit {
            self.exceeded = true;
            return Err(MemoryLimitExceeded.into());
        }
        self.memory_used = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.tables
    }

    fn memories(&self) -> usize {
        self.memories
    }
}

/// A bounded in-memory sink for guest stdout or stderr. Writes beyond the
/// bound are accepted and dropped, so a chatty guest is not broken by it.
#[derive(Clone)]
pub(crate) struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    limit: usize,
}

impl Capture {
    pub(crate) fn new(limit: usize) -> Capture {
        Capture {
            buf: Arc::new(Mutex::new(Vec::new())),
            limit,
        }
    }

    pub(crate) fn take(&self) -> (Vec<u8>, bool) {
        let buf = self
            .buf
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default();
        let truncated = buf.len() >= self.limit;
        (buf, truncated)
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Ok(mut buf) = self.buf.lock() {
            let room = self.limit.saturating_sub(buf.len());
            buf.extend_from_slice(&data[..data.len().min(room)]);
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl secrets::Host for StepState {
    fn get(
        &mut self,
        alias: String,
    ) -> wasmtime::Result<Result<Resource<SecretHandle>, secrets::SecretError>> {
        let Some(secret) = self.guest.secrets.get(&alias).cloned() else {
            let reason = format!(
                "step `{}` has no `secrets` grant for alias `{alias}`",
                self.guest.step
            );
            self.guest
                .push_log(Level::Warn, LogSource::Runtime, &reason);
            return Ok(Err(secrets::SecretError::NotGranted(reason)));
        };
        let handle = self.table.push(SecretHandle { alias, secret })?;
        Ok(Ok(handle))
    }
}

impl secrets::HostSecret for StepState {
    fn alias(&mut self, handle: Resource<SecretHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&handle)?.alias.clone())
    }

    fn placeholder(&mut self, handle: Resource<SecretHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&handle)?.secret.placeholder.clone())
    }

    fn placement(&mut self, handle: Resource<SecretHandle>) -> wasmtime::Result<String> {
        Ok(self
            .table
            .get(&handle)?
            .secret
            .connection
            .placement()
            .to_string())
    }

    fn drop(&mut self, handle: Resource<SecretHandle>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

impl log::Host for StepState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => Level::Trace,
            log::Level::Debug => Level::Debug,
            log::Level::Info => Level::Info,
            log::Level::Warn => Level::Warn,
            log::Level::Error => Level::Error,
        };
        self.guest.push_log(level, LogSource::Guest, &message);
        if self.guest.misuse.is_caught() {
            // Stop the guest now: nothing it does after this is reported.
            return Err(wasmtime::Error::msg("secret misuse"));
        }
        Ok(())
    }
}

impl mask::Host for StepState {
    fn mark(&mut self, value: String) -> wasmtime::Result<()> {
        if let Err(why) = self.guest.job.mark(value) {
            self.guest.push_log(
                Level::Warn,
                LogSource::Runtime,
                &format!("mask.mark ignored: {why}"),
            );
        }
        Ok(())
    }
}

impl properties::Host for StepState {
    fn get(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        if !self.guest.env.contains(&name) {
            let note = format!(
                "property `{name}` is not in the `env` grant of step `{}`",
                self.guest.step
            );
            self.guest.push_log(Level::Warn, LogSource::Runtime, &note);
            return Ok(None);
        }
        Ok(self.guest.job.properties.get(&name).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limit: usize) -> StepLimiter {
        StepLimiter {
            memory_limit: limit,
            memory_used: 0,
            exceeded: false,
            table_elements: 10,
            instances: 1,
            tables: 1,
            memories: 2,
        }
    }

    #[test]
    fn the_memory_limit_counts_all_memories_together() {
        let mut l = limiter(100);
        // Two memories of 40 each fit; growing either past the sum fails.
        assert!(l.memory_growing(0, 40, None).unwrap());
        assert!(l.memory_growing(0, 40, None).unwrap());
        assert!(l.memory_growing(40, 60, None).is_ok());
        assert_eq!(l.memory_used, 100);
        assert!(l.memory_growing(40, 41, None).is_err());
        assert!(l.exceeded);
    }

    #[test]
    fn tables_are_capped() {
        let mut l = limiter(100);
        assert!(l.table_growing(0, 10, None).unwrap());
        assert!(!l.table_growing(10, 11, None).unwrap());
    }

    #[test]
    fn captured_output_is_bounded_and_never_fails_the_writer() {
        use tokio::io::AsyncWriteExt;
        let capture = Capture::new(8);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut w = capture.clone();
            w.write_all(b"0123456789abcdef").await.unwrap();
        });
        let (bytes, truncated) = capture.take();
        assert_eq!(bytes, b"01234567");
        assert!(truncated);
    }
}
