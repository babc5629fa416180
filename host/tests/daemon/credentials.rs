//! Attacks on credentials: revoked, expired, misplaced, malformed, altered
//! and unknown API tokens, and forged JWTs. Every failure is a 401, is
//! audited with the client address and is counted in the metrics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::{Api, Reply, Site, noop_bundle, tempdir};

/// The sum of `wrun_auth_failures_total` over its labels.
async fn auth_failures(api: &mut Api) -> f64 {
    let r = api.send(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&r.raw).into_owned();
    text.lines()
        .filter(|l| l.starts_with("wrun_auth_failures_total"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Checks a 401 with the given code and the `WWW-Authenticate` header.
fn assert_unauthorized(r: &Reply, code: &str, what: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.json);
    assert_eq!(r.json["error"]["code"], code, "{what}: {}", r.json);
    assert_eq!(
        r.headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer"),
        "{what}"
    );
}

/// The `auth.failure` reasons audited from 127.0.0.1.
fn audited_failures(site: &Site) -> Vec<String> {
    site.audit_entries()
        .into_iter()
        .filter(|e| e["action"] == "auth.failure")
        .map(|e| {
            assert_eq!(e["source"], "127.0.0.1", "{e}");
            assert_eq!(e["outcome"], "denied", "{e}");
            e["detail"]["reason"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The lowercase base32 checksum of a token body, as the token format
/// documents it (low 30 bits of the CRC-32, most significant first).
fn checksum(body: &str) -> String {
    const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let crc = crc32fast::hash(body.as_bytes()) & 0x3fff_ffff;
    (0..6)
        .map(|i| BASE32[((crc >> (5 * (5 - i))) & 31) as usize] as char)
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_tokens_are_refused_audited_and_counted() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    site.member("team-a", "olga", "operator");
    let admin = site.token("team-a", "alice", "*:write");
    let by_api = site.token("team-a", "olga", "*:write");
    let by_cli = site.token("team-a", "olga", "*:read");
    let short = site
        .ok(site.wrun().args([
            "--workspace",
            "team-a",
            "token",
            "create",
            "--name",
            "short",
            "--owner",
            "olga",
            "--scope",
            "*:read",
            "--expires-in",
            "1s",
        ]))
        .trim()
        .to_string();
    let daemon = site.start();
    let mut api = daemon.client().await;
    let before = auth_failures(&mut api).await;
    let recipes = "/v1/workspaces/team-a/recipes";
    let mut expected = Vec::new();

    // Revoked through the API: the very next request fails.
    let r = api.get(recipes, &by_api).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let id = &by_api["wrun_pat_".len()..("wrun_pat_".len() + 12)];
    let r = api
        .send(
            Method::DELETE,
            &format!("/v1/workspaces/team-a/tokens/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);
    let r = api.get(recipes, &by_api).await;
    assert_unauthorized(&r, "token_revoked", "revoked through the API");
    expected.push("token_revoked");

    // Revoked through the CLI while the daemon runs.
    let r = api.get(recipes, &by_cli).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let id = &by_cli["wrun_pat_".len()..("wrun_pat_".len() + 12)];
    site.ok(site
        .wrun()
        .args(["--workspace", "team-a", "token", "revoke", id]));
    let r = api.get(recipes, &by_cli).await;
    assert_unauthorized(&r, "token_revoked", "revoked through the CLI");
    expected.push("token_revoked");

    // Expired.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = api.get(recipes, &short).await;
    assert_unauthorized(&r, "token_expired", "expired");
    expected.push("token_expired");

    // Used from an address outside its allowlist; then from inside one.
    for (allow, ok) in [("10.0.0.0/8", false), ("127.0.0.1/32", true)] {
        let r = api
            .post(
                "/v1/workspaces/team-a/tokens",
                &admin,
                &json!({ "name": "ip", "scopes": ["*:read"], "expires_in": 600, "allow_ips": [allow] }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        let token = r.json["token"].as_str().unwrap().to_string();
        let r = api.get(recipes, &token).await;
        if ok {
            assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        } else {
            assert_unauthorized(&r, "token_ip_not_allowed", "outside the allowlist");
            expected.push("token_ip_not_allowed");
        }
    }

    // Malformed, altered (checksum) and unknown but well-formed.
    let r = api.get(recipes, "wrun_pat_tooshort").await;
    assert_unauthorized(&r, "token_malformed", "malformed");
    expected.push("token_malformed");
    let mut altered = admin.clone().into_bytes();
    let at = "wrun_pat_".len() + 20;
    altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let r = api.get(recipes, &altered).await;
    assert_unauthorized(&r, "token_checksum_mismatch", "one character changed");
    expected.push("token_checksum_mismatch");
    // The checksum helper agrees with the daemon on a real token.
    assert_eq!(checksum(&admin[..65]), &admin[66..]);
    let body = format!("wrun_pat_{}_{}", "abcdefgh2345", "Q".repeat(43));
    let unknown = format!("{body}_{}", checksum(&body));
    let r = api.get(recipes, &unknown).await;
    assert_unauthorized(&r, "token_unknown", "unknown");
    expected.push("token_unknown");
    // A real id with another secret is just as unknown.
    let body = format!("{}_{}", &admin[..21], "Q".repeat(43));
    let forged = format!("{body}_{}", checksum(&body));
    let r = api.get(recipes, &forged).await;
    assert_unauthorized(&r, "token_unknown", "real id, forged secret");
    expected.push("token_unknown");

    // No credentials; a header that is not a bearer token.
    let r = api.send(Method::GET, recipes, None, None).await;
    assert_unauthorized(&r, "missing_credentials", "no Authorization");
    expected.push("missing_credentials");
    let req = http::Request::builder()
        .uri(recipes)
        .header("authorization", format!("Basic {admin}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = api.raw(req).await;
    assert_unauthorized(&r, "malformed_credentials", "Basic scheme");
    expected.push("malformed_credentials");
    // A JWT-looking value without a configured issuer.
    let r = api.get(recipes, "eyJhbGciOiJub25lIn0.e30.").await;
    assert_unauthorized(&r, "token_malformed", "JWT without an issuer");
    expected.push("token_malformed");

    // The admin token still works; every failure was counted and audited.
    let r = api.get(recipes, &admin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let after = auth_failures(&mut api).await;
    assert_eq!(after - before, expected.len() as f64);
    let mut audited = audited_failures(&site);
    let mut expected: Vec<String> = expected.into_iter().map(String::from).collect();
    audited.sort();
    expected.sort();
    assert_eq!(audited, expected);
    // No token text reaches the audit log or the daemon's logs.
    let log = site
        .audit_entries()
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    let logs = String::from_utf8_lossy(&site.logs()).into_owned();
    for secret in [&admin[21..65], &by_api[21..65], &altered[21..65]] {
        assert!(!log.contains(secret), "a token secret is in the audit log");
        assert!(!logs.contains(secret), "a token secret is in the logs");
    }
}

/// Claims of a good JWT for `workspace` and `role`.
fn claims(workspace: &str, role: &str) -> serde_json::Map<String, Value> {
    let now = now();
    json!({
        "iss": "https://idp.test",
        "aud": "wrun",
        "sub": "jane@example.test",
        "iat": now,
        "exp": now + 300,
        "wrun_workspace": workspace,
        "wrun_role": role,
    })
    .as_object()
    .unwrap()
    .clone()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &serde_json::Map<String, Value>) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

/// A site with a recipe deployed in team-a and team-b, and the daemon
/// started with `env`.
async fn jwt_site(jwt: &str, env: &[(&str, &str)]) -> (Site, crate::support::Daemon, Api) {
    let site = Site::new(jwt);
    site.member("team-a", "alice", "admin");
    let admin = site.token("team-a", "alice", "*:write");
    let bundle = noop_bundle(&site, "three", 1);
    let daemon = site.start_with(env);
    let mut api = daemon.client().await;
    let r = api.deploy("team-a", "three", &admin, &bundle).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    (site, daemon, api)
}

/// Checks what a good token of each kind may do.
async fn good_tokens_are_bounded(
    api: &mut Api,
    sign: impl Fn(&serde_json::Map<String, Value>) -> String,
) {
    let recipes = "/v1/workspaces/team-a/recipes";
    let analyst = sign(&claims("team-a", "analyst"));
    let r = api.get(recipes, &analyst).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["recipes"][0]["name"], "three", "{}", r.json);
    let r = api.get("/v1/whoami", &analyst).await;
    assert_eq!(r.json["subject"], "jwt:jane@example.test", "{}", r.json);
    assert_eq!(r.json["workspace"], "team-a", "{}", r.json);
    let r = api
        .send(
            Method::DELETE,
            "/v1/workspaces/team-a/recipes/three",
            Some(&analyst),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "forbidden");
    let r = api
        .post(
            "/v1/workspaces/team-a/recipes/three/webhooks",
            &analyst,
            &json!({ "environment": "prod" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    let operator = sign(&claims("team-a", "operator"));
    let r = api
        .post(
            "/v1/workspaces/team-a/recipes/three/webhooks",
            &operator,
            &json!({ "environment": "prod" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let r = api.get("/v1/workspaces/team-a/audit", &operator).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    let other = sign(&claims("team-b", "admin"));
    let r = api.get(recipes, &other).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.json);
    assert!(!String::from_utf8_lossy(&r.raw).contains("three"));
    let r = api.get("/v1/workspaces/team-b/recipes", &other).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    // A role that is not a built-in role and not mapped is refused.
    let r = api
        .get(recipes, &sign(&claims("team-a", "superuser")))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_es256_jwts_are_refused() {
    let keys = tempdir();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public_pem = pair.public_key_pem();
    std::fs::write(keys.join("idp.pem"), &public_pem).unwrap();
    let config = format!(
        "[jwt]\nissuer = \"https://idp.test\"\naudience = \"wrun\"\nalgorithm = \"ES256\"\nkey_file = \"{}\"\n",
        keys.join("idp.pem").display()
    );
    let (site, _daemon, mut api) = jwt_site(&config, &[]).await;
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let good = |c: &serde_json::Map<String, Value>| sign(Algorithm::ES256, &key, c);
    let before = auth_failures(&mut api).await;
    good_tokens_are_bounded(&mut api, good).await;

    let recipes = "/v1/workspaces/team-a/recipes";
    let base = claims("team-a", "admin");
    let mut attacks: Vec<(&str, String, &str)> = Vec::new();
    // alg none, hand-crafted.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&base).unwrap())
    );
    attacks.push(("alg none", none, "jwt_algorithm_mismatch"));
    // A good header and payload with the signature cut off.
    let cut = good(&base);
    let cut = format!("{}.", &cut[..cut.rfind('.').unwrap()]);
    attacks.push(("no signature", cut, "jwt_invalid_signature"));
    // Another key.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let other = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
    attacks.push((
        "wrong key",
        sign(Algorithm::ES256, &other, &base),
        "jwt_invalid_signature",
    ));
    // HS256 keyed with the public key's PEM text.
    attacks.push((
        "HS256 with the public key",
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(public_pem.as_bytes()),
            &base,
        ),
        "jwt_algorithm_mismatch",
    ));
    // A payload changed after signing.
    let signed = good(&claims("team-a", "analyst"));
    let parts: Vec<&str> = signed.split('.').collect();
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&base).unwrap()),
        parts[2]
    );
    attacks.push(("payload swapped", swapped, "jwt_invalid_signature"));
    let mut c = base.clone();
    c.insert("iat".into(), json!(now() - 600));
    c.insert("exp".into(), json!(now() - 120));
    attacks.push(("expired", good(&c), "jwt_expired"));
    let mut c = base.clone();
    c.remove("exp");
    attacks.push(("no exp", good(&c), "jwt_missing_claim"));
    let mut c = base.clone();
    c.insert("exp".into(), json!(now() + 7200));
    attacks.push(("lifetime too long", good(&c), "jwt_lifetime_too_long"));
    let mut c = base.clone();
    c.insert("aud".into(), json!("someone-else"));
    attacks.push(("wrong aud", good(&c), "jwt_wrong_audience"));
    let mut c = base.clone();
    c.insert("iss".into(), json!("https://evil.test"));
    attacks.push(("wrong iss", good(&c), "jwt_wrong_issuer"));
    let mut c = base.clone();
    c.insert("nbf".into(), json!(now() + 600));
    attacks.push(("not yet valid", good(&c), "jwt_not_yet_valid"));
    let mut c = base.clone();
    c.remove("wrun_workspace");
    attacks.push(("no workspace", good(&c), "jwt_missing_claim"));

    for (what, token, code) in &attacks {
        let r = api.get(recipes, token).await;
        assert_unauthorized(&r, code, what);
    }
    // One more from good_tokens_are_bounded (the unmapped role).
    let after = auth_failures(&mut api).await;
    assert_eq!(after - before, (attacks.len() + 1) as f64);
    let audited = audited_failures(&site);
    assert_eq!(audited.len(), attacks.len() + 1, "{audited:?}");
    for (what, _, code) in &attacks {
        assert!(audited.iter().any(|a| a == code), "{what}: {audited:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_jwts_need_the_secret_from_the_environment() {
    let secret = format!("{:064x}", rand::random::<u128>());
    let config = "[jwt]\nissuer = \"https://idp.test\"\naudience = \"wrun\"\nalgorithm = \"HS256\"\nsecret_env = \"WRUN_TEST_JWT_SECRET\"\n";
    let (site, _daemon, mut api) = jwt_site(config, &[("WRUN_TEST_JWT_SECRET", &secret)]).await;
    let key = EncodingKey::from_secret(secret.as_bytes());
    good_tokens_are_bounded(&mut api, |c| sign(Algorithm::HS256, &key, c)).await;

    let recipes = "/v1/workspaces/team-a/recipes";
    let base = claims("team-a", "admin");
    let wrong = EncodingKey::from_secret(format!("{secret}x").as_bytes());
    let r = api
        .get(recipes, &sign(Algorithm::HS256, &wrong, &base))
        .await;
    assert_unauthorized(&r, "jwt_invalid_signature", "wrong secret");
    let r = api.get(recipes, &sign(Algorithm::HS512, &key, &base)).await;
    assert_unauthorized(&r, "jwt_algorithm_mismatch", "HS512 with the secret");
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&base).unwrap())
    );
    let r = api.get(recipes, &none).await;
    assert_unauthorized(&r, "jwt_algorithm_mismatch", "alg none");
    let mut c = base.clone();
    c.insert("exp".into(), json!(now() - 120));
    c.insert("iat".into(), json!(now() - 600));
    let r = api.get(recipes, &sign(Algorithm::HS256, &key, &c)).await;
    assert_unauthorized(&r, "jwt_expired", "expired");
    // The secret is in no log.
    let logs = String::from_utf8_lossy(&site.logs()).into_owned();
    assert!(!logs.contains(&secret), "the HMAC secret is in the logs");
}
