//! Endpoint recipes: webhooks in response mode answer with their job's
//! result, within limits, and the job is in the history like any other.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::crash::{WS, deploy, site};
use crate::support::{Api, bundle, bundle_of, with_stdin};

/// A recipe whose one step returns its whole trigger (`input = "{{ trigger }}"`).
const ECHO: &str = "[recipe]\nname = \"echo\"\n\n[trigger]\nkind = \"manual\"\n\n[[steps]]\nname = \"reply\"\ncomponent = \"components/noop.wasm\"\naction = \"noop\"\ninput = \"{{ trigger }}\"\n";

/// A recipe that answers with its first step's output, not its last's.
const NAMED: &str = "[recipe]\nname = \"named\"\noutput = \"reply\"\n\n[[steps]]\nname = \"reply\"\ncomponent = \"components/noop.wasm\"\naction = \"noop\"\ninput = \"{{ trigger }}\"\n\n[[steps]]\nname = \"audit\"\ncomponent = \"components/noop.wasm\"\naction = \"noop\"\ninput = { logged = \"{{ steps.reply.id }}\" }\n";

/// A recipe whose step sleeps for `trigger.ms`.
const SLOW: &str = "[recipe]\nname = \"slow\"\n\n[trigger]\nkind = \"manual\"\n\n[[steps]]\nname = \"nap\"\ncomponent = \"components/hostile.wasm\"\naction = \"sleep\"\ninput = { ms = \"{{ trigger.ms }}\" }\n\n[steps.grants]\nnet = [\"unused.test\"]\nsecrets = { api = \"api\" }\nenv = [\"unused\"]\ntimeout = \"60s\"\n";

/// A recipe whose step marks the trigger's token as secret and returns it
/// with the placeholder of connection `api`.
const LEAKY: &str = "[recipe]\nname = \"leaky\"\n\n[trigger]\nkind = \"manual\"\n\n[[steps]]\nname = \"tell\"\ncomponent = \"components/hostile.wasm\"\naction = \"reveal\"\ninput = { value = \"{{ trigger.token }}\", mark = true, secret = \"api\", how = \"output\" }\n\n[steps.grants]\nnet = [\"unused.test\"]\nsecrets = { api = \"api\" }\nenv = [\"unused\"]\n";

/// Creates an unsigned webhook in response mode; returns its id.
async fn endpoint(api: &mut Api, token: &str, recipe: &str, respond: Value) -> String {
    let r = api
        .post(
            &format!("/v1/workspaces/{WS}/recipes/{recipe}/webhooks"),
            token,
            &json!({ "environment": "prod", "signed": false, "respond": respond }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert_eq!(
        r.json["respond"]["timeout_ms"], respond["timeout_ms"],
        "{}",
        r.json
    );
    r.json["id"].as_str().unwrap().to_string()
}

/// Delivers `payload`, with an idempotency key if given.
async fn deliver(
    api: &mut Api,
    hook: &str,
    payload: &Value,
    key: Option<&str>,
) -> crate::support::Reply {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("/hooks/{hook}"))
        .header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let body = Bytes::from(serde_json::to_vec(payload).unwrap());
    api.raw(req.body(Full::new(body)).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_step_the_manifest_names_answers() {
    let (site, token) = site("");
    let named = bundle(&site, "named", "noop.wasm", NAMED);
    let daemon = site.start();
    let mut api = daemon.client().await;
    deploy(&mut api, &token, "named", &named).await;
    let hook = endpoint(&mut api, &token, "named", json!({ "timeout_ms": 20000 })).await;
    let payload = json!({ "id": 7, "status": "open" });
    let r = deliver(&mut api, &hook, &payload, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json, payload);
    // Both steps ran; the last one's output is in the history, not the answer.
    let job = r.headers["wrun-job"].to_str().unwrap().to_string();
    let detail = api.wait_job(WS, &job, &token).await;
    assert_eq!(detail["steps"][1]["step"], "audit", "{detail}");
    assert_eq!(
        detail["steps"][1]["output"],
        json!({ "logged": 7 }),
        "{detail}"
    );
}

/// A burst of webhooks right after a deploy loads the recipe once: the
/// jobs that find it missing wait for the first load instead of each
/// compiling a 12 MB JavaScript component again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_jobs_loads_the_recipe_once() {
    let (site, token) = site("");
    let text = NAMED.replace("name = \"named\"", "name = \"burst\"");
    let burst = bundle_of(
        &site,
        "burst",
        &wrun_tests::guests_js_dir().join("noop.wasm"),
        &text,
    );
    let daemon = site.start();
    let mut api = daemon.client().await;
    deploy(&mut api, &token, "burst", &burst).await;
    let r = api
        .post(
            &format!("/v1/workspaces/{WS}/recipes/burst/webhooks"),
            &token,
            &json!({ "environment": "prod", "signed": false }),
        )
        .await;
    let hook = r.json["id"].as_str().unwrap().to_string();
    let mut jobs = Vec::new();
    for i in 0..12 {
        let r = deliver(&mut api, &hook, &json!({ "id": i }), None).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
        jobs.push(r.json["job"].as_str().unwrap().to_string());
    }
    for job in &jobs {
        let detail = api.wait_job(WS, job, &token).await;
        assert_eq!(detail["state"], "succeeded", "{detail}");
    }
    let r = api.send(Method::GET, "/metrics", None, None).await;
    let metrics = String::from_utf8_lossy(&r.raw).into_owned();
    assert!(
        metrics.lines().any(|l| l == "wrun_recipe_loads_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_recipe_answers_with_its_output() {
    let (site, token) = site("");
    let echo = bundle(&site, "echo", "noop.wasm", ECHO);
    let daemon = site.start();
    let mut api = daemon.client().await;
    deploy(&mut api, &token, "echo", &echo).await;
    let hook = endpoint(&mut api, &token, "echo", json!({ "timeout_ms": 20000 })).await;

    // The whole trigger went in as the step's input and came back out.
    let payload = json!({ "order": { "id": 9, "items": [1, 2] }, "note": "é" });
    let r = deliver(&mut api, &hook, &payload, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json, payload);
    let job = r.headers["wrun-job"].to_str().unwrap().to_string();
    let detail = api.wait_job(WS, &job, &token).await;
    assert_eq!(detail["state"], "succeeded", "{detail}");
    assert_eq!(detail["input"], payload, "{detail}");
    assert_eq!(detail["steps"][0]["output"], payload, "{detail}");

    // An envelope sets status, headers and body.
    let envelope = json!({
        "status": 201,
        "headers": { "Location": "/orders/9", "x-trace": "t-1" },
        "body": { "id": 9 }
    });
    let r = deliver(&mut api, &hook, &envelope, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    assert_eq!(r.headers["location"], "/orders/9");
    assert_eq!(r.headers["x-trace"], "t-1");
    assert_eq!(r.json, json!({ "id": 9 }));

    // A cookie or a framing header is the daemon's, not the recipe's.
    for header in ["set-cookie", "transfer-encoding", "content-length"] {
        let bad = json!({ "status": 200, "headers": { header: "x" }, "body": 1 });
        let r = deliver(&mut api, &hook, &bad, None).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{header}: {}", r.json);
        assert_eq!(r.json["error"]["code"], "invalid_response", "{}", r.json);
        assert!(r.headers.get("set-cookie").is_none());
    }

    // A repeated delivery answers with the first job's result, not a new job.
    let first = deliver(&mut api, &hook, &json!({ "n": 1 }), Some("k-1")).await;
    let again = deliver(&mut api, &hook, &json!({ "n": 2 }), Some("k-1")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(first.json, json!({ "n": 1 }));
    assert_eq!(again.json, json!({ "n": 1 }));
    assert_eq!(first.headers["wrun-job"], again.headers["wrun-job"]);

    // A plain webhook of the same recipe still answers 202 at once.
    let r = api
        .post(
            &format!("/v1/workspaces/{WS}/recipes/echo/webhooks"),
            &token,
            &json!({ "environment": "prod", "signed": false }),
        )
        .await;
    let plain = r.json["id"].as_str().unwrap().to_string();
    let r = deliver(&mut api, &plain, &payload, None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);

    // The operator's bound on the wait holds.
    let r = api
        .post(
            &format!("/v1/workspaces/{WS}/recipes/echo/webhooks"),
            &token,
            &json!({ "environment": "prod", "signed": false, "respond": { "timeout_ms": 3_600_000 } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "invalid_timeout", "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_times_out_answers_504_and_goes_on_or_cancels() {
    let (site, token) = site("");
    let (ok, out) = with_stdin(
        site.wrun().args(["--workspace", WS]).args([
            "connection",
            "add",
            "api",
            "--host",
            "unused.test",
        ]),
        "tok-Vq7Lm2Xz9Rp4Kd8Wn3Hs6\n",
    );
    assert!(ok, "{out}");
    let slow = bundle(&site, "slow", "hostile.wasm", SLOW);
    let daemon = site.start();
    let mut api = daemon.client().await;
    deploy(&mut api, &token, "slow", &slow).await;
    let going_on = endpoint(&mut api, &token, "slow", json!({ "timeout_ms": 300 })).await;
    let cancelling = endpoint(
        &mut api,
        &token,
        "slow",
        json!({ "timeout_ms": 300, "on_timeout": "cancel" }),
    )
    .await;

    let started = std::time::Instant::now();
    let r = deliver(&mut api, &going_on, &json!({ "ms": 1500 }), None).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "timeout", "{}", r.json);
    assert!(started.elapsed() < std::time::Duration::from_millis(1400));
    let job = r.headers["wrun-job"].to_str().unwrap().to_string();
    let detail = api.wait_job(WS, &job, &token).await;
    assert_eq!(detail["state"], "succeeded", "the job went on: {detail}");

    let r = deliver(&mut api, &cancelling, &json!({ "ms": 1500 }), None).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.json);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cancelled"),
        "{}",
        r.json
    );
    let job = r.headers["wrun-job"].to_str().unwrap().to_string();
    let detail = api.wait_job(WS, &job, &token).await;
    assert_eq!(detail["state"], "cancelled", "{detail}");
    let audit = api.get(&format!("/v1/workspaces/{WS}/audit"), &token).await;
    assert!(
        audit.json["entries"].as_array().unwrap().iter().any(|e| {
            e["action"] == "job.cancel"
                && e["target"] == format!("job:{job}")
                && e["actor"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("webhook:")
        }),
        "{}",
        audit.json
    );

    // The answer is built from the masked history: a value the step marked
    // secret and the connection's value are not in it.
    let leaky = bundle(&site, "leaky", "hostile.wasm", LEAKY);
    deploy(&mut api, &token, "leaky", &leaky).await;
    let hook = endpoint(&mut api, &token, "leaky", json!({ "timeout_ms": 30000 })).await;
    let canary = "canary-Jq8Wz3Lm7Xp2Rv5Kt9";
    let r = deliver(&mut api, &hook, &json!({ "token": canary }), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let text = String::from_utf8_lossy(&r.raw);
    assert!(text.contains("marked="), "{text}");
    assert!(!text.contains(canary), "{text}");
    assert!(!text.contains("tok-Vq7Lm2Xz9Rp4Kd8Wn3Hs6"), "{text}");

    // A step that fails answers 502 with the job's masked error.
    let patient = endpoint(&mut api, &token, "slow", json!({ "timeout_ms": 30000 })).await;
    let r = deliver(&mut api, &patient, &json!({ "ms": "not a number" }), None).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "job_failed", "{}", r.json);
}
