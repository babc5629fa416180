//! Load generator for `wrun serve`: webhook -> 3-step job, end to end.
//!
//! It sets up a site (key, member, token, a 3-step recipe of the `noop`
//! fixture, an unsigned webhook), starts the release `wrun serve` on
//! loopback, sends webhooks at a target rate from several connections for a
//! while, waits for every job to end, and reports:
//!
//! - sustained jobs per second (completed jobs / time from the first
//!   webhook to the last completion);
//! - the 202 latency seen by the client (every webhook is committed to
//!   disk before its 202);
//! - webhook -> job completion latency, from the daemon's own timestamps
//!   (`created_at` when the webhook arrived, `finished_at` when the job's
//!   end was committed; millisecond resolution).
//!
//! ```sh
//! cargo build --release -p wrun -p wrun-benches
//! target/release/wrun-load --rate 2000 --seconds 10
//! target/release/wrun-load --lang js --rate 2000 --seconds 10
//! target/release/wrun-load --lang js --respond --rate 1000 --seconds 10
//! ```
//!
//! `--lang rust|js|python` picks the language of the `noop` fixture the
//! three steps run (built by `cargo xtask guests`). `--respond` makes the
//! webhook an endpoint (response mode): each request waits for its job and
//! is answered with the last step's output, so the client's latency is the
//! whole webhook -> answer time.
//!
//! `--baseline 127.0.0.1:8080` instead sends the same POSTs, at the same
//! rate, over plain HTTP to a `wasmtime serve` of the `hello-http` fixture.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::Value;
use wrun_tests::{DirectClient, TestPki, guests_dir, guests_js_dir, guests_py_dir};

struct Args {
    wrun: PathBuf,
    rate: f64,
    seconds: f64,
    connections: usize,
    workers: usize,
    /// Instead of wrun: send the same webhooks over plain HTTP to this
    /// address (a `wasmtime serve` of the hello-http fixture).
    baseline: Option<std::net::SocketAddr>,
    /// The language of the steps' `noop` component.
    lang: String,
    /// Endpoint mode: each request waits for its job's answer.
    respond: bool,
}

fn args() -> Args {
    let mut a = Args {
        wrun: PathBuf::from("target/release/wrun"),
        rate: 2000.0,
        seconds: 10.0,
        connections: 32,
        workers: 64,
        baseline: None,
        lang: "rust".into(),
        respond: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--respond" {
            a.respond = true;
            continue;
        }
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--wrun" => a.wrun = value.into(),
            "--rate" => a.rate = value.parse().unwrap(),
            "--seconds" => a.seconds = value.parse().unwrap(),
            "--connections" => a.connections = value.parse().unwrap(),
            "--workers" => a.workers = value.parse().unwrap(),
            "--baseline" => a.baseline = Some(value.parse().unwrap()),
            "--lang" => a.lang = value,
            other => panic!("unknown flag {other}"),
        }
    }
    a.wrun = std::fs::canonicalize(&a.wrun).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (build it with cargo build --release -p wrun)",
            a.wrun.display()
        )
    });
    a
}

fn wrun(bin: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir)
        .env("WRUN_DB", dir.join("wrun.db"))
        .env("WRUN_KEY_FILE", dir.join("master.key"))
        .env("WRUN_CACHE_DIR", dir.join("cache"))
        .env_remove("RUST_LOG")
        .env_remove("WRUN_LOG");
    cmd
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sends POSTs at the target rate over plain HTTP to `addr` and reports
/// throughput and latency (the `wasmtime serve` baseline).
async fn baseline(a: &Args, addr: std::net::SocketAddr) {
    let (connections, seconds, rate) = (a.connections, a.seconds, a.rate);
    let started = Instant::now();
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let deadline = Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut client = DirectClient::connect_plain(addr).await.unwrap();
            let mut lat = Vec::new();
            let mut next = started + interval.mul_f64(c as f64 / connections as f64);
            let mut n = 0u64;
            while started.elapsed() < deadline {
                let now = Instant::now();
                if next > now {
                    tokio::time::sleep(next - now).await;
                }
                next += interval;
                let t0 = Instant::now();
                let req = Request::builder()
                    .method(Method::POST)
                    .uri("/")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(format!(r#"{{"order":"c{c}-{n}"}}"#))))
                    .unwrap();
                let (s, _, _) = client.send(req).await.unwrap();
                assert!(s.is_success());
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                n += 1;
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let took = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    println!(
        "baseline {addr}: {} requests in {took:.2} s ({:.0}/s); latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        lat.len() as f64 / took,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    if let Some(addr) = a.baseline {
        baseline(&a, addr).await;
        return;
    }
    let dir = std::env::temp_dir().join(format!("wrun-load-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(dir.join("recipe/components")).unwrap();
    let pki = TestPki::new(&["localhost"]);
    std::fs::write(dir.join("tls.crt"), pki.server_cert_pem()).unwrap();
    std::fs::write(dir.join("tls.key"), pki.server_key_pem()).unwrap();
    std::fs::write(
        dir.join("wrun.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n[limits]\nwebhook_per_second = 1000000\nwebhook_burst = 1000000\nrequests_per_second = 100000\nburst = 100000\n[workers]\nconcurrency = {w}\nper_workspace = {w}\n",
            dir.join("tls.crt").display(),
            dir.join("tls.key").display(),
            w = a.workers
        ),
    )
    .unwrap();
    let components = match a.lang.as_str() {
        "rust" => guests_dir(),
        "js" => guests_js_dir(),
        "python" => guests_py_dir(),
        other => panic!("--lang {other}: rust, js or python"),
    };
    std::fs::copy(
        components.join("noop.wasm"),
        dir.join("recipe/components/noop.wasm"),
    )
    .unwrap();
    // The Python fixtures are built with the whole world (its `noop` too),
    // so its steps need every grant, and a connection for the secret one.
    let grants = if a.lang == "python" {
        "\n[steps.grants]\nnet = [\"unused.test\"]\nsecrets = { api = \"api\" }\nenv = [\"unused\"]\n"
    } else {
        ""
    };
    let mut recipe = String::from("[recipe]\nname = \"three\"\n\n[trigger]\nkind = \"webhook\"\n");
    for (name, input) in [
        (
            "a",
            r#"{ order = "{{ trigger.order }}", stage = "received" }"#,
        ),
        (
            "b",
            r#"{ order = "{{ steps.a.order }}", stage = "enriched" }"#,
        ),
        (
            "c",
            r#"{ order = "{{ steps.b.order }}", stage = "delivered" }"#,
        ),
    ] {
        recipe.push_str(&format!(
            "\n[[steps]]\nname = \"{name}\"\ncomponent = \"components/noop.wasm\"\naction = \"noop\"\ninput = {input}\n{grants}"
        ));
    }
    std::fs::write(dir.join("recipe/recipe.toml"), recipe).unwrap();
    ok(wrun(&a.wrun, &dir).args(["key", "init"]));
    ok(wrun(&a.wrun, &dir).args(["member", "set", "bench", "admin"]));
    let token = ok(wrun(&a.wrun, &dir).args([
        "token",
        "create",
        "--name",
        "bench",
        "--owner",
        "bench",
        "--scope",
        "*:write",
        "--expires-in",
        "1h",
    ]))
    .trim()
    .to_string();
    ok(wrun(&a.wrun, &dir)
        .args(["export", "recipe/recipe.toml", "-o"])
        .arg(dir.join("three.tgz")));

    let mut child = wrun(&a.wrun, &dir)
        .args(["serve", "--config"])
        .arg(dir.join("wrun.toml"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("wrun serve: listening on https://")
        .unwrap()
        .parse()
        .unwrap();
    let ca = pki.ca_pem();
    let mut admin = DirectClient::connect(addr, "127.0.0.1", &ca).await.unwrap();
    let send = |method: Method, path: &str, body: Bytes, ctype: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", ctype)
            .body(Full::new(body))
            .unwrap()
    };
    if a.lang == "python" {
        let (s, _, b) = admin
            .send(send(
                Method::PUT,
                "/v1/workspaces/default/connections/api",
                Bytes::from(r#"{"value":"unused-bench-secret-7c1d","hosts":["unused.test"]}"#),
                "application/json",
            ))
            .await
            .unwrap();
        assert!(s.is_success(), "{s} {b:?}");
    }
    let (s, _, b) = admin
        .send(send(
            Method::PUT,
            "/v1/workspaces/default/recipes/three",
            Bytes::from(std::fs::read(dir.join("three.tgz")).unwrap()),
            "application/gzip",
        ))
        .await
        .unwrap();
    assert!(s.is_success(), "{s} {b:?}");
    let (_, _, b) = admin
        .send(send(
            Method::POST,
            "/v1/workspaces/default/recipes/three/webhooks",
            Bytes::from(if a.respond {
                r#"{"environment":"prod","signed":false,"respond":{"timeout_ms":10000}}"#
            } else {
                r#"{"environment":"prod","signed":false}"#
            }),
            "application/json",
        ))
        .await
        .unwrap();
    let hook: Value = serde_json::from_slice(&b).unwrap();
    let hook_path = format!("/hooks/{}", hook["id"].as_str().unwrap());

    // Warm up: compile and load the recipe once.
    let mut warm = DirectClient::connect(addr, "127.0.0.1", &ca).await.unwrap();
    for i in 0..50 {
        let req = Request::builder()
            .method(Method::POST)
            .uri(&hook_path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(r#"{{"order":"warm-{i}"}}"#))))
            .unwrap();
        warm.send(req).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let per_conn = a.rate / a.connections as f64;
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let deadline = Duration::from_secs_f64(a.seconds);
    let hook_path = Arc::new(hook_path);
    let mut tasks = Vec::new();
    let respond = a.respond;
    for c in 0..a.connections {
        let (ca, hook_path) = (ca.clone(), Arc::clone(&hook_path));
        tasks.push(tokio::spawn(async move {
            let mut client = DirectClient::connect(addr, "127.0.0.1", &ca).await.unwrap();
            let mut lat = Vec::new();
            let mut ids = Vec::new();
            let mut next = started + interval.mul_f64(c as f64 / a.connections as f64);
            let mut n = 0u64;
            while started.elapsed() < deadline {
                let now = Instant::now();
                if next > now {
                    tokio::time::sleep(next - now).await;
                }
                next += interval;
                let t0 = Instant::now();
                let req = Request::builder()
                    .method(Method::POST)
                    .uri(hook_path.as_str())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(format!(r#"{{"order":"c{c}-{n}"}}"#))))
                    .unwrap();
                let (s, h, b) = client.send(req).await.unwrap();
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                let v: Value = serde_json::from_slice(&b).unwrap();
                if respond {
                    // The answer is the last step's output.
                    assert_eq!(s.as_u16(), 200, "{b:?}");
                    assert_eq!(v["stage"], "delivered", "{v}");
                    assert_eq!(v["order"], format!("c{c}-{n}"), "{v}");
                    ids.push(h["wrun-job"].to_str().unwrap().to_string());
                } else {
                    assert_eq!(s.as_u16(), 202, "{b:?}");
                    ids.push(v["job"].as_str().unwrap().to_string());
                }
                n += 1;
            }
            (lat, ids)
        }));
    }
    let mut ack = Vec::new();
    let mut ids = Vec::new();
    for t in tasks {
        let (l, i) = t.await.unwrap();
        ack.extend(l);
        ids.extend(i);
    }
    let sent_for = started.elapsed();

    // Wait for every job to end, then read the daemon's timestamps (on a
    // new connection: the daemon closes connections idle for 10 s).
    let mut admin = DirectClient::connect(addr, "127.0.0.1", &ca).await.unwrap();
    let wanted: std::collections::HashSet<String> = ids.iter().cloned().collect();
    let mut seen: std::collections::HashMap<String, (i64, i64, String)> = Default::default();
    let wait_until = Instant::now() + Duration::from_secs(120);
    loop {
        seen.clear();
        let mut before: Option<String> = None;
        loop {
            let path = match before {
                Some(b) => format!("/v1/workspaces/default/jobs?limit=500&before={b}"),
                None => "/v1/workspaces/default/jobs?limit=500".to_string(),
            };
            let (_, _, b) = admin
                .send(send(Method::GET, &path, Bytes::new(), "application/json"))
                .await
                .unwrap();
            let v: Value = serde_json::from_slice(&b).unwrap();
            let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
            if jobs.is_empty() {
                break;
            }
            for j in &jobs {
                let id = j["id"].as_str().unwrap().to_string();
                if wanted.contains(&id) {
                    seen.insert(
                        id,
                        (
                            j["created_at"].as_i64().unwrap_or(0),
                            j["finished_at"].as_i64().unwrap_or(0),
                            j["state"].as_str().unwrap_or_default().to_string(),
                        ),
                    );
                }
            }
            before = jobs.last().and_then(|j| j["id"].as_str().map(String::from));
        }
        let done = seen.values().filter(|(_, f, _)| *f > 0).count();
        if done == wanted.len() || Instant::now() > wait_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    let succeeded = seen.values().filter(|(_, _, s)| s == "succeeded").count();
    let first = seen.values().map(|(c, _, _)| *c).min().unwrap_or(0);
    let last = seen.values().map(|(_, f, _)| *f).max().unwrap_or(0);
    let mut e2e: Vec<f64> = seen
        .values()
        .filter(|(_, f, _)| *f > 0)
        .map(|(c, f, _)| (f - c) as f64)
        .collect();
    e2e.sort_by(f64::total_cmp);
    ack.sort_by(f64::total_cmp);
    let span = (last - first) as f64 / 1000.0;
    println!(
        "{} steps{}; target rate {:.0}/s over {} connections for {:.1} s; workers {}",
        a.lang,
        if a.respond {
            ", endpoint (response mode)"
        } else {
            ""
        },
        a.rate,
        a.connections,
        a.seconds,
        a.workers
    );
    println!(
        "sent {} webhooks in {:.2} s ({:.0}/s offered), {} {}",
        ids.len(),
        sent_for.as_secs_f64(),
        ids.len() as f64 / sent_for.as_secs_f64(),
        ack.len(),
        if a.respond {
            "answered (200)"
        } else {
            "acknowledged (202)"
        }
    );
    println!(
        "jobs: {} succeeded of {} ({} lost); sustained {:.0} jobs/s (first webhook to last completion: {:.2} s)",
        succeeded,
        ids.len(),
        ids.len() - seen.len(),
        succeeded as f64 / span,
        span
    );
    println!(
        "{} latency (client): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        if a.respond { "answer" } else { "202" },
        percentile(&ack, 0.5),
        percentile(&ack, 0.99),
        ack.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "webhook -> completion (daemon timestamps, ms resolution): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&e2e, 0.5),
        percentile(&e2e, 0.99),
        e2e.last().copied().unwrap_or(f64::NAN)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
