//! Durability of the daemon: acknowledged webhooks survive `kill -9`, a job
//! resumes after its last committed step, schedules fire once per slot
//! across restarts, SIGTERM drains running jobs, and cancel and rerun.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use wrun_tests::{DirectClient, MockServer, TestPki};

use crate::support::{Api, Daemon, Site, bundle, noop_bundle};

/// The workspace of every test here.
pub(crate) const WS: &str = "team-a";

/// Lifts the per-token rate limit: these tests poll job states a lot.
const RELAXED: &str = "[limits]\nrequests_per_second = 100000\nburst = 100000\naddress_per_second = 100000\naddress_burst = 100000\n";

/// The current time in unix milliseconds.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .try_into()
        .unwrap()
}

/// A site with an admin token.
pub(crate) fn site(config: &str) -> (Site, String) {
    let site = Site::new(&format!("{RELAXED}{config}"));
    site.member(WS, "alice", "admin");
    let token = site.token(WS, "alice", "*:write");
    (site, token)
}

/// Deploys a bundle.
pub(crate) async fn deploy(api: &mut Api, token: &str, name: &str, bundle: &std::path::Path) {
    let r = api.deploy(WS, name, token, bundle).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
}

/// Creates an unsigned webhook in `prod`; returns its id.
async fn webhook(api: &mut Api, token: &str, recipe: &str) -> String {
    let r = api
        .post(
            &format!("/v1/workspaces/{WS}/recipes/{recipe}/webhooks"),
            token,
            &json!({ "environment": "prod", "signed": false }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    r.json["id"].as_str().unwrap().to_string()
}

/// GET a job's detail.
pub(crate) async fn job(api: &mut Api, token: &str, id: &str) -> Value {
    let r = api
        .get(&format!("/v1/workspaces/{WS}/jobs/{id}"), token)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    r.json
}

/// Every job of the workspace (at most 500, newest first).
async fn all_jobs(api: &mut Api, token: &str) -> Vec<Value> {
    let r = api
        .get(&format!("/v1/workspaces/{WS}/jobs?limit=500"), token)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let jobs = r.json["jobs"].as_array().unwrap().clone();
    assert!(jobs.len() < 500, "the listing may be truncated");
    jobs
}

/// Delivers a webhook with an idempotency key and `{"value": key}`; an
/// error means the connection broke before a response arrived.
async fn deliver(
    client: &mut DirectClient,
    hook: &str,
    value: &str,
) -> anyhow::Result<(StatusCode, Value)> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/hooks/{hook}"))
        .header("content-type", "application/json")
        .header("idempotency-key", value)
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&json!({ "value": value })).unwrap(),
        )))
        .unwrap();
    let (status, _, body) = client.send(req).await?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// Fires `deliveries` from `connections` concurrent connections. When
/// `kill_after` is set, SIGKILLs the daemon as soon as that many 202s have
/// arrived (other requests are then in flight); otherwise right after the
/// last 202. Returns each delivery with its job id if it got a 202.
async fn fire_and_kill(
    daemon: &mut Daemon,
    ca_pem: &str,
    hook: &str,
    deliveries: Vec<String>,
    connections: usize,
    kill_after: Option<usize>,
) -> Vec<(String, Option<String>)> {
    let acks = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for chunk in deliveries.chunks(deliveries.len().div_ceil(connections)) {
        let chunk = chunk.to_vec();
        let (addr, ca, hook, acks) = (
            daemon.addr,
            ca_pem.to_string(),
            hook.to_string(),
            Arc::clone(&acks),
        );
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut client = DirectClient::connect(addr, "127.0.0.1", &ca).await.ok();
            for value in chunk {
                let answer = match client.as_mut() {
                    Some(c) => deliver(c, &hook, &value).await.ok(),
                    None => None,
                };
                match answer {
                    Some((StatusCode::ACCEPTED, body)) => {
                        let id = body["job"].as_str().unwrap().to_string();
                        acks.fetch_add(1, Ordering::SeqCst);
                        out.push((value, Some(id)));
                    }
                    Some((status, body)) => panic!("delivery {value}: {status} {body}"),
                    None => {
                        // The daemon is gone: the rest is never acknowledged.
                        client = None;
                        out.push((value, None));
                    }
                }
            }
            out
        }));
    }
    if let Some(n) = kill_after {
        let deadline = Instant::now() + Duration::from_secs(30);
        while acks.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "{n} deliveries were not acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        daemon.kill9();
    }
    let mut results = Vec::new();
    for t in tasks {
        results.extend(t.await.unwrap());
    }
    if kill_after.is_none() {
        daemon.kill9();
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_webhooks_survive_sigkill_many_times() {
    const ROUNDS: usize = 8;
    const DELIVERIES: usize = 50;
    let (site, token) = site("");
    let three = noop_bundle(&site, "three", 3);
    let mut daemon = site.start();
    let mut api = daemon.client().await;
    deploy(&mut api, &token, "three", &three).await;
    let hook = webhook(&mut api, &token, "three").await;

    // Every delivery's value and the job it ended up as.
    let mut jobs_of: HashMap<String, String> = HashMap::new();
    let mut acknowledged = 0;
    for round in 0..ROUNDS {
        let values: Vec<String> = (0..DELIVERIES).map(|i| format!("r{round}-d{i}")).collect();
        // Odd rounds kill with requests still in flight.
        let kill_after = (round % 2 == 1).then_some(DELIVERIES / 2);
        let results = fire_and_kill(&mut daemon, &site.ca_pem, &hook, values, 5, kill_after).await;
        daemon = site.start();
        let mut api = daemon.client().await;
        let mut sender = api_client(&daemon, &site).await;
        // A sender retries what was not acknowledged, with the same key; an
        // acknowledged delivery sent again is a duplicate of the same job.
        for (value, acked) in &results {
            let (status, body) = deliver(&mut sender, &hook, value).await.unwrap();
            let id = body["job"].as_str().unwrap().to_string();
            match acked {
                Some(first) => {
                    acknowledged += 1;
                    assert_eq!(status, StatusCode::OK, "round {round} {value}: {body}");
                    assert_eq!(body["duplicate"], true, "round {round} {value}: {body}");
                    assert_eq!(&id, first, "round {round} {value}: another job");
                }
                None => assert!(
                    status == StatusCode::ACCEPTED || status == StatusCode::OK,
                    "round {round} {value}: {status} {body}"
                ),
            }
            assert!(
                jobs_of.insert(value.clone(), id).is_none(),
                "{value} delivered twice"
            );
        }
        for (value, _) in &results {
            let id = &jobs_of[value];
            let detail = api.wait_job(WS, id, &token).await;
            assert_eq!(detail["state"], "succeeded", "round {round}: {detail}");
            assert_eq!(detail["input"]["value"], value.as_str(), "{detail}");
            let steps = detail["steps"].as_array().unwrap();
            assert_eq!(steps.len(), 3, "round {round}: {detail}");
            assert_eq!(steps[2]["output"]["value"], value.as_str(), "{detail}");
        }
    }
    assert!(acknowledged >= ROUNDS * DELIVERIES / 2, "{acknowledged}");

    // Each delivery is exactly one job: no acknowledged job lost, none
    // duplicated.
    let mut api = daemon.client().await;
    let listed = all_jobs(&mut api, &token).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for j in &listed {
        *seen
            .entry(j["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(listed.len(), ROUNDS * DELIVERIES, "jobs: {}", listed.len());
    for (value, id) in &jobs_of {
        assert_eq!(seen.get(id), Some(&1), "{value}: job {id} listed {seen:?}");
    }
    let distinct: HashSet<&String> = jobs_of.values().collect();
    assert_eq!(distinct.len(), ROUNDS * DELIVERIES);
    drop(api);
    daemon.kill9();

    // Nine kills later, the audit chain is intact.
    site.ok(site.wrun().args(["audit", "verify"]));
}

/// A new connection to the daemon for deliveries.
async fn api_client(daemon: &Daemon, site: &Site) -> DirectClient {
    DirectClient::connect(daemon.addr, "127.0.0.1", &site.ca_pem)
        .await
        .unwrap()
}

/// A mock upstream at `mock.test` and the environment the daemon needs to
/// reach it on loopback.
pub(crate) struct Upstream {
    pub(crate) mock: MockServer,
    env: Vec<(String, String)>,
}

impl Upstream {
    pub(crate) async fn new(site: &Site) -> Upstream {
        let pki = TestPki::new(&["mock.test"]);
        let ca = site.dir.join("mock-ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let mock = MockServer::start(&pki).await;
        Upstream {
            mock,
            env: vec![
                ("WRUN_CA_FILE".into(), ca.display().to_string()),
                ("WRUN_ALLOW_RANGES".into(), "127.0.0.0/8".into()),
                ("WRUN_RESOLVE".into(), "mock.test=127.0.0.1".into()),
            ],
        }
    }

    pub(crate) fn start(&self, site: &Site) -> Daemon {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        site.start_with(&env)
    }

    /// How many requests to `path` (a path with its first query parameter)
    /// carried `tag` (the last query parameter).
    pub(crate) fn hits(&self, path: &str, tag: &str) -> usize {
        let end = format!("tag={tag}");
        self.mock
            .requests()
            .iter()
            .filter(|r| r.path_and_query.starts_with(path) && r.path_and_query.ends_with(&end))
            .count()
    }

    /// A recipe `slow` of three hostile `http` steps: `first` and `last`
    /// call `/echo`, `slow` calls `/slow?ms={{ trigger.ms }}`; each carries
    /// `tag={{ trigger.tag }}`.
    pub(crate) fn slow_bundle(&self, site: &Site) -> PathBuf {
        let port = self.mock.port();
        let base = format!("https://mock.test:{port}");
        let step = |name: &str, path: &str| {
            format!(
                "\n[[steps]]\nname = \"{name}\"\ncomponent = \"components/hostile.wasm\"\naction = \"http\"\ninput = {{ url = \"{base}{path}tag={{{{ trigger.tag }}}}\" }}\n\n[steps.grants]\nnet = [\"mock.test:{port}\"]\nsecrets = {{ api = \"api\" }}\nenv = [\"unused\"]\ntimeout = \"60s\"\n"
            )
        };
        let text = format!(
            "[recipe]\nname = \"slow\"\n\n[trigger]\nkind = \"webhook\"\n{}{}{}",
            step("first", "/echo?step=first&"),
            step("slow", "/slow?ms={{ trigger.ms }}&"),
            step("last", "/echo?step=last&"),
        );
        bundle(site, "slow", "hostile.wasm", &text)
    }
}

/// Deploys the `slow` recipe with the connection its grants name.
pub(crate) async fn deploy_slow(api: &mut Api, token: &str, bundle: &std::path::Path) {
    let r = api
        .put(
            &format!("/v1/workspaces/{WS}/connections/api"),
            token,
            &json!({ "value": "unused-secret-5d8e1f0a9c733f2b8c1e7a4d", "hosts": ["mock.test"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    deploy(api, token, "slow", bundle).await;
}

/// Waits until job `id` (tagged `tag`) is inside its `slow` step; fails
/// with the job's detail if it ends first.
pub(crate) async fn wait_in_slow(up: &Upstream, api: &mut Api, token: &str, id: &str, tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while up.hits("/slow", tag) == 0 {
        let d = job(api, token, id).await;
        assert!(
            !["succeeded", "failed", "cancelled"].contains(&d["state"].as_str().unwrap()),
            "job {id} ended before its slow step: {d}"
        );
        assert!(
            Instant::now() < deadline,
            "job {id} never reached its slow step: {d}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the `slow` recipe by hand; returns the job id.
pub(crate) async fn run_slow(api: &mut Api, token: &str, tag: &str, ms: u64) -> String {
    let r = api
        .post(
            &format!("/v1/workspaces/{WS}/recipes/slow/runs"),
            token,
            &json!({ "environment": "prod", "input": { "tag": tag, "ms": ms } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    r.json["job"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_resumes_after_its_last_committed_step() {
    let (site, token) = site("");
    let up = Upstream::new(&site).await;
    let slow = up.slow_bundle(&site);
    let mut daemon = up.start(&site);
    let mut api = daemon.client().await;
    deploy_slow(&mut api, &token, &slow).await;
    let id = run_slow(&mut api, &token, "resume", 3000).await;

    // Step `first` is committed and `slow` is under way: kill.
    wait_in_slow(&up, &mut api, &token, &id, "resume").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        let d = job(&mut api, &token, &id).await;
        if d["steps"].as_array().unwrap().len() == 1 {
            break d;
        }
        assert!(Instant::now() < deadline, "step 1 not committed: {d}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(before["state"], "running", "{before}");
    assert_eq!(before["steps"][0]["step"], "first", "{before}");
    drop(api);
    daemon.kill9();
    assert_eq!(up.hits("/echo?step=last", "resume"), 0);

    let daemon = up.start(&site);
    let mut api = daemon.client().await;
    let after = api.wait_job(WS, &id, &token).await;
    assert_eq!(after["state"], "succeeded", "{after}");
    let steps = after["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{after}");
    // Step 1 ran once and its record is the one committed before the kill;
    // step 2 ran again (at least once); step 3 once.
    assert_eq!(up.hits("/echo?step=first", "resume"), 1);
    assert_eq!(steps[0], before["steps"][0], "step 1's record changed");
    assert_eq!(up.hits("/slow", "resume"), 2);
    assert_eq!(up.hits("/echo?step=last", "resume"), 1);
    assert_eq!(after["started_at"], before["started_at"], "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_fire_once_per_slot_across_restarts() {
    let (site, token) = site("[workers]\nschedule_tick_ms = 100\nmin_schedule_interval_secs = 1\n");
    let text = "[recipe]\nname = \"tick\"\n\n[trigger]\nkind = \"manual\"\n\n[[steps]]\nname = \"s0\"\ncomponent = \"components/noop.wasm\"\naction = \"noop\"\ninput = { slot = \"{{ trigger.slot }}\" }\n";
    let tick = bundle(&site, "tick", "noop.wasm", text);
    let mut daemon = site.start();
    let mut api = daemon.client().await;
    deploy(&mut api, &token, "tick", &tick).await;
    let r = api
        .post(
            &format!("/v1/workspaces/{WS}/recipes/tick/schedules"),
            &token,
            &json!({ "cron": "* * * * * *", "environment": "prod" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let schedule = r.json["id"].as_str().unwrap().to_string();
    let created_ms = now_ms();
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(api);
    daemon.kill9();
    let killed_ms = now_ms();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted_ms = now_ms();
    let mut daemon = site.start();
    let mut api = daemon.client().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = api
        .send(
            Method::DELETE,
            &format!("/v1/workspaces/{WS}/triggers/{schedule}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);
    let deleted_ms = now_ms();

    let mut slots: HashMap<i64, String> = HashMap::new();
    let (mut before, mut after, mut caught_up) = (0, 0, 0);
    for j in all_jobs(&mut api, &token).await {
        assert_eq!(j["trigger"], "schedule", "{j}");
        let id = j["id"].as_str().unwrap();
        let detail = api.wait_job(WS, id, &token).await;
        assert_eq!(detail["state"], "succeeded", "{detail}");
        let slot = detail["input"]["slot"].as_i64().unwrap();
        assert_eq!(detail["input"]["schedule"], schedule.as_str(), "{detail}");
        let out = &detail["steps"][0]["output"]["slot"];
        assert!(
            *out == json!(slot) || *out == json!(slot.to_string()),
            "{detail}"
        );
        if let Some(other) = slots.insert(slot, id.to_string()) {
            panic!("slot {slot} fired twice: {other} and {id}");
        }
        let created = j["created_at"].as_i64().unwrap();
        assert!(
            !(killed_ms..restarted_ms).contains(&created),
            "a job was created while the daemon was down: {j}"
        );
        if created < killed_ms {
            before += 1;
        } else {
            after += 1;
            // A slot that passed while the daemon was down.
            if slot < restarted_ms {
                caught_up += 1;
            }
        }
    }
    assert!(before >= 2, "{before} jobs before the kill");
    assert!(after >= 1, "{after} jobs after the restart");
    assert!(
        caught_up <= 1,
        "{caught_up} jobs for slots missed while down: {slots:?}"
    );
    // One job per second the daemon was up, give or take a slot at each
    // edge; firing every missed slot would add three.
    let up_slots = (killed_ms - created_ms + 999) / 1000 + (deleted_ms - restarted_ms + 999) / 1000;
    assert!(
        slots.len() as i64 <= up_slots + 2,
        "{} jobs for {up_slots} seconds up: {slots:?}",
        slots.len()
    );
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_running_jobs_and_exits() {
    const DELIVERIES: usize = 24;
    let (site, token) = site("");
    let up = Upstream::new(&site).await;
    let slow = up.slow_bundle(&site);
    let mut daemon = up.start(&site);
    let mut api = daemon.client().await;
    deploy_slow(&mut api, &token, &slow).await;
    let hook = webhook(&mut api, &token, "slow").await;

    let mut jobs = Vec::new();
    let mut tasks = Vec::new();
    for c in 0..4 {
        let mut client = api_client(&daemon, &site).await;
        let hook = hook.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..DELIVERIES / 4 {
                let tag = format!("c{c}x{i}");
                let req = Request::builder()
                    .method(Method::POST)
                    .uri(format!("/hooks/{hook}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(
                        serde_json::to_vec(&json!({ "tag": tag, "ms": 1500 })).unwrap(),
                    )))
                    .unwrap();
                let (status, _, body) = client.send(req).await.unwrap();
                assert_eq!(status, StatusCode::ACCEPTED);
                let body: Value = serde_json::from_slice(&body).unwrap();
                out.push((tag, body["job"].as_str().unwrap().to_string()));
            }
            out
        }));
    }
    for t in tasks {
        jobs.extend(t.await.unwrap());
    }
    // Wait until some jobs are inside their slow step, then SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(20);
    let in_flight = loop {
        let running: Vec<&String> = jobs
            .iter()
            .map(|(tag, _)| tag)
            .filter(|tag| up.hits("/slow", tag) == 1 && up.hits("/echo?step=last", tag) == 0)
            .collect();
        if !running.is_empty() {
            break running.into_iter().cloned().collect::<Vec<_>>();
        }
        assert!(Instant::now() < deadline, "no job reached its slow step");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    drop(api);
    let status = tokio::task::spawn_blocking(move || {
        let status = daemon.terminate();
        drop(daemon);
        status
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
    // The jobs that were inside a step when the signal came finished it
    // and the rest of the job before the daemon exited.
    for tag in &in_flight {
        assert_eq!(up.hits("/echo?step=last", tag), 1, "{tag} did not finish");
    }

    let daemon = up.start(&site);
    let mut api = daemon.client().await;
    for (tag, id) in &jobs {
        let d = api.wait_job(WS, id, &token).await;
        assert_eq!(d["state"], "succeeded", "{d}");
        assert_eq!(d["steps"].as_array().unwrap().len(), 3, "{d}");
        // A graceful stop repeats no step.
        assert_eq!(up.hits("/echo?step=first", tag), 1, "{tag}");
        assert_eq!(up.hits("/slow", tag), 1, "{tag}");
        assert_eq!(up.hits("/echo?step=last", tag), 1, "{tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_rerun() {
    let (site, token) = site("");
    let up = Upstream::new(&site).await;
    let slow = up.slow_bundle(&site);
    let daemon = up.start(&site);
    let mut api = daemon.client().await;
    deploy_slow(&mut api, &token, &slow).await;

    // Cancelled inside its slow step: it ends `cancelled` and its last step
    // never runs.
    let a = run_slow(&mut api, &token, "a", 1500).await;
    wait_in_slow(&up, &mut api, &token, &a, "a").await;
    let r = api
        .post(
            &format!("/v1/workspaces/{WS}/jobs/{a}/cancel"),
            &token,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["state"], "cancelled", "{}", r.json);
    let detail = api.wait_job(WS, &a, &token).await;
    assert_eq!(detail["state"], "cancelled", "{detail}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let detail = job(&mut api, &token, &a).await;
    assert_eq!(detail["state"], "cancelled", "{detail}");
    assert!(detail["steps"].as_array().unwrap().len() <= 2, "{detail}");
    assert_eq!(
        up.hits("/echo?step=last", "a"),
        0,
        "a cancelled job went on"
    );

    // A running job cannot be rerun.
    let b = run_slow(&mut api, &token, "b", 1500).await;
    wait_in_slow(&up, &mut api, &token, &b, "b").await;
    let r = api
        .post(
            &format!("/v1/workspaces/{WS}/jobs/{b}/rerun"),
            &token,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);

    // The cancelled one can: a new job with the same input that succeeds.
    let r = api
        .post(
            &format!("/v1/workspaces/{WS}/jobs/{a}/rerun"),
            &token,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    assert_eq!(r.json["rerun_of"], a.as_str(), "{}", r.json);
    let again = r.json["job"].as_str().unwrap().to_string();
    assert_ne!(again, a);
    let d = api.wait_job(WS, &again, &token).await;
    assert_eq!(d["state"], "succeeded", "{d}");
    assert_eq!(d["rerun_of"], a.as_str(), "{d}");
    assert_eq!(d["trigger"], "rerun", "{d}");
    assert_eq!(d["input"], detail["input"], "{d}");
    assert_eq!(d["steps"].as_array().unwrap().len(), 3, "{d}");
    assert_eq!(up.hits("/echo?step=last", "a"), 1);
    let d = api.wait_job(WS, &b, &token).await;
    assert_eq!(d["state"], "succeeded", "{d}");

    // Unknown jobs: 404 for both.
    for action in ["cancel", "rerun"] {
        let r = api
            .post(
                &format!("/v1/workspaces/{WS}/jobs/job_{:032x}/{action}", 7),
                &token,
                &json!({}),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{action}: {}", r.json);
    }
}
