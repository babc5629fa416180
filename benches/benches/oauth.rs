//! What a step pays for an OAuth2 connection whose token is valid, against a
//! static token, in the same run and through the same store reading
//! (`SqliteStorage`'s connection source, as the daemon and `wrun run` use
//! it); and the time of one refresh (lease, token request to a local
//! provider over TLS, sealed commit). Run with
//! `cargo bench -p wrun-benches --bench oauth`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_main};
use serde_json::json;
use wrun_runtime::egress::StaticResolver;
use wrun_runtime::oauth::{GrantKind, OAuthClientConfig};
use wrun_runtime::policy::NetGrant;
use wrun_runtime::{Connection, Engine, Grants, JobOptions, Placement, SecretValue};
use wrun_store::audit::{Entry, Outcome};
use wrun_store::keys::MasterKey;
use wrun_store::oauth::{Refresher, fresh_token};
use wrun_store::sqlite::SqliteStorage;
use wrun_store::storage::{ConnectionWrite, OAuthConnectionWrite, Storage};
use wrun_tests::TestPki;
use wrun_tests::oauth::OAuthServer;

const WS: &str = "bench";

fn entry(action: &str) -> Entry {
    Entry {
        workspace: Some(WS.into()),
        actor: "bench".into(),
        action: action.into(),
        target: "connection".into(),
        source: None,
        outcome: Outcome::Success,
        detail: json!({}),
    }
}

fn oauth(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pki = TestPki::new(&["oauth.test"]);
    let secret = "bench-client-secret-5b0c1d9e7f3a2b6c";
    let server = rt.block_on(OAuthServer::start(&pki, "bench", secret));
    let host = format!("oauth.test:{}", server.port());
    let engine = Engine::builder()
        .add_ca_pem(pki.ca_pem().as_bytes())
        .expect("ca")
        .allow_range("127.0.0.0/8".parse().expect("range"))
        .resolver(Arc::new(
            StaticResolver::new().with("oauth.test", [IpAddr::V4(Ipv4Addr::LOCALHOST)]),
        ))
        .build()
        .expect("engine");
    let dir = std::env::temp_dir().join(format!("wrun-bench-oauth-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sqlite =
        SqliteStorage::open(&dir.join("wrun.db"), MasterKey::generate(), None).expect("store");
    let storage: Arc<dyn Storage> = Arc::new(Arc::clone(&sqlite));
    let refresher = Arc::new(Refresher::new(engine.token_client()));
    storage.enable_oauth(Arc::clone(&refresher));

    let grant = NetGrant::parse_for_connection(std::slice::from_ref(&host)).expect("hosts");
    let config = OAuthClientConfig {
        grant: GrantKind::ClientCredentials,
        token_url: format!("https://{host}/token"),
        authorize_url: None,
        client_id: "bench".into(),
        scopes: vec!["read".into()],
    };
    rt.block_on(async {
        for name in ["api", "refreshed"] {
            if name == "refreshed" {
                // Tokens issued from now on are due at once: each call of
                // the refresh bench is one refresh.
                server.set_access_ttl(Duration::ZERO);
            }
            let write = OAuthConnectionWrite {
                name: name.into(),
                hosts: grant.clone(),
                placement: Placement::bearer(),
                config: config.clone(),
                client_secret: SecretValue::new(secret),
                replace: false,
            };
            storage
                .put_oauth_connection(WS, write, entry("put"))
                .await
                .expect("oauth connection");
            fresh_token(storage.as_ref(), &refresher, WS, name)
                .await
                .expect("first token");
        }
        // The static connection holds the very value the provider issued
        // for `api`: what a job does with a value (its masks) depends on
        // the value, so only the OAuth2 path differs.
        let issued = server.issued_access_tokens();
        let fixed = Connection::new(
            "fixed",
            SecretValue::new(issued[0].clone()),
            [host.as_str()],
            Placement::bearer(),
        )
        .expect("connection");
        storage
            .put_connection(WS, ConnectionWrite::Create(fixed), entry("put"))
            .await
            .expect("static connection");
    });

    let component = engine
        .load(
            "hostile",
            &std::fs::read(wrun_tests::guests_dir().join("hostile.wasm")).expect("hostile.wasm"),
        )
        .expect("component");
    let step = |connection: &str| {
        let grants = Grants::builder()
            .net(&host)
            .secret("api", connection)
            .env("unused")
            .build()
            .expect("grants");
        engine
            .step("placeholder", &component, grants)
            .expect("step")
    };
    let mut group = c.benchmark_group("connection_read");
    for (label, connection) in [("static_token", "fixed"), ("oauth2_valid_token", "api")] {
        group.bench_function(label, |b| {
            b.to_async(&rt).iter(|| async {
                let source = storage.connections(WS, "prod");
                black_box(source.connection(connection).await.expect("read"));
            });
        });
    }
    group.finish();

    let input = json!({ "secret": "api" });
    let mut group = c.benchmark_group("connection_step");
    for (label, connection) in [("static_token", "fixed"), ("oauth2_valid_token", "api")] {
        let step = step(connection);
        group.bench_function(label, |b| {
            b.to_async(&rt).iter(|| async {
                let job = engine
                    .job(JobOptions::new(WS, "bench").connections(storage.connections(WS, "prod")));
                black_box(job.run(&step, "placeholder", &input).await.expect("step"));
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("oauth2");
    group.bench_function("one_refresh", |b| {
        b.to_async(&rt).iter(|| async {
            fresh_token(storage.as_ref(), &refresher, WS, "refreshed")
                .await
                .expect("refresh");
        });
    });
    group.finish();
    eprintln!("token endpoint calls: {:?}", server.token_calls());
    drop(storage);
    drop(sqlite);
    let _ = std::fs::remove_dir_all(&dir);
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    oauth(&mut c);
}

criterion_main!(benches);
