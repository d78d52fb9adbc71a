//! Registry authentication: `WWW-Authenticate` challenges, Basic credentials and Bearer tokens.
//!
//! The flow follows the Docker token protocol: the first request to a host learns its challenge
//! (`GET /v2/`, or for a host without credentials the first manifest `HEAD`, whose 200 or 401
//! tells the same), then every request carries either Basic credentials or a Bearer token for exactly
//! the scopes it needs. Tokens are cached per scope set and renewed shortly before they expire or
//! when a 401 names a scope we did not ask for. A second 401 for the same scopes is a denial, never a
//! loop.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use tokio::sync::Mutex;
use url::Url;

use super::error::{RegistryError, parse_error_body};
use crate::config::{Credentials, Secret};

/// What a registry asks for in `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `GET /v2/` answered 200: no authentication.
    Anonymous,
    /// `Basic realm="..."`.
    Basic,
    /// `Bearer realm="...",service="...",scope="..."`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value. Unknown schemes give `None`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.find(char::is_whitespace) {
        Some(i) => (&header[..i], &header[i..]),
        None => (header, ""),
    };
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let realm = params.get("realm")?.clone();
            Some(Challenge::Bearer {
                realm,
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            })
        }
        _ => None,
    }
}

/// Parses `key="value", key2=value2` auth parameters; quoted values may contain commas.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    out
}

/// Largest token response read (a token server's answer is a few KiB).
pub(crate) const MAX_TOKEN_BODY: usize = 1 << 20;

struct CachedToken {
    value: Secret,
    renew_at: Instant,
}

/// Per-host authentication state: the learned challenge, credentials and the token cache.
pub struct Authenticator {
    host: String,
    credentials: Option<Credentials>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, CachedToken>>,
}

/// What to do after a 401.
pub enum Retry {
    /// Credentials or token changed: send again.
    Again,
    /// Nothing new to try: this is a real denial.
    GiveUp(RegistryError),
}

impl Authenticator {
    pub fn new(host: &str, credentials: Option<Credentials>) -> Self {
        Authenticator {
            host: host.to_string(),
            credentials,
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Whether credentials are configured for this host.
    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    pub async fn set_challenge(&self, challenge: Challenge) {
        *self.challenge.lock().await = Some(challenge);
    }

    /// The challenge learned so far.
    pub async fn challenge(&self) -> Option<Challenge> {
        self.challenge.lock().await.clone()
    }

    /// The `Authorization` value for a request needing `scopes`, fetching a token if needed.
    pub async fn authorization(
        &self,
        client: &super::RegistryClient,
        scopes: &[String],
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let challenge = self.challenge.lock().await.clone();
        match challenge {
            None | Some(Challenge::Anonymous) => Ok(None),
            Some(Challenge::Basic) => Ok(self.basic_header()),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let key = scopes.join(" ");
                let mut tokens = self.tokens.lock().await;
                if let Some(token) = tokens.get(&key)
                    && Instant::now() < token.renew_at
                {
                    return Ok(Some(bearer(&token.value)));
                }
                let token = self
                    .fetch_token(client, &realm, service.as_deref(), scopes)
                    .await?;
                let header = bearer(&token.value);
                tokens.insert(key, token);
                Ok(Some(header))
            }
        }
    }

    /// Decides whether a request that got 401 may be sent again, learning the new challenge.
    /// `had_scopes` are the scopes the failed request carried a token for; `tried` counts earlier
    /// 401s for this request.
    pub async fn on_unauthorized(
        &self,
        www_authenticate: Option<&str>,
        scopes: &mut Vec<String>,
        tried: u32,
    ) -> Retry {
        let parsed = www_authenticate.and_then(parse_challenge);
        let previous = self.challenge.lock().await.clone();
        let deny = |reason: String| {
            Retry::GiveUp(RegistryError::Auth {
                host: self.host.clone(),
                reason,
            })
        };
        let Some(new) = parsed else {
            return deny(
                "registry answered 401 without a usable WWW-Authenticate challenge".into(),
            );
        };
        let first_contact = matches!(previous, None | Some(Challenge::Anonymous));
        if let Challenge::Bearer {
            scope: Some(asked), ..
        } = &new
        {
            for s in asked.split_whitespace() {
                if !scopes.iter().any(|have| have == s) && !covered(scopes, s) {
                    scopes.push(s.to_string());
                }
            }
        }
        self.set_challenge(new.clone()).await;
        if tried == 0 && first_contact {
            return Retry::Again;
        }
        if tried == 0 {
            // A token we held was refused (revoked or expired early): fetch a fresh one once.
            self.tokens.lock().await.remove(&scopes.join(" "));
            if matches!(new, Challenge::Bearer { .. }) {
                return Retry::Again;
            }
        }
        let reason = match (&new, &self.credentials) {
            (_, None) => {
                "access denied to anonymous client (no credentials configured for this registry)"
                    .to_string()
            }
            (Challenge::Basic, Some(_)) => "username or password rejected".to_string(),
            (_, Some(_)) => format!("access denied for scopes {}", scopes.join(" ")),
        };
        deny(reason)
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        let creds = self.credentials.as_ref()?;
        let raw = format!("{}:{}", creds.username, creds.password.expose());
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// `GET <realm>?service=..&scope=..` with Basic credentials when we have them (none are
    /// sent when none are configured). The realm may be another host. The request goes through
    /// the registry's rate limit and request metrics; a connection failure or a 5xx/429 is a
    /// retryable error, so the endpoint call that needed the token is tried again with backoff.
    async fn fetch_token(
        &self,
        client: &super::RegistryClient,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<CachedToken, RegistryError> {
        let url = self.token_url(client.base.scheme(), realm, service, scopes)?;
        let mut headers = HeaderMap::new();
        if let Some(header) = self.basic_header() {
            headers.insert(reqwest::header::AUTHORIZATION, header);
        }
        let sent = client
            .send_unauthenticated(Method::GET, &url, headers, false)
            .await;
        let transport = |detail: String| RegistryError::Transport {
            method: "GET".into(),
            url: strip_query(&url),
            detail: format!("token request: {detail}"),
        };
        let response = sent.map_err(|e| transport(super::describe_reqwest_error(&e)))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(super::parse_retry_after);
        let body = super::read_limited(response, MAX_TOKEN_BODY)
            .await
            .map_err(|e| transport(e.to_string()))?;
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let (errors, body_excerpt) = parse_error_body(&body);
            return Err(RegistryError::Status {
                method: "GET".into(),
                url: strip_query(&url),
                status: status.as_u16(),
                errors,
                body_excerpt,
                retry_after,
            });
        }
        if !status.is_success() {
            return Err(self.token_refused(&url, status.as_u16(), &body));
        }
        self.parse_token(&body)
    }

    /// The token request's URL: the realm with `service`, every scope and, with credentials,
    /// `account`. The realm must be an http(s) URL, and not plain HTTP when the registry
    /// (reached with `scheme`) is HTTPS and we would send credentials.
    fn token_url(
        &self,
        scheme: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Url, RegistryError> {
        let mut url = Url::parse(realm)
            .map_err(|e| self.fail(format!("token realm {realm:?} is not a URL: {e}")))?;
        if !super::origin::is_web_url(&url) {
            return Err(self.fail(format!(
                "token realm {realm:?} is not an http(s) URL without user information"
            )));
        }
        // The realm comes from the registry's own challenge (see `RegistryClient::send`), but
        // it may name any host: the credentials of a registry reached over TLS never travel in
        // plain text to it.
        if self.credentials.is_some() && scheme == "https" && url.scheme() != "https" {
            return Err(self.fail(format!(
                "token realm {realm:?} is plain HTTP while {} is reached over HTTPS: its credentials are not sent there",
                self.host
            )));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            for scope in scopes {
                query.append_pair("scope", scope);
            }
            if let Some(creds) = &self.credentials {
                query.append_pair("account", &creds.username);
            }
        }
        Ok(url)
    }

    /// A token server's refusal (a 4xx but 429): the credentials (or an anonymous client)
    /// were not let in.
    fn token_refused(&self, url: &Url, status: u16, body: &[u8]) -> RegistryError {
        let (errors, excerpt) = parse_error_body(body);
        let detail = errors
            .first()
            .map(|e| format!("{}: {}", e.code, e.message))
            .or(excerpt)
            .unwrap_or_default();
        let who = if self.credentials.is_some() {
            "credentials rejected by the token server"
        } else {
            "anonymous token refused"
        };
        self.fail(format!(
            "{who} ({} answered HTTP {status} {detail})",
            strip_query(url),
        ))
    }

    /// The token in a token server's answer (`token`, else `access_token`), renewed a little
    /// before its `expires_in` (60 s when missing).
    fn parse_token(&self, body: &[u8]) -> Result<CachedToken, RegistryError> {
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse = serde_json::from_slice(body)
            .map_err(|e| self.fail(format!("token response is not valid JSON: {e}")))?;
        let value = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| self.fail("token response has neither token nor access_token".into()))?;
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(60).clamp(1, 86_400));
        // Renew a little early so a token never expires between check and use.
        let margin = (lifetime / 10).min(Duration::from_secs(30));
        Ok(CachedToken {
            value: Secret::new(value),
            renew_at: Instant::now() + lifetime - margin,
        })
    }

    /// An authentication failure at this host.
    fn fail(&self, reason: String) -> RegistryError {
        RegistryError::Auth {
            host: self.host.clone(),
            reason,
        }
    }
}

/// The scope to pull from `repository`.
pub(super) fn pull(repository: &str) -> Vec<String> {
    vec![format!("repository:{repository}:pull")]
}

/// The scope to push to `repository` (which includes pulling from it).
pub(super) fn push(repository: &str) -> Vec<String> {
    vec![format!("repository:{repository}:pull,push")]
}

/// Whether a requested scope is already covered by one we hold (`pull,push` covers `pull`).
fn covered(have: &[String], wanted: &str) -> bool {
    let Some((resource, actions)) = wanted.rsplit_once(':') else {
        return false;
    };
    have.iter().any(|h| {
        h.rsplit_once(':').is_some_and(|(res, acts)| {
            res == resource && actions.split(',').all(|a| acts.split(',').any(|b| b == a))
        })
    })
}

fn bearer(token: &Secret) -> HeaderValue {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
    value.set_sensitive(true);
    value
}

fn strip_query(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            })
        );
        let c = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:5001/token",service="reg",scope="repository:a:pull,push",error="insufficient_scope""#,
        );
        assert!(
            matches!(c, Some(Challenge::Bearer { scope: Some(s), .. }) if s == "repository:a:pull,push")
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="basic-realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
    }

    #[test]
    fn push_scope_covers_pull() {
        let have = vec!["repository:a/b:pull,push".to_string()];
        assert!(covered(&have, "repository:a/b:pull"));
        assert!(!covered(&have, "repository:a/c:pull"));
        assert!(!covered(
            &["repository:a:pull".to_string()],
            "repository:a:pull,push"
        ));
    }
}
