//! The test environment: a mock API, an engine that trusts its CA and maps
//! test names to loopback, and helpers to run guest actions.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use wrun_runtime::egress::{Connector, Resolver, StaticResolver, Stream, TcpConnector};
use wrun_runtime::{
    CollectingObserver, Component, Connection, Engine, EngineBuilder, Event, Grants, GrantsBuilder,
    JobOptions, Placement, SecretValue, StaticConnections, StepFailure, StepOutput,
};
use wrun_tests::{MockServer, TestPki, canary};

/// Host names the tests use; all resolve to the loopback mock.
pub(crate) const API: &str = "api.test";
pub(crate) const OTHER: &str = "other.test";
pub(crate) const AUTH: &str = "auth.test";
pub(crate) const EVIL: &str = "evil.test";

/// A connector that refuses every address but loopback, and counts
/// attempts: refused requests must never reach it.
#[derive(Default)]
pub(crate) struct LoopbackOnly {
    pub(crate) attempts: AtomicUsize,
    pub(crate) refused: Mutex<Vec<SocketAddr>>,
}

#[async_trait::async_trait]
impl Connector for LoopbackOnly {
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn Stream>> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if !addr.ip().is_loopback() {
            self.refused.lock().unwrap().push(addr);
            return Err(io::Error::other(format!("test connector refuses {addr}")));
        }
        TcpConnector.connect(addr).await
    }
}

/// Path of a built guest component.
pub(crate) fn guest_path(name: &str) -> std::path::PathBuf {
    wrun_tests::guests_dir().join(format!("{}.wasm", name.replace('-', "_")))
}

/// Bytes of a built guest component.
pub(crate) fn guest_bytes(name: &str) -> Vec<u8> {
    std::fs::read(guest_path(name)).unwrap_or_else(|e| panic!("guest {name}: {e}"))
}

/// One compilation cache for the whole test binary.
pub(crate) fn cache_dir() -> std::path::PathBuf {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("wrun-cache");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
    .clone()
}

pub(crate) struct TestEnv {
    pub(crate) pki: TestPki,
    pub(crate) server: MockServer,
    pub(crate) engine: Engine,
    pub(crate) connector: Arc<LoopbackOnly>,
    pub(crate) observer: Arc<CollectingObserver>,
    /// The value of the `api` connection: must never reach a guest.
    pub(crate) canary: String,
    pub(crate) connections: StaticConnections,
}

impl TestEnv {
    /// Loopback allowed, test names mapped to the mock.
    pub(crate) async fn new() -> TestEnv {
        Self::with(|b| b.allow_range("127.0.0.0/8".parse().unwrap())).await
    }

    /// Loopback not allowed: the default policy.
    pub(crate) async fn strict() -> TestEnv {
        Self::with(|b| b).await
    }

    pub(crate) async fn with(configure: impl FnOnce(EngineBuilder) -> EngineBuilder) -> TestEnv {
        let pki = TestPki::new(&[API, OTHER, AUTH, EVIL]);
        let server = MockServer::start(&pki).await;
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let resolver: Arc<dyn Resolver> = Arc::new(
            StaticResolver::new()
                .with(API, [loopback])
                .with(OTHER, [loopback])
                .with(AUTH, [loopback])
                .with(EVIL, [loopback])
                .with("internal.test", ["10.0.0.5".parse().unwrap()])
                .with("metadata.test", ["169.254.169.254".parse().unwrap()])
                .with("mixed.test", ["93.184.216.34".parse().unwrap(), loopback])
                .with("mapped.test", ["::ffff:127.0.0.1".parse().unwrap()]),
        );
        let connector = Arc::new(LoopbackOnly::default());
        let builder = Engine::builder()
            .cache_dir(cache_dir())
            .webpki_roots(false)
            .add_ca_pem(pki.ca_pem().as_bytes())
            .unwrap()
            .resolver(resolver)
            .connector(connector.clone())
            .default_timeout(Duration::from_secs(20));
        let engine = configure(builder).build().unwrap();
        let canary = canary("api");
        let connections = StaticConnections::new().with(
            Connection::new(
                "api-token",
                SecretValue::new(canary.clone()),
                [format!("{API}:{}", server.port())],
                Placement::bearer(),
            )
            .unwrap(),
        );
        server.set_expected_bearer(canary.clone());
        TestEnv {
            pki,
            server,
            engine,
            connector,
            observer: CollectingObserver::new(),
            canary,
            connections,
        }
    }

    /// `name:port` of the mock under a test name.
    pub(crate) fn host(&self, name: &str) -> String {
        format!("{name}:{}", self.server.port())
    }

    /// `https://name:port/path` of the mock.
    pub(crate) fn url(&self, name: &str, path: &str) -> String {
        format!("https://{name}:{}{path}", self.server.port())
    }

    pub(crate) fn load(&self, guest: &str) -> Component {
        self.engine.load(guest, &guest_bytes(guest)).unwrap()
    }

    /// Adds a connection.
    pub(crate) fn connection(
        &mut self,
        name: &str,
        value: &str,
        hosts: &[String],
        placement: &str,
    ) {
        let c = Connection::new(
            name,
            SecretValue::new(value),
            hosts,
            placement.parse::<Placement>().unwrap(),
        )
        .unwrap();
        self.connections = std::mem::take(&mut self.connections).with(c);
    }

    pub(crate) fn job(&self) -> wrun_runtime::Job {
        self.engine.job(
            JobOptions::new("ws-test", "recipe-test")
                .connections(Arc::new(self.connections.clone()))
                .property("api_base", self.url(API, ""))
                .property("github_api", self.url(API, ""))
                .property("slack_api", self.url(API, ""))
                .property("secret_looking", "not-a-secret")
                .observer(self.observer.clone()),
        )
    }

    /// Default grants of the hostile guest: the API host, the `api` secret,
    /// the `api_base` property.
    pub(crate) fn hostile_grants(&self) -> GrantsBuilder {
        Grants::builder()
            .net(self.host(API))
            .secret("api", "api-token")
            .env("api_base")
    }

    /// The `github-issue` example bound with all the grants it needs.
    pub(crate) fn github_step(&self) -> wrun_runtime::Step {
        let grants = Grants::builder()
            .net(self.host(API))
            .secret("github", "api-token")
            .env("github_api")
            .build()
            .unwrap();
        self.engine
            .step("fetch-issue", &self.load("github-issue"), grants)
            .unwrap()
    }

    /// Runs an action of the hostile guest in a fresh job.
    pub(crate) async fn hostile(
        &self,
        grants: GrantsBuilder,
        action: &str,
        input: Value,
    ) -> Result<StepOutput, StepFailure> {
        let component = self.load("hostile");
        let step = self
            .engine
            .step("hostile", &component, grants.build().unwrap())
            .unwrap();
        self.job().run(&step, action, &input).await
    }

    /// Asserts that the canary is nowhere: not in the output, the events,
    /// the error, the audit records.
    pub(crate) fn assert_no_leak(&self, result: &Result<StepOutput, StepFailure>) {
        let mut everything = String::new();
        match result {
            Ok(out) => {
                everything.push_str(&out.output.to_string());
                everything.push_str(&out.stored.to_string());
                everything.push_str(&format!("{:?}", out.events));
            }
            Err(f) => {
                everything.push_str(&f.to_string());
                everything.push_str(&format!("{:?}", f.error));
                everything.push_str(&format!("{:?}", f.events));
            }
        }
        everything.push_str(&format!("{:?}", self.observer.events()));
        everything.push_str(&format!("{:?}", self.observer.audits()));
        wrun_tests::assert_absent(
            everything.as_bytes(),
            &[&self.canary],
            "guest-visible data, events and audit",
        );
    }
}

/// The error message of a failed step.
pub(crate) fn failure(result: Result<StepOutput, StepFailure>) -> (String, StepFailure) {
    match result {
        Ok(out) => panic!("expected the step to fail, it returned {}", out.output),
        Err(f) => (f.to_string(), f),
    }
}

/// The output of a successful step.
pub(crate) fn success(result: Result<StepOutput, StepFailure>) -> StepOutput {
    match result {
        Ok(out) => out,
        Err(f) => panic!("expected success, got: {f}\nevents: {:#?}", f.events),
    }
}

/// The hostile guest's `http` action input.
pub(crate) fn http(url: &str) -> Value {
    json!({ "url": url })
}

/// All log messages of a set of events, one per line.
pub(crate) fn logs(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Log { message, .. } => Some(message.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}
