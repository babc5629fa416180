//! The daemon's edges, attacked: replayed webhook deliveries, budgets spent
//! in someone else's name, signature floods, slow bodies, members removing
//! their betters (or the last admin), connection hosts over a public suffix,
//! and a guest misusing secrets past the audit cap.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::{self, Api, Daemon, Reply, Site, noop_bundle};

/// Another loopback address to attack from: the daemon sees it as another
/// client (all of 127.0.0.0/8 is loopback).
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// The lowercase hex HMAC-SHA256 of `<t>.<body>`, keyed with the secret's text.
fn mac_hex(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Delivers a webhook with an optional signature header.
async fn deliver(api: &mut Api, hook: &str, body: &[u8], signature: Option<&str>) -> Reply {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("/hooks/{hook}"))
        .header("content-type", "application/json");
    if let Some(s) = signature {
        req = req.header("x-wrun-signature", s);
    }
    api.raw(req.body(Full::new(Bytes::copy_from_slice(body))).unwrap())
        .await
}

/// A TLS connection to the daemon from `local`.
async fn tls_from(site: &Site, daemon: &Daemon, local: IpAddr) -> TlsStream<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    let tcp = socket.connect(daemon.addr).await.unwrap();
    let config = wrun_tests::client::client_config(&site.ca_pem).unwrap();
    TlsConnector::from(Arc::clone(&config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads until the server closes the connection (at most `within`); returns
/// the response text and how long it took.
async fn read_to_close(
    stream: &mut TlsStream<tokio::net::TcpStream>,
    within: Duration,
) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open for {within:?}: {}",
        String::from_utf8_lossy(&out)
    );
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

/// Sends one whole request from `local` on a new connection (with
/// `Connection: close`); returns the status.
async fn request_from(site: &Site, daemon: &Daemon, local: IpAddr, head: &str, body: &[u8]) -> u16 {
    let mut stream = tls_from(site, daemon, local).await;
    let head = format!(
        "{head}Host: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    stream.flush().await.unwrap();
    let (text, _) = read_to_close(&mut stream, Duration::from_secs(20)).await;
    text.get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// The audit stream's entries with `action` (run after the daemon stopped).
fn audited(site: &Site, action: &str) -> Vec<Value> {
    let stream = site.ok(site.wrun().args(["audit", "stream"]));
    stream
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["action"] == action)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_signed_delivery_spelled_six_ways_makes_one_job() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let bundle = noop_bundle(&site, "three", 1);
    let daemon = site.start();
    let mut api = daemon.client().await;
    let webhook = api
        .deploy_with_webhook("team-a", "three", &token, &bundle, true)
        .await;
    let hook = webhook["id"].as_str().unwrap().to_string();
    let secret = webhook["secret"].as_str().unwrap().to_string();
    let body = br#"{"value":"once"}"#;
    let t = now();
    let mac = mac_hex(&secret, t, body);
    let spellings = [
        format!("t={t},v1={mac}"),
        format!("t={t},v1={mac},x=1"),
        format!("t={t},v1={}", mac.to_uppercase()),
        format!("t={t}, v1={mac}"),
        format!("t=0{t},v1={mac}"),
        format!("t={t},v1={mac},v1={mac}"),
    ];
    let mut jobs = Vec::new();
    for (i, header) in spellings.iter().enumerate() {
        let r = deliver(&mut api, &hook, body, Some(header)).await;
        let expected = if i == 0 {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        assert_eq!(r.status, expected, "{header}: {}", r.json);
        jobs.push(r.json["job"].as_str().unwrap().to_string());
    }
    assert!(jobs.iter().all(|j| *j == jobs[0]), "{jobs:?}");
    let r = api.get("/v1/workspaces/team-a/jobs", &token).await;
    assert_eq!(r.json["jobs"].as_array().unwrap().len(), 1, "{}", r.json);
    // A new delivery (another time) is a new job.
    let later = format!("t={},v1={}", t + 1, mac_hex(&secret, t + 1, body));
    let r = deliver(&mut api, &hook, body, Some(&later)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
}

/// A token with `real`'s id and checksum but another secret: it parses,
/// and names the real token, but does not verify.
fn forged_from(real: &str) -> String {
    let id = &real["wrun_pat_".len().."wrun_pat_".len() + 12];
    let body = format!("wrun_pat_{id}_{}", "A".repeat(43));
    let crc = crc32fast::hash(body.as_bytes()) & 0x3fff_ffff;
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    let checksum: String = (0..6)
        .map(|i| char::from(alphabet[((crc >> (5 * (5 - i))) & 31) as usize]))
        .collect();
    format!("{body}_{checksum}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secrets_naming_a_token_do_not_spend_its_budget() {
    let site = Site::new(
        "[limits]\nrequests_per_second = 1\nburst = 3\naddress_per_second = 1\naddress_burst = 6\n",
    );
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let forged = forged_from(&token);
    assert_ne!(forged, token);
    let daemon = site.start();
    let head = format!("GET /v1/whoami HTTP/1.1\r\nAuthorization: Bearer {forged}\r\n");
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(request_from(&site, &daemon, ATTACKER, &head, b"").await);
    }
    // The address's burst of six is refused as unknown (401), then the
    // address is limited (429); a second's refill may let one more through.
    assert_eq!(statuses[..6], [401; 6], "{statuses:?}");
    assert_eq!(statuses[9], 429, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [401, 429].contains(s)),
        "{statuses:?}"
    );
    // The token's owner, from their own address, has their whole budget.
    let mut api = daemon.client().await;
    for i in 0..3 {
        let r = api.get("/v1/whoami", &token).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.json);
    }
    // And their own budget still applies to them once verified.
    let r = api.get("/v1/whoami", &token).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_from_one_address_neither_flood_the_audit_log_nor_lock_out_the_sender() {
    let site = Site::new(
        "[limits]\nwebhook_per_second = 1\nwebhook_burst = 3\nfailures_per_second = 1\nfailure_burst = 3\n",
    );
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let bundle = noop_bundle(&site, "three", 1);
    let mut daemon = site.start();
    let mut api = daemon.client().await;
    let webhook = api
        .deploy_with_webhook("team-a", "three", &token, &bundle, true)
        .await;
    let hook = webhook["id"].as_str().unwrap().to_string();
    let secret = webhook["secret"].as_str().unwrap().to_string();
    let body = br#"{"value":"real"}"#;
    let wrong = format!("t={},v1={}", now(), "0".repeat(64));
    let head = format!(
        "POST /hooks/{hook} HTTP/1.1\r\nContent-Type: application/json\r\nX-Wrun-Signature: {wrong}\r\n"
    );
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(request_from(&site, &daemon, ATTACKER, &head, body).await);
    }
    // A burst of three failures is audited, then 429 (a second's refill may
    // let one more through).
    let refused = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(statuses[..3], [401; 3], "{statuses:?}");
    assert_eq!(statuses[7], 429, "{statuses:?}");
    assert!(refused <= 5, "{statuses:?}");
    // The real sender, from its own address, is not locked out.
    let t = now();
    let good = format!("t={t},v1={}", mac_hex(&secret, t, body));
    let r = deliver(&mut api, &hook, body, Some(&good)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    drop(api);
    daemon.terminate();
    assert_eq!(audited(&site, "webhook.signature").len(), refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_trickled_bodies_are_cut_off() {
    let site = Site::new("[limits]\nbody_read_timeout_secs = 1\n");
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let bundle = noop_bundle(&site, "three", 1);
    let daemon = site.start();
    let mut api = daemon.client().await;
    let webhook = api
        .deploy_with_webhook("team-a", "three", &token, &bundle, false)
        .await;
    let hook = webhook["id"].as_str().unwrap().to_string();
    let heads = [
        format!(
            "PUT /v1/workspaces/team-a/connections/slow HTTP/1.1\r\nAuthorization: Bearer {token}\r\n"
        ),
        format!("POST /hooks/{hook} HTTP/1.1\r\n"),
    ];
    for head in &heads {
        for trickle in [false, true] {
            let mut stream = tls_from(&site, &daemon, IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
            let head = format!(
                "{head}Host: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"value\""
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.flush().await.unwrap();
            let (text, took) = if trickle {
                // One byte every 200 ms: never idle for long, never done.
                let (mut reader, mut writer) = tokio::io::split(stream);
                let writing = tokio::spawn(async move {
                    for _ in 0..100 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if writer.write_all(b" ").await.is_err() || writer.flush().await.is_err() {
                            break;
                        }
                    }
                });
                let started = Instant::now();
                let mut out = Vec::new();
                let read =
                    tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut out))
                        .await;
                writing.abort();
                assert!(read.is_ok(), "{head}: a trickled body held the connection");
                (
                    String::from_utf8_lossy(&out).into_owned(),
                    started.elapsed(),
                )
            } else {
                read_to_close(&mut stream, Duration::from_secs(10)).await
            };
            assert!(took < Duration::from_secs(5), "{head}: took {took:?}");
            // The server closes with trickled bytes unread, which may reset
            // the connection before the 408 is read: closing is what counts.
            if !(trickle && text.is_empty()) {
                assert!(
                    text.starts_with("HTTP/1.1 408"),
                    "{head} (trickle: {trickle}): {text}"
                );
                assert!(text.contains("body_timeout"), "{text}");
            }
        }
    }
    // The daemon still serves everyone else.
    let r = api.get("/v1/whoami", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_removes_or_demotes_a_better_or_the_last_admin() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let alice = site.token("team-a", "alice", "*:write");
    let daemon = site.start();
    let mut api = daemon.client().await;
    // `people` may manage members and nothing else.
    let r = api
        .put(
            "/v1/workspaces/team-a/roles/people",
            &alice,
            &json!({ "permissions": ["members:write"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    site.member("team-a", "bob", "people");
    site.member("team-a", "carol", "operator");
    site.member("team-a", "dave", "people");
    let bob = site.token("team-a", "bob", "*:write");
    let member = |s: &str| format!("/v1/workspaces/team-a/members/{s}");

    // Bob may hand out `people`, but not to demote an operator or an admin.
    for target in ["carol", "alice"] {
        let r = api
            .put(&member(target), &bob, &json!({ "role": "people" }))
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{target}: {}", r.json);
        let r = api
            .send(Method::DELETE, &member(target), Some(&bob), None)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{target}: {}", r.json);
    }
    // His peers are within reach.
    let r = api
        .send(Method::DELETE, &member("dave"), Some(&bob), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);

    // The last admin can be neither removed nor demoted, even by herself.
    let r = api
        .send(Method::DELETE, &member("alice"), Some(&alice), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "last_admin", "{}", r.json);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("last admin"),
        "{}",
        r.json
    );
    let r = api
        .put(&member("alice"), &alice, &json!({ "role": "operator" }))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    // With a second admin, she can step down.
    let r = api
        .put(&member("erin"), &alice, &json!({ "role": "admin" }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .put(&member("alice"), &alice, &json!({ "role": "operator" }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    drop(api);
    drop(daemon);

    // The CLI keeps the last admin too.
    for args in [
        vec!["--workspace", "team-a", "member", "rm", "erin"],
        vec!["--workspace", "team-a", "member", "set", "erin", "analyst"],
    ] {
        let out = site.wrun().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("last admin"), "{args:?}: {stderr}");
    }
    let listed = site.ok(site
        .wrun()
        .args(["--workspace", "team-a", "member", "list"]));
    assert!(listed.contains("erin"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_hosts_over_a_public_suffix_are_refused() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let alice = site.token("team-a", "alice", "*:write");
    let daemon = site.start();
    let mut api = daemon.client().await;
    for host in ["*.herokuapp.com", "*.co.uk", "*.s3.amazonaws.com", "*.com"] {
        let r = api
            .put(
                "/v1/workspaces/team-a/connections/broad",
                &alice,
                &json!({ "value": "tok-Vq7Lm2Xz9Rp4Kd8Wn3Hs6", "hosts": [host] }),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{host}: {}", r.json);
        assert_eq!(r.json["error"]["code"], "invalid_host", "{}", r.json);
    }
    let r = api
        .put(
            "/v1/workspaces/team-a/connections/narrow",
            &alice,
            &json!({ "value": "tok-Vq7Lm2Xz9Rp4Kd8Wn3Hs6", "hosts": ["*.myapp.herokuapp.com"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    drop(api);
    drop(daemon);

    // The hosts may be refused before the value is read.
    let (ok, out) = support::with_stdin(
        site.wrun().args([
            "--workspace",
            "team-a",
            "connection",
            "add",
            "broad",
            "--host",
            "*.co.uk",
        ]),
        "tok-Vq7Lm2Xz9Rp4Kd8Wn3Hs6\n",
    );
    assert!(!ok);
    let stderr = out;
    assert!(stderr.contains("public suffix"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_secret_misuse_is_audited_past_the_cap() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    // Two steps each smuggle a placeholder 80 times (160 misuses, past the
    // old shared cap of 100); a third hammers a refused host 150 times.
    let mut text = String::from("[recipe]\nname = \"smuggler\"\n\n[trigger]\nkind = \"webhook\"\n");
    for (name, input) in [
        (
            "one",
            "{ url = \"https://api.example.com/x\", count = 80, keep_going = true, smuggle = \"api\" }",
        ),
        (
            "two",
            "{ url = \"https://api.example.com/x\", count = 80, keep_going = true, smuggle = \"api\" }",
        ),
        (
            "hammer",
            "{ url = \"https://not-granted.example/x\", count = 150, keep_going = true }",
        ),
    ] {
        text.push_str(&format!(
            "\n[[steps]]\nname = \"{name}\"\ncomponent = \"components/hostile.wasm\"\naction = \"many-requests\"\ninput = {input}\n\n[steps.grants]\nnet = [\"api.example.com\"]\nsecrets = {{ api = \"api\" }}\nenv = [\"unused\"]\n"
        ));
    }
    let smuggler = support::bundle(&site, "smuggler", "hostile.wasm", &text);
    let mut daemon = site.start();
    let mut api = daemon.client().await;
    let r = api.deploy("team-a", "smuggler", &token, &smuggler).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .put(
            "/v1/workspaces/team-a/connections/api",
            &token,
            &json!({ "value": "tok-Jb5Tc8Ny2Gf7Qm4Zr9Lw1", "hosts": ["api.example.com"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .post(
            "/v1/workspaces/team-a/recipes/smuggler/runs",
            &token,
            &json!({ "environment": "prod" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job("team-a", &job, &token).await;
    for (i, failed) in [80, 80, 150].into_iter().enumerate() {
        assert_eq!(detail["steps"][i]["output"]["failed"], failed, "{detail}");
    }
    drop(api);
    daemon.terminate();
    // Every misuse is audited (the runtime records each one, the daemon's
    // per-job cap is far above 160); refusals are recorded for the first 20
    // of a step, then counted in one entry (the runtime's step budget).
    assert_eq!(audited(&site, "secret.misuse").len(), 160);
    let refused = audited(&site, "egress.refused");
    assert_eq!(refused.len(), 21, "{refused:?}");
    assert!(
        refused[20]
            .to_string()
            .contains("130 more refused requests"),
        "{:?}",
        refused[20]
    );
    assert!(audited(&site, "secret.misuse.more").is_empty());
}
