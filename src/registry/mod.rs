//! The HTTP client for one registry host (OCI distribution API v2): the [`RegistryClient`]
//! type and its construction. Each endpoint lives with its resource (`blobs.rs`,
//! `manifests.rs`, `tags.rs`, `referrers.rs`) and is one [`call`] (status check, retry); every
//! request leaves through [`send`] (authentication, a bounded retry on 401, the host's rate,
//! window and metrics), whose reqwest clients nothing else can reach. Each method names the
//! endpoint it calls; see the OCI distribution spec,
//! <https://github.com/opencontainers/distribution-spec/blob/main/spec.md>.

mod auth;
mod blobs;
mod body;
mod call;
mod credentials;
mod endpoint;
mod error;
mod latency;
mod learned;
mod limits;
mod manifests;
mod origin;
mod ping;
mod quota;
mod referrers;
mod retry;
mod rotate;
mod send;
mod tags;
mod throttle;
mod tls;
mod transport;

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use bytes::Bytes;
use url::Url;

use auth::{pull, push};
pub use blobs::refuses_shortcut;
use body::content_length;
pub(crate) use body::{BodyError, MAX_ERROR_BODY, read_limited};
use call::status_error;
pub use credentials::{CredentialError, CredentialStore};
pub use endpoint::{EndpointError, Usage, mirror_endpoint};
pub use error::RegistryError;
pub use latency::SmallRequests;
pub use learned::{Learned, UploadFlow};
pub use limits::{HostLimits, LimitSettings};
pub use manifests::is_schema1;
pub use referrers::{entry_digest, index_entries};
pub use retry::{RetryPolicy, parse_retry_after};
pub use rotate::CredentialSource;
pub use send::RequestBody;
pub(crate) use transport::{describe_reqwest_error, redact};

use crate::config::Credentials;
use crate::reference::Digest;

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

/// A client for one registry host.
pub struct RegistryClient {
    host: String,
    label: String,
    base: Url,
    /// The only way to the host's HTTP clients (see [`send`]).
    connections: send::Connections,
    auth: rotate::AuthSlot,
    pinged: tokio::sync::OnceCell<()>,
    limits: HostLimits,
    /// The window and pace this host's answers allow.
    throttle: throttle::Throttle,
    /// How long its small requests take (see [`latency`]).
    small: Arc<SmallRequests>,
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

impl RegistryClient {
    /// Builds a client; reads the CA file if one is configured.
    pub fn new(options: ClientOptions) -> Result<Self, RegistryError> {
        let scheme = if options.insecure { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{}/", options.host)).map_err(|e| {
            RegistryError::protocol(&options.host, format!("not a valid registry host: {e}"))
        })?;
        let trust =
            tls::HostTrust::for_host(options.ca_file.as_deref(), &options.host, !options.insecure)?;
        let connections = send::Connections::new(&trust, &options.host, options.insecure)?;
        Ok(RegistryClient {
            auth: rotate::AuthSlot::new(&options.host, options.credentials, options.reread),
            host: options.host,
            label: options.label,
            base,
            connections,
            pinged: tokio::sync::OnceCell::new(),
            limits: HostLimits::new(options.limits),
            throttle: throttle::Throttle::new(options.max_in_flight, options.retry.max_retry_after),
            small: Arc::default(),
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

    /// How long this host takes to answer small requests, for the blob transfer slots.
    pub fn small_requests(&self) -> Arc<SmallRequests> {
        Arc::clone(&self.small)
    }

    /// The registry host this client talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Waits until `n` more blob bytes may flow to or from this host.
    pub async fn limit_bytes(&self, n: usize) {
        self.limits.bytes(n).await;
    }

    /// `path` (`v2/...`) on this registry.
    fn url(&self, path: &str) -> Result<Url, RegistryError> {
        self.base
            .join(path)
            .map_err(|e| RegistryError::protocol(&self.base, format!("bad path {path:?}: {e}")))
    }
}
