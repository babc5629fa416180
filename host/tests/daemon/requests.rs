//! Hostile and careless requests: malformed and oversized input, request
//! rate limits, webhook signatures and idempotency, and the OpenAPI
//! document against the routes that really exist.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use sha2::Sha256;
use wrun_tests::DirectClient;

use crate::support::{Api, Reply, Site, noop_bundle};

/// A small body limit and generous request limits.
const CONFIG: &str = "[limits]\nmax_body_bytes = 4096\nmax_bundle_bytes = 262144\nrequests_per_second = 1000\nburst = 1000\naddress_per_second = 1000\naddress_burst = 1000\n";

/// Checks an error reply's status and code.
fn assert_error(r: &Reply, status: StatusCode, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.json);
    assert_eq!(r.json["error"]["code"], code, "{what}: {}", r.json);
    assert!(r.json["error"]["message"].is_string(), "{what}: {}", r.json);
}

/// A request with a raw body and content type.
fn raw(
    method: Method,
    path: &str,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// `X-Wrun-Signature` for `body` at `t`: HMAC-SHA256 keyed with the
/// secret's hex text, over `<t>.<body>`.
fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Delivers a webhook with optional signature and idempotency key.
async fn deliver(
    api: &mut Api,
    hook: &str,
    body: &[u8],
    signature: Option<&str>,
    key: Option<&str>,
) -> Reply {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("/hooks/{hook}"))
        .header("content-type", "application/json");
    if let Some(s) = signature {
        req = req.header("x-wrun-signature", s);
    }
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    api.raw(req.body(Full::new(Bytes::copy_from_slice(body))).unwrap())
        .await
}

async fn job_count(api: &mut Api, token: &str) -> usize {
    let r = api.get("/v1/workspaces/team-a/jobs", token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    r.json["jobs"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_input_is_refused_cleanly() {
    let site = Site::new(CONFIG);
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let bundle = noop_bundle(&site, "three", 1);
    let daemon = site.start();
    let mut api = daemon.client().await;
    let tokens = "/v1/workspaces/team-a/tokens";

    let r = api
        .raw(raw(
            Method::POST,
            tokens,
            &token,
            "application/json",
            b"{\"name\": ".to_vec(),
        ))
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "malformed_json",
        "truncated JSON",
    );
    let r = api
        .post(
            tokens,
            &token,
            &json!({ "name": 5, "scopes": ["*:read"], "expires_in": 60 }),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
        "wrong field type",
    );
    let r = api
        .post(
            tokens,
            &token,
            &json!({ "name": "x", "scopes": ["*:read"], "expires_in": 60, "admin": true }),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
        "unknown field",
    );
    let body = serde_json::to_vec(&json!({ "name": "x", "scopes": ["*:read"], "expires_in": 60 }))
        .unwrap();
    let r = api
        .raw(raw(
            Method::POST,
            tokens,
            &token,
            "text/plain",
            body.clone(),
        ))
        .await;
    assert_error(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "text/plain",
    );
    let big = json!({ "value": "v".repeat(5000), "hosts": ["api.github.test:*"] });
    let r = api
        .put("/v1/workspaces/team-a/connections/big", &token, &big)
        .await;
    assert_error(
        &r,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "5 kB body",
    );
    // The server may close a connection whose body it did not read.
    let mut api = daemon.client().await;
    let r = api.get("/v1/workspaces/team-a/connections", &token).await;
    assert_eq!(r.json["connections"], json!([]), "{}", r.json);

    // A 64 KiB header: refused (431) or the connection is closed.
    let big_header = Request::builder()
        .uri("/v1/workspaces/team-a/recipes")
        .header("authorization", format!("Bearer {token}"))
        .header("x-padding", "a".repeat(64 * 1024))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut direct = DirectClient::connect(daemon.addr, "127.0.0.1", &site.ca_pem)
        .await
        .unwrap();
    if let Ok((status, _, _)) = direct.send(big_header).await {
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    let mut fresh = daemon.client().await;
    let r = fresh.send(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);

    let r = fresh.get("/v1/nowhere", &token).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", "unknown route");
    assert_eq!(r.json["error"]["message"], "no such route");
    let r = fresh
        .send(
            Method::PATCH,
            "/v1/workspaces/team-a/recipes",
            Some(&token),
            None,
        )
        .await;
    assert_error(
        &r,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "PATCH",
    );

    // Bundles: not a bundle, and a bundle of another recipe.
    let r = fresh
        .raw(raw(
            Method::PUT,
            "/v1/workspaces/team-a/recipes/three",
            &token,
            "application/gzip",
            b"this is not a gzip tarball".to_vec(),
        ))
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_bundle",
        "not a bundle",
    );
    let r = fresh
        .raw(raw(
            Method::PUT,
            "/v1/workspaces/team-a/recipes/three",
            &token,
            "application/gzip",
            vec![0x1f; 300_000],
        ))
        .await;
    assert_error(
        &r,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "300 kB bundle",
    );
    // The server may close a connection whose body it did not read.
    let mut fresh = daemon.client().await;
    let r = fresh.deploy("team-a", "other", &token, &bundle).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "name_mismatch",
        "bundle of another recipe",
    );
    let r = fresh.get("/v1/workspaces/team-a/recipes", &token).await;
    assert_eq!(r.json["recipes"], json!([]), "{}", r.json);
    let r = fresh.deploy("team-a", "three", &token, &bundle).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_webhook_rates_are_limited() {
    let site = Site::new(
        "[limits]\nrequests_per_second = 1\nburst = 3\nwebhook_per_second = 1\nwebhook_burst = 2\n",
    );
    site.member("team-a", "alice", "admin");
    site.member("team-a", "carol", "analyst");
    let admin = site.token("team-a", "alice", "*:write");
    let carol = site.token("team-a", "carol", "*:read");
    let bundle = noop_bundle(&site, "three", 1);
    let daemon = site.start();
    let mut api = daemon.client().await;
    let webhook = api
        .deploy_with_webhook("team-a", "three", &admin, &bundle, false)
        .await;
    let hook = webhook["id"].as_str().unwrap().to_string();

    let mut statuses = Vec::new();
    let mut retry = None;
    for _ in 0..4 {
        let r = api.get("/v1/workspaces/team-a/recipes", &carol).await;
        statuses.push(r.status.as_u16());
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.json["error"]["code"], "rate_limited", "{}", r.json);
            retry = r
                .headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert!(retry.is_some_and(|s| s >= 1), "{retry:?}");

    let mut statuses = Vec::new();
    let mut retry = None;
    for i in 0..3 {
        let r = deliver(
            &mut api,
            &hook,
            format!("{{\"value\":\"{i}\"}}").as_bytes(),
            None,
            None,
        )
        .await;
        statuses.push(r.status.as_u16());
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            retry = r
                .headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        }
    }
    assert_eq!(statuses, [202, 202, 429]);
    assert!(retry.is_some_and(|s| s >= 1), "{retry:?}");
    // The limit is per subject: alice (third request) is not affected by
    // carol's, and the refused delivery created no job.
    assert_eq!(job_count(&mut api, &admin).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_signatures_and_idempotency_keys_are_enforced() {
    let site = Site::new(CONFIG);
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
    assert_eq!(secret.len(), 64);
    assert_eq!(webhook["signature_header"], "X-Wrun-Signature");
    assert!(
        webhook["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/hooks/{hook}"))
    );

    let body = br#"{"value":"signed"}"#;
    let t = now();
    let good = signature(&secret, t, body);
    let attacks: Vec<(&str, &[u8], Option<String>, &str)> = vec![
        ("no signature", body, None, "signature_missing"),
        (
            "wrong MAC",
            body,
            Some(signature(&format!("{secret}0"), t, body)),
            "signature_mismatch",
        ),
        (
            "body changed",
            br#"{"value":"forged"}"#,
            Some(good.clone()),
            "signature_mismatch",
        ),
        (
            "ten minutes old",
            body,
            Some(signature(&secret, t - 600, body)),
            "signature_outside_window",
        ),
        (
            "garbage",
            body,
            Some("v1=zz".to_string()),
            "signature_malformed",
        ),
    ];
    for (what, body, sig, code) in &attacks {
        let r = deliver(&mut api, &hook, body, sig.as_deref(), None).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, code, what);
    }
    assert_eq!(job_count(&mut api, &token).await, 0);
    let r = api.get("/v1/workspaces/team-a/audit", &token).await;
    let denied = r.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "webhook.signature" && e["outcome"] == "denied")
        .count();
    assert_eq!(denied, attacks.len(), "{}", r.json);

    // A good signature runs the job.
    let r = deliver(&mut api, &hook, body, Some(&good), None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job("team-a", &job, &token).await;
    assert_eq!(detail["steps"][0]["output"]["value"], "signed", "{detail}");

    // Idempotency: the same key gives the same job, once.
    let body = br#"{"value":"once"}"#;
    let sig = signature(&secret, now(), body);
    let r = deliver(&mut api, &hook, body, Some(&sig), Some("delivery-1")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let first = r.json["job"].as_str().unwrap().to_string();
    let r = deliver(&mut api, &hook, body, Some(&sig), Some("delivery-1")).await;
    assert!(r.status.is_success(), "{}", r.json);
    assert_eq!(r.json["job"], first.as_str(), "{}", r.json);
    assert_eq!(r.json["duplicate"], true, "{}", r.json);
    assert_eq!(job_count(&mut api, &token).await, 2);
    // A replay of a captured delivery with another (unsigned) key is still
    // the same delivery: signed webhooks are deduplicated by signature.
    let r = deliver(&mut api, &hook, body, Some(&sig), Some("delivery-2")).await;
    assert!(r.status.is_success(), "{}", r.json);
    assert_eq!(r.json["job"], first.as_str(), "{}", r.json);
    assert_eq!(r.json["duplicate"], true, "{}", r.json);
    let r = deliver(&mut api, &hook, body, Some(&sig), None).await;
    assert_eq!(r.json["job"], first.as_str(), "{}", r.json);
    assert_eq!(job_count(&mut api, &token).await, 2);
    // An oversized delivery is refused in the error format, without a job.
    let big = format!("{{\"value\":\"{}\"}}", "v".repeat(5000));
    let sig = signature(&secret, now(), big.as_bytes());
    let r = deliver(&mut api, &hook, big.as_bytes(), Some(&sig), None).await;
    assert_error(
        &r,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "5 kB delivery",
    );
    // The server may close a connection whose body it did not read.
    api = daemon.client().await;
    assert_eq!(job_count(&mut api, &token).await, 2);
    // A webhook that does not exist.
    let r = deliver(
        &mut api,
        "wh_00000000000000000000000000000000",
        body,
        Some(&sig),
        None,
    )
    .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", "unknown webhook");
}

/// Replaces `{param}` segments with `ws` for the workspace and `dummy`
/// otherwise.
fn concrete(path: &str, ws: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg == "{ws}" {
                ws.to_string()
            } else if seg.starts_with('{') {
                "dummy".to_string()
            } else {
                seg.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_exists() {
    let site = Site::new(CONFIG);
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let daemon = site.start();
    let mut api = daemon.client().await;
    let r = api.send(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc: Value = serde_json::from_slice(&r.raw).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, item) in paths {
        for (method, _) in item.as_object().unwrap() {
            let Ok(m) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            if !["GET", "POST", "PUT", "DELETE", "PATCH"].contains(&m.as_str()) {
                continue;
            }
            documented.push((m.as_str().to_string(), path.clone()));
            let body = matches!(m, Method::POST | Method::PUT).then(|| json!({}));
            let r = api
                .send(
                    m.clone(),
                    &concrete(path, "team-a"),
                    Some(&token),
                    body.as_ref(),
                )
                .await;
            let what = format!("{m} {path}: {} {}", r.status, r.json);
            assert!(
                !(r.status == StatusCode::NOT_FOUND
                    && r.json["error"]["message"] == "no such route"),
                "documented but not routed: {what}"
            );
            assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
            assert!(!r.status.is_server_error(), "{what}");
        }
    }
    // The document lists what the other tests use.
    for (method, path) in [
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("POST", "/hooks/{id}"),
        ("GET", "/v1/whoami"),
        ("PUT", "/v1/workspaces/{ws}/recipes/{name}"),
        ("POST", "/v1/workspaces/{ws}/recipes/{name}/webhooks"),
        ("POST", "/v1/workspaces/{ws}/recipes/{name}/runs"),
        ("GET", "/v1/workspaces/{ws}/jobs"),
        ("GET", "/v1/workspaces/{ws}/jobs/{id}"),
        ("POST", "/v1/workspaces/{ws}/jobs/delete"),
        ("GET", "/v1/workspaces/{ws}/connections"),
        ("PUT", "/v1/workspaces/{ws}/connections/{name}"),
        ("GET", "/v1/workspaces/{ws}/environments/{env}"),
        (
            "PUT",
            "/v1/workspaces/{ws}/environments/{env}/properties/{name}",
        ),
        (
            "PUT",
            "/v1/workspaces/{ws}/environments/{env}/bindings/{logical}",
        ),
        ("GET", "/v1/workspaces/{ws}/tokens"),
        ("POST", "/v1/workspaces/{ws}/tokens"),
        ("DELETE", "/v1/workspaces/{ws}/tokens/{id}"),
        ("GET", "/v1/workspaces/{ws}/members"),
        ("PUT", "/v1/workspaces/{ws}/members/{subject}"),
        ("PUT", "/v1/workspaces/{ws}/roles/{name}"),
        ("GET", "/v1/workspaces/{ws}/settings"),
        ("PUT", "/v1/workspaces/{ws}/settings"),
        ("GET", "/v1/workspaces/{ws}/audit"),
    ] {
        assert!(
            documented.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is not in the OpenAPI document"
        );
    }
    // And a route that is not documented does not exist.
    let r = api
        .get(&concrete("/v1/workspaces/{ws}/secrets", "team-a"), &token)
        .await;
    assert_eq!(r.json["error"]["message"], "no such route", "{}", r.json);
}
