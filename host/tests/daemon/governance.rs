//! Signed bundles and grant review: a workspace that requires signatures
//! refuses unsigned, untrusted, revoked, tampered and downgraded bundles;
//! a version that widens grants waits for an admin while the running one
//! goes on.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use http::{Method, StatusCode};
use serde_json::{Value, json};
use wrun_tests::guests_dir;

use crate::support::{Api, Site};

/// A recipe `sync` of one no-op step with `net` hosts, exported with
/// `wrun export`, signed with `key` (if any) at `version`.
fn sync_bundle(site: &Site, tag: &str, net: &[&str], key: Option<&Path>, version: u64) -> PathBuf {
    let dir = site.dir.join(format!("recipe-sync-{tag}"));
    std::fs::create_dir_all(dir.join("components")).unwrap();
    std::fs::copy(
        guests_dir().join("noop.wasm"),
        dir.join("components/noop.wasm"),
    )
    .unwrap();
    let hosts: Vec<String> = net.iter().map(|h| format!("\"{h}\"")).collect();
    std::fs::write(
        dir.join("recipe.toml"),
        format!(
            "[recipe]\nname = \"sync\"\n\n[trigger]\nkind = \"webhook\"\n\n[[steps]]\nname = \"s0\"\n\
             component = \"components/noop.wasm\"\naction = \"noop\"\ninput = {{ value = \"{{{{ trigger.value }}}}\" }}\n\n\
             [steps.grants]\nnet = [{}]\n",
            hosts.join(", ")
        ),
    )
    .unwrap();
    let out = site.dir.join(format!("sync-{tag}.tgz"));
    let mut cmd = site.wrun();
    cmd.arg("export")
        .arg(dir.join("recipe.toml"))
        .arg("-o")
        .arg(&out)
        .args(["--bundle-version", &version.to_string()]);
    if let Some(key) = key {
        cmd.arg("--sign").arg(key);
    }
    site.ok(&mut cmd);
    out
}

/// A bundle's entries, in order.
fn entries(bundle: &Path) -> Vec<(String, Vec<u8>)> {
    let file = std::fs::File::open(bundle).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

/// Writes `entries` as a bundle at `out`.
fn pack(entries: &[(String, Vec<u8>)], out: &Path) {
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(out).unwrap(),
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(gz);
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, data.as_slice()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

/// A copy of `bundle` with one entry changed by `edit`.
fn tampered(bundle: &Path, entry: &str, edit: impl Fn(&mut Vec<u8>)) -> PathBuf {
    let mut all = entries(bundle);
    let target = all.iter_mut().find(|(n, _)| n == entry).unwrap();
    edit(&mut target.1);
    let out = bundle.with_extension(format!("tampered-{}.tgz", entry.replace('/', "-")));
    pack(&all, &out);
    out
}

async fn run_ok(api: &mut Api, token: &str) {
    let r = api
        .post(
            "/v1/workspaces/team-a/recipes/sync/runs",
            token,
            &json!({ "environment": "prod", "input": { "value": "v" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job("team-a", &job, token).await;
    assert_eq!(detail["state"], "succeeded", "{detail}");
}

fn assert_refused(r: &crate::support::Reply, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{}", r.json);
    assert_eq!(r.json["error"]["code"], code, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_bundles_are_checked_and_widened_grants_wait_for_an_admin() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    site.member("team-a", "olaf", "operator");
    let admin = site.token("team-a", "alice", "*:write");
    let operator = site.token("team-a", "olaf", "*:write");
    let author = site.dir.join("author.key");
    let public = site.ok(site
        .wrun()
        .args(["signing-key", "new", "--out"])
        .arg(&author));
    let public = public.trim().to_string();
    let stranger = site.dir.join("stranger.key");
    site.ok(site
        .wrun()
        .args(["signing-key", "new", "--out"])
        .arg(&stranger));
    let daemon = site.start();
    let mut api = daemon.client().await;

    // Only an admin sets the workspace's rules and trusts keys.
    let rules = json!({ "require_signatures": true, "review_grants": true });
    let r = api
        .put("/v1/workspaces/team-a/governance", &operator, &rules)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    let r = api
        .put("/v1/workspaces/team-a/governance", &admin, &rules)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let keys = "/v1/workspaces/team-a/signing-keys/author";
    let r = api
        .put(keys, &operator, &json!({ "public_key": public }))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    let r = api
        .put(keys, &admin, &json!({ "public_key": "ssh-ed25519 AAAA" }))
        .await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "invalid_key");
    let r = api
        .put(keys, &admin, &json!({ "public_key": public }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);

    // Unsigned, and signed by a key nobody trusts: refused.
    let unsigned = sync_bundle(&site, "unsigned", &[], None, 100);
    let r = api.deploy("team-a", "sync", &operator, &unsigned).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "signature_required");
    let foreign = sync_bundle(&site, "foreign", &[], Some(&stranger), 100);
    let r = api.deploy("team-a", "sync", &operator, &foreign).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "untrusted_key");

    // A first version grants everything anew: it waits for an admin.
    let v100 = sync_bundle(&site, "v100", &[], Some(&author), 100);
    let r = api.deploy("team-a", "sync", &operator, &v100).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    assert_eq!(r.json["status"], "pending_approval");
    assert_eq!(
        r.json["review"]["changes"]["s0"]["added"], true,
        "{}",
        r.json
    );
    let first = r.json["pending"].as_str().unwrap().to_string();
    let r = api
        .post(
            "/v1/workspaces/team-a/recipes/sync/runs",
            &operator,
            &json!({ "environment": "prod", "input": {} }),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "nothing runs yet: {}",
        r.json
    );
    let approve = "/v1/workspaces/team-a/recipes/sync/approve";
    let r = api
        .post(approve, &operator, &json!({ "pending": first }))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    let r = api
        .post(approve, &admin, &json!({ "pending": "0000" }))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.json);
    let r = api
        .post(approve, &admin, &json!({ "pending": first }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    run_ok(&mut api, &operator).await;

    // Version 200 adds a host: it waits, and version 100 keeps running.
    let v200 = sync_bundle(&site, "v200", &["api.github.test"], Some(&author), 200);
    let r = api.deploy("team-a", "sync", &operator, &v200).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    assert_eq!(
        r.json["review"]["changes"]["s0"]["hosts_added"],
        json!(["api.github.test"]),
        "{}",
        r.json
    );
    let widened = r.json["pending"].as_str().unwrap().to_string();
    let r = api
        .get("/v1/workspaces/team-a/recipes/sync", &operator)
        .await;
    assert_eq!(r.json["signed_version"], 100, "{}", r.json);
    assert_eq!(r.json["pending"], widened.as_str());
    run_ok(&mut api, &operator).await;
    let r = api
        .get("/v1/workspaces/team-a/recipes/sync/pending", &operator)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(
        r.json["review"]["steps"]["s0"]["hosts"],
        json!(["api.github.test"])
    );
    assert_eq!(r.json["submitted_by"], "olaf");
    let r = api
        .post(approve, &admin, &json!({ "pending": widened }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .get("/v1/workspaces/team-a/recipes/sync", &operator)
        .await;
    assert_eq!(r.json["signed_version"], 200, "{}", r.json);
    assert_eq!(r.json["pending"], Value::Null);

    // Narrowing needs nobody's approval.
    let v300 = sync_bundle(&site, "v300", &[], Some(&author), 300);
    let r = api.deploy("team-a", "sync", &operator, &v300).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["status"], "running");
    assert_eq!(r.json["review"]["widens"], false);

    // An older signed version is a downgrade.
    let r = api.deploy("team-a", "sync", &operator, &v200).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    assert!(
        r.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("downgrade"),
        "{}",
        r.json
    );

    // A tampered byte anywhere is refused: the manifest (its hash is in the
    // lock), a component (its hash too), the lock itself (the signature).
    let v400 = sync_bundle(&site, "v400", &[], Some(&author), 400);
    let manifest = tampered(&v400, "recipe.toml", |b| {
        b.extend_from_slice(b"\n# edited\n")
    });
    let component = tampered(&v400, "components/s0.wasm", |b| {
        let last = b.len() - 1;
        b[last] ^= 1;
    });
    let lock = tampered(&v400, "wrun-lock.json", |b| {
        let text = String::from_utf8(b.clone()).unwrap().replace("400", "999");
        *b = text.into_bytes();
    });
    for bad in [&manifest, &component, &lock] {
        let r = api.deploy("team-a", "sync", &operator, bad).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{}: {}",
            bad.display(),
            r.json
        );
        let message = r.json["error"]["message"].as_str().unwrap();
        assert!(message.contains("altered"), "{message}");
    }

    // A revoked key signs nothing any more.
    let r = api.send(Method::DELETE, keys, Some(&admin), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api.deploy("team-a", "sync", &operator, &v400).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "revoked_key");
    let r = api
        .put(keys, &admin, &json!({ "public_key": public }))
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "a revoked key stays revoked: {}",
        r.json
    );
    let r = api
        .get("/v1/workspaces/team-a/recipes/sync", &operator)
        .await;
    assert_eq!(
        r.json["signed_version"], 300,
        "nothing replaced it: {}",
        r.json
    );
    run_ok(&mut api, &operator).await;

    // All of it is in the audit log, refusals as denied.
    let r = api
        .get("/v1/workspaces/team-a/audit?limit=500", &admin)
        .await;
    let entries = r.json["entries"].as_array().unwrap();
    let count = |action: &str, outcome: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action && e["outcome"] == outcome)
            .count()
    };
    assert_eq!(count("settings.governance", "success"), 1, "{}", r.json);
    assert_eq!(count("signing_key.trust", "success"), 1);
    assert_eq!(count("signing_key.revoke", "success"), 1);
    assert_eq!(count("recipe.submit", "success"), 2);
    assert_eq!(count("recipe.approve", "success"), 2);
    assert_eq!(count("recipe.deploy", "success"), 1);
    // unsigned, foreign, downgrade, three tampered, revoked
    assert_eq!(count("recipe.deploy", "denied"), 7, "{}", r.json);
    let approvals: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "recipe.approve")
        .collect();
    assert!(approvals.iter().all(|e| e["actor"] == "alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_signs_trusts_and_shows_what_an_import_may_do() {
    let site = Site::new("");
    let author = site.dir.join("author.key");
    let public = site.ok(site
        .wrun()
        .args(["signing-key", "new", "--out"])
        .arg(&author));
    // The key file is the author's secret: never overwritten, never shown.
    let again = site
        .wrun()
        .args(["signing-key", "new", "--out"])
        .arg(&author)
        .output()
        .unwrap();
    assert!(!again.status.success());
    site.ok(site.wrun().args([
        "--workspace",
        "team-a",
        "signing-key",
        "trust",
        "author",
        public.trim(),
    ]));
    let listed = site.ok(site
        .wrun()
        .args(["--workspace", "team-a", "signing-key", "list"]));
    assert!(
        listed.contains("author") && listed.contains("trusted"),
        "{listed}"
    );
    // The workspace's rules, from the shell: an unsigned bundle is refused.
    site.ok(site.wrun().args([
        "--workspace",
        "team-a",
        "signing-key",
        "require",
        "--signatures",
        "true",
        "--grant-review",
        "false",
    ]));
    let unsigned = sync_bundle(&site, "cli-unsigned", &[], None, 6);
    let out = site
        .wrun()
        .args(["--workspace", "team-a", "import"])
        .arg(&unsigned)
        .arg("--into")
        .arg(site.dir.join("imported-unsigned"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("only signed bundles"), "{stderr}");

    let bundle = sync_bundle(&site, "cli", &["api.github.test"], Some(&author), 7);
    let out = site.ok(site
        .wrun()
        .args(["--workspace", "team-a", "import"])
        .arg(&bundle)
        .arg("--into")
        .arg(site.dir.join("imported")));
    // What each step may do, before anything else is said.
    assert!(
        out.contains("s0 (widened): hosts api.github.test; secrets -; properties -"),
        "{out}"
    );
    let out = site
        .wrun()
        .args(["--workspace", "team-a", "--json", "import"])
        .arg(&bundle)
        .arg("--into")
        .arg(site.dir.join("imported-again"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["review"]["steps"]["s0"]["hosts"],
        json!(["api.github.test"]),
        "{json}"
    );
    site.ok(site
        .wrun()
        .args(["--workspace", "team-a", "signing-key", "revoke", "author"]));
    let out = site
        .wrun()
        .args(["--workspace", "team-a", "import"])
        .arg(&bundle)
        .arg("--into")
        .arg(site.dir.join("imported-revoked"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("revoked"), "{text}");
    let key_text = std::fs::read_to_string(&author).unwrap();
    let secret = key_text.trim().split(':').nth(1).unwrap();
    for output in [listed.as_str(), text.as_ref()] {
        assert!(!output.contains(secret));
    }
}
