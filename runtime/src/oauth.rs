//! OAuth2 token requests the host makes for connections whose value is an
//! access token it obtains and refreshes itself.
//!
//! The protocol is the `oauth2` crate's (request building, PKCE S256,
//! `state`, response parsing), without its HTTP clients: every request goes
//! through the engine's egress ([`TokenClient`]), so a token endpoint is
//! held to the rules of guest requests (HTTPS only, every resolved address
//! classified before a connection, the same roots and operator CAs, the
//! same timeouts). What to store, when to refresh and who may refresh is the
//! host's (the store's) business; this module only talks to the provider.
//!
//! Errors never carry a token, a secret or a response body: the provider's
//! `error` code is kept, its `error_description` is masked of every value
//! the request carried and clipped.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenResponse};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope, TokenResponse as _,
    TokenUrl,
};
use url::Url;

use crate::egress::{Egress, HostRequestError};
use crate::mask::Masker;
use crate::secrets::SecretValue;

/// The largest token response read (real ones are a few hundred bytes; an
/// id token makes a few KiB).
const MAX_TOKEN_RESPONSE: usize = 64 << 10;
/// The longest provider `error_description` kept.
const MAX_DESCRIPTION: usize = 300;
/// The longest a token request may take, connection included (a store's
/// refresh lease must outlast it).
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection gets its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    /// The client credentials grant: the host asks for a token with the
    /// client's own credentials, no user involved, no refresh token.
    ClientCredentials,
    /// The authorization code grant with PKCE S256 and `state`: a user
    /// consents once in a browser; the host keeps the refresh token.
    AuthorizationCode,
}

impl GrantKind {
    /// The name used in manifests, the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::ClientCredentials => "client_credentials",
            GrantKind::AuthorizationCode => "authorization_code",
        }
    }

    /// Parses [`GrantKind::as_str`]'s names (`-` may stand for `_`).
    pub fn parse(text: &str) -> Option<GrantKind> {
        match text.replace('-', "_").as_str() {
            "client_credentials" => Some(GrantKind::ClientCredentials),
            "authorization_code" => Some(GrantKind::AuthorizationCode),
            _ => None,
        }
    }
}

/// What the host knows of an OAuth2 client, apart from its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OAuthClientConfig {
    /// The grant the connection uses.
    pub grant: GrantKind,
    /// The token endpoint (HTTPS).
    pub token_url: String,
    /// The authorization endpoint (HTTPS), for the authorization code grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize_url: Option<String>,
    /// The client id.
    pub client_id: String,
    /// Scopes asked for.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A configuration that does not hold together, with what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OAuthConfigError(pub String);

impl OAuthClientConfig {
    /// Checks the URLs (absolute `https://`, no fragment, no user info),
    /// the client id and the scopes, and that the grant has the endpoints
    /// it needs.
    ///
    /// # Errors
    ///
    /// What is wrong, naming the field.
    pub fn check(&self) -> Result<(), OAuthConfigError> {
        check_endpoint("token_url", &self.token_url)?;
        match (&self.grant, &self.authorize_url) {
            (GrantKind::AuthorizationCode, None) => {
                return Err(OAuthConfigError(
                    "authorize_url: the authorization code grant needs the provider's authorization endpoint".into(),
                ));
            }
            (_, Some(url)) => check_endpoint("authorize_url", url)?,
            (GrantKind::ClientCredentials, None) => {}
        }
        if self.client_id.is_empty()
            || self.client_id.len() > 512
            || self.client_id.chars().any(char::is_control)
        {
            return Err(OAuthConfigError(
                "client_id: must be 1 to 512 characters without control characters".into(),
            ));
        }
        if self.scopes.len() > 64 {
            return Err(OAuthConfigError("scopes: at most 64".into()));
        }
        for scope in &self.scopes {
            // RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
            let ok = !scope.is_empty()
                && scope.len() <= 256
                && scope
                    .bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
            if !ok {
                return Err(OAuthConfigError(format!(
                    "scopes: `{}` is not a scope token (printable ASCII without spaces, quotes or backslashes)",
                    scope.escape_debug()
                )));
            }
        }
        Ok(())
    }
}

fn check_endpoint(field: &str, text: &str) -> Result<(), OAuthConfigError> {
    let bad = |why: &str| Err(OAuthConfigError(format!("{field}: {why}")));
    let Ok(url) = Url::parse(text) else {
        return bad("not an absolute URL");
    };
    if url.scheme() != "https" {
        return bad("must be https://");
    }
    if url.host_str().is_none() {
        return bad("has no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad("must not carry user information");
    }
    if url.fragment().is_some() {
        return bad("must not have a fragment");
    }
    Ok(())
}

/// Tokens a provider issued.
#[derive(Clone)]
pub struct IssuedTokens {
    /// The access token: the value the host places in requests.
    pub access: SecretValue,
    /// The refresh token, when the provider issued (or rotated) one.
    pub refresh: Option<SecretValue>,
    /// The access token's lifetime, when the provider said.
    pub expires_in: Option<Duration>,
}

impl fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedTokens")
            .field("refresh", &self.refresh.is_some())
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Why a token request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The provider refused the grant or the client (`invalid_grant`,
    /// `invalid_client`, `unauthorized_client`, `invalid_scope`, ...):
    /// asking again with the same credentials will not help; a person must
    /// authorise the connection again or fix its client.
    #[error("the provider refused the token request ({code}){}", description.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Rejected {
        /// The provider's `error` code.
        code: String,
        /// The provider's `error_description`, masked and clipped.
        description: Option<String>,
    },
    /// No answer, or a 5xx or 429 answer: the provider may be back later.
    #[error("the token endpoint could not be reached: {0}")]
    Unavailable(String),
    /// An answer that is not a token response.
    #[error("the token endpoint answered something that is not a token response: {0}")]
    Malformed(String),
}

impl TokenError {
    /// `true` when the connection needs a person to authorise it again.
    pub fn needs_reauthorization(&self) -> bool {
        matches!(self, TokenError::Rejected { .. })
    }
}

/// The start of an authorization code flow: the URL to send the user to,
/// and what the host must keep to finish it.
pub struct AuthorizationStart {
    /// The provider's authorization URL with `state`, the PKCE challenge
    /// (S256), the scopes and the redirect URI.
    pub url: String,
    /// The `state` value, to match the callback.
    pub state: SecretValue,
    /// The PKCE verifier, to send with the code.
    pub verifier: SecretValue,
}

impl fmt::Debug for AuthorizationStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationStart").finish_non_exhaustive()
    }
}

/// Builds the authorization URL of an authorization code flow, with a
/// fresh `state` and PKCE S256 verifier.
///
/// # Errors
///
/// The configuration has no usable authorization endpoint, or the redirect
/// URI is not a URL.
pub fn start_authorization(
    config: &OAuthClientConfig,
    redirect_uri: &str,
) -> Result<AuthorizationStart, OAuthConfigError> {
    config.check()?;
    let Some(authorize_url) = &config.authorize_url else {
        return Err(OAuthConfigError(
            "authorize_url: the connection has no authorization endpoint".into(),
        ));
    };
    let auth = AuthUrl::new(authorize_url.clone())
        .map_err(|_| OAuthConfigError("authorize_url: not a URL".into()))?;
    let redirect = RedirectUrl::new(redirect_uri.to_string())
        .map_err(|_| OAuthConfigError("redirect URI: not a URL".into()))?;
    let client = BasicClient::new(ClientId::new(config.client_id.clone()))
        .set_auth_uri(auth)
        .set_redirect_uri(redirect);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(config.scopes.iter().cloned().map(Scope::new))
        .set_pkce_challenge(challenge)
        .url();
    Ok(AuthorizationStart {
        url: url.to_string(),
        state: SecretValue::new(state.secret().clone()),
        verifier: SecretValue::new(verifier.secret().clone()),
    })
}

/// Sends token requests through the engine's egress. Cheap to clone.
#[derive(Clone)]
pub struct TokenClient {
    egress: Arc<Egress>,
}

impl fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenClient").finish_non_exhaustive()
    }
}

impl TokenClient {
    pub(crate) fn new(egress: Arc<Egress>) -> TokenClient {
        TokenClient { egress }
    }

    /// Asks for a token with the client's own credentials.
    ///
    /// # Errors
    ///
    /// See [`TokenError`].
    pub async fn client_credentials(
        &self,
        config: &OAuthClientConfig,
        secret: &SecretValue,
    ) -> Result<IssuedTokens, TokenError> {
        let client = token_client(config, secret)?;
        let request = client
            .exchange_client_credentials()
            .add_scopes(config.scopes.iter().cloned().map(Scope::new));
        let sent = [secret.expose()];
        self.finish(timed(request.request_async(&self.http())).await, &sent)
    }

    /// Exchanges a refresh token for new tokens. The provider may rotate
    /// the refresh token: the caller must keep [`IssuedTokens::refresh`]
    /// when there is one, before using the new access token.
    ///
    /// # Errors
    ///
    /// See [`TokenError`].
    pub async fn refresh(
        &self,
        config: &OAuthClientConfig,
        secret: &SecretValue,
        refresh_token: &SecretValue,
    ) -> Result<IssuedTokens, TokenError> {
        let client = token_client(config, secret)?;
        let token = RefreshToken::new(refresh_token.expose().to_string());
        let request = client.exchange_refresh_token(&token);
        let sent = [secret.expose(), refresh_token.expose()];
        self.finish(timed(request.request_async(&self.http())).await, &sent)
    }

    /// Exchanges an authorization code (with its PKCE verifier) for tokens.
    ///
    /// # Errors
    ///
    /// See [`TokenError`].
    pub async fn exchange_code(
        &self,
        config: &OAuthClientConfig,
        secret: &SecretValue,
        code: &str,
        verifier: &SecretValue,
        redirect_uri: &str,
    ) -> Result<IssuedTokens, TokenError> {
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|_| TokenError::Malformed("the redirect URI is not a URL".into()))?;
        let client = token_client(config, secret)?.set_redirect_uri(redirect);
        let request = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.expose().to_string()));
        let sent = [secret.expose(), code, verifier.expose()];
        self.finish(timed(request.request_async(&self.http())).await, &sent)
    }

    /// The `oauth2` crate's async HTTP client: the egress. A 5xx or 429
    /// answer is an error of the transport, so that it reads as "try later"
    /// rather than as a malformed token response.
    fn http(
        &self,
    ) -> impl Fn(
        oauth2::HttpRequest,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<oauth2::HttpResponse, HostRequestError>> + Send>,
    > + use<> {
        let egress = self.egress.clone();
        move |request: oauth2::HttpRequest| {
            let egress = egress.clone();
            Box::pin(async move {
                let response = egress.send_host(request, MAX_TOKEN_RESPONSE).await?;
                let status = response.status();
                if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
                    return Err(HostRequestError(format!(
                        "the token endpoint answered {status}"
                    )));
                }
                Ok(response)
            })
        }
    }

    fn finish(
        &self,
        result: Result<
            BasicTokenResponse,
            RequestTokenError<HostRequestError, oauth2::basic::BasicErrorResponse>,
        >,
        sent: &[&str],
    ) -> Result<IssuedTokens, TokenError> {
        let response = result.map_err(|e| classify(e, sent))?;
        let access = response.access_token().secret();
        if access.is_empty() {
            return Err(TokenError::Malformed("the access token is empty".into()));
        }
        Ok(IssuedTokens {
            access: SecretValue::new(access.clone()),
            refresh: response
                .refresh_token()
                .filter(|t| !t.secret().is_empty())
                .map(|t| SecretValue::new(t.secret().clone())),
            expires_in: response.expires_in(),
        })
    }
}

/// Bounds a token request by [`TOKEN_TIMEOUT`].
async fn timed<T>(
    request: impl Future<
        Output = Result<T, RequestTokenError<HostRequestError, oauth2::basic::BasicErrorResponse>>,
    >,
) -> Result<T, RequestTokenError<HostRequestError, oauth2::basic::BasicErrorResponse>> {
    tokio::time::timeout(TOKEN_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| {
            Err(RequestTokenError::Request(HostRequestError(format!(
                "no answer within {} s",
                TOKEN_TIMEOUT.as_secs()
            ))))
        })
}

/// A client for the token endpoint with the client's credentials (HTTP
/// Basic, as RFC 6749 2.3.1 asks servers to support).
fn token_client(
    config: &OAuthClientConfig,
    secret: &SecretValue,
) -> Result<
    BasicClient<
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointSet,
    >,
    TokenError,
> {
    let token_url = TokenUrl::new(config.token_url.clone())
        .map_err(|_| TokenError::Malformed("the token URL is not a URL".into()))?;
    Ok(BasicClient::new(ClientId::new(config.client_id.clone()))
        .set_client_secret(ClientSecret::new(secret.expose().to_string()))
        .set_token_uri(token_url))
}

/// Maps the crate's error to ours, keeping nothing of the response body
/// but the `error` code and a masked, clipped description.
fn classify(
    error: RequestTokenError<HostRequestError, oauth2::basic::BasicErrorResponse>,
    sent: &[&str],
) -> TokenError {
    let masker = Masker::new(sent.iter().map(|s| s.as_bytes()));
    match error {
        RequestTokenError::ServerResponse(response) => {
            let code = match response.error() {
                BasicErrorResponseType::Extension(code) => code.clone(),
                other => other.as_ref().to_string(),
            };
            let code: String = code
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect();
            let description = response.error_description().map(|d| {
                let masked = masker.mask_str(d);
                let mut clipped: String = masked
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_DESCRIPTION)
                    .collect();
                if masked.chars().count() > MAX_DESCRIPTION {
                    clipped.push('…');
                }
                clipped
            });
            TokenError::Rejected { code, description }
        }
        RequestTokenError::Request(e) => {
            TokenError::Unavailable(masker.mask_str(&e.0).into_owned())
        }
        // The parse error's own text may quote the body: only its path.
        RequestTokenError::Parse(e, _body) => {
            TokenError::Malformed(format!("at `{}`", masker.mask_str(&e.path().to_string())))
        }
        RequestTokenError::Other(message) => {
            TokenError::Malformed(masker.mask_str(&message).into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OAuthClientConfig {
        OAuthClientConfig {
            grant: GrantKind::AuthorizationCode,
            token_url: "https://login.example.com/token".into(),
            authorize_url: Some("https://login.example.com/authorize".into()),
            client_id: "wrun-client".into(),
            scopes: vec!["read".into(), "offline_access".into()],
        }
    }

    #[test]
    fn configurations_are_checked_field_by_field() {
        assert_eq!(config().check(), Ok(()));
        type Change = fn(&mut OAuthClientConfig);
        let cases: [(Change, &str); 6] = [
            (
                |c| c.token_url = "http://login.example.com/token".into(),
                "token_url: must be https://",
            ),
            (
                |c| c.token_url = "/token".into(),
                "token_url: not an absolute URL",
            ),
            (
                |c| c.authorize_url = None,
                "authorize_url: the authorization code grant",
            ),
            (
                |c| c.authorize_url = Some("https://u:p@x.example/a".into()),
                "authorize_url: must not carry user information",
            ),
            (|c| c.client_id = String::new(), "client_id:"),
            (|c| c.scopes.push("two words".into()), "scopes: `two words`"),
        ];
        for (change, expected) in cases {
            let mut c = config();
            change(&mut c);
            let err = c.check().expect_err(expected).to_string();
            assert!(
                err.starts_with(expected),
                "{err:?} does not start with {expected:?}"
            );
        }
    }

    #[test]
    fn an_authorization_url_carries_state_and_an_s256_challenge() {
        let start = start_authorization(&config(), "http://127.0.0.1:4000/callback")
            .expect("authorization start");
        let url = Url::parse(&start.url).expect("url");
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q.get("response_type").map(String::as_str), Some("code"));
        assert_eq!(
            q.get("code_challenge_method").map(String::as_str),
            Some("S256")
        );
        assert_eq!(
            q.get("state").map(String::as_str),
            Some(start.state.expose())
        );
        assert_eq!(
            q.get("scope").map(String::as_str),
            Some("read offline_access")
        );
        assert!(start.verifier.expose().len() >= 43);
        assert!(
            !start.url.contains(start.verifier.expose()),
            "the verifier stays with the host"
        );
        let again = start_authorization(&config(), "http://127.0.0.1:4000/callback")
            .expect("authorization start");
        assert_ne!(again.state, start.state);
        assert_ne!(again.verifier, start.verifier);
    }

    #[test]
    fn a_provider_error_keeps_its_code_and_never_a_value_sent() {
        let refresh = "rt_6f1d9c2b7a4e8f0d3c5b9a1e7d2f4c8b";
        let response = oauth2::basic::BasicErrorResponse::new(
            BasicErrorResponseType::InvalidGrant,
            Some(format!("refresh token {refresh} was revoked\nat 12:00")),
            None,
        );
        let err = classify(RequestTokenError::ServerResponse(response), &[refresh]);
        let TokenError::Rejected { code, description } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(code, "invalid_grant");
        let description = description.as_deref().unwrap_or_default();
        assert!(!description.contains(refresh), "{description}");
        assert!(!description.contains('\n'), "{description}");
        assert!(description.contains("was revoked"), "{description}");
        assert!(err.needs_reauthorization());

        // A body that is not a token response is never quoted.
        let body = format!("{{\"access_token\": 12, \"echo\": \"{refresh}\"}}");
        let parse = serde_path_to_error::deserialize::<_, BasicTokenResponse>(
            &mut serde_json::Deserializer::from_str(&body),
        )
        .expect_err("not a token response");
        let err = classify(
            RequestTokenError::Parse(parse, body.into_bytes()),
            &[refresh],
        );
        assert!(matches!(err, TokenError::Malformed(_)), "{err:?}");
        assert!(!err.to_string().contains(refresh), "{err}");
        assert!(!err.to_string().contains("12"), "{err}");
    }

    #[test]
    fn grant_kinds_parse_with_either_separator() {
        assert_eq!(
            GrantKind::parse("client-credentials"),
            Some(GrantKind::ClientCredentials)
        );
        assert_eq!(
            GrantKind::parse("authorization_code"),
            Some(GrantKind::AuthorizationCode)
        );
        assert_eq!(GrantKind::parse("password"), None);
    }
}
