//! The CLI and the daemon change the same data through the same audited
//! operations: what one writes, the other reads, and every change made from
//! the shell is in the audit log like one made over the API.

use std::io::Write as _;
use std::process::Stdio;

use http::StatusCode;
use serde_json::{Value, json};

use crate::support::{Site, noop_bundle, with_stdin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipe_imported_with_the_cli_runs_through_the_daemon() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let bundle = noop_bundle(&site, "imported", 3);
    site.ok(site
        .wrun()
        .args(["--workspace", "team-a", "import"])
        .arg(&bundle)
        .arg("--into")
        .arg(site.dir.join("imported-dir")));

    let daemon = site.start();
    let mut api = daemon.client().await;
    let r = api
        .get("/v1/workspaces/team-a/recipes/imported", &token)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .post(
            "/v1/workspaces/team-a/recipes/imported/webhooks",
            &token,
            &json!({ "environment": "prod", "signed": false }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let hook = r.json["id"].as_str().unwrap().to_string();
    let r = api
        .send(
            http::Method::POST,
            &format!("/hooks/{hook}"),
            None,
            Some(&json!({ "value": "from the shell" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job("team-a", &job, &token).await;
    assert_eq!(detail["state"], "succeeded", "{detail}");
    assert_eq!(detail["steps"][2]["output"]["value"], "from the shell");

    // The deployment is in the audit log, by the local user.
    let r = api.get("/v1/workspaces/team-a/audit", &token).await;
    let deploys: Vec<&Value> = r.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "recipe.deploy")
        .collect();
    assert_eq!(deploys.len(), 1, "{}", r.json);
    assert!(
        deploys[0]["actor"].as_str().unwrap().starts_with("cli:"),
        "{}",
        r.json
    );
    assert_eq!(deploys[0]["source"], "local");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_environment_changes_from_the_cli_are_audited() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let first = "tok-Vq7Lm2Xz9Rp4Kd8Wn3Hs6-first";
    let second = "tok-Bz4Tq8Lw2Nc6Jy9Hr3Pv5-second";
    let ws = ["--workspace", "team-a"];
    let (ok, out) = with_stdin(
        site.wrun()
            .args(ws)
            .args(["connection", "add", "crm", "--host", "api.crm.test"]),
        &format!("{first}\n"),
    );
    assert!(ok, "{out}");
    // Adding a name that exists is refused, and changes nothing.
    let (ok, out) = with_stdin(
        site.wrun()
            .args(ws)
            .args(["connection", "add", "crm", "--host", "api.crm.test"]),
        &format!("{second}\n"),
    );
    assert!(!ok);
    assert!(out.contains("already exists"), "{out}");
    let (ok, out) = with_stdin(
        site.wrun().args(ws).args(["connection", "update", "crm"]),
        &format!("{second}\n"),
    );
    assert!(ok, "{out}");
    site.ok(site.wrun().args(ws).args([
        "connection",
        "update",
        "crm",
        "--keep-value",
        "--host",
        "eu.crm.test",
    ]));
    // A weak value is refused by the same rule as over the API.
    let (ok, out) = with_stdin(
        site.wrun().args(ws).args(["connection", "update", "crm"]),
        "pin-1234\n",
    );
    assert!(!ok);
    assert!(out.contains("crm"), "{out}");
    site.ok(site
        .wrun()
        .args(ws)
        .args(["env", "set", "--env", "prod", "region=eu"]));
    site.ok(site
        .wrun()
        .args(ws)
        .args(["env", "bind", "--env", "prod", "crm", "crm"]));
    site.ok(site.wrun().args(ws).args(["connection", "rm", "crm"]));
    let (ok, out) = with_stdin(site.wrun().args(ws).args(["connection", "rm", "crm"]), "");
    assert!(!ok);
    assert!(out.contains("no connection `crm`"), "{out}");

    let daemon = site.start();
    let mut api = daemon.client().await;
    let r = api.get("/v1/workspaces/team-a/audit", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let changes: Vec<(String, String)> = r.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"].as_str().unwrap_or_default().starts_with("cli:"))
        .filter(|e| e["action"] != "member.role" && e["action"] != "token.create")
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["target"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("connection.put", "connection:crm"),
        ("connection.put", "connection:crm"),
        ("connection.put", "connection:crm"),
        ("environment.property.set", "environment:prod/region"),
        ("environment.bind", "environment:prod/crm"),
        ("connection.delete", "connection:crm"),
    ]
    .map(|(a, t)| (a.to_string(), t.to_string()));
    assert_eq!(changes, expected, "{}", r.json);
    let text = String::from_utf8_lossy(&r.raw);
    for value in [first, second] {
        assert!(!text.contains(value), "a value reached the audit log");
    }
    // The second update moved the hosts, and says so.
    let hosts: Vec<&Value> = r.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "connection.put")
        .map(|e| &e["detail"]["hosts"])
        .collect();
    assert_eq!(hosts[2], &json!(["eu.crm.test"]), "{}", r.json);
    drop(daemon);

    let out = site.ok(site.wrun().args(["audit", "verify"]));
    assert!(!out.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_key_rotation_from_the_cli_is_audited_in_its_transaction() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let new_key = site.dir.join("new.key");
    site.ok(site
        .wrun()
        .args(["key", "rotate", "--new-key-file"])
        .arg(&new_key));
    let stream = site.ok(site
        .wrun()
        .env("WRUN_KEY_FILE", &new_key)
        .args(["audit", "stream"]));
    let rotations: Vec<Value> = stream
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["action"] == "key.rotate")
        .collect();
    assert_eq!(rotations.len(), 1, "{stream}");
    assert!(rotations[0]["actor"].as_str().unwrap().starts_with("cli:"));
    assert!(rotations[0]["workspace"].is_null());
    // The chain verifies under the new key, not under the old one.
    site.ok(site
        .wrun()
        .env("WRUN_KEY_FILE", &new_key)
        .args(["audit", "verify"]));
    let old = site.wrun().args(["audit", "verify"]).output().unwrap();
    assert!(!old.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_killed_midway_leaves_its_row_and_its_entry_or_neither() {
    use std::collections::BTreeSet;
    use std::time::Instant;

    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let add = |i: usize| {
        let mut child = site
            .wrun()
            .args(["--workspace", "team-a", "connection", "add"])
            .arg(format!("c{i}"))
            .args(["--host", "api.crm.test"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("tok-Vq7Lm2Xz9Rp4Kd8Wn3Hs6-{i:02}\n").as_bytes());
        child
    };
    // How long one whole change takes here, to kill the others at points
    // of it: before the database is opened, while the transaction is
    // open, after the commit.
    let started = Instant::now();
    assert!(add(0).wait().unwrap().success());
    let whole = started.elapsed();
    for i in 1..24 {
        let mut child = add(i);
        // Most of a command's time is start-up; the kills cluster where
        // the storage is opened and the transaction runs.
        let at = whole.mul_f64(0.6 + 0.5 * f64::from(u32::try_from(i).unwrap()) / 23.0);
        std::thread::sleep(at);
        let _ = child.kill();
        let _ = child.wait();
    }
    let listed: BTreeSet<String> = serde_json::from_str::<Value>(&site.ok(site.wrun().args([
        "--workspace",
        "team-a",
        "--json",
        "connection",
        "list",
    ])))
    .unwrap()
    .as_array()
    .unwrap()
    .iter()
    .map(|c| c["name"].as_str().unwrap().to_string())
    .collect();
    let audited: BTreeSet<String> = site
        .ok(site.wrun().args(["audit", "stream"]))
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["action"] == "connection.put")
        .map(|e| {
            e["target"]
                .as_str()
                .unwrap()
                .trim_start_matches("connection:")
                .to_string()
        })
        .collect();
    eprintln!("{} of 24 changes landed; one took {whole:?}", listed.len());
    assert_eq!(
        listed,
        audited,
        "every stored change has its entry and no entry lacks its change ({} of 24 changes landed; one took {whole:?})",
        listed.len()
    );
    site.ok(site.wrun().args(["audit", "verify"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_written_by_the_previous_release_opens_and_migrates() {
    let site = Site::new("");
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/db-2026-12-04");
    std::fs::copy(fixture.join("wrun.db"), site.db()).unwrap();
    std::fs::copy(fixture.join("master.key"), site.dir.join("master.key")).unwrap();
    // A checkout gives files the default mode; wrun refuses a key file
    // others can read, as it should.
    for file in [site.db(), site.dir.join("master.key")] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let ws = ["--workspace", "team-a"];

    // The chain that release wrote verifies; its connection is listed and
    // its value still opens (an update keeping the value re-seals it).
    site.ok(site.wrun().args(["audit", "verify"]));
    let list = site.ok(site.wrun().args(ws).args(["--json", "connection", "list"]));
    assert!(list.contains("\"crm\""), "{list}");
    // That release kept some times in seconds; they read as milliseconds
    // now, on the day the fixture was written.
    let listed: serde_json::Value = serde_json::from_str(&list).unwrap();
    let created = listed[0]["created_at"].as_i64().unwrap();
    assert!(
        (1_796_256_000_000..1_796_515_200_000).contains(&created),
        "{listed}"
    );
    site.ok(site.wrun().args(ws).args([
        "connection",
        "update",
        "crm",
        "--keep-value",
        "--host",
        "eu.crm.test",
    ]));
    let env = site.ok(site
        .wrun()
        .args(ws)
        .args(["--json", "env", "show", "--env", "prod"]));
    assert!(env.contains("region") && env.contains("crm"), "{env}");

    // Its CLI-imported recipe is read like any other (it answered 500
    // before); running it says what is missing, and a new import fixes it.
    let token = site.token("team-a", "alice", "*:write");
    let daemon = site.start();
    let mut api = daemon.client().await;
    let r = api
        .get("/v1/workspaces/team-a/recipes/legacy", &token)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    // The token that release created (an hour's lifetime) has long expired
    // in milliseconds too: it is listed with both times converted.
    let r = api.get("/v1/workspaces/team-a/tokens", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let old = r.json["tokens"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == "ypvmfkqgcocp"))
        .unwrap_or_else(|| panic!("{}", r.json));
    assert_eq!(old["created_at"], 1_796_459_413_000_i64, "{old}");
    assert_eq!(old["expires_at"], 1_796_463_013_000_i64, "{old}");
    let r = api.get("/v1/workspaces/team-a/members", &token).await;
    let alice = r.json["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["subject"] == "alice"))
        .unwrap_or_else(|| panic!("{}", r.json));
    assert_eq!(alice["created_at"], 1_796_459_413_000_i64, "{alice}");
    let run = "/v1/workspaces/team-a/recipes/legacy/runs";
    let body = json!({ "environment": "prod", "input": { "value": "x" } });
    let r = api.post(run, &token, &body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job("team-a", &job, &token).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    assert!(
        detail.to_string().contains("import or deploy it again"),
        "{detail}"
    );
    let bundle = noop_bundle(&site, "legacy", 1);
    site.ok(site
        .wrun()
        .args(ws)
        .arg("import")
        .arg(&bundle)
        .arg("--into")
        .arg(site.dir.join("legacy-again")));
    let r = api.post(run, &token, &body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job("team-a", &job, &token).await;
    assert_eq!(detail["state"], "succeeded", "{detail}");
}
