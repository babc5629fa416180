//! The access matrix: every role with a full-scope and a read-only token
//! against one read and one write route of every resource kind, then
//! isolation between workspaces and the rules of token management.

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Api, Daemon, Reply, Site, noop_bundle};

/// Generous request limits: the matrix sends many requests per subject.
const CONFIG: &str = "[limits]\nrequests_per_second = 1000\nburst = 1000\naddress_per_second = 1000\naddress_burst = 1000\n";

/// The subjects of team-a and their roles.
const MEMBERS: [(&str, &str); 4] = [
    ("alice", "admin"),
    ("olga", "operator"),
    ("ann", "analyst"),
    ("rita", "jobs-reader"),
];

/// What each role may do on each resource, written out from the documented
/// meaning of the built-in roles (`admin`: everything; `operator`: write on
/// recipes, connections, environments, jobs and tokens, read on members, no
/// audit; `analyst`: read on recipes, environments, jobs and connections)
/// and of the custom role `jobs-reader` = `["jobs:read"]`.
///
/// `W`: read and write, `R`: read only, `-`: nothing. Columns: admin,
/// operator, analyst, jobs-reader.
const MATRIX: [(&str, [&str; 4]); 7] = [
    ("recipes", ["W", "W", "R", "-"]),
    ("connections", ["W", "W", "R", "-"]),
    ("environments", ["W", "W", "R", "-"]),
    ("jobs", ["W", "W", "R", "R"]),
    ("tokens", ["W", "W", "-", "-"]),
    ("members", ["W", "R", "-", "-"]),
    ("audit", ["W", "-", "-", "-"]),
];

/// A daemon with two workspaces, members, tokens and some objects.
pub(crate) struct Fixture {
    _site: Site,
    pub(crate) daemon: Daemon,
    /// Token of alice (admin of team-a), made with the CLI.
    pub(crate) admin: String,
    /// Token of bob (admin of team-b), made with the CLI.
    pub(crate) other_admin: String,
    /// (subject, "write" | "read") -> (token id, token text), made through the API.
    pub(crate) tokens: BTreeMap<(String, String), (String, String)>,
    /// A job of team-a.
    pub(crate) job: String,
    /// A connection of team-a.
    pub(crate) connection: String,
    /// A webhook of team-a.
    pub(crate) trigger: String,
}

pub(crate) async fn fixture() -> Fixture {
    let site = Site::new(CONFIG);
    site.member("team-a", "alice", "admin");
    site.member("team-a", "olga", "operator");
    site.member("team-a", "ann", "analyst");
    site.member("team-b", "bob", "admin");
    let admin = site.token("team-a", "alice", "*:write");
    let other_admin = site.token("team-b", "bob", "*:write");
    let bundle = noop_bundle(&site, "three", 1);
    let daemon = site.start();
    let mut api = daemon.client().await;
    let r = api.deploy("team-a", "three", &admin, &bundle).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .put(
            "/v1/workspaces/team-a/roles/jobs-reader",
            &admin,
            &json!({ "permissions": ["jobs:read"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .put(
            "/v1/workspaces/team-a/members/rita",
            &admin,
            &json!({ "role": "jobs-reader" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);

    let mut tokens = BTreeMap::new();
    for (subject, _) in MEMBERS {
        for (kind, scope) in [("write", "*:write"), ("read", "*:read")] {
            let r = api
                .post(
                    "/v1/workspaces/team-a/tokens",
                    &admin,
                    &json!({ "name": format!("{subject}-{kind}"), "scopes": [scope], "expires_in": 3600, "owner": subject }),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
            assert_eq!(r.json["owner"], subject);
            tokens.insert(
                (subject.to_string(), kind.to_string()),
                (
                    r.json["id"].as_str().unwrap().to_string(),
                    r.json["token"].as_str().unwrap().to_string(),
                ),
            );
        }
    }

    let r = api
        .post(
            "/v1/workspaces/team-a/recipes/three/runs",
            &admin,
            &json!({ "environment": "prod", "input": { "value": "fixture" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = r.json["job"].as_str().unwrap().to_string();
    api.wait_job("team-a", &job, &admin).await;
    let connection = "team-a-private-connection".to_string();
    let r = api
        .put(
            &format!("/v1/workspaces/team-a/connections/{connection}"),
            &admin,
            &json!({ "value": "not-a-real-secret-9c733f2b8c1e7a4d4e9bb6c2", "hosts": ["api.github.test:*"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .post(
            "/v1/workspaces/team-a/recipes/three/webhooks",
            &admin,
            &json!({ "environment": "prod" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let trigger = r.json["id"].as_str().unwrap().to_string();
    Fixture {
        _site: site,
        daemon,
        admin,
        other_admin,
        tokens,
        job,
        connection,
        trigger,
    }
}

/// A request of the matrix: method, path, body, and the status it answers
/// when allowed.
type Probe = (Method, String, Option<Value>, StatusCode);

/// The read route of a resource.
fn read_probe(resource: &str) -> Probe {
    let path = match resource {
        "recipes" => "/v1/workspaces/team-a/recipes",
        "connections" => "/v1/workspaces/team-a/connections",
        "environments" => "/v1/workspaces/team-a/environments/prod",
        "jobs" => "/v1/workspaces/team-a/jobs",
        "tokens" => "/v1/workspaces/team-a/tokens",
        "members" => "/v1/workspaces/team-a/members",
        "audit" => "/v1/workspaces/team-a/audit",
        other => panic!("no read route for {other}"),
    };
    (Method::GET, path.to_string(), None, StatusCode::OK)
}

/// The write route of a resource (`None` for the audit log, which has no
/// write route); `n` makes names unique.
fn write_probe(resource: &str, n: usize) -> Option<Probe> {
    let ws = "/v1/workspaces/team-a";
    Some(match resource {
        "recipes" => (
            Method::POST,
            format!("{ws}/recipes/three/webhooks"),
            Some(json!({ "environment": "prod", "signed": false })),
            StatusCode::CREATED,
        ),
        "connections" => (
            Method::PUT,
            format!("{ws}/connections/matrix-{n}"),
            Some(
                json!({ "value": "matrix-value-4e9bb6c25d8e1f0a9c733f2b", "hosts": ["api.github.test:*"] }),
            ),
            StatusCode::OK,
        ),
        "environments" => (
            Method::PUT,
            format!("{ws}/environments/prod/properties/p{n}"),
            Some(json!({ "value": "v" })),
            StatusCode::NO_CONTENT,
        ),
        "jobs" => (
            Method::POST,
            format!("{ws}/recipes/three/runs"),
            Some(json!({ "environment": "prod", "input": { "value": "matrix" } })),
            StatusCode::ACCEPTED,
        ),
        "tokens" => (
            Method::POST,
            format!("{ws}/tokens"),
            Some(json!({ "name": format!("t{n}"), "scopes": ["jobs:read"], "expires_in": 60 })),
            StatusCode::CREATED,
        ),
        "members" => (
            Method::PUT,
            format!("{ws}/members/extra-{n}"),
            Some(json!({ "role": "analyst" })),
            StatusCode::OK,
        ),
        "audit" => return None,
        other => panic!("no write route for {other}"),
    })
}

/// Checks a 403 in the error format.
fn assert_forbidden(r: &Reply, what: &str) {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {}", r.json);
    assert_eq!(r.json["error"]["code"], "forbidden", "{what}: {}", r.json);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {}",
        r.json
    );
}

async fn send(api: &mut Api, probe: &Probe, token: &str) -> Reply {
    api.send(probe.0.clone(), &probe.1, Some(token), probe.2.as_ref())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_and_token_kind_gets_exactly_its_permissions() {
    let f = fixture().await;
    let mut api = f.daemon.client().await;
    let mut n = 0;
    let mut checked = 0;
    for (column, (subject, role)) in MEMBERS.iter().enumerate() {
        for kind in ["write", "read"] {
            let (_, token) = &f.tokens[&(subject.to_string(), kind.to_string())];
            for (resource, levels) in MATRIX {
                let level = levels[column];
                // A read-only token keeps at most the read half of the role.
                let (may_read, may_write) = match (level, kind) {
                    ("W", "write") => (true, true),
                    ("W", "read") | ("R", _) => (true, false),
                    _ => (false, false),
                };
                let probe = read_probe(resource);
                let r = send(&mut api, &probe, token).await;
                let what = format!("{role} with a {kind} token: GET {resource} ({})", probe.1);
                if may_read {
                    assert_eq!(r.status, probe.3, "{what}: {}", r.json);
                } else {
                    assert_forbidden(&r, &what);
                }
                checked += 1;
                n += 1;
                if let Some(probe) = write_probe(resource, n) {
                    let r = send(&mut api, &probe, token).await;
                    let what = format!(
                        "{role} with a {kind} token: {} {resource} ({})",
                        probe.0, probe.1
                    );
                    if may_write {
                        assert_eq!(r.status, probe.3, "{what}: {}", r.json);
                    } else {
                        assert_forbidden(&r, &what);
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 4 * 2 * 13);

    // Denied writes changed nothing: only the writes of the two full
    // tokens that may write members (alice's) created members.
    let r = api.get("/v1/workspaces/team-a/members", &f.admin).await;
    let extras = r.json["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["subject"].as_str().unwrap().starts_with("extra-"))
        .count();
    assert_eq!(extras, 1, "{}", r.json);
}

/// Every team-a route, with real ids where the route names one.
fn team_a_routes(f: &Fixture, ws: &str) -> Vec<(Method, String, Option<Value>)> {
    let (token_id, _) = &f.tokens[&("ann".to_string(), "write".to_string())];
    let w = format!("/v1/workspaces/{ws}");
    let job = &f.job;
    let conn = &f.connection;
    let trigger = &f.trigger;
    vec![
        (Method::GET, format!("{w}/recipes"), None),
        (Method::GET, format!("{w}/recipes/three"), None),
        (Method::DELETE, format!("{w}/recipes/three"), None),
        (Method::GET, format!("{w}/recipes/three/triggers"), None),
        (
            Method::POST,
            format!("{w}/recipes/three/webhooks"),
            Some(json!({ "environment": "prod" })),
        ),
        (
            Method::POST,
            format!("{w}/recipes/three/schedules"),
            Some(json!({ "cron": "* * * * *", "environment": "prod" })),
        ),
        (Method::DELETE, format!("{w}/triggers/{trigger}"), None),
        (
            Method::POST,
            format!("{w}/recipes/three/runs"),
            Some(json!({ "environment": "prod" })),
        ),
        (Method::GET, format!("{w}/jobs"), None),
        (
            Method::POST,
            format!("{w}/jobs/delete"),
            Some(json!({ "recipe": "three" })),
        ),
        (
            Method::POST,
            format!("{w}/jobs/erase"),
            Some(json!({ "subject": "nobody@example.test", "dry_run": true })),
        ),
        (Method::GET, format!("{w}/jobs/{job}"), None),
        (Method::POST, format!("{w}/jobs/{job}/cancel"), None),
        (Method::POST, format!("{w}/jobs/{job}/rerun"), None),
        (Method::GET, format!("{w}/connections"), None),
        (
            Method::PUT,
            format!("{w}/connections/{conn}"),
            Some(json!({ "value": "x", "hosts": ["api.github.test:*"] })),
        ),
        (Method::DELETE, format!("{w}/connections/{conn}"), None),
        (Method::GET, format!("{w}/environments/prod"), None),
        (
            Method::PUT,
            format!("{w}/environments/prod/properties/p"),
            Some(json!({ "value": "v" })),
        ),
        (
            Method::DELETE,
            format!("{w}/environments/prod/properties/p"),
            None,
        ),
        (
            Method::PUT,
            format!("{w}/environments/prod/bindings/github"),
            Some(json!({ "connection": conn })),
        ),
        (
            Method::DELETE,
            format!("{w}/environments/prod/bindings/github"),
            None,
        ),
        (Method::GET, format!("{w}/tokens"), None),
        (
            Method::POST,
            format!("{w}/tokens"),
            Some(json!({ "name": "x", "scopes": ["*:read"], "expires_in": 60 })),
        ),
        (Method::DELETE, format!("{w}/tokens/{token_id}"), None),
        (Method::GET, format!("{w}/members"), None),
        (
            Method::PUT,
            format!("{w}/members/mallory"),
            Some(json!({ "role": "admin" })),
        ),
        (Method::DELETE, format!("{w}/members/alice"), None),
        (Method::GET, format!("{w}/roles"), None),
        (
            Method::PUT,
            format!("{w}/roles/jobs-reader"),
            Some(json!({ "permissions": ["*:write"] })),
        ),
        (Method::DELETE, format!("{w}/roles/jobs-reader"), None),
        (Method::GET, format!("{w}/settings"), None),
        (
            Method::PUT,
            format!("{w}/settings"),
            Some(json!({ "retention_days": 1 })),
        ),
        (Method::GET, format!("{w}/connections/{conn}/limits"), None),
        (
            Method::PUT,
            format!("{w}/connections/{conn}/limits"),
            Some(json!({ "requests_per_minute": 1 })),
        ),
        (Method::GET, format!("{w}/governance"), None),
        (
            Method::PUT,
            format!("{w}/governance"),
            Some(json!({ "require_signatures": true })),
        ),
        (Method::GET, format!("{w}/signing-keys"), None),
        (
            Method::PUT,
            format!("{w}/signing-keys/k"),
            Some(json!({ "public_key": "wrun-ed25519:AAAA" })),
        ),
        (Method::DELETE, format!("{w}/signing-keys/k"), None),
        (Method::GET, format!("{w}/recipes/three/pending"), None),
        (
            Method::POST,
            format!("{w}/recipes/three/approve"),
            Some(json!({ "pending": "x" })),
        ),
        (Method::GET, format!("{w}/audit"), None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_workspace_is_invisible_and_untouchable() {
    let f = fixture().await;
    let mut api = f.daemon.client().await;
    // The ids are real: team-a's admin reads them.
    let r = api
        .get(&format!("/v1/workspaces/team-a/jobs/{}", f.job), &f.admin)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api.get("/v1/workspaces/team-a/connections", &f.admin).await;
    assert!(
        r.raw
            .windows(f.connection.len())
            .any(|w| w == f.connection.as_bytes())
    );
    // Bob's token is good in his own workspace.
    let r = api
        .get("/v1/workspaces/team-b/recipes", &f.other_admin)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);

    let secrets = [
        f.job.as_str(),
        f.connection.as_str(),
        f.trigger.as_str(),
        "alice",
        "jobs-reader",
        "fixture",
        "api.github.test",
    ];
    for (method, path, body) in team_a_routes(&f, "team-a") {
        let r = api
            .send(method.clone(), &path, Some(&f.other_admin), body.as_ref())
            .await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "team-b admin: {method} {path}: {}",
            r.json
        );
        assert_eq!(r.json["error"]["code"], "not_found", "{method} {path}");
        let text = String::from_utf8_lossy(&r.raw);
        for s in secrets {
            assert!(
                !text.contains(s),
                "{method} {path} by team-b leaks `{s}`: {text}"
            );
        }
    }
    // Without a credential, every route (the new ones too) answers 401 and
    // changes nothing.
    for (method, path, body) in team_a_routes(&f, "team-a") {
        let r = api.send(method.clone(), &path, None, body.as_ref()).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "no token: {method} {path}: {}",
            r.json
        );
    }
    for (method, path, body) in team_a_routes(&f, "team-b") {
        let r = api
            .send(method.clone(), &path, Some(&f.admin), body.as_ref())
            .await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "team-a admin: {method} {path}: {}",
            r.json
        );
        assert_eq!(r.json["error"]["code"], "not_found", "{method} {path}");
    }

    // Nothing of team-a changed.
    let r = api
        .get(&format!("/v1/workspaces/team-a/jobs/{}", f.job), &f.admin)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api.get("/v1/workspaces/team-a/members", &f.admin).await;
    let members = r.json["members"].as_array().unwrap();
    assert!(members.iter().any(|m| m["subject"] == "alice"));
    assert!(!members.iter().any(|m| m["subject"] == "mallory"));
    let r = api.get("/v1/workspaces/team-a/jobs", &f.admin).await;
    assert_eq!(r.json["jobs"].as_array().unwrap().len(), 1, "{}", r.json);
    let r = api
        .get("/v1/workspaces/team-a/recipes/three/triggers", &f.admin)
        .await;
    assert_eq!(
        r.json["triggers"].as_array().unwrap().len(),
        1,
        "{}",
        r.json
    );
    let r = api.get("/v1/workspaces/team-a/settings", &f.admin).await;
    assert_eq!(r.json["retention_days"], Value::Null, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_bounded_by_their_creator_and_private_to_their_owner() {
    let f = fixture().await;
    let mut api = f.daemon.client().await;
    let key = |s: &str, k: &str| f.tokens[&(s.to_string(), k.to_string())].clone();
    let (_, olga) = key("olga", "write");
    let (_, olga_read) = key("olga", "read");
    let (ann_id, ann) = key("ann", "write");
    let tokens = "/v1/workspaces/team-a/tokens";

    // An operator cannot make a token for someone else.
    let r = api
        .post(
            tokens,
            &olga,
            &json!({ "name": "x", "scopes": ["jobs:read"], "expires_in": 60, "owner": "ann" }),
        )
        .await;
    assert_forbidden(&r, "operator creating a token for another member");
    // Nor one with scopes the operator lacks.
    for scopes in [
        json!(["audit:read"]),
        json!(["members:write"]),
        json!(["*:write"]),
    ] {
        let r = api
            .post(
                tokens,
                &olga,
                &json!({ "name": "x", "scopes": scopes, "expires_in": 60 }),
            )
            .await;
        assert_forbidden(&r, &format!("operator creating a token with {scopes}"));
    }
    // A read-only token cannot make tokens at all.
    let r = api
        .post(
            tokens,
            &olga_read,
            &json!({ "name": "x", "scopes": ["jobs:read"], "expires_in": 60 }),
        )
        .await;
    assert_forbidden(&r, "operator's read-only token creating a token");
    // Within the role, it works, and the new token is bounded by it.
    let r = api
        .post(
            tokens,
            &olga,
            &json!({ "name": "mine", "scopes": ["recipes:write", "members:read"], "expires_in": 60 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert_eq!(r.json["owner"], "olga");
    let own_id = r.json["id"].as_str().unwrap().to_string();
    let own = r.json["token"].as_str().unwrap().to_string();
    let r = api.get("/v1/whoami", &own).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["subject"], "olga");
    let perms: Vec<&str> = r.json["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(perms.contains(&"recipes:write"), "{perms:?}");
    assert!(!perms.iter().any(|p| p.starts_with("jobs")), "{perms:?}");
    let r = api
        .post(
            "/v1/workspaces/team-a/recipes/three/runs",
            &own,
            &json!({ "environment": "prod" }),
        )
        .await;
    assert_forbidden(&r, "a recipes-only token running a job");

    // A non-admin lists only their own tokens; the admin lists everyone's.
    let r = api.get(tokens, &olga).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let listed = r.json["tokens"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{}", r.json);
    assert!(listed.iter().all(|t| t["owner"] == "olga"), "{}", r.json);
    assert!(!String::from_utf8_lossy(&r.raw).contains("wrun_pat_"));
    let r = api.get(tokens, &f.admin).await;
    let owners: std::collections::BTreeSet<&str> = r.json["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["owner"].as_str().unwrap())
        .collect();
    assert!(owners.len() >= 4, "{owners:?}");

    // Revoking someone else's token is a 404 for a non-admin, and leaves it
    // working.
    let r = api
        .send(
            Method::DELETE,
            &format!("{tokens}/{ann_id}"),
            Some(&olga),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "not_found");
    let r = api.get("/v1/workspaces/team-a/recipes", &ann).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    // Their own is revoked.
    let r = api
        .send(
            Method::DELETE,
            &format!("{tokens}/{own_id}"),
            Some(&olga),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);
    let r = api.get("/v1/whoami", &own).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrow_admin_tokens_cannot_escalate_and_readers_do_not_see_webhook_urls() {
    let f = fixture().await;
    let mut api = f.daemon.client().await;
    let narrow = |scopes: Value| json!({ "name": "narrow", "scopes": scopes, "expires_in": 600 });
    // An admin's token limited to tokens:write cannot mint a full token.
    let r = api
        .post(
            "/v1/workspaces/team-a/tokens",
            &f.admin,
            &narrow(json!(["tokens:write"])),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let tokens_only = r.json["token"].as_str().unwrap().to_string();
    let r = api
        .post(
            "/v1/workspaces/team-a/tokens",
            &tokens_only,
            &narrow(json!(["*:write"])),
        )
        .await;
    assert_forbidden(&r, "a tokens-only admin token minting *:write");
    // An admin's token limited to members:write cannot hand out admin, nor
    // define a role wider than itself and take it.
    let r = api
        .post(
            "/v1/workspaces/team-a/tokens",
            &f.admin,
            &narrow(json!(["members:write"])),
        )
        .await;
    let members_only = r.json["token"].as_str().unwrap().to_string();
    let r = api
        .put(
            "/v1/workspaces/team-a/members/mallory",
            &members_only,
            &json!({ "role": "admin" }),
        )
        .await;
    assert_forbidden(&r, "a members-only token making an admin");
    let r = api
        .put(
            "/v1/workspaces/team-a/roles/everything",
            &members_only,
            &json!({ "permissions": ["*:write"] }),
        )
        .await;
    assert_forbidden(&r, "a members-only token defining a *:write role");
    let r = api.get("/v1/workspaces/team-a/members", &f.admin).await;
    assert!(!r.json.to_string().contains("mallory"), "{}", r.json);
    // Analysts may read recipes but not start jobs: the webhook URL (a
    // capability) is shown to them only in part.
    let (_, ann) = f.tokens[&("ann".to_string(), "write".to_string())].clone();
    let r = api
        .get("/v1/workspaces/team-a/recipes/three/triggers", &ann)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert!(
        !r.raw
            .windows(f.trigger.len())
            .any(|w| w == f.trigger.as_bytes()),
        "{}",
        r.json
    );
    let r = api
        .get("/v1/workspaces/team-a/recipes/three/triggers", &f.admin)
        .await;
    assert!(r.json.to_string().contains(&f.trigger), "{}", r.json);
}
