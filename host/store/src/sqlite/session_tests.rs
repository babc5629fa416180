//! Console sessions in the store: kept as a hash, ended with their token
//! or their member in the same transaction, swept after their idle timeout
//! or their end, the idle timeout bounded.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::audit::Outcome;
use crate::sessions::{ConsoleSession, SessionKind};

fn entry(action: &str) -> Entry {
    Entry {
        workspace: Some("ws".into()),
        actor: "alice".into(),
        action: action.into(),
        target: "console".into(),
        source: None,
        outcome: Outcome::Success,
        detail: json!({}),
    }
}

fn session(id: &str, subject: &str, kind: SessionKind, now: UnixMillis) -> ConsoleSession {
    ConsoleSession {
        id_hash: crate::sha256_hex(id.as_bytes()),
        workspace: "ws".into(),
        subject: subject.into(),
        kind,
        created_at: now,
        last_seen: now,
        expires_at: now.saturating_add(Duration::from_secs(8 * 3600)),
        ip: "127.0.0.1".into(),
    }
}

fn token(id: &str, owner: &str) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        workspace: "ws".into(),
        name: "t".into(),
        hash: [7; 32],
        owner: owner.into(),
        creator: owner.into(),
        scopes: PermissionSet::ALL,
        allow_ips: vec![],
        created_at: UnixMillis::now(),
        expires_at: UnixMillis::now().saturating_add(Duration::from_secs(3600)),
        revoked_at: None,
        last_used_at: None,
        last_used_ip: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_with_their_token_their_member_and_their_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let storage =
        SqliteStorage::open(&dir.path().join("wrun.db"), MasterKey::generate(), None).unwrap();
    let s: &dyn Storage = &storage;
    let now = UnixMillis::now();
    s.set_member("ws", "alice", "admin", entry("member.set"))
        .await
        .unwrap();
    s.set_member("ws", "bob", "analyst", entry("member.set"))
        .await
        .unwrap();
    s.create_token(token("tok_a", "alice"), entry("token.create"))
        .await
        .unwrap();
    s.create_token(token("tok_b", "bob"), entry("token.create"))
        .await
        .unwrap();
    let a = session(
        "secret-a",
        "alice",
        SessionKind::Token {
            token_id: "tok_a".into(),
        },
        now,
    );
    let b = session(
        "secret-b",
        "bob",
        SessionKind::Token {
            token_id: "tok_b".into(),
        },
        now,
    );
    let o = session(
        "secret-o",
        "oidc:carol",
        SessionKind::Oidc {
            role: "operator".into(),
        },
        now,
    );
    for x in [&a, &b, &o] {
        s.create_session(x.clone(), entry("console.sign_in"))
            .await
            .unwrap();
    }
    // Read back, with the default idle timeout; only the hash is stored.
    let (read, idle) = s.session(&a.id_hash).await.unwrap().unwrap();
    assert_eq!(read, a);
    assert_eq!(idle, crate::sessions::DEFAULT_IDLE_SECS);
    assert!(
        s.session(&crate::sha256_hex(b"unknown"))
            .await
            .unwrap()
            .is_none()
    );
    let bytes = std::fs::read(dir.path().join("wrun.db")).unwrap_or_default();
    assert!(!bytes.windows(8).any(|w| w == b"secret-a"));

    // Revoking a token ends its sessions in the same transaction.
    assert!(
        s.revoke_token("ws", "tok_b", entry("token.revoke"))
            .await
            .unwrap()
    );
    assert!(s.session(&b.id_hash).await.unwrap().is_none());
    assert!(s.session(&a.id_hash).await.unwrap().is_some());
    // Removing a member ends theirs.
    s.create_session(
        session(
            "secret-a2",
            "bob",
            SessionKind::Oidc {
                role: "analyst".into(),
            },
            now,
        ),
        entry("console.sign_in"),
    )
    .await
    .unwrap();
    assert!(
        s.remove_member("ws", "bob", entry("member.remove"))
            .await
            .unwrap()
    );
    assert!(
        s.session(&crate::sha256_hex(b"secret-a2"))
            .await
            .unwrap()
            .is_none()
    );

    // The idle timeout is bounded, and the sweep follows it.
    let err = s
        .set_session_idle_secs("ws", Some(10), entry("settings"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("60"), "{err}");
    s.set_session_idle_secs("ws", Some(120), entry("settings"))
        .await
        .unwrap();
    assert_eq!(s.session_idle_secs("ws").await.unwrap(), 120);
    assert_eq!(
        s.sweep_sessions(now.saturating_add(Duration::from_secs(60)))
            .await
            .unwrap(),
        0
    );
    // A touch moves the idle clock (batched: wait for it).
    s.touch_session(&a.id_hash, now.saturating_add(Duration::from_secs(100)))
        .await
        .unwrap();
    for _ in 0..100 {
        let (seen, _) = s.session(&a.id_hash).await.unwrap().unwrap();
        if seen.last_seen > now {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 130 s on: the OIDC session (unused since `now`) is past 120 s idle,
    // alice's (touched at 100 s) is not.
    assert_eq!(
        s.sweep_sessions(now.saturating_add(Duration::from_secs(130)))
            .await
            .unwrap(),
        1
    );
    assert!(s.session(&o.id_hash).await.unwrap().is_none());
    assert!(s.session(&a.id_hash).await.unwrap().is_some());
    // A sign-out ends it once, audited once.
    assert!(
        s.end_session(&a.id_hash, Some(entry("console.sign_out")))
            .await
            .unwrap()
    );
    assert!(
        !s.end_session(&a.id_hash, Some(entry("console.sign_out")))
            .await
            .unwrap()
    );
    let log = s.read_audit("ws", 0, 1000).await.unwrap();
    assert_eq!(
        log.iter()
            .filter(|e| e.action == "console.sign_out")
            .count(),
        1
    );
    assert_eq!(
        log.iter().filter(|e| e.action == "console.sign_in").count(),
        4
    );
}
