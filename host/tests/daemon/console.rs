//! The web console over HTTPS without a browser: sessions, cookies, CSRF,
//! roles enforced by the API behind every form, sessions ended by token
//! revocation, member removal and the idle timeout.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;

use crate::support::{Api, Reply, Site, noop_bundle};

/// The value of `name="csrf"` in a page.
pub(crate) fn csrf_in(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field");
    let rest = &page[at + 19..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// `name=value` of a `Set-Cookie` header named `name`.
fn set_cookie<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

/// A console client: a connection and the cookies it holds.
pub(crate) struct Browserless {
    pub(crate) api: Api,
    pub(crate) cookies: Vec<String>,
}

impl Browserless {
    pub(crate) async fn request(
        &mut self,
        method: Method,
        path: &str,
        form: Option<&[(&str, &str)]>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("cookie", self.cookies.join("; "));
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let body = match form {
            Some(pairs) => {
                req = req.header("content-type", "application/x-www-form-urlencoded");
                let text: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{k}={}",
                            percent_encoding::utf8_percent_encode(
                                v,
                                percent_encoding::NON_ALPHANUMERIC
                            )
                        )
                    })
                    .collect();
                Bytes::from(text.join("&"))
            }
            None => Bytes::new(),
        };
        self.api.raw(req.body(Full::new(body)).unwrap()).await
    }

    pub(crate) async fn get(&mut self, path: &str) -> Reply {
        self.request(Method::GET, path, None, &[]).await
    }

    pub(crate) async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Reply {
        self.request(
            Method::POST,
            path,
            Some(form),
            &[("sec-fetch-site", "same-origin")],
        )
        .await
    }

    /// Signs in with an API token; returns the session cookie's header.
    pub(crate) async fn sign_in(&mut self, token: &str) -> String {
        let page = self.get("/ui/login").await;
        assert_eq!(page.status, StatusCode::OK);
        let login = set_cookie(&page, "__Host-wrun_login").expect("a login cookie");
        self.cookies = vec![cookie_pair(login)];
        let csrf = csrf_in(&String::from_utf8_lossy(&page.raw));
        let r = self
            .post("/ui/login", &[("token", token), ("csrf", &csrf)])
            .await;
        assert_eq!(
            r.status,
            StatusCode::SEE_OTHER,
            "{}",
            String::from_utf8_lossy(&r.raw)
        );
        assert_eq!(r.headers["location"], "/ui/jobs");
        let session = set_cookie(&r, "__Host-wrun_session")
            .expect("a session cookie")
            .to_string();
        self.cookies = vec![cookie_pair(&session)];
        session
    }

    /// The CSRF token of the signed-in session (from a page's form).
    pub(crate) async fn csrf(&mut self) -> String {
        let r = self.get("/ui/jobs").await;
        assert_eq!(r.status, StatusCode::OK);
        csrf_in(&String::from_utf8_lossy(&r.raw))
    }
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.raw).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_are_strict_and_every_form_is_the_apis_decision() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    site.member("team-a", "bob", "analyst");
    let admin = site.token("team-a", "alice", "*:write");
    let reader = site.token("team-a", "bob", "*:read");
    let bundle = noop_bundle(&site, "greet", 2);
    let daemon = site.start();
    let mut api = daemon.client().await;
    let r = api.deploy("team-a", "greet", &admin, &bundle).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);

    // Nothing without a session; the sign-in page is strict.
    let mut anon = Browserless {
        api: daemon.client().await,
        cookies: vec![],
    };
    let r = anon.get("/ui/jobs").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/ui/login");
    let r = anon.get("/ui/login").await;
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(r.headers["x-frame-options"], "DENY");
    // A sign-in form posted without the cookie its page set is refused.
    let csrf = csrf_in(&text(&r));
    let r = anon
        .post("/ui/login", &[("token", &admin), ("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A wrong token is refused and audited like a bearer's.
    let mut wrong = Browserless {
        api: daemon.client().await,
        cookies: vec![],
    };
    let page = wrong.get("/ui/login").await;
    wrong.cookies = vec![cookie_pair(set_cookie(&page, "__Host-wrun_login").unwrap())];
    let csrf = csrf_in(&text(&page));
    // The last character changed (to another one, whatever it was).
    let last = if admin.ends_with('x') { 'y' } else { 'x' };
    let forged = format!("{}{last}", &admin[..admin.len() - 1]);
    let r = wrong
        .post("/ui/login", &[("token", &forged), ("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/ui/login?error=token");
    assert!(set_cookie(&r, "__Host-wrun_session").is_none());
    // The sign-in page shows only its own words for an error code.
    let r = wrong.get("/ui/login?error=Call+0800+evil").await;
    assert!(!text(&r).contains("evil"));

    // The admin signs in: the cookie is HttpOnly, Secure, SameSite=Strict.
    let mut alice = Browserless {
        api: daemon.client().await,
        cookies: vec![],
    };
    let session = alice.sign_in(&admin).await;
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(session.contains(flag), "{session}");
    }
    assert!(!session.contains(&admin), "the cookie is not the token");
    let r = alice.get("/ui/jobs").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.contains_key("server-timing"));
    assert_eq!(r.headers["cache-control"], "no-store");
    let csrf = alice.csrf().await;

    // A bundle larger than a form (a JavaScript step, megabytes) deploys
    // through the console's upload as through the API.
    let js = crate::support::bundle_of(
        &site,
        "big",
        &wrun_tests::guests_js_dir().join("noop.wasm"),
        "[recipe]\nname = \"big\"\n\n[trigger]\nkind = \"webhook\"\n\n[[steps]]\nname = \"s0\"\ncomponent = \"components/noop.wasm\"\naction = \"noop\"\n",
    );
    let gz = std::fs::read(&js).unwrap();
    assert!(gz.len() > 2 << 20, "the bundle is {} bytes", gz.len());
    let boundary = "wrunboundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, value) in [("csrf", csrf.as_str()), ("name", "big")] {
        body.extend(
            format!(
                "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend(
        format!("--{boundary}\r\ncontent-disposition: form-data; name=\"bundle\"; filename=\"big.tgz\"\r\ncontent-type: application/gzip\r\n\r\n")
            .as_bytes(),
    );
    body.extend(&gz);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let req = Request::builder()
        .method(Method::POST)
        .uri("/ui/recipes")
        .header("host", "127.0.0.1")
        .header("cookie", alice.cookies.join("; "))
        .header("sec-fetch-site", "same-origin")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = alice.api.raw(req).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    assert_eq!(r.headers["location"], "/ui/recipes/big");

    // Run a job from the recipe page's form; see it finish.
    let r = alice
        .post(
            "/ui/recipes/greet/run",
            &[
                ("csrf", &csrf),
                ("environment", "prod"),
                ("input", "{\"value\":\"hi\"}"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let job_page = r.headers["location"].to_str().unwrap().to_string();
    let job = job_page.trim_start_matches("/ui/jobs/").to_string();
    let detail = api.wait_job("team-a", &job, &admin).await;
    assert_eq!(detail["state"], "succeeded", "{detail}");
    let r = alice.get(&job_page).await;
    assert!(text(&r).contains("succeeded"), "{}", text(&r));
    // The chart counts it.
    let stats = api
        .get(
            "/v1/workspaces/team-a/jobs/stats?since=0&bucket_ms=3600000",
            &admin,
        )
        .await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.json);
    assert_eq!(stats.json["buckets"][0]["total"], 1, "{}", stats.json);
    let chart = alice.get("/ui/jobs/chart.svg").await;
    assert_eq!(chart.headers["content-type"], "image/svg+xml");
    assert!(text(&chart).contains("1 runs"), "{}", text(&chart));

    // Forms without the session's CSRF token, or sent from another site,
    // change nothing.
    let r = alice
        .post(&format!("/ui/jobs/{job}/rerun"), &[("csrf", "forged")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = alice
        .request(
            Method::POST,
            &format!("/ui/jobs/{job}/rerun"),
            Some(&[("csrf", csrf.as_str())]),
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = alice
        .request(
            Method::POST,
            &format!("/ui/jobs/{job}/rerun"),
            Some(&[("csrf", csrf.as_str())]),
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let jobs = api.get("/v1/workspaces/team-a/jobs", &admin).await;
    assert_eq!(
        jobs.json["jobs"].as_array().unwrap().len(),
        1,
        "no rerun happened"
    );

    // The analyst sees no write form, and posting one anyway is refused by
    // the API: no token is created, no job rerun.
    let mut bob = Browserless {
        api: daemon.client().await,
        cookies: vec![],
    };
    bob.sign_in(&reader).await;
    let page = bob.get("/ui/recipes").await;
    assert_eq!(page.status, StatusCode::OK, "{}", text(&page));
    assert!(!text(&page).contains("Deploy a bundle"));
    let page = bob.get(&job_page).await;
    assert!(text(&page).contains("succeeded"));
    assert!(
        !text(&page).contains("Rerun"),
        "no write button for an analyst"
    );
    // A page the role may not read says so (the API's 403), and its
    // section is not in the navigation.
    let tokens_page = bob.get("/ui/tokens").await;
    assert_eq!(tokens_page.status, StatusCode::FORBIDDEN);
    assert!(!text(&tokens_page).contains("href=\"/ui/tokens\""));
    let bob_csrf = csrf_in(&text(&page));
    let r = bob
        .post(
            "/ui/tokens",
            &[
                ("csrf", &bob_csrf),
                ("name", "mine"),
                ("scopes", "*:write"),
                ("expires_in", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    let r = bob
        .post(&format!("/ui/jobs/{job}/rerun"), &[("csrf", &bob_csrf)])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    let tokens = api.get("/v1/workspaces/team-a/tokens", &admin).await;
    assert_eq!(tokens.json["tokens"].as_array().unwrap().len(), 2);
    let jobs = api.get("/v1/workspaces/team-a/jobs", &admin).await;
    assert_eq!(jobs.json["jobs"].as_array().unwrap().len(), 1);

    // The admin reruns through the console.
    let r = alice
        .post(&format!("/ui/jobs/{job}/rerun"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let jobs = api.get("/v1/workspaces/team-a/jobs", &admin).await;
    assert_eq!(jobs.json["jobs"].as_array().unwrap().len(), 2);

    // Revoking bob's token ends his session at his next request.
    let bob_id = tokens.json["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["owner"] == "bob")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = api
        .send(
            Method::DELETE,
            &format!("/v1/workspaces/team-a/tokens/{bob_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert!(r.status.is_success(), "{}", r.json);
    // (the revocation deleted it in its own transaction).
    let r = bob.get("/ui/jobs").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/ui/login?ended=1");

    // A session unused past the workspace's idle timeout is refused.
    let conn = rusqlite::Connection::open(site.db()).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    conn.execute(
        "UPDATE console_sessions SET last_seen = last_seen - 1900000",
        [],
    )
    .unwrap();
    drop(conn);
    let r = alice.get("/ui/jobs").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/ui/login?ended=idle");
    let r = alice.get("/ui/jobs").await;
    assert_eq!(
        r.headers["location"], "/ui/login?ended=1",
        "the session is gone"
    );

    // Removing a member ends their sessions at once.
    site.member("team-a", "dave", "operator");
    let dave_token = site.token("team-a", "dave", "*:write");
    let mut dave = Browserless {
        api: daemon.client().await,
        cookies: vec![],
    };
    dave.sign_in(&dave_token).await;
    assert_eq!(dave.get("/ui/jobs").await.status, StatusCode::OK);
    let r = api
        .send(
            Method::DELETE,
            "/v1/workspaces/team-a/members/dave",
            Some(&admin),
            None,
        )
        .await;
    assert!(r.status.is_success(), "{}", r.json);
    let r = dave.get("/ui/jobs").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/ui/login?ended=1");

    // Tokens and members through their forms: a token is shown once, then
    // only its id; revoking and role changes are the API's.
    let mut frank = Browserless {
        api: daemon.client().await,
        cookies: vec![],
    };
    site.member("team-a", "frank", "admin");
    frank
        .sign_in(&site.token("team-a", "frank", "*:write"))
        .await;
    let fcsrf = frank.csrf().await;
    let r = frank
        .post(
            "/ui/tokens",
            &[
                ("csrf", &fcsrf),
                ("name", "ci"),
                ("scopes", "jobs:read"),
                ("expires_in", "7"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let shown = text(&r);
    let at = shown
        .find("value=\"wrun_pat_")
        .expect("the new token, once")
        + 7;
    let new_token: String = shown[at..].chars().take_while(|c| *c != '"').collect();
    let r = api.get("/v1/workspaces/team-a/jobs", &new_token).await;
    assert_eq!(r.status, StatusCode::OK, "the token works");
    let list = frank.get("/ui/tokens").await;
    assert!(
        !text(&list).contains(&new_token),
        "a token is never shown again"
    );
    let listed = api.get("/v1/workspaces/team-a/tokens", &admin).await;
    let id = listed.json["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = frank
        .post(&format!("/ui/tokens/{id}/revoke"), &[("csrf", &fcsrf)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let r = api.get("/v1/workspaces/team-a/jobs", &new_token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = frank
        .post(
            "/ui/members",
            &[("csrf", &fcsrf), ("subject", "grace"), ("role", "analyst")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    assert!(text(&frank.get("/ui/members").await).contains("grace"));
    let r = frank
        .post("/ui/members/grace/remove", &[("csrf", &fcsrf)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    assert!(!text(&frank.get("/ui/members").await).contains("grace"));

    // Environments and settings through their forms; what the API refuses
    // (an invalid name, a timeout out of bounds, cancelling no job)
    // shows the API's refusal.
    let r = frank
        .post(
            "/ui/environments/prod",
            &[
                ("csrf", &fcsrf),
                ("op", "property"),
                ("name", "region"),
                ("value", "eu-west"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let r = frank
        .post(
            "/ui/environments/prod",
            &[
                ("csrf", &fcsrf),
                ("op", "bind"),
                ("name", "crm"),
                ("value", "crm-prod"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let r = frank
        .post(
            "/ui/environments/prod",
            &[
                ("csrf", &fcsrf),
                ("op", "bind"),
                ("name", "crm"),
                ("value", "not a name!"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", text(&r));
    let env = api
        .get("/v1/workspaces/team-a/environments/prod", &admin)
        .await;
    assert_eq!(env.json["properties"]["region"], "eu-west", "{}", env.json);
    assert_eq!(env.json["bindings"]["crm"], "crm-prod", "{}", env.json);
    assert!(text(&frank.get("/ui/environments?env=prod").await).contains("eu-west"));
    let r = frank
        .post("/ui/settings", &[("csrf", &fcsrf), ("idle_minutes", "45")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let settings = api.get("/v1/workspaces/team-a/settings", &admin).await;
    assert_eq!(settings.json["session_idle_secs"], 2700);
    let r = frank
        .post("/ui/settings", &[("csrf", &fcsrf), ("idle_minutes", "0")])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", text(&r));
    let r = frank
        .post(
            "/ui/jobs/job_00000000000000000000000000000000/cancel",
            &[("csrf", &fcsrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(text(&r).contains("role=\"alert\""));

    // A session spends its token's request budget: a flood is answered 429.
    let mut eve = Browserless {
        api: daemon.client().await,
        cookies: vec![],
    };
    eve.sign_in(&admin).await;
    let mut limited = 0;
    for _ in 0..250 {
        let r = eve.get("/ui/jobs").await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers.contains_key("retry-after"));
            limited += 1;
        }
    }
    assert!(limited > 0, "no request was limited");

    // Every step is in the audit log, with the console's actions under the
    // caller's name.
    let audit = site.audit_entries();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert!(
        actions.contains(&("console.sign_in", "alice")),
        "{actions:?}"
    );
    assert!(actions.contains(&("console.sign_in", "bob")));
    assert!(actions.contains(&("job.run", "alice")));
    assert!(actions.contains(&("job.rerun", "alice")), "{actions:?}");
    assert!(actions.contains(&("console.session_end", "alice")));
    assert!(audit.iter().any(|e| e["action"] == "auth.failure"));
}

/// The server time of a console answer (`Server-Timing: app;dur=...`).
fn server_ms(r: &Reply) -> f64 {
    let v = r.headers["server-timing"].to_str().unwrap();
    v.trim_start_matches("app;dur=").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_jobs_and_ten_thousand_log_lines_stay_fast() {
    // Limits that let one client measure hundreds of pages in a row (the
    // console spends its token's request budget, as a bearer would).
    let site = Site::new(
        "[limits]\nrequests_per_second = 10000\nburst = 10000\naddress_per_second = 10000\naddress_burst = 10000\n",
    );
    site.member("team-a", "alice", "admin");
    let admin = site.token("team-a", "alice", "*:write");
    let text_manifest = "[recipe]\nname = \"chatty\"\n\n[trigger]\nkind = \"webhook\"\n\n\
        [[steps]]\nname = \"talk\"\ncomponent = \"components/hostile.wasm\"\naction = \"log-flood\"\n\
        input = { count = 10000, len = 60 }\n\n[steps.grants]\nnet = [\"api.example.com\"]\n\
        secrets = { api = \"api\" }\nenv = [\"unused\"]\n";
    let bundle = crate::support::bundle(&site, "chatty", "hostile.wasm", text_manifest);
    let daemon = site.start();
    let mut api = daemon.client().await;
    let r = api.deploy("team-a", "chatty", &admin, &bundle).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .put(
            "/v1/workspaces/team-a/connections/api",
            &admin,
            &serde_json::json!({ "value": "tok-Jb5Tc8Ny2Gf7Qm4Zr9Lw1", "hosts": ["api.example.com"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .post(
            "/v1/workspaces/team-a/recipes/chatty/runs",
            &admin,
            &serde_json::json!({ "environment": "prod" }),
        )
        .await;
    let job = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job("team-a", &job, &admin).await;
    assert_eq!(detail["state"], "succeeded", "{detail}");

    let mut alice = Browserless {
        api: daemon.client().await,
        cookies: vec![],
    };
    alice.sign_in(&admin).await;

    // A job with 10,000 log lines: 200 lines a page, every page reachable.
    let r = alice.get(&format!("/ui/jobs/{job}")).await;
    assert_eq!(r.status, StatusCode::OK);
    let page = text(&r);
    assert!(
        page.contains("Logs (10000 lines)"),
        "{}",
        &page[..page.len().min(2000)]
    );
    assert_eq!(page.matches("<li><span class=\"muted\">talk").count(), 200);
    assert!(page.contains("page 1 of 50"));
    let last = alice.get(&format!("/ui/jobs/{job}?log_page=49")).await;
    assert!(text(&last).contains("page 50 of 50"));
    assert_eq!(
        text(&last)
            .matches("<li><span class=\"muted\">talk")
            .count(),
        200
    );
    let mut job_times: Vec<f64> = Vec::new();
    for i in 0..20 {
        let r = alice.get(&format!("/ui/jobs/{job}?log_page={i}")).await;
        assert_eq!(r.status, StatusCode::OK);
        job_times.push(server_ms(&r));
    }

    // A million job records in the workspace (written straight into the
    // database: the listing never opens their payloads), with failures
    // and ten recipes.
    let conn = rusqlite::Connection::open(site.db()).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    let started = std::time::Instant::now();
    conn.execute_batch(
        "BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
         INSERT INTO jobs (id, workspace, recipe, environment, state, trigger_kind, payload, created_at, started_at, finished_at)
         SELECT printf('job_seed_%08d', i), 'team-a', 'r' || (i % 10), 'prod',
                CASE WHEN i % 997 = 0 THEN 'failed' ELSE 'succeeded' END, 'webhook', x'00',
                (unixepoch() * 1000) - i * 500, NULL, NULL FROM n;
         COMMIT;",
    )
    .unwrap();
    eprintln!("seeded a million jobs in {:?}", started.elapsed());
    drop(conn);
    // A new connection: the daemon may have closed the idle one meanwhile.
    alice.api = daemon.client().await;

    let variants = [
        "/ui/jobs",
        "/ui/jobs?state=failed",
        "/ui/jobs?recipe=r3",
        "/ui/jobs?hours=2",
        "/ui/jobs?recipe=r7&state=failed",
        "/ui/jobs?before=job_seed_00500000",
    ];
    let mut times: Vec<f64> = Vec::new();
    let mut per_variant = std::collections::BTreeMap::new();
    for round in 0..40 {
        for v in variants {
            let r = alice.get(v).await;
            assert_eq!(r.status, StatusCode::OK, "{v}");
            if round == 0 {
                // Every variant finds a full page.
                assert_eq!(
                    text(&r).matches("<tr><td><a class=\"mono\"").count(),
                    50,
                    "{v}"
                );
            }
            times.push(server_ms(&r));
            per_variant
                .entry(v)
                .or_insert_with(Vec::new)
                .push(server_ms(&r));
        }
    }
    for (v, t) in &per_variant {
        let max = t.iter().copied().fold(0.0, f64::max);
        eprintln!("{v}: max {max:.1} ms");
    }
    let mut chart = Vec::new();
    for _ in 0..5 {
        let r = alice.get("/ui/jobs/chart.svg").await;
        assert_eq!(r.status, StatusCode::OK);
        chart.push(server_ms(&r));
    }
    eprintln!("the jobs chart over 1M jobs: {chart:?} ms");
    times.sort_by(f64::total_cmp);
    job_times.sort_by(f64::total_cmp);
    let p99 = times[times.len() * 99 / 100];
    let p50 = times[times.len() / 2];
    eprintln!(
        "jobs page over 1M jobs: p50 {p50:.1} ms, p99 {p99:.1} ms; job page of 10,000 log lines: p50 {:.1} ms, max {:.1} ms",
        job_times[job_times.len() / 2],
        job_times[job_times.len() - 1]
    );
    assert!(p99 < 100.0, "p99 {p99} ms");
    assert!(job_times[job_times.len() - 1] < 1000.0, "{job_times:?}");
}

/// A site whose console signs in through `idp`, and the daemon's
/// environment that reaches it.
fn oidc_site(
    idp: &wrun_tests::oidc::OidcProvider,
    pki: &wrun_tests::TestPki,
) -> (Site, Vec<(String, String)>) {
    let site = Site::new(&format!(
        "[console.oidc]\nissuer = \"{}\"\nclient_id = \"wrun-console\"\nclient_secret_env = \"WRUN_TEST_OIDC_SECRET\"\n",
        idp.issuer()
    ));
    let ca = site.dir.join("idp-ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let env = vec![
        ("WRUN_CA_FILE".to_string(), ca.display().to_string()),
        ("WRUN_ALLOW_RANGES".to_string(), "127.0.0.0/8".to_string()),
        ("WRUN_TEST_OIDC_SECRET".to_string(), OIDC_SECRET.to_string()),
    ];
    (site, env)
}

const OIDC_SECRET: &str = "oidc-client-secret-Vq7Lx2Pd9Kr4Tz";

/// Starts a sign-in at the daemon, lets the provider answer, and returns
/// the browser and the callback path the provider sent it to.
async fn start_oidc(
    daemon: &crate::support::Daemon,
    idp: &wrun_tests::oidc::OidcProvider,
) -> (Browserless, String) {
    let mut b = Browserless {
        api: daemon.client().await,
        cookies: vec![],
    };
    let r = b.get("/ui/login/oidc").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", text(&r));
    let to = r.headers["location"].to_str().unwrap().to_string();
    assert!(to.starts_with(&idp.issuer()), "{to}");
    let binding = set_cookie(&r, "__Host-wrun_oidc").expect("a flow cookie");
    assert!(binding.contains("SameSite=Lax") && binding.contains("HttpOnly"));
    b.cookies = vec![cookie_pair(binding)];
    let back = idp.authorize(&to).await.unwrap();
    let path = back.strip_prefix("https://127.0.0.1").unwrap().to_string();
    assert!(path.starts_with("/ui/login/oidc/callback?"), "{path}");
    (b, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_connect_sign_in_checks_every_part_of_the_id_token() {
    use wrun_tests::oidc::{IdTokenTamper, OidcProvider};
    let pki = wrun_tests::TestPki::new(&["localhost"]);
    let idp = OidcProvider::start(&pki, "wrun-console", OIDC_SECRET).await;
    let (site, env) = oidc_site(&idp, &pki);
    site.member("team-a", "alice", "admin");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let daemon = site.start_with(&env);

    // A sound sign-in: the callback sets the session and continues with a
    // page of its own (a Strict cookie is not sent on the provider's
    // redirect).
    idp.set_user(serde_json::json!({
        "sub": "carol", "email": "carol@example.test",
        "wrun_workspace": "team-a", "wrun_role": "operator"
    }));
    let (mut carol, callback) = start_oidc(&daemon, &idp).await;
    let params = idp.authorize_params();
    let asked: std::collections::HashMap<_, _> = params.last().unwrap().iter().cloned().collect();
    assert_eq!(asked["code_challenge_method"], "S256");
    assert!(asked["scope"].split(' ').any(|s| s == "openid"));
    assert!(asked["nonce"].len() >= 43 && asked["state"].len() >= 43);
    let r = carol.get(&callback).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    assert!(text(&r).contains("url=/ui/jobs"));
    let session = set_cookie(&r, "__Host-wrun_session")
        .expect("a session")
        .to_string();
    assert!(session.contains("SameSite=Strict"));
    carol.cookies = vec![cookie_pair(&session)];
    let r = carol.get("/ui/jobs").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(text(&r).contains("oidc:carol"));
    // The operator may not read the audit log: the API refuses the page.
    assert_eq!(carol.get("/ui/audit").await.status, StatusCode::FORBIDDEN);

    // The same callback again: the flow was used.
    let mut replay = Browserless {
        api: daemon.client().await,
        cookies: carol.cookies.clone(),
    };
    let r = replay.get(&callback).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(set_cookie(&r, "__Host-wrun_session").is_none());

    // A flow finished in another browser (without the flow cookie) is
    // refused, and spent.
    let (_, stolen) = start_oidc(&daemon, &idp).await;
    let mut other = Browserless {
        api: daemon.client().await,
        cookies: vec![],
    };
    let r = other.get(&stolen).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/ui/login?error=sso_browser");
    assert!(set_cookie(&r, "__Host-wrun_session").is_none());

    // Every spoiled ID token is refused, and no session starts.
    for tamper in [
        IdTokenTamper::WrongNonce,
        IdTokenTamper::WrongAudience,
        IdTokenTamper::WrongIssuer,
        IdTokenTamper::Expired,
        IdTokenTamper::ForeignKey,
        IdTokenTamper::AlgNone,
    ] {
        idp.set_tamper(tamper);
        let (mut b, callback) = start_oidc(&daemon, &idp).await;
        let r = b.get(&callback).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{tamper:?}");
        let to = r.headers["location"].to_str().unwrap();
        assert_eq!(to, "/ui/login?error=sso", "{tamper:?}");
        assert!(
            set_cookie(&r, "__Host-wrun_session").is_none(),
            "{tamper:?}"
        );
    }
    idp.set_tamper(IdTokenTamper::None);

    // A role the workspace does not have is refused.
    idp.set_user(
        serde_json::json!({ "sub": "mallory", "wrun_workspace": "team-a", "wrun_role": "root" }),
    );
    let (mut b, callback) = start_oidc(&daemon, &idp).await;
    let r = b.get(&callback).await;
    assert!(set_cookie(&r, "__Host-wrun_session").is_none());

    // No client secret, code or token in the audit log or the logs.
    drop(daemon);
    let audit = site.audit_entries();
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "console.sign_in" && e["actor"] == "oidc:carol")
    );
    assert!(
        audit
            .iter()
            .filter(|e| e["action"] == "auth.failure" && e["target"] == "console")
            .count()
            >= 8
    );
    let mut everything = serde_json::to_vec(&audit).unwrap();
    everything.extend(site.logs());
    everything.extend(site.db_bytes());
    let hay = String::from_utf8_lossy(&everything);
    assert!(!hay.contains(OIDC_SECRET));
    for token in idp
        .issued_id_tokens()
        .iter()
        .chain(idp.issued_access_tokens().iter())
    {
        assert!(!hay.contains(token.as_str()));
    }
}

/// A free loopback port (for a daemon whose public URL must name it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The browser's page: its source and what it shows as text.
async fn seen(c: &fantoccini::Client) -> (String, String) {
    let source = c.source().await.unwrap();
    let text = c
        .execute(
            "return document.body ? document.body.innerText : ''",
            vec![],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_string();
    (source, text)
}

/// Waits until the browser is at a URL ending with `suffix`.
async fn wait_at(c: &fantoccini::Client, suffix: &str) -> String {
    for _ in 0..100 {
        let url = c.current_url().await.unwrap().to_string();
        if url.ends_with(suffix) || url.contains(&format!("{suffix}?")) {
            return url;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "the browser is at {}, not {suffix}",
        c.current_url().await.unwrap()
    );
}

/// Waits until the job page the browser shows says `state`.
async fn wait_state(c: &fantoccini::Client, state: &str) {
    use fantoccini::Locator;
    for _ in 0..100 {
        if let Ok(e) = c.find(Locator::Css("#job-state")).await
            && e.text().await.unwrap_or_default() == state
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        c.refresh().await.unwrap();
    }
    panic!(
        "the job did not reach {state}: {}",
        c.source().await.unwrap()
    );
}

/// Fills the field `css` with `value`.
async fn fill(c: &fantoccini::Client, css: &str, value: &str) {
    let e = c.find(fantoccini::Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn click(c: &fantoccini::Client, css: &str) {
    c.find(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|_| panic!("no {css}"))
        .click()
        .await
        .unwrap();
}

/// Clicks a form's button and waits for the page the form leads to, even
/// when it is at the same address as the form's (a redirect back to it).
async fn submit(c: &fantoccini::Client, css: &str) {
    c.execute("document.documentElement.dataset.before = 'submit'", vec![])
        .await
        .unwrap();
    click(c, css).await;
    for _ in 0..100 {
        let stale = c
            .execute(
                "return document.documentElement.dataset.before === 'submit'",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        if !stale {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("submitting {css} led to no new page");
}

/// Saves a screenshot under `WRUN_SCREENSHOTS` (when set).
async fn screenshot(browser: &wrun_tests::browser::Browser, name: &str) {
    if let Ok(dir) = std::env::var("WRUN_SCREENSHOTS") {
        let png = browser.screenshot_png().await.unwrap();
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_headless_chromium() {
    use wrun_tests::browser::Browser;
    use wrun_tests::oidc::OidcProvider;
    let pki = wrun_tests::TestPki::new(&["localhost"]);
    let idp = OidcProvider::start(&pki, "wrun-console", OIDC_SECRET).await;
    let (site, mut env) = oidc_site(&idp, &pki);
    site.member("team-a", "alice", "admin");
    site.member("team-a", "bob", "analyst");
    let admin = site.token("team-a", "alice", "*:write");
    let analyst = site.token("team-a", "bob", "*:read");
    let port = free_port();
    let base = format!("https://127.0.0.1:{port}");
    env.push(("WRUN_LISTEN".into(), format!("127.0.0.1:{port}")));
    env.push(("WRUN_PUBLIC_URL".into(), base.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let daemon = site.start_with(&env);
    let bundle = noop_bundle(&site, "greet", 3);
    let canaries = [
        "cnry-first-Hq8Vd3Lm2Zx7Rt5Wk",
        "cnry-rotated-Pj4Ns9Bc6Gy1Fe3",
        OIDC_SECRET,
    ];
    let mut api = daemon.client().await;
    // A webhook's signing secret is a trigger value nobody may see again.
    let r = api.deploy("team-a", "greet", &admin, &bundle).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let hook = api
        .post(
            "/v1/workspaces/team-a/recipes/greet/webhooks",
            &admin,
            &serde_json::json!({ "environment": "prod", "signed": true }),
        )
        .await;
    assert_eq!(hook.status, StatusCode::CREATED, "{}", hook.json);
    let hook_secret = hook.json["secret"].as_str().unwrap().to_string();

    let browser = Browser::start().await.unwrap();
    let c = browser.client();
    let mut pages: Vec<(String, String)> = Vec::new();
    let mut visited: Vec<String> = Vec::new();

    // Sign in through the identity provider as an admin.
    idp.set_user(serde_json::json!({
        "sub": "carol", "wrun_workspace": "team-a", "wrun_role": "admin"
    }));
    c.goto(&format!("{base}/ui/login")).await.unwrap();
    screenshot(&browser, "console-sign-in").await;
    click(c, "a.button").await;
    wait_at(c, "/ui/jobs").await;
    pages.push(seen(c).await);

    // Create a connection with the write-only form.
    c.goto(&format!("{base}/ui/connections")).await.unwrap();
    fill(c, "#c-name", "crm").await;
    fill(c, "#c-hosts", "api.example.com").await;
    fill(c, "#c-value", canaries[0]).await;
    submit(c, "form[action='/ui/connections'] button").await;
    wait_at(c, "/ui/connections").await;
    let (source, _) = seen(c).await;
    assert!(
        source.contains("crm") && source.contains("api.example.com"),
        "{source}"
    );
    pages.push(seen(c).await);

    // Deploy a bundle from the recipes page.
    c.goto(&format!("{base}/ui/recipes")).await.unwrap();
    fill(c, "#d-name", "greet").await;
    c.find(fantoccini::Locator::Css("#d-bundle"))
        .await
        .unwrap()
        .send_keys(&bundle.display().to_string())
        .await
        .unwrap();
    click(c, "form[action='/ui/recipes'] button").await;
    wait_at(c, "/ui/recipes/greet").await;
    let (source, _) = seen(c).await;
    assert!(
        source.contains("What each step may do") && source.contains("<svg"),
        "{source}"
    );
    screenshot(&browser, "console-recipe").await;
    pages.push(seen(c).await);

    // Run it, watch the job finish, open its steps, rerun it.
    fill(c, "#r-input", "{\"value\":\"from the console\"}").await;
    submit(c, "#run").await;
    wait_state(c, "succeeded").await;
    let first_job = c.current_url().await.unwrap().to_string();
    let (source, _) = seen(c).await;
    assert!(
        source.contains("s2") && source.contains("from the console"),
        "{source}"
    );
    screenshot(&browser, "console-job").await;
    pages.push(seen(c).await);
    submit(c, "#rerun").await;
    assert_ne!(c.current_url().await.unwrap().to_string(), first_job);
    wait_state(c, "succeeded").await;
    let (source, _) = seen(c).await;
    assert!(source.contains("Rerun of"), "{source}");
    visited.push(c.current_url().await.unwrap().to_string());

    // Rotate the connection.
    c.goto(&format!("{base}/ui/connections")).await.unwrap();
    fill(c, "#c-name", "crm").await;
    fill(c, "#c-hosts", "api.example.com").await;
    fill(c, "#c-value", canaries[1]).await;
    submit(c, "form[action='/ui/connections'] button").await;
    wait_at(c, "/ui/connections").await;
    pages.push(seen(c).await);

    // The jobs list and its chart.
    c.goto(&format!("{base}/ui/jobs")).await.unwrap();
    screenshot(&browser, "console-jobs").await;
    pages.push(seen(c).await);

    // The audit page has all of it, and the chain verifies.
    c.goto(&format!("{base}/ui/audit")).await.unwrap();
    submit(c, "#verify").await;
    wait_at(c, "/ui/audit").await;
    let (source, shown) = seen(c).await;
    for action in ["console.sign_in", "connection.put", "job.run", "job.rerun"] {
        assert!(
            source.contains(action),
            "{action} missing from the audit page"
        );
    }
    assert!(shown.contains("The chain is intact"), "{shown}");
    screenshot(&browser, "console-audit").await;
    pages.push((source, shown));
    for path in [
        "/ui/environments",
        "/ui/tokens",
        "/ui/members",
        "/ui/recipes",
    ] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        pages.push(seen(c).await);
        visited.push(format!("{base}{path}"));
    }

    // On a phone: nothing wider than the screen.
    browser.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{base}/ui/jobs")).await.unwrap();
    let fits = c
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(fits, serde_json::json!(true));
    screenshot(&browser, "console-phone").await;
    browser.set_window_size(1280, 900).await.unwrap();

    // Keyboard: the first Tab reaches the skip link, which is visible.
    c.goto(&format!("{base}/ui/jobs")).await.unwrap();
    c.find(fantoccini::Locator::Css("body"))
        .await
        .unwrap()
        .send_keys("\u{E004}")
        .await
        .unwrap();
    let focused = c
        .execute("return document.activeElement.className", vec![])
        .await
        .unwrap();
    assert_eq!(focused, serde_json::json!("skip"));

    // The same pages fetched with the browser's cookie: no canary in any
    // answer the browser got.
    let cookie = c
        .get_all_cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.name() == "__Host-wrun_session")
        .expect("the session cookie");
    let mut raw = Browserless {
        api: daemon.client().await,
        cookies: vec![format!("__Host-wrun_session={}", cookie.value())],
    };
    for url in visited.iter().chain([first_job.clone()].iter()) {
        let path = url.strip_prefix(&base).unwrap();
        let r = raw.get(path).await;
        pages.push((text(&r), String::new()));
    }

    // Sign out; sign in with the analyst's token: no write forms.
    click(c, "form.signout button").await;
    wait_at(c, "/ui/login").await;
    fill(c, "#token", &analyst).await;
    click(c, "form[action='/ui/login'] button").await;
    wait_at(c, "/ui/jobs").await;
    let (source, _) = seen(c).await;
    assert!(!source.contains("href=\"/ui/audit\"") && !source.contains("href=\"/ui/tokens\""));
    c.goto(&first_job).await.unwrap();
    let (source, _) = seen(c).await;
    assert!(source.contains("succeeded") && !source.contains("id=\"rerun\""));
    pages.push(seen(c).await);

    // No canary, signing secret or token anywhere the browser was.
    for (source, text) in &pages {
        for secret in canaries
            .iter()
            .chain([hook_secret.as_str(), admin.as_str(), analyst.as_str()].iter())
        {
            assert!(
                !source.contains(secret) && !text.contains(secret),
                "a secret reached a page"
            );
        }
    }
    // Nor a CSP violation or a script error in the whole run.
    let errors = browser.errors().await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let everything = browser.console_messages().await.unwrap();
    assert!(
        everything
            .iter()
            .all(|m| !m.message.contains("Content Security Policy")),
        "{everything:?}"
    );
    browser.close().await.unwrap();
}
