//! The harness's own registry HTTP client (independent of the code under test).
//!
//! Talks plain HTTP or TLS (trusting a [`super::tls::TestCa`]), and handles both auth schemes
//! by their 401 challenge: Basic (then sends Basic on every request) and Bearer (fetches a token
//! from the challenge's realm for the challenge's scope, caches it by scope, retries once; a
//! 401 with a token fetched just now for that scope is returned to the caller as a denial).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use reqwest::{Method, Response, StatusCode, Url};

use super::access::HARNESS_USER_AGENT;
use super::util::parse_v2_path;

/// Installs ring as rustls's process-wide crypto provider (idempotent).
pub fn init_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[derive(Default)]
struct AuthState {
    /// Basic was asked for once: send it up front from now on.
    basic: bool,
    /// Bearer tokens by scope string.
    tokens: HashMap<String, String>,
}

/// A registry client for one base URL. Cheap to clone (shares connections and tokens).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    creds: Option<(String, String)>,
    state: Arc<Mutex<AuthState>>,
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, Default)]
pub struct Challenge {
    /// `basic` or `bearer` (lower case).
    pub scheme: String,
    /// Parameters (`realm`, `service`, `scope`, `error`), names lower case.
    pub params: HashMap<String, String>,
}

impl Challenge {
    /// Parses `Bearer realm="..",service="..",scope=".."`.
    pub fn parse(h: &str) -> Challenge {
        let h = h.trim();
        let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
        let mut params = HashMap::new();
        let mut s = rest.trim();
        while !s.is_empty() {
            let Some((k, after)) = s.split_once('=') else {
                break;
            };
            let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
            let after = after.trim_start();
            let (v, tail) = if let Some(q) = after.strip_prefix('"') {
                let end = q.find('"').unwrap_or(q.len());
                (q[..end].to_string(), q.get(end + 1..).unwrap_or(""))
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            };
            params.insert(k, v);
            s = tail.trim_start().trim_start_matches(',').trim_start();
        }
        Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        }
    }
}

impl Client {
    /// A client for `base_url` (`http://127.0.0.1:PORT`), trusting only `ca_pem` for TLS, with
    /// optional credentials used for Basic auth or for token requests.
    pub fn new(base_url: &str, ca_pem: Option<&str>, creds: Option<(String, String)>) -> Client {
        init_crypto();
        let mut b = reqwest::Client::builder()
            .user_agent(HARNESS_USER_AGENT)
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(5));
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes()).expect("CA pem");
            b = b.tls_certs_only([cert]);
        }
        let http = b.build().expect("build reqwest client");
        Client {
            http,
            base: Url::parse(base_url).expect("base url"),
            creds,
            state: Arc::new(Mutex::new(AuthState::default())),
        }
    }

    /// A client that accepts any server certificate (only for a registry whose self-signed
    /// certificate the harness's rustls refuses; what it reads is checked by digest).
    pub fn accepting_any_certificate(base_url: &str, creds: Option<(String, String)>) -> Client {
        init_crypto();
        let http = reqwest::Client::builder()
            .user_agent(HARNESS_USER_AGENT)
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(5))
            .tls_danger_accept_invalid_certs(true)
            .build()
            .expect("build reqwest client");
        Client {
            http,
            base: Url::parse(base_url).expect("base url"),
            creds,
            state: Arc::new(Mutex::new(AuthState::default())),
        }
    }

    /// The same endpoint and TLS trust, without credentials and with a fresh token cache.
    pub fn anonymous(&self) -> Client {
        Client {
            http: self.http.clone(),
            base: self.base.clone(),
            creds: None,
            state: Arc::new(Mutex::new(AuthState::default())),
        }
    }

    /// The same endpoint and TLS trust with other credentials (fresh token cache).
    pub fn with_credentials(&self, user: &str, pass: &str) -> Client {
        Client {
            creds: Some((user.to_string(), pass.to_string())),
            ..self.anonymous()
        }
    }

    /// The underlying reqwest client (no auth handling).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Resolves a path (`/v2/...`), a relative `Location` or an absolute URL.
    pub fn url(&self, path_or_url: &str) -> Url {
        self.base.join(path_or_url).expect("resolve url")
    }

    /// A cached Bearer token covering this request: `pull,push` for the repository, or `pull`
    /// for reads (the scope strings distribution puts in its challenges).
    fn auth_header(&self, method: &Method, url: &Url) -> Option<String> {
        let st = self.state.lock().ok()?;
        if st.basic {
            let (u, p) = self.creds.as_ref()?;
            return Some(basic(u, p));
        }
        let (repo, _, _) = parse_v2_path(url.path())?;
        let read = *method == Method::GET || *method == Method::HEAD;
        let push = st.tokens.get(&format!("repository:{repo}:pull,push"));
        let pull = if read {
            st.tokens.get(&format!("repository:{repo}:pull"))
        } else {
            None
        };
        push.or(pull).map(|t| format!("Bearer {t}"))
    }

    /// Sends a request with auth handling. `body` is resent on the retry after a challenge.
    pub async fn send(
        &self,
        method: Method,
        path_or_url: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> anyhow::Result<Response> {
        let url = self.url(path_or_url);
        let mut fresh_token_scope: Option<String> = None;
        for attempt in 0..3 {
            let mut rb = self.http.request(method.clone(), url.clone());
            for (k, v) in headers {
                rb = rb.header(*k, *v);
            }
            let sent_auth = if let Some(scope) = &fresh_token_scope {
                let tok = self
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.tokens.get(scope).cloned());
                tok.map(|t| format!("Bearer {t}"))
            } else {
                self.auth_header(&method, &url)
            };
            if let Some(a) = &sent_auth {
                rb = rb.header("Authorization", a);
            }
            if let Some(b) = &body {
                rb = rb.body(b.clone());
            }
            let resp = rb.send().await.with_context(|| format!("{method} {url}"))?;
            if resp.status() != StatusCode::UNAUTHORIZED || attempt == 2 {
                return Ok(resp);
            }
            let Some(h) = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
            else {
                return Ok(resp);
            };
            let ch = Challenge::parse(h);
            match ch.scheme.as_str() {
                "basic" => {
                    let already = sent_auth
                        .as_deref()
                        .is_some_and(|a| a.starts_with("Basic "));
                    if self.creds.is_none() || already {
                        return Ok(resp);
                    }
                    if let Ok(mut st) = self.state.lock() {
                        st.basic = true;
                    }
                }
                "bearer" => {
                    let scope = ch.params.get("scope").cloned().unwrap_or_default();
                    if fresh_token_scope.as_deref() == Some(scope.as_str()) {
                        return Ok(resp); // a token made just now for this scope: real denial
                    }
                    let token = self.fetch_token(&ch).await?;
                    if let Ok(mut st) = self.state.lock() {
                        st.tokens.insert(scope.clone(), token);
                    }
                    fresh_token_scope = Some(scope);
                }
                _ => return Ok(resp),
            }
        }
        unreachable!("loop returns on its last attempt")
    }

    /// Fetches a token for a Bearer challenge (GET realm?service=&scope=, Basic if we have creds).
    pub async fn fetch_token(&self, ch: &Challenge) -> anyhow::Result<String> {
        let realm = ch.params.get("realm").context("challenge without realm")?;
        let mut url = Url::parse(realm).context("realm url")?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = ch.params.get("service") {
                q.append_pair("service", s);
            }
            for s in ch
                .params
                .get("scope")
                .map(|s| s.split(' '))
                .into_iter()
                .flatten()
            {
                if !s.is_empty() {
                    q.append_pair("scope", s);
                }
            }
            if let Some((u, _)) = &self.creds {
                q.append_pair("account", u);
            }
        }
        let mut rb = self.http.get(url.clone());
        if let Some((u, p)) = &self.creds {
            rb = rb.basic_auth(u, Some(p));
        }
        let resp = rb.send().await.with_context(|| format!("GET {url}"))?;
        if !resp.status().is_success() {
            bail!("token request {url} answered {}", resp.status());
        }
        let v: serde_json::Value = resp.json().await.context("token json")?;
        let t = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str());
        Ok(t.context("token response without token")?.to_string())
    }

    /// `send` with no extra headers and no body.
    pub async fn get(&self, path_or_url: &str) -> anyhow::Result<Response> {
        self.send(Method::GET, path_or_url, &[], None).await
    }
}

fn basic(u: &str, p: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
    )
}
