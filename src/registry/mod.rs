//! The HTTP client for one registry host (OCI distribution API v2).
//!
//! One place builds requests ([`RegistryClient::send`]): it adds authentication, retries once on
//! a 401 that taught us something new, and turns unexpected statuses into [`RegistryError`]s that
//! carry the registry's error code and message. Each method names the endpoint it calls; see the
//! OCI distribution spec, <https://github.com/opencontainers/distribution-spec/blob/main/spec.md>.

mod auth;
mod blobs;
mod body;
mod call;
mod credentials;
mod endpoint;
mod error;
mod learned;
mod limits;
mod manifests;
mod origin;
mod quota;
mod referrers;
mod retry;
mod rotate;
mod tags;
mod throttle;
mod tls;
mod transport;

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};
use url::Url;

pub use auth::{Challenge, parse_challenge};
pub use blobs::refuses_shortcut;
pub(crate) use body::{BodyError, MAX_ERROR_BODY, read_limited};
pub use credentials::{CredentialError, CredentialStore};
pub use endpoint::{EndpointError, Usage, mirror_endpoint};
pub use error::RegistryError;
pub use learned::{Learned, UploadFlow};
pub use limits::{HostLimits, LimitSettings};
pub use manifests::is_schema1;
use origin::same_origin;
pub use referrers::{entry_digest, index_entries};
pub use retry::{RetryPolicy, parse_retry_after};
pub use rotate::CredentialSource;
use transport::transport;
pub(crate) use transport::{describe_reqwest_error, redact};

use crate::config::Credentials;
use crate::reference::Digest;
use auth::Retry;
use error::parse_error_body;

/// Told about every request a client makes (for metrics).
pub trait RequestObserver: Send + Sync {
    /// One request finished: `code` is the status ("200") or "error" when there was no answer.
    fn request(&self, registry: &str, method: &str, code: &str);
    /// A response carried Docker Hub's `ratelimit-remaining`.
    fn ratelimit_remaining(&self, registry: &str, remaining: u64);
    /// The requests a host may have in flight now, and its pace once it has throttled us.
    fn request_window(&self, _registry: &str, _window: usize, _rate: Option<f64>) {}
}

/// How to reach one registry.
#[derive(Clone)]
pub struct ClientOptions {
    /// `host[:port]` of the API.
    pub host: String,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// Extra CA certificates (PEM) to trust.
    pub ca_file: Option<std::path::PathBuf>,
    pub credentials: Option<Credentials>,
    /// The name used in metrics and messages ("docker.io", "target").
    pub label: String,
    pub limits: LimitSettings,
    pub retry: RetryPolicy,
    pub observer: Option<Arc<dyn RequestObserver>>,
    /// The most requests in flight to the host however well it answers.
    pub max_in_flight: usize,
    /// Where `credentials` came from, to read them again when the registry refuses them.
    pub reread: Option<CredentialSource>,
}

impl ClientOptions {
    /// Options with no limits, default retries and no observer.
    pub fn new(
        host: &str,
        insecure: bool,
        ca_file: Option<std::path::PathBuf>,
        credentials: Option<Credentials>,
    ) -> Self {
        ClientOptions {
            host: host.to_string(),
            insecure,
            ca_file,
            credentials,
            label: host.to_string(),
            limits: LimitSettings::default(),
            retry: RetryPolicy::default(),
            observer: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            reread: None,
        }
    }
}

/// [`ClientOptions::max_in_flight`] unless set.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 128;

/// What a manifest HEAD told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
    pub size: Option<u64>,
}

/// A manifest's exact bytes, as fetched and verified.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

/// The outcome of a cross-repository mount request.
#[derive(Debug)]
pub enum MountOutcome {
    /// 201: the blob is now in the target repository.
    Mounted,
    /// 202: the registry opened an upload session instead.
    UploadStarted(Url),
    /// An earlier mount to this registry was answered 202: no request was made.
    Refused,
}

/// A body we may send more than once (so a 401 can be retried) or a one-shot stream.
pub enum RequestBody {
    Empty,
    Bytes(Bytes, &'static str),
    Stream {
        body: reqwest::Body,
        length: u64,
        range: Option<(u64, u64)>,
    },
}

/// A client for one registry host.
pub struct RegistryClient {
    host: String,
    label: String,
    base: Url,
    http: reqwest::Client,
    /// For layer downloads over TLS: HTTP/1.1, a connection per transfer (for plain HTTP, the
    /// same client as `http`).
    bulk: reqwest::Client,
    auth: rotate::AuthSlot,
    pinged: tokio::sync::OnceCell<()>,
    limits: HostLimits,
    /// The window and pace this host's answers allow.
    throttle: throttle::Throttle,
    retry: RetryPolicy,
    observer: Option<Arc<dyn RequestObserver>>,
    /// Docker Hub's pull quota as last seen (`ratelimit-remaining`), decremented locally per
    /// manifest GET between answers; -1 while unknown (no header seen: no limit).
    pulls_remaining: AtomicI64,
    /// A ping failure that retrying cannot mend.
    fatal: std::sync::Mutex<Option<RegistryError>>,
    /// Quirks of this registry found during the run.
    learned: Learned,
    /// Upload sessions open now.
    uploads: learned::OpenUploads,
}

/// HTTP/2 flow-control window of a connection (all streams together).
const H2_CONNECTION_WINDOW: u32 = 16 << 20;
/// HTTP/2 flow-control window of one stream (one blob).
const H2_STREAM_WINDOW: u32 = 4 << 20;

/// The longest an idle read may wait before the request counts as stalled.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

impl RegistryClient {
    /// Builds a client; reads the CA file if one is configured.
    pub fn new(options: ClientOptions) -> Result<Self, RegistryError> {
        let scheme = if options.insecure { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{}/", options.host)).map_err(|e| {
            RegistryError::protocol(&options.host, format!("not a valid registry host: {e}"))
        })?;
        let trust =
            tls::HostTrust::for_host(options.ca_file.as_deref(), &options.host, !options.insecure)?;
        let http = build_http_client(&trust, &options.host, false)?;
        // Plain HTTP is HTTP/1.1 anyway (a connection per request in flight): one pool.
        let bulk = if options.insecure {
            http.clone()
        } else {
            build_http_client(&trust, &options.host, true)?
        };
        Ok(RegistryClient {
            auth: rotate::AuthSlot::new(&options.host, options.credentials, options.reread),
            host: options.host,
            label: options.label,
            base,
            http,
            bulk,
            pinged: tokio::sync::OnceCell::new(),
            limits: HostLimits::new(options.limits),
            throttle: throttle::Throttle::new(options.max_in_flight, options.retry.max_retry_after),
            retry: options.retry,
            observer: options.observer,
            pulls_remaining: AtomicI64::new(-1),
            fatal: std::sync::Mutex::new(None),
            learned: Learned::default(),
            uploads: learned::OpenUploads::default(),
        })
    }

    /// What this run learned about the registry's behaviour (and the upload chunk size).
    pub fn learned(&self) -> &Learned {
        &self.learned
    }

    /// The registry host this client talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Waits until `n` more blob bytes may flow to or from this host.
    pub async fn throttle_bytes(&self, n: usize) {
        self.limits.bytes(n).await;
    }

    /// Runs an idempotent operation, retrying retryable failures with backoff.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if self.retry.may_retry(attempt, &e) => {
                    let delay = self.retry.delay(attempt, &e);
                    tracing::warn!(registry = %self.label, operation = what, attempt = attempt + 1, delay_ms = delay.as_millis() as u64, error = %e, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one request within the host's request rate and its learned window and pace
    /// ([`throttle`]), counts it in the metrics, and notes the pull quota its answer reports. No retry, no authentication: callers add those.
    pub(super) async fn exchange(
        &self,
        method: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let (http, request) = request.build_split();
        let request = request?;
        let ticket = self.throttle.admit(!throttle::streams(&request)).await;
        self.limits.request().await;
        let sent = http.execute(request).await;
        self.throttle_answered(ticket, &sent);
        self.observe(method, &sent);
        if let Ok(response) = &sent {
            self.note_ratelimit(response.headers());
        }
        sent
    }

    /// What a host asks for, learned from its answer to a request sent without credentials:
    /// nothing (200) or the challenge of its 401. `false` for any other answer, and for a 401
    /// without a usable challenge.
    async fn learn_challenge(&self, response: &reqwest::Response) -> bool {
        // A challenge counts only from the registry itself, not from where it redirected us.
        if !self.is_own(response.url()) {
            return false;
        }
        let challenge = match response.status() {
            StatusCode::OK => Some(Challenge::Anonymous),
            StatusCode::UNAUTHORIZED => response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge),
            _ => None,
        };
        match challenge {
            Some(challenge) => {
                self.auth.set_challenge(challenge).await;
                true
            }
            None => false,
        }
    }

    /// Opens one more connection for big blob downloads ahead of need, with a `GET /v2/` on it
    /// (answered 200 or 401: cheap either way), so the download that takes it does not wait for
    /// the TCP and TLS handshakes. Failures are left to the download itself.
    pub async fn open_bulk_connection(&self) {
        let Ok(url) = self.url("v2/") else {
            return;
        };
        if let Ok(response) = self.exchange("GET", self.bulk.get(url)).await {
            // Read to the end, or the connection is not handed back to the pool.
            let _ = read_limited(response, MAX_ERROR_BODY).await;
        }
    }

    /// `GET /v2/`: checks the registry speaks the API and learns its auth challenge.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.retrying("GET /v2/", || self.ping_cached()).await
    }

    /// The first successful ping is remembered, and so is a failure no retry can mend (an
    /// untrusted certificate, refused credentials), so one run does not knock again and again.
    async fn ping_cached(&self) -> Result<(), RegistryError> {
        if let Some(fatal) = self.fatal.lock().ok().and_then(|f| f.clone()) {
            return Err(fatal);
        }
        let result = self
            .pinged
            .get_or_try_init(|| self.ping_once())
            .await
            .map(|_| ());
        if let Err(e) = &result
            && !e.is_retryable()
            && let Ok(mut fatal) = self.fatal.lock()
        {
            *fatal = Some(e.clone());
        }
        result
    }

    async fn ping_once(&self) -> Result<(), RegistryError> {
        let url = self.url("v2/")?;
        let response = self
            .exchange("GET", self.http.get(url.clone()))
            .await
            .map_err(|e| transport("GET", &url, &e))?;
        if self.learn_challenge(&response).await {
            return Ok(());
        }
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(RegistryError::Auth {
                host: self.host.clone(),
                reason: "GET /v2/ answered 401 without a usable challenge".into(),
            });
        }
        Err(status_error("GET", &url, response).await)
    }

    fn url(&self, path: &str) -> Result<Url, RegistryError> {
        self.base
            .join(path)
            .map_err(|e| RegistryError::protocol(&self.base, format!("bad path {path:?}: {e}")))
    }

    /// Resolves a `Location` header (absolute or relative) against the request URL.
    fn location(&self, request: &Url, response: &reqwest::Response) -> Result<Url, RegistryError> {
        let value = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                RegistryError::protocol(request, "upload response has no Location header")
            })?;
        let url = request.join(value).map_err(|e| {
            RegistryError::protocol(request, format!("bad Location {value:?}: {e}"))
        })?;
        if !origin::is_web_url(&url) {
            return Err(RegistryError::protocol(
                request,
                format!("bad Location {value:?}"),
            ));
        }
        // On another host it is used without our credentials (see `send`).
        Ok(url)
    }

    /// Whether `url` is the registry's own (scheme, host, port): see [`origin`].
    fn is_own(&self, url: &Url) -> bool {
        same_origin(url, &self.base)
    }

    /// The one place requests are built and sent: authentication, and a bounded retry on 401.
    ///
    /// Over HTTP/2 every request to the host shares one connection, and a server sends what it
    /// has queued on it in order: a small answer (a manifest, a config blob) waits behind the
    /// megabytes of layers already in the pipe, a few round trips on a long link; and the one
    /// connection is one flow, whose part of a link shared with other flows is small. A `bulk`
    /// request (a layer download) therefore goes on an HTTP/1.1 connection of its own, as a
    /// browser's downloads do, and the shared one stays quick for the small requests.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        mut scopes: Vec<String>,
        headers: HeaderMap,
        body: RequestBody,
        bulk: bool,
    ) -> Result<reqwest::Response, RegistryError> {
        self.ping_cached().await?;
        let mut body = Some(body);
        let mut tried = 0;
        let http = if bulk { &self.bulk } else { &self.http };
        loop {
            let mut request = http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            let own = self.is_own(&url);
            if own && let Some(value) = self.auth.authorization(self, &scopes).await? {
                request = request.header(header::AUTHORIZATION, value);
            }
            let replayable = !matches!(body, Some(RequestBody::Stream { .. }));
            request = match body.take() {
                None | Some(RequestBody::Empty) => request,
                Some(RequestBody::Bytes(bytes, content_type)) => {
                    body = Some(RequestBody::Bytes(bytes.clone(), content_type));
                    request
                        .header(header::CONTENT_TYPE, content_type)
                        .body(bytes)
                }
                Some(RequestBody::Stream {
                    body: stream,
                    length,
                    range,
                }) => {
                    let mut r = request
                        .header(header::CONTENT_TYPE, "application/octet-stream")
                        .header(header::CONTENT_LENGTH, length);
                    if let Some((start, end)) = range {
                        r = r.header("Content-Range", format!("{start}-{end}"));
                    }
                    r.body(stream)
                }
            };
            if body.is_none() {
                body = Some(RequestBody::Empty);
            }
            let response = self
                .exchange(method.as_str(), request)
                .await
                .map_err(|e| transport(method.as_str(), &url, &e))?;
            tracing::debug!(method = %method, url = %redact(&url), status = response.status().as_u16(), "registry request");
            if response.status() == StatusCode::UNAUTHORIZED
                && !(own && self.is_own(response.url()))
            {
                return Err(origin::foreign_challenge(
                    &self.host,
                    &self.base,
                    method.as_str(),
                    &url,
                    response.url(),
                ));
            }
            if response.status() != StatusCode::UNAUTHORIZED || !replayable {
                return Ok(response);
            }
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match self
                .auth
                .on_unauthorized(challenge.as_deref(), &mut scopes, tried)
                .await
            {
                Retry::Again => tried += 1,
                Retry::GiveUp(err) => return Err(err),
            }
        }
    }
}

impl RegistryClient {
    fn observe(&self, method: &str, sent: &Result<reqwest::Response, reqwest::Error>) {
        if let Some(observer) = &self.observer {
            let code = match sent {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            observer.request(&self.label, method, &code);
        }
    }
}

/// The HTTP client of one host: HTTP/2 when the server offers it over ALPN, or, for `bulk`
/// transfers, HTTP/1.1 only.
fn build_http_client(
    trust: &tls::HostTrust,
    host: &str,
    bulk: bool,
) -> Result<reqwest::Client, RegistryError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("mirrorsync/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(10))
        // HTTP/2 when the server offers it over ALPN: every request to a host shares one
        // connection (one TCP and TLS handshake). Its flow-control windows must cover the
        // link's bandwidth x RTT from the first byte (an adaptive window starts at 64 KiB and
        // takes many round trips to grow): 16 MiB fills 1 Gbit/s at 130 ms.
        .http2_initial_connection_window_size(H2_CONNECTION_WINDOW)
        .http2_initial_stream_window_size(H2_STREAM_WINDOW);
    if bulk {
        builder = builder.http1_only();
    }
    builder
        .tls_backend_preconfigured(trust.client_config(host, bulk)?)
        .build()
        .map_err(|e| RegistryError::protocol(host, format!("building HTTP client: {e}")))
}

fn pull(repository: &str) -> Vec<String> {
    vec![format!("repository:{repository}:pull")]
}

fn push(repository: &str) -> Vec<String> {
    vec![format!("repository:{repository}:pull,push")]
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Turns an unexpected response into an error carrying the registry's code and message.
pub(crate) async fn status_error(
    method: &str,
    url: &Url,
    response: reqwest::Response,
) -> RegistryError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = if method == "HEAD" {
        Bytes::new()
    } else {
        read_limited(response, MAX_ERROR_BODY)
            .await
            .unwrap_or_default()
    };
    let (errors, body_excerpt) = parse_error_body(&body);
    RegistryError::Status {
        method: method.to_string(),
        url: redact(url),
        status,
        errors,
        body_excerpt,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_upload_state() {
        let url =
            Url::parse("https://u:p@r.example/v2/a/blobs/uploads/x?_state=abc&digest=sha256:1")
                .unwrap();
        assert_eq!(
            redact(&url),
            "https://r.example/v2/a/blobs/uploads/x?digest=sha256%3A1"
        );
    }
}
