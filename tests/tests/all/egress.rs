//! Egress from the guest side: scheme, granted hosts, address classes,
//! numeric spellings, redirects, sizes and counts.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use wrun_runtime::{AuditKind, Grants};

use crate::common::*;

#[tokio::test]
async fn a_granted_host_is_reached() {
    let env = TestEnv::new().await;
    let out = success(
        env.hostile(
            env.hostile_grants(),
            "http",
            http(&env.url(API, "/echo/ok")),
        )
        .await,
    );
    assert_eq!(out.output["status"], 200);
    assert_eq!(env.server.requests().len(), 1);
}

#[tokio::test]
async fn plain_http_is_refused_before_any_byte_is_sent() {
    let env = TestEnv::new().await;
    let plain = wrun_tests::MockServer::start_plain().await;
    let grants = env.hostile_grants().net(format!("{API}:{}", plain.port()));
    let url = format!("http://{API}:{}/echo", plain.port());
    let (text, _) = failure(env.hostile(grants, "http", http(&url)).await);
    assert!(text.contains("only https:// is allowed"), "{text}");
    assert_eq!(plain.connection_count(), 0);
    assert_eq!(env.connector.attempts.load(Ordering::SeqCst), 0);
    let audits = env.observer.audits();
    assert_eq!(audits.len(), 1);
    assert_eq!(audits[0].kind, AuditKind::EgressRefused);
}

#[tokio::test]
async fn ungranted_hosts_and_ports_are_refused() {
    let env = TestEnv::new().await;
    for url in [
        env.url(EVIL, "/echo"),
        env.url("API.TEST.", "/echo")
            .replace("API.TEST.", "sub.api.test"),
        format!("https://{API}/echo"),
        format!("https://{API}:1/echo"),
    ] {
        let (text, _) = failure(env.hostile(env.hostile_grants(), "http", http(&url)).await);
        assert!(text.contains("is not in the `net` grant"), "{url}: {text}");
    }
    assert_eq!(env.server.requests().len(), 0);
    assert_eq!(env.connector.attempts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_empty_net_grant_denies_everything() {
    let env = TestEnv::new().await;
    // The hostile guest imports wasi:http, so binding it without a net grant
    // already fails; the same holds for every host at call time.
    let component = env.load("hostile");
    let err = env.engine.step(
        "s",
        &component,
        Grants::builder()
            .secret("api", "api-token")
            .env("x")
            .build()
            .unwrap(),
    );
    assert!(matches!(
        err,
        Err(wrun_runtime::Error::MissingGrant { grant: "net", .. })
    ));
}

#[tokio::test]
async fn wildcards_match_subdomains_only() {
    let env = TestEnv::new().await;
    let grants = || Grants::builder().net(format!("*.test:{}", env.server.port()));
    // `*.test` is a single-label wildcard and is refused as too broad.
    assert!(grants().build().is_err());
    let grants = || {
        Grants::builder()
            .net(format!("*.api.test:{}", env.server.port()))
            .secret("api", "api-token")
            .env("x")
    };
    let (text, _) = failure(
        env.hostile(grants(), "http", http(&env.url(API, "/echo")))
            .await,
    );
    assert!(text.contains("not in the `net` grant"), "{text}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let env = TestEnv::new().await;
    let target = env.url(EVIL, "/echo/stolen");
    let url = env.url(API, &format!("/redirect?to={target}"));
    let input =
        json!({ "url": url, "secret": "api", "headers": [["authorization", "Bearer {secret}"]] });
    let result = env.hostile(env.hostile_grants(), "http", input).await;
    env.assert_no_leak(&result);
    let out = success(result);
    assert_eq!(out.output["status"], 302);
    let requests = env.server.requests();
    assert_eq!(requests.len(), 1, "the redirect must not be followed");
    assert!(requests[0].path_and_query.starts_with("/redirect"));
}

/// Hosts whose addresses are not public: refused before any connection.
/// The guest learns only that the host is not reachable (not the address,
/// not its range); the audit entry says which.
#[tokio::test]
async fn non_public_addresses_are_refused_before_connecting() {
    let env = TestEnv::strict().await;
    let port = env.server.port();
    let cases = [
        ("internal.test", "private-use"),
        ("metadata.test", "metadata"),
        ("mixed.test", "loopback"),
        ("mapped.test", "IPv4-mapped"),
        (API, "loopback"),
    ];
    for (name, range) in cases {
        let grants = Grants::builder()
            .net(format!("{name}:{port}"))
            .secret("api", "api-token")
            .env("x");
        let (text, f) = failure(
            env.hostile(grants, "http", http(&format!("https://{name}:{port}/echo")))
                .await,
        );
        assert!(
            text.contains(&format!("{name}:{port} is not reachable from this step")),
            "{name}: {text}"
        );
        assert_reveals_nothing(&text.replace(name, "NAME"), &f.events, range);
        let audits = env.observer.audits();
        let audit = audits.last().unwrap();
        assert!(
            audit.reason.contains("refused address") && audit.reason.contains(range),
            "{name}: {audit:?}"
        );
    }
    assert_eq!(
        env.connector.attempts.load(Ordering::SeqCst),
        0,
        "no connection may be attempted"
    );
    assert_eq!(env.server.connection_count(), 0);
}

/// A name that does not resolve and a name that resolves to an internal
/// address look the same to the guest, so a step cannot map the internal
/// network; the operator's audit entries tell them apart.
#[tokio::test]
async fn unresolvable_and_internal_names_look_the_same_to_the_guest() {
    let env = TestEnv::strict().await;
    let port = env.server.port();
    let mut guest_texts = Vec::new();
    for name in ["internal.test", "nowhere.test"] {
        let grants = Grants::builder()
            .net(format!("{name}:{port}"))
            .secret("api", "api-token")
            .env("x");
        let (text, f) = failure(
            env.hostile(grants, "http", http(&format!("https://{name}:{port}/x")))
                .await,
        );
        let text = text.replace(name, "NAME");
        assert_reveals_nothing(&text, &f.events, "resolve");
        guest_texts.push(text);
    }
    assert_eq!(guest_texts[0], guest_texts[1]);
    let reasons: Vec<String> = env
        .observer
        .audits()
        .into_iter()
        .map(|a| a.reason)
        .collect();
    assert!(
        reasons[0].contains("10.0.0.5") && reasons[0].contains("private"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("does not resolve"), "{reasons:?}");
    assert_eq!(env.connector.attempts.load(Ordering::SeqCst), 0);
}

/// What the guest sees of a step's failure (its error text and its log
/// lines; refusal events are for the operator) holds no address detail.
fn assert_reveals_nothing(text: &str, events: &[wrun_runtime::Event], detail: &str) {
    let guest_visible = format!("{text}\n{}", logs(events));
    for secret in [detail, "10.0.0.5", "127.0.0.1", "169.254", "resolve"] {
        assert!(
            !guest_visible.contains(secret),
            "{secret} in: {guest_visible}"
        );
    }
}

/// Numeric hosts in every spelling, and IPv6 forms embedding IPv4, are
/// normalised and classified: granting them does not make them reachable.
#[tokio::test]
async fn numeric_spellings_and_ipv6_embeddings_are_classified() {
    let env = TestEnv::strict().await;
    let port = env.server.port();
    let spellings = [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.1",
        "0x7f.1",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::]",
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
        "[::1]",
        "10.0.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "[fc00::1]",
        "[fe80::1]",
    ];
    for host in spellings {
        let grants = Grants::builder()
            .net(format!("{host}:{port}"))
            .secret("api", "api-token")
            .env("x");
        let url = format!("https://{host}:{port}/echo");
        let (text, _) = failure(env.hostile(grants, "http", http(&url)).await);
        assert!(
            text.contains("is not reachable from this step"),
            "{host}: {text}"
        );
        let audits = env.observer.audits();
        assert!(
            audits.last().unwrap().reason.contains("refused address"),
            "{host}: {audits:?}"
        );
    }
    assert_eq!(env.connector.attempts.load(Ordering::SeqCst), 0);
}

/// With loopback allowed, a numeric spelling of 127.0.0.1 is the same host
/// as the canonical one, and the certificate is checked against it.
#[tokio::test]
async fn a_numeric_spelling_matches_its_canonical_grant() {
    let env = TestEnv::new().await;
    let port = env.server.port();
    let grants = Grants::builder()
        .net(format!("127.0.0.1:{port}"))
        .secret("api", "api-token")
        .env("x");
    let out = success(
        env.hostile(
            grants,
            "http",
            http(&format!("https://2130706433:{port}/echo")),
        )
        .await,
    );
    assert_eq!(out.output["status"], 200);
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let env = TestEnv::new().await;
    let other = env.pki.other_ca();
    let rogue = wrun_tests::MockServer::start(&other).await;
    let grants = Grants::builder()
        .net(format!("{API}:{}", rogue.port()))
        .secret("api", "api-token")
        .env("x");
    let url = format!("https://{API}:{}/echo", rogue.port());
    let (text, _) = failure(env.hostile(grants, "http", http(&url)).await);
    assert!(
        text.to_lowercase().contains("tls") || text.contains("certificate"),
        "{text}"
    );
    assert!(rogue.requests().is_empty());
}

#[tokio::test]
async fn oversized_responses_are_cut_off() {
    let env = TestEnv::with(|b| {
        b.allow_range("127.0.0.0/8".parse().unwrap()).egress_limits(
            wrun_runtime::egress::EgressLimits {
                max_response_body: 1 << 20,
                ..Default::default()
            },
        )
    })
    .await;
    let (text, _) = failure(
        env.hostile(
            env.hostile_grants(),
            "http",
            http(&env.url(API, "/big?bytes=5000000")),
        )
        .await,
    );
    assert!(text.contains("BodySize") || text.contains("body"), "{text}");
    let out = success(
        env.hostile(
            env.hostile_grants(),
            "http",
            http(&env.url(API, "/big?bytes=1000")),
        )
        .await,
    );
    assert_eq!(out.output["body"].as_str().map(str::len), Some(1000));
}

#[tokio::test]
async fn oversized_requests_are_refused() {
    let env = TestEnv::with(|b| {
        b.allow_range("127.0.0.0/8".parse().unwrap()).egress_limits(
            wrun_runtime::egress::EgressLimits {
                max_request_body: 1 << 20,
                ..Default::default()
            },
        )
    })
    .await;
    let input = json!({ "url": env.url(API, "/echo"), "mib": 3 });
    let (text, _) = failure(
        env.hostile(env.hostile_grants(), "big-request", input)
            .await,
    );
    assert!(
        text.contains("request body exceeds the limit of 1048576 bytes"),
        "{text}"
    );
}

#[tokio::test]
async fn requests_per_step_are_bounded() {
    let env = TestEnv::with(|b| {
        b.allow_range("127.0.0.0/8".parse().unwrap()).egress_limits(
            wrun_runtime::egress::EgressLimits {
                max_requests_per_step: 5,
                ..Default::default()
            },
        )
    })
    .await;
    let input = json!({ "url": env.url(API, "/echo"), "count": 8 });
    let out = success(
        env.hostile(env.hostile_grants(), "many-requests", input)
            .await,
    );
    assert_eq!(out.output["ok"], 5);
    let first_error = out.output["first_error"].as_str().unwrap_or_default();
    assert!(
        first_error.contains("has used its 5 requests"),
        "{first_error}"
    );
    assert_eq!(env.server.requests().len(), 5);
}

#[tokio::test]
async fn the_guest_gets_no_filesystem_environment_arguments_or_stdin() {
    let env = TestEnv::new().await;
    let out = success(
        env.hostile(env.hostile_grants(), "sandbox-probe", json!({}))
            .await,
    );
    let probe: &Value = &out.output;
    assert_eq!(probe["env_vars"], 0, "{probe}");
    assert!(probe["args"].as_u64().unwrap_or(0) <= 1, "{probe}");
    assert!(
        probe["read_dir_root"]
            .as_str()
            .unwrap_or("")
            .starts_with("err"),
        "{probe}"
    );
    assert!(
        probe["read_passwd"]
            .as_str()
            .unwrap_or("")
            .starts_with("err"),
        "{probe}"
    );
    assert_eq!(probe["stdin"], "ok: 0 bytes", "{probe}");
}

#[tokio::test]
async fn properties_outside_the_env_grant_are_invisible() {
    let env = TestEnv::new().await;
    let input = json!({ "names": ["api_base", "secret_looking", "github_api"] });
    let out = success(env.hostile(env.hostile_grants(), "property", input).await);
    assert_eq!(out.output["values"]["api_base"], env.url(API, ""));
    assert_eq!(out.output["values"]["secret_looking"], Value::Null);
    assert_eq!(out.output["values"]["github_api"], Value::Null);
}

#[tokio::test]
async fn a_large_body_keeps_its_length_when_nothing_can_be_injected() {
    let env = TestEnv::new().await;
    let input = json!({ "url": env.url(API, "/echo"), "mib": 1, "content_length": true });
    let out = success(
        env.hostile(env.hostile_grants(), "big-request", input)
            .await,
    );
    assert_eq!(out.output["status"], 200);
    let got = &env.server.requests()[0];
    assert_eq!(got.header("content-length"), Some("1048576"));
    assert_eq!(got.header("transfer-encoding"), None);
    assert_eq!(got.body.len(), 1 << 20);
}

#[tokio::test]
async fn a_slow_upstream_hits_the_first_byte_timeout() {
    let env = TestEnv::with(|b| {
        b.allow_range("127.0.0.0/8".parse().unwrap()).egress_limits(
            wrun_runtime::egress::EgressLimits {
                first_byte_timeout: std::time::Duration::from_millis(200),
                ..Default::default()
            },
        )
    })
    .await;
    let started = std::time::Instant::now();
    let input = json!({
        "url": env.url(API, "/slow?ms=5000"),
        "secret": "api",
        "headers": [["authorization", "Bearer {secret}"]]
    });
    let (text, f) = failure(env.hostile(env.hostile_grants(), "http", input).await);
    assert!(
        text.contains("Timeout") || text.contains("timeout"),
        "{text}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "the timeout did not apply"
    );
    // The request left with the value: it is in the events, without a status.
    let sent = f.events.iter().any(|e| {
        matches!(e, wrun_runtime::Event::Request { status: None, connections, .. } if connections == &["api-token"])
    });
    assert!(sent, "{:?}", f.events);
}
