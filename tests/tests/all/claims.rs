//! Tests that each guarantee ARCHITECTURE.md claims is really there: each
//! one fails when its guarantee is removed.
//!
//! - Masking of what a guest really holds (a value it marked, its
//!   placeholder) in logs, stdout, stderr, errors, traps and outputs, with no
//!   response scrubber involved, and in later steps of the job, resumed or
//!   not.
//! - A resolver that changes its answer (DNS rebinding) cannot move a
//!   connection to an address that was not checked.
//! - Egress timeouts (connect, between bytes, total) and the keep-alive pool
//!   keyed by (host, port, address).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wrun_runtime::egress::{Connector, EgressLimits, Resolver, Stream, TcpConnector};
use wrun_runtime::manifest::Manifest;
use wrun_runtime::recipe::{Recipe, Resume, RunReport, StepStatus, Stop};
use wrun_runtime::{Error, Event, LogSource, StepFailure, StepOutput};

use crate::common::*;

/// Everything a step reported: output, stored output, error and events.
fn reported(result: &Result<StepOutput, StepFailure>) -> String {
    match result {
        Ok(out) => format!("{}\n{}\n{:?}", out.output, out.stored, out.events),
        Err(f) => format!("{f}\n{:?}\n{:?}", f.error, f.events),
    }
}

/// Log lines of one source.
fn lines_from(events: &[Event], from: LogSource) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Log {
                source, message, ..
            } if *source == from => Some(message.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn values_the_guest_holds_are_masked_in_logs_stdio_errors_traps_and_outputs() {
    let env = TestEnv::new().await;
    let value = wrun_tests::canary("held");
    let revealed = "marked=*** placeholder=***";
    for how in ["log", "stdout", "stderr", "output", "error", "panic"] {
        let input = json!({ "value": value, "mark": true, "secret": "api", "how": how });
        let result = env.hostile(env.hostile_grants(), "reveal", input).await;
        env.assert_no_leak(&result);
        let text = reported(&result);
        wrun_tests::assert_absent(text.as_bytes(), &[&value, "wrun_ph_"], how);
        // The text did come out, masked, where the guest sent it.
        let events = match &result {
            Ok(out) => out.events.clone(),
            Err(f) => f.events.clone(),
        };
        let source = match how {
            "log" => Some(LogSource::Guest),
            "stdout" => Some(LogSource::Stdout),
            "stderr" | "panic" => Some(LogSource::Stderr),
            _ => None,
        };
        if let Some(source) = source {
            let lines = lines_from(&events, source);
            assert!(
                lines.iter().any(|l| l.contains(revealed)),
                "{how}: {lines:?}"
            );
        }
        match how {
            "output" => assert_eq!(success(result).output["body"], revealed),
            "error" => {
                let (text, f) = failure(result);
                assert!(matches!(f.error, Error::ActionFailed { .. }), "{text}");
                assert!(text.contains(revealed), "{text}");
            }
            "panic" => {
                let (text, f) = failure(result);
                assert!(matches!(f.error, Error::Trap { .. }), "{text}");
                assert!(text.contains(revealed), "{text}");
            }
            _ => {
                success(result);
            }
        }
    }
    let observed = format!("{:?}{:?}", env.observer.events(), env.observer.audits());
    wrun_tests::assert_absent(observed.as_bytes(), &[&value, "wrun_ph_"], "the observer");
}

/// A two-step recipe of the hostile guest: `mark` marks the trigger's
/// `token`, `echo` gets the same value from the trigger (not marked there)
/// and leaks it every way at once.
fn mark_then_echo(env: &TestEnv) -> Recipe {
    let grants = format!(
        "[steps.grants]\nnet = [\"{}\"]\nsecrets = {{ api = \"api-token\" }}\nenv = [\"api_base\"]\n",
        env.host(API)
    );
    let manifest = format!(
        r#"[recipe]
name = "mark-then-echo"

[[steps]]
name = "mark"
component = "hostile.wasm"
action = "reveal"
input = {{ value = "{{{{ trigger.token }}}}", mark = true, how = "output" }}
{grants}
[[steps]]
name = "echo"
component = "hostile.wasm"
action = "reveal"
input = {{ value = "{{{{ trigger.token }}}}", how = "all" }}
{grants}"#
    );
    let manifest = Manifest::parse(&manifest).unwrap_or_else(|e| panic!("{e}"));
    Recipe::load(&env.engine, manifest, |_| Ok(guest_bytes("hostile"))).unwrap()
}

/// Asserts the recipe's second step ran and leaked nothing of `value`.
fn assert_echo_masked(report: &RunReport, value: &str) {
    let echo = report.steps.last().unwrap();
    assert_eq!(echo.step, "echo");
    assert_eq!(echo.status, StepStatus::Succeeded, "{:?}", echo.error);
    let text = serde_json::to_string(report).unwrap();
    wrun_tests::assert_absent(text.as_bytes(), &[value], "the run report");
    assert_eq!(echo.output.as_ref().unwrap()["body"], "marked=*** ");
    let stdout = lines_from(&echo.events, LogSource::Stdout);
    assert_eq!(stdout, ["marked=*** "], "{:?}", echo.events);
}

#[tokio::test]
async fn a_marked_value_stays_masked_in_later_steps_of_the_job() {
    let env = TestEnv::new().await;
    let recipe = mark_then_echo(&env);
    let value = wrun_tests::canary("token");
    let report = recipe
        .run(&env.job(), &json!({ "token": value }), |_| {})
        .await;
    assert!(report.ok, "{report:?}");
    assert_echo_masked(&report, &value);
}

#[tokio::test]
async fn a_marked_value_stays_masked_when_the_job_is_resumed_in_a_new_job() {
    let env = TestEnv::new().await;
    let recipe = mark_then_echo(&env);
    let value = wrun_tests::canary("token");
    let trigger = json!({ "token": value });

    // The first run stops after step 1, as a host that crashed would; it
    // keeps what a checkpoint keeps: the unmasked output and the marks.
    let first = env.job();
    let mut outputs = BTreeMap::new();
    let mut keep = |_: usize, record: &wrun_runtime::recipe::StepRecord, out: Option<&Value>| {
        outputs.insert(record.step.clone(), out.cloned().unwrap_or(Value::Null));
        std::future::ready(Err::<(), Stop>(Stop))
    };
    let report = recipe
        .run_from(&first, &trigger, Resume::default(), &mut keep)
        .await;
    assert_eq!(report.steps.len(), 1);
    let marked = first.marked();
    assert_eq!(marked, std::slice::from_ref(&value));

    // A new job (new placeholders, empty mask set) resumes at step 2.
    let resume = Resume {
        next: 1,
        outputs,
        marked,
    };
    let mut go_on = |_: usize, _: &wrun_runtime::recipe::StepRecord, _: Option<&Value>| {
        std::future::ready(Ok::<(), Stop>(()))
    };
    let report = recipe
        .run_from(&env.job(), &trigger, resume, &mut go_on)
        .await;
    assert!(report.ok, "{report:?}");
    assert_echo_masked(&report, &value);
}

/// A resolver that answers each name from a script: the n-th lookup of a
/// name gets its n-th answer, and the last answer from then on (a DNS
/// rebinding attacker's name server). Counts lookups.
struct Scripted {
    answers: Mutex<HashMap<String, VecDeque<IpAddr>>>,
    lookups: AtomicUsize,
}

impl Scripted {
    fn new<const N: usize>(script: [(&str, &[&str]); N]) -> Arc<Scripted> {
        let answers = script
            .into_iter()
            .map(|(name, ips)| {
                let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
                (name.to_string(), ips)
            })
            .collect();
        Arc::new(Scripted {
            answers: Mutex::new(answers),
            lookups: AtomicUsize::new(0),
        })
    }
}

#[async_trait::async_trait]
impl Resolver for Scripted {
    async fn resolve(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let mut answers = self.answers.lock().unwrap();
        let Some(queue) = answers.get_mut(name) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, name.to_string()));
        };
        let ip = if queue.len() > 1 {
            queue.pop_front()
        } else {
            queue.front().copied()
        };
        Ok(ip.into_iter().collect())
    }
}

/// A connector that records every address it is asked for and connects
/// every loopback address, whatever its port, to the mock (so 127.0.0.2 and
/// another port reach it too); other addresses are refused.
#[derive(Default)]
struct Recording {
    mock_port: AtomicU16,
    asked: Mutex<Vec<SocketAddr>>,
}

impl Recording {
    fn asked(&self) -> Vec<SocketAddr> {
        self.asked.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Connector for Recording {
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn Stream>> {
        self.asked.lock().unwrap().push(addr);
        if !addr.ip().is_loopback() {
            return Err(io::Error::other(format!("test connector refuses {addr}")));
        }
        let port = self.mock_port.load(Ordering::SeqCst);
        TcpConnector
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
    }
}

/// A test environment whose engine uses `resolver` and a [`Recording`]
/// connector, with `limits`; loopback is allowed.
async fn env_with(resolver: Arc<dyn Resolver>, limits: EgressLimits) -> (TestEnv, Arc<Recording>) {
    let connector = Arc::new(Recording::default());
    let c = connector.clone();
    let env = TestEnv::with(move |b| {
        b.allow_range("127.0.0.0/8".parse().unwrap())
            .resolver(resolver)
            .connector(c)
            .egress_limits(limits)
    })
    .await;
    connector
        .mock_port
        .store(env.server.port(), Ordering::SeqCst);
    (env, connector)
}

/// The loopback address with the mock's port.
fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

#[tokio::test]
async fn a_rebinding_resolver_cannot_move_a_connection_to_a_refused_address() {
    // The name first resolves to an allowed address, then to a private one.
    let resolver = Scripted::new([(API, &["127.0.0.1", "10.0.0.5"])]);
    let (env, connector) = env_with(resolver.clone(), EgressLimits::default()).await;
    let port = env.server.port();

    // One lookup per request: had the egress resolved again to connect, the
    // second answer (10.0.0.5) would have been the address connected to.
    let out = success(
        env.hostile(env.hostile_grants(), "http", http(&env.url(API, "/echo")))
            .await,
    );
    assert_eq!(out.output["status"], 200);
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1);
    assert_eq!(connector.asked(), [at("127.0.0.1", port)]);

    // The next request sees the new answer and is refused before any
    // connection, though a pooled connection to the old address is idle.
    let (text, _) = failure(
        env.hostile(env.hostile_grants(), "http", http(&env.url(API, "/echo")))
            .await,
    );
    // The guest is told only that the host is unreachable; the operator's
    // audit entry says why.
    assert!(text.contains("is not reachable from this step"), "{text}");
    assert!(!text.contains("10.0.0.5"), "{text}");
    assert!(
        env.observer
            .audits()
            .iter()
            .any(|a| a.reason.contains("refused address") && a.reason.contains("10.0.0.5")),
        "{:?}",
        env.observer.audits()
    );
    assert_eq!(connector.asked(), [at("127.0.0.1", port)]);
    assert_eq!(env.server.requests().len(), 1);
    assert_eq!(env.server.connection_count(), 1);
}

#[tokio::test]
async fn the_pool_shares_a_connection_only_for_the_same_host_port_and_address() {
    // `auth.test` moves from 127.0.0.1 to 127.0.0.2 after its first lookup.
    let resolver = Scripted::new([
        (API, &["127.0.0.1"]),
        (OTHER, &["127.0.0.1"]),
        (AUTH, &["127.0.0.1", "127.0.0.2"]),
    ]);
    let (env, connector) = env_with(resolver, EgressLimits::default()).await;
    let port = env.server.port();
    // Another port of the same name; the test connector takes it to the mock.
    let port2 = port.checked_add(1).unwrap_or(port - 1);
    let grants = || {
        env.hostile_grants()
            .net(env.host(OTHER))
            .net(env.host(AUTH))
            .net(format!("{API}:{port2}"))
    };
    let get = |url: String| {
        let input = http(&url);
        async { success(env.hostile(grants(), "http", input).await) }
    };
    let echo = |name: &str| env.url(name, "/echo");

    get(echo(API)).await;
    get(echo(API)).await;
    // Same host, port and address: the idle connection is reused.
    assert_eq!(env.server.connection_count(), 1);
    // Another name on the same address and port: a new connection (its TLS
    // session was authenticated for the other name).
    get(echo(OTHER)).await;
    assert_eq!(env.server.connection_count(), 2);
    // Another port of the same name and address: a new connection.
    get(format!("https://{API}:{port2}/echo")).await;
    assert_eq!(env.server.connection_count(), 3);
    // The same name and port on a new address: a new connection to it.
    get(echo(AUTH)).await;
    get(echo(AUTH)).await;
    assert_eq!(env.server.connection_count(), 5);
    assert_eq!(
        connector.asked(),
        [
            at("127.0.0.1", port),
            at("127.0.0.1", port),
            at("127.0.0.1", port2),
            at("127.0.0.1", port),
            at("127.0.0.2", port),
        ]
    );
}

/// A connector whose connections never complete.
struct NeverConnects;

#[async_trait::async_trait]
impl Connector for NeverConnects {
    async fn connect(&self, _addr: SocketAddr) -> io::Result<Box<dyn Stream>> {
        std::future::pending().await
    }
}

/// A connector whose TCP connections open, to a listener that never answers
/// the TLS handshake.
struct SilentPeer(SocketAddr);

#[async_trait::async_trait]
impl Connector for SilentPeer {
    async fn connect(&self, _addr: SocketAddr) -> io::Result<Box<dyn Stream>> {
        TcpConnector.connect(self.0).await
    }
}

/// Egress limits with every timeout long but the ones a test sets.
fn limits(set: impl FnOnce(&mut EgressLimits)) -> EgressLimits {
    let mut limits = EgressLimits {
        connect_timeout: Duration::from_secs(30),
        first_byte_timeout: Duration::from_secs(30),
        between_bytes_timeout: Duration::from_secs(30),
        total_timeout: Duration::from_secs(30),
        ..EgressLimits::default()
    };
    set(&mut limits);
    limits
}

/// Runs the hostile guest's `http` action on `url` and returns the error
/// text and how long the step took.
async fn timed_failure(env: &TestEnv, url: String) -> (String, Duration) {
    let started = Instant::now();
    let (text, _) = failure(env.hostile(env.hostile_grants(), "http", http(&url)).await);
    (text, started.elapsed())
}

#[tokio::test]
async fn a_connection_that_never_opens_hits_the_connect_timeout() {
    // The listener accepts TCP connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let connectors: [Arc<dyn Connector>; 2] =
        [Arc::new(NeverConnects), Arc::new(SilentPeer(silent_addr))];
    for connector in connectors {
        let limits = limits(|l| l.connect_timeout = Duration::from_millis(300));
        let env = TestEnv::with(|b| {
            b.allow_range("127.0.0.0/8".parse().unwrap())
                .connector(connector)
                .egress_limits(limits)
        })
        .await;
        let (text, took) = timed_failure(&env, env.url(API, "/echo")).await;
        assert!(text.contains("ConnectionTimeout"), "{text}");
        assert!(took < Duration::from_secs(10), "took {took:?}");
        assert!(env.server.requests().is_empty());
    }
    drop(silent);
}

#[tokio::test]
async fn a_body_that_pauses_hits_the_between_bytes_timeout() {
    let limits = limits(|l| l.between_bytes_timeout = Duration::from_millis(300));
    let env = TestEnv::with(|b| {
        b.allow_range("127.0.0.0/8".parse().unwrap())
            .egress_limits(limits)
    })
    .await;
    // One byte every 20 s: the head arrives, the first byte never in time.
    let (text, took) = timed_failure(&env, env.url(API, "/trickle?chunks=3&ms=20000")).await;
    assert!(text.contains("connection read timeout"), "{text}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test]
async fn a_body_that_trickles_hits_the_total_timeout() {
    let limits = limits(|l| {
        l.between_bytes_timeout = Duration::from_secs(2);
        l.total_timeout = Duration::from_secs(1);
    });
    let env = TestEnv::with(|b| {
        b.allow_range("127.0.0.0/8".parse().unwrap())
            .egress_limits(limits)
    })
    .await;
    // A byte every 100 ms (never idle for long) for 20 s.
    let (text, took) = timed_failure(&env, env.url(API, "/trickle?chunks=200&ms=100")).await;
    assert!(text.contains("HTTP response timeout"), "{text}");
    assert!(took >= Duration::from_secs(1), "took {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}
