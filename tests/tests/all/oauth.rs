//! The host's own OAuth2 token requests meet the rules of guest requests:
//! HTTPS only, every resolved address classified before a connection, the
//! operator's CAs, no redirect followed; a refusal keeps the provider's
//! code and never a secret.

use wrun_runtime::SecretValue;
use wrun_runtime::oauth::{GrantKind, OAuthClientConfig, TokenError};

use crate::common::{AUTH, TestEnv};

fn config(token_url: String) -> OAuthClientConfig {
    OAuthClientConfig {
        grant: GrantKind::ClientCredentials,
        token_url,
        authorize_url: None,
        client_id: "wrun-app".into(),
        scopes: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_request_goes_through_the_egress_rules() {
    let env = TestEnv::new().await;
    let secret = SecretValue::new(wrun_tests::canary("client-secret"));
    env.server.set_expected_client_secret(secret.expose());
    let tokens = env.engine.token_client();

    let issued = tokens
        .client_credentials(&config(env.url(AUTH, "/oauth/token")), &secret)
        .await
        .expect("a token from the mock");
    assert!(
        env.server
            .issued_tokens()
            .contains(&issued.access.expose().to_string())
    );
    let sent = env.server.requests();
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0]
            .header("authorization")
            .is_some_and(|h| h.starts_with("Basic ")),
        "the client authenticates with HTTP Basic: {:?}",
        sent[0]
    );

    // A wrong secret: the provider's code, no secret in the message.
    let wrong = SecretValue::new(wrun_tests::canary("wrong-secret"));
    let err = tokens
        .client_credentials(&config(env.url(AUTH, "/oauth/token")), &wrong)
        .await
        .expect_err("a wrong secret is refused");
    assert!(
        matches!(&err, TokenError::Rejected { code, .. } if code == "invalid_client"),
        "{err:?}"
    );
    assert!(err.needs_reauthorization());
    assert!(!err.to_string().contains(wrong.expose()), "{err}");

    // A private address, a redirect, a 5xx: refused or reported, never
    // followed, and nothing else reached the mock.
    let before = env.server.requests().len();
    let private = format!("https://internal.test:{}/oauth/token", env.server.port());
    let err = tokens
        .client_credentials(&config(private), &secret)
        .await
        .expect_err("a private address is refused");
    assert!(
        matches!(&err, TokenError::Unavailable(m) if m.contains("refused address")),
        "{err:?}"
    );
    let redirect = env.url(
        AUTH,
        &format!("/redirect?to={}", env.url(AUTH, "/oauth/token")),
    );
    let err = tokens
        .client_credentials(&config(redirect), &secret)
        .await
        .expect_err("a redirect is not followed");
    assert!(!err.needs_reauthorization(), "{err:?}");
    let err = tokens
        .client_credentials(&config(env.url(AUTH, "/status/503")), &secret)
        .await
        .expect_err("a 5xx is a failure that may pass");
    assert!(
        matches!(&err, TokenError::Unavailable(m) if m.contains("503")),
        "{err:?}"
    );
    let paths: Vec<String> = env.server.requests()[before..]
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert_eq!(
        paths.len(),
        2,
        "one request each, no redirect followed: {paths:?}"
    );
    assert!(paths[0].starts_with("/redirect"), "{paths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_on_a_refused_network_is_never_contacted() {
    let env = TestEnv::strict().await;
    let secret = SecretValue::new(wrun_tests::canary("client-secret"));
    let err = env
        .engine
        .token_client()
        .client_credentials(&config(env.url(AUTH, "/oauth/token")), &secret)
        .await
        .expect_err("loopback is refused by default");
    assert!(
        matches!(&err, TokenError::Unavailable(m) if m.contains("refused address")),
        "{err:?}"
    );
    assert!(env.server.requests().is_empty());
    assert_eq!(
        env.connector
            .attempts
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}
