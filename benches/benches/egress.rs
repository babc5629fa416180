//! One HTTPS request with secret injection through wrun's egress (policy
//! checks, placeholder swap, resolution and address check, pooled TLS
//! connection, response scrubbing), against the same request sent directly
//! with hyper over one kept-alive rustls connection to the same loopback
//! server. `wrun_egress_limited` is the same request through a job whose
//! connection has outbound limits and counters (the daemon's limiter). A
//! last case runs a whole guest step that sends the request.
//! Run with `cargo bench -p wrun-benches --bench egress`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_main};
use http_body_util::Full;
use serde_json::json;
use wrun_runtime::egress::StaticResolver;
use wrun_runtime::{
    Connection, Engine, Grants, JobOptions, Placement, SecretValue, StaticConnections,
};
use wrun_server::limits::ConnectionLimiter;
use wrun_store::audit::{Entry, Outcome};
use wrun_store::keys::MasterKey;
use wrun_store::sqlite::SqliteStorage;
use wrun_store::storage::{ConnectionLimits, ConnectionWrite, Storage};
use wrun_tests::{DirectClient, MockServer, TestPki};

const HOST: &str = "api.test";
const TOKEN: &str = "bench-token-0123456789abcdef0123456789";

fn egress_request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pki = TestPki::new(&[HOST]);
    let server = rt.block_on(MockServer::start(&pki));
    let port = server.port();

    let engine = Engine::builder()
        .webpki_roots(false)
        .add_ca_pem(pki.ca_pem().as_bytes())
        .expect("ca")
        .allow_range("127.0.0.0/8".parse().expect("net"))
        .resolver(Arc::new(
            StaticResolver::new().with(HOST, [IpAddr::V4(Ipv4Addr::LOCALHOST)]),
        ))
        .build()
        .expect("engine");
    let connection = Connection::new(
        "api-token",
        SecretValue::new(TOKEN),
        [format!("{HOST}:{port}")],
        Placement::bearer(),
    )
    .expect("connection");
    let job = engine.job(
        JobOptions::new("bench", "bench")
            .connections(Arc::new(StaticConnections::new().with(connection.clone())))
            .property("api_base", format!("https://{HOST}:{port}")),
    );
    let hostile = std::fs::read(wrun_tests::guests_dir().join("hostile.wasm")).expect("guest");
    let component = engine.load("hostile", &hostile).expect("load");
    let grants = || {
        Grants::builder()
            .net(format!("{HOST}:{port}"))
            .secret("api", "api-token")
            .env("api_base")
            .build()
            .expect("grants")
    };
    let step = engine.step("bench", &component, grants()).expect("step");
    let url = format!("https://{HOST}:{port}/status/200");
    // A step run builds its egress scope once, at instantiation; the probe
    // holds one, so each iteration costs what one more request of a step
    // costs.
    let probe = rt.block_on(job.__egress_probe(&step)).expect("probe");
    let placeholder = probe.placeholders().remove("api").expect("api placeholder");

    // The same request through a job whose connection has limits and
    // counters: the daemon's limiter over a store holding the limits (set
    // far above what the bench sends, so every request goes).
    let dir = std::env::temp_dir().join(format!("wrun-bench-limits-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sqlite =
        SqliteStorage::open(&dir.join("wrun.db"), MasterKey::generate(), None).expect("store");
    let storage: Arc<dyn Storage> = Arc::new(sqlite);
    let entry = || Entry {
        workspace: Some("bench".into()),
        actor: "bench".into(),
        action: "bench".into(),
        target: "connection".into(),
        source: None,
        outcome: Outcome::Success,
        detail: json!({}),
    };
    let limiter = rt.block_on(async {
        storage
            .put_connection(
                "bench",
                ConnectionWrite::Create(connection.clone()),
                entry(),
            )
            .await
            .expect("connection");
        storage
            .set_connection_limits(
                "bench",
                "api-token",
                ConnectionLimits {
                    requests_per_minute: Some(1 << 30),
                    burst: Some(1 << 30),
                    bytes_per_minute: Some(1 << 40),
                    paths_per_minute: Some(1 << 20),
                    spike_multiple: Some(1 << 20),
                    suspend_on_alert: false,
                },
                entry(),
            )
            .await
            .expect("limits");
        let (limiter, alerts) = ConnectionLimiter::new(Arc::clone(&storage));
        limiter.refresh("bench").await.expect("refresh");
        (Arc::new(limiter), alerts)
    });
    let limited_job = engine.job(
        JobOptions::new("bench", "bench")
            .connections(Arc::new(StaticConnections::new().with(connection.clone())))
            .property("api_base", format!("https://{HOST}:{port}"))
            .guard(Arc::clone(&limiter.0) as Arc<dyn wrun_runtime::guard::ConnectionGuard>),
    );
    let limited = rt
        .block_on(limited_job.__egress_probe(&step))
        .expect("probe");
    let limited_placeholder = limited
        .placeholders()
        .remove("api")
        .expect("api placeholder");

    let mut direct = rt
        .block_on(DirectClient::connect(server.addr(), HOST, &pki.ca_pem()))
        .expect("direct client");
    let direct = tokio::sync::Mutex::new(&mut direct);

    let mut group = c.benchmark_group("https_request_with_secret");
    group.bench_function("wrun_egress", |b| {
        b.to_async(&rt).iter(|| async {
            let request = http::Request::get(&url)
                .header(http::header::HOST, format!("{HOST}:{port}"))
                .header(http::header::AUTHORIZATION, format!("Bearer {placeholder}"))
                .body(Bytes::new())
                .expect("request");
            let (status, body) = probe.round_trip(request).await.expect("round trip");
            assert_eq!(status, 200);
            black_box(body);
        })
    });
    group.bench_function("wrun_egress_limited", |b| {
        b.to_async(&rt).iter(|| async {
            let request = http::Request::get(&url)
                .header(http::header::HOST, format!("{HOST}:{port}"))
                .header(
                    http::header::AUTHORIZATION,
                    format!("Bearer {limited_placeholder}"),
                )
                .body(Bytes::new())
                .expect("request");
            let (status, body) = limited.round_trip(request).await.expect("round trip");
            assert_eq!(status, 200);
            black_box(body);
        })
    });
    group.bench_function("hyper_direct", |b| {
        b.to_async(&rt).iter(|| async {
            let request = http::Request::get("/status/200")
                .header(http::header::HOST, format!("{HOST}:{port}"))
                .header(http::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            let (status, _, body) = direct.lock().await.send(request).await.expect("send");
            assert_eq!(status, 200);
            black_box(body);
        })
    });
    let input = json!({ "url": url, "secret": "api" });
    group.bench_function("wrun_guest_step", |b| {
        b.to_async(&rt).iter(|| async {
            let out = job.run(&step, "auth", &input).await.expect("step");
            black_box(out.output);
        })
    });
    group.finish();
    // The counters of the limited runs were kept in memory only.
    drop(limiter);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the benchmarks of this file; written out instead of
/// `criterion_group!`, whose generated function has no doc comment.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    egress_request(&mut c);
}
criterion_main!(benches);
