//! The HTTP client for one registry host (OCI distribution API v2).
//!
//! One place builds requests ([`RegistryClient::send`]): it adds authentication, retries once on
//! a 401 that taught us something new, and turns unexpected statuses into [`RegistryError`]s that
//! carry the registry's error code and message. Each method names the endpoint it calls; see the
//! OCI distribution spec, <https://github.com/opencontainers/distribution-spec/blob/main/spec.md>.

mod auth;
mod error;
mod limits;
mod retry;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

pub use auth::{Challenge, parse_challenge};
pub use error::{ApiError, RegistryError};
pub use limits::{HostLimits, LimitSettings};
pub use retry::{RetryPolicy, parse_retry_after};

use crate::config::Credentials;
use crate::manifest::{MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
use crate::reference::Digest;
use auth::{Authenticator, Retry};
use error::{parse_error_body, printable};

/// Told about every request a client makes (for metrics).
pub trait RequestObserver: Send + Sync {
    /// One request finished: `code` is the status ("200") or "error" when there was no answer.
    fn request(&self, registry: &str, method: &str, code: &str);
    /// A response carried Docker Hub's `ratelimit-remaining`.
    fn ratelimit_remaining(&self, registry: &str, remaining: u64);
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
        }
    }
}

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
    auth: Authenticator,
    pinged: tokio::sync::OnceCell<()>,
    limits: HostLimits,
    retry: RetryPolicy,
    observer: Option<Arc<dyn RequestObserver>>,
    /// Docker Hub's pull quota as last seen (`ratelimit-remaining`), decremented locally per
    /// manifest GET between answers; -1 while unknown (no header seen: no limit).
    pulls_remaining: AtomicI64,
    /// A ping failure that retrying cannot mend.
    fatal: std::sync::Mutex<Option<RegistryError>>,
}

/// The longest an idle read may wait before the request counts as stalled.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

impl RegistryClient {
    /// Builds a client; reads the CA file if one is configured.
    pub fn new(options: ClientOptions) -> Result<Self, RegistryError> {
        let scheme = if options.insecure { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{}/", options.host)).map_err(|e| {
            RegistryError::protocol(&options.host, format!("not a valid registry host: {e}"))
        })?;
        let http = build_http_client(options.ca_file.as_deref(), &options.host)?;
        Ok(RegistryClient {
            auth: Authenticator::new(&options.host, options.credentials),
            host: options.host,
            label: options.label,
            base,
            http,
            pinged: tokio::sync::OnceCell::new(),
            limits: HostLimits::new(options.limits),
            retry: options.retry,
            observer: options.observer,
            pulls_remaining: AtomicI64::new(-1),
            fatal: std::sync::Mutex::new(None),
        })
    }

    /// The registry host this client talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Docker Hub pulls left as last reported (and counted down since); `None` when the
    /// registry sends no `ratelimit-remaining` header (no limit).
    pub fn pulls_remaining(&self) -> Option<u64> {
        u64::try_from(self.pulls_remaining.load(Ordering::Relaxed)).ok()
    }

    /// Reserves one pull (a manifest GET, which Docker Hub counts) unless that would take the
    /// remaining quota to `reserve` or below; `Err(left)` then. Always allowed while the
    /// registry has reported no quota.
    pub fn reserve_pull(&self, reserve: u64) -> Result<(), u64> {
        self.pulls_remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                if n < 0 {
                    Some(n)
                } else if (n as u64) <= reserve {
                    None
                } else {
                    Some(n - 1)
                }
            })
            .map(|_| ())
            .map_err(|n| n.max(0) as u64)
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

    /// `GET /v2/`: checks the registry speaks the API and learns its auth challenge.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.retrying("ping", || self.ping_cached()).await
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

    /// Proves the configured credentials are accepted: Basic on `GET /v2/`, or a token for no
    /// particular repository. `Ok(false)` when there are no credentials to check.
    pub async fn verify_credentials(&self) -> Result<bool, RegistryError> {
        self.ping().await?;
        self.auth.verify(&self.http, &self.base).await
    }

    async fn ping_once(&self) -> Result<(), RegistryError> {
        {
            {
                let url = self.url("v2/")?;
                self.limits.request().await;
                let sent = self.http.get(url.clone()).send().await;
                self.observe("GET", &sent);
                let response = sent.map_err(|e| transport("GET", &url, &e))?;
                match response.status() {
                    StatusCode::OK => self.auth.set_challenge(Challenge::Anonymous).await,
                    StatusCode::UNAUTHORIZED => {
                        let header = response
                            .headers()
                            .get(header::WWW_AUTHENTICATE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(parse_challenge);
                        match header {
                            Some(challenge) => self.auth.set_challenge(challenge).await,
                            None => {
                                return Err(RegistryError::Auth {
                                    host: self.host.clone(),
                                    reason: "GET /v2/ answered 401 without a usable challenge"
                                        .into(),
                                });
                            }
                        }
                    }
                    _ => return Err(status_error("GET", &url, response).await),
                }
                Ok(())
            }
        }
    }

    /// `HEAD /v2/<name>/manifests/<reference>` with the full Accept list. `None` on 404.
    pub async fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        self.retrying("HEAD manifest", || {
            self.head_manifest_once(repository, reference)
        })
        .await
    }

    async fn head_manifest_once(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let response = self
            .send(
                Method::HEAD,
                url.clone(),
                pull(repository),
                manifest_accept(),
                RequestBody::Empty,
            )
            .await?;
        match response.status() {
            StatusCode::OK => {
                let headers = response.headers();
                Ok(Some(ManifestHead {
                    digest: content_digest(headers, &url)?,
                    media_type: media_type(headers),
                    size: content_length(headers),
                }))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(status_error("HEAD", &url, response).await),
        }
    }

    /// `GET /v2/<name>/manifests/<reference>`: the exact bytes, at most 4 MiB, with the digest
    /// recomputed. When `reference` is a digest the content must hash to it; a
    /// `Docker-Content-Digest` header that disagrees with the content is an error.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        self.retrying("GET manifest", || {
            self.get_manifest_once(repository, reference)
        })
        .await
    }

    async fn get_manifest_once(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let response = self
            .send(
                Method::GET,
                url.clone(),
                pull(repository),
                manifest_accept(),
                RequestBody::Empty,
            )
            .await?;
        if response.status() != StatusCode::OK {
            return Err(status_error("GET", &url, response).await);
        }
        let header_digest = content_digest(response.headers(), &url)?;
        let header_type = media_type(response.headers());
        if content_length(response.headers()).is_some_and(|n| n > MAX_MANIFEST_BYTES as u64) {
            return Err(RegistryError::protocol(
                &url,
                format!("manifest is larger than {MAX_MANIFEST_BYTES} bytes"),
            ));
        }
        let bytes = read_limited(response, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge(_) => RegistryError::protocol(&url, e.to_string()),
                BodyError::Read(_) => RegistryError::Transport {
                    method: "GET".into(),
                    url: redact(&url),
                    detail: e.to_string(),
                },
            })?;
        let digest = crate::manifest::digest_of(&bytes);
        if let Ok(wanted) = Digest::parse(reference) {
            if !wanted.is_sha256() {
                return Err(RegistryError::protocol(
                    &url,
                    format!("unsupported digest algorithm {:?}", wanted.algorithm()),
                ));
            }
            if wanted != digest {
                return Err(RegistryError::protocol(
                    &url,
                    format!("manifest content hashes to {digest}, not the requested {wanted}"),
                ));
            }
        }
        if let Some(claimed) = header_digest
            && claimed.is_sha256()
            && claimed != digest
        {
            return Err(RegistryError::protocol(
                &url,
                format!("Docker-Content-Digest {claimed} does not match the content ({digest})"),
            ));
        }
        let media_type = crate::manifest::resolve_media_type(header_type.as_deref(), &bytes)
            .map_err(|e| RegistryError::protocol(&url, e.to_string()))?;
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// `PUT /v2/<name>/manifests/<reference>` with `Content-Type` = the manifest's media type.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        manifest: &FetchedManifest,
    ) -> Result<(), RegistryError> {
        self.retrying("PUT manifest", || {
            self.put_manifest_once(repository, reference, manifest)
        })
        .await
    }

    async fn put_manifest_once(
        &self,
        repository: &str,
        reference: &str,
        manifest: &FetchedManifest,
    ) -> Result<(), RegistryError> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let response = self
            .send(
                Method::PUT,
                url.clone(),
                push(repository),
                HeaderMap::new(),
                RequestBody::Bytes(
                    manifest.bytes.clone(),
                    content_type_static(&manifest.media_type),
                ),
            )
            .await?;
        match response.status() {
            StatusCode::CREATED | StatusCode::OK | StatusCode::ACCEPTED => Ok(()),
            _ => Err(status_error("PUT", &url, response).await),
        }
    }

    /// `DELETE /v2/<name>/manifests/<digest>`: removes a manifest (and, in distribution, every
    /// tag pointing at it). `false` when it was already gone.
    pub async fn delete_manifest(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        self.retrying("DELETE manifest", || async {
            let url = self.url(&format!("v2/{repository}/manifests/{digest}"))?;
            let response = self
                .send(
                    Method::DELETE,
                    url.clone(),
                    push(repository),
                    HeaderMap::new(),
                    RequestBody::Empty,
                )
                .await?;
            match response.status() {
                StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NO_CONTENT => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                _ => Err(status_error("DELETE", &url, response).await),
            }
        })
        .await
    }

    /// `HEAD /v2/<name>/blobs/<digest>`: the size when present, `None` on 404 (only 404 means
    /// missing; any other answer is an error).
    pub async fn blob_size(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        self.retrying("HEAD blob", || self.blob_size_once(repository, digest))
            .await
    }

    async fn blob_size_once(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"))?;
        let response = self
            .send(
                Method::HEAD,
                url.clone(),
                pull(repository),
                HeaderMap::new(),
                RequestBody::Empty,
            )
            .await?;
        match response.status() {
            StatusCode::OK => Ok(Some(content_length(response.headers()).unwrap_or(0))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(status_error("HEAD", &url, response).await),
        }
    }

    /// `GET /v2/<name>/blobs/<digest>`, following redirects (to object storage, say) without
    /// sending `Authorization` to another host. The caller streams and verifies the body.
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<reqwest::Response, RegistryError> {
        Ok(self.get_blob_from(repository, digest, 0).await?.0)
    }

    /// `GET /v2/<name>/blobs/<digest>` with `Range: bytes=<offset>-` to resume a download.
    /// Returns the response and whether it starts at `offset` (206) or at 0 (200: the registry
    /// ignored the range, and the caller must skip `offset` bytes).
    pub async fn get_blob_from(
        &self,
        repository: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<(reqwest::Response, bool), RegistryError> {
        self.retrying("GET blob", || async {
            let url = self.url(&format!("v2/{repository}/blobs/{digest}"))?;
            let mut headers = HeaderMap::new();
            if offset > 0 {
                let range = HeaderValue::from_str(&format!("bytes={offset}-"))
                    .map_err(|e| RegistryError::protocol(&url, e.to_string()))?;
                headers.insert(header::RANGE, range);
            }
            let response = self
                .send(Method::GET, url.clone(), pull(repository), headers, RequestBody::Empty)
                .await?;
            match response.status() {
                StatusCode::OK => Ok((response, offset == 0)),
                StatusCode::PARTIAL_CONTENT if offset > 0 => {
                    let starts = response
                        .headers()
                        .get(header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("bytes "))
                        .and_then(|v| v.split('-').next())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    if starts != Some(offset) {
                        return Err(RegistryError::protocol(
                            &url,
                            format!("asked for bytes from {offset}, got Content-Range starting at {starts:?}"),
                        ));
                    }
                    Ok((response, true))
                }
                _ => Err(status_error("GET", &url, response).await),
            }
        })
        .await
    }

    /// `POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<other>`: 201 mounted, 202 an upload
    /// session was opened instead.
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<MountOutcome, RegistryError> {
        self.retrying("mount blob", || {
            self.mount_blob_once(repository, digest, from)
        })
        .await
    }

    async fn mount_blob_once(
        &self,
        repository: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<MountOutcome, RegistryError> {
        let mut url = self.url(&format!("v2/{repository}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let mut scopes = push(repository);
        scopes.push(format!("repository:{from}:pull"));
        let response = self
            .send(
                Method::POST,
                url.clone(),
                scopes,
                HeaderMap::new(),
                RequestBody::Empty,
            )
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(MountOutcome::Mounted),
            StatusCode::ACCEPTED => {
                Ok(MountOutcome::UploadStarted(self.location(&url, &response)?))
            }
            _ => Err(status_error("POST", &url, response).await),
        }
    }

    /// `POST /v2/<name>/blobs/uploads/`: opens an upload session; returns its `Location`.
    pub async fn start_upload(&self, repository: &str) -> Result<Url, RegistryError> {
        self.retrying("start upload", || self.start_upload_once(repository))
            .await
    }

    async fn start_upload_once(&self, repository: &str) -> Result<Url, RegistryError> {
        let url = self.url(&format!("v2/{repository}/blobs/uploads/"))?;
        let response = self
            .send(
                Method::POST,
                url.clone(),
                push(repository),
                HeaderMap::new(),
                RequestBody::Empty,
            )
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(status_error("POST", &url, response).await);
        }
        self.location(&url, &response)
    }

    /// `PATCH <location>` with `Content-Range: <start>-<end>`: one chunk of a chunked upload.
    /// Returns the next `Location`.
    pub async fn upload_chunk(
        &self,
        repository: &str,
        location: &Url,
        offset: u64,
        length: u64,
        body: reqwest::Body,
    ) -> Result<Url, RegistryError> {
        let range = (length > 0).then(|| (offset, offset + length - 1));
        let response = self
            .send(
                Method::PATCH,
                location.clone(),
                push(repository),
                HeaderMap::new(),
                RequestBody::Stream {
                    body,
                    length,
                    range,
                },
            )
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(status_error("PATCH", location, response).await);
        }
        self.location(location, &response)
    }

    /// `PUT <location>&digest=<digest>`: completes an upload whose bytes were all sent by PATCH.
    pub async fn finish_upload(
        &self,
        repository: &str,
        location: &Url,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        let mut url = location.clone();
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let response = self
            .send(
                Method::PUT,
                url.clone(),
                push(repository),
                HeaderMap::new(),
                RequestBody::Empty,
            )
            .await?;
        match response.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            _ => Err(status_error("PUT", location, response).await),
        }
    }

    /// Uploads a small blob held in memory: POST, one PATCH, PUT `?digest=`.
    pub async fn upload_bytes(
        &self,
        repository: &str,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<(), RegistryError> {
        self.retrying("upload blob", || async {
            let location = self.start_upload_once(repository).await?;
            let length = bytes.len() as u64;
            let location = self
                .upload_chunk(
                    repository,
                    &location,
                    0,
                    length,
                    reqwest::Body::from(bytes.clone()),
                )
                .await?;
            self.finish_upload(repository, &location, digest).await
        })
        .await
    }

    /// `PUT <location>&digest=<digest>` carrying the whole blob: completes a small upload in
    /// one request after the POST. The registry checks the digest before storing anything.
    pub async fn finish_upload_with_body(
        &self,
        repository: &str,
        location: &Url,
        digest: &Digest,
        length: u64,
        body: reqwest::Body,
    ) -> Result<(), RegistryError> {
        let mut url = location.clone();
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let response = self
            .send(
                Method::PUT,
                url.clone(),
                push(repository),
                HeaderMap::new(),
                RequestBody::Stream {
                    body,
                    length,
                    range: None,
                },
            )
            .await?;
        match response.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            _ => Err(status_error("PUT", location, response).await),
        }
    }

    /// `DELETE <location>`: abandons an upload session (best effort).
    pub async fn cancel_upload(&self, repository: &str, location: &Url) {
        let result = self
            .send(
                Method::DELETE,
                location.clone(),
                push(repository),
                HeaderMap::new(),
                RequestBody::Empty,
            )
            .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "could not cancel upload session");
        }
    }

    /// `GET /v2/<name>/tags/list`, following `Link: <...>; rel="next"` pages verbatim. A page
    /// that was already visited ends the walk with an error rather than looping.
    pub async fn list_tags(&self, repository: &str) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut url = self.url(&format!("v2/{repository}/tags/list"))?;
        let mut seen = HashSet::new();
        let mut tags = Vec::new();
        loop {
            if !seen.insert(url.to_string()) || seen.len() > 100_000 {
                return Err(RegistryError::protocol(&url, "tags list pagination loops"));
            }
            let page_url = url.clone();
            let (next, body) = self
                .retrying("GET tags", || async {
                    let response = self
                        .send(
                            Method::GET,
                            page_url.clone(),
                            pull(repository),
                            HeaderMap::new(),
                            RequestBody::Empty,
                        )
                        .await?;
                    if response.status() != StatusCode::OK {
                        return Err(status_error("GET", &page_url, response).await);
                    }
                    let next = next_link(response.headers(), &page_url);
                    let body = read_limited(response, 64 << 20).await.map_err(|e| {
                        RegistryError::Transport {
                            method: "GET".into(),
                            url: redact(&page_url),
                            detail: e.to_string(),
                        }
                    })?;
                    Ok((next, body))
                })
                .await?;
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| RegistryError::protocol(&url, format!("invalid tags list: {e}")))?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(next) => url = next,
                None => return Ok(tags),
            }
        }
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
        if !matches!(url.scheme(), "http" | "https") {
            return Err(RegistryError::protocol(
                request,
                format!("bad Location {value:?}"),
            ));
        }
        Ok(url)
    }

    /// The one place requests are built and sent: authentication, and a bounded retry on 401.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        mut scopes: Vec<String>,
        headers: HeaderMap,
        body: RequestBody,
    ) -> Result<reqwest::Response, RegistryError> {
        self.ping_cached().await?;
        let mut body = Some(body);
        let mut tried = 0;
        loop {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(value) = self.auth.authorization(&self.http, &scopes).await? {
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
            self.limits.request().await;
            let sent = request.send().await;
            self.observe(method.as_str(), &sent);
            let response = sent.map_err(|e| transport(method.as_str(), &url, &e))?;
            self.note_ratelimit(response.headers());
            tracing::debug!(method = %method, url = %redact(&url), status = response.status().as_u16(), "registry request");
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

    /// Reads `ratelimit-remaining: 76;w=21600` (the integer before `;`).
    fn note_ratelimit(&self, headers: &HeaderMap) {
        let remaining = headers
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(remaining) = remaining {
            // Concurrent answers arrive out of order, and local reservations run ahead of
            // them: within a window the count only goes down, so keep the lowest.
            let remaining = remaining.min(i64::MAX as u64) as i64;
            let _ = self
                .pulls_remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(if n < 0 { remaining } else { n.min(remaining) })
                });
            if let Some(observer) = &self.observer {
                observer.ratelimit_remaining(&self.label, remaining as u64);
            }
        }
    }
}

fn build_http_client(ca_file: Option<&Path>, host: &str) -> Result<reqwest::Client, RegistryError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("mirrorsync/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(10));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            RegistryError::protocol(host, format!("reading CA file {}: {e}", path.display()))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            RegistryError::protocol(host, format!("CA file {} is not PEM: {e}", path.display()))
        })?;
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| RegistryError::protocol(host, format!("building HTTP client: {e}")))
}

fn pull(repository: &str) -> Vec<String> {
    vec![format!("repository:{repository}:pull")]
}

fn push(repository: &str) -> Vec<String> {
    vec![format!("repository:{repository}:pull,push")]
}

fn manifest_accept() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
    headers
}

/// Manifest media types we push are known constants; anything else was rejected earlier.
fn content_type_static(media_type: &str) -> &'static str {
    crate::manifest::KNOWN_MEDIA_TYPES
        .iter()
        .find(|known| **known == media_type)
        .copied()
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
}

fn content_digest(headers: &HeaderMap, url: &Url) -> Result<Option<Digest>, RegistryError> {
    match headers.get("docker-content-digest") {
        None => Ok(None),
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                RegistryError::protocol(url, "Docker-Content-Digest header is not text")
            })?;
            Digest::parse(text.trim()).map(Some).map_err(|e| {
                RegistryError::protocol(url, format!("bad Docker-Content-Digest header: {e}"))
            })
        }
    }
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
        .filter(|v| !v.is_empty())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The next page from a `Link: <url>; rel="next"` header, resolved against the current URL.
fn next_link(headers: &HeaderMap, current: &Url) -> Option<Url> {
    for value in headers.get_all(header::LINK) {
        let text = value.to_str().ok()?;
        for part in text.split(',') {
            let mut pieces = part.split(';');
            let target = pieces.next()?.trim();
            let is_next = pieces.any(|p| {
                let p = p.trim().to_ascii_lowercase();
                p == "rel=\"next\"" || p == "rel=next"
            });
            if is_next && target.starts_with('<') && target.ends_with('>') {
                return current.join(&target[1..target.len() - 1]).ok();
            }
        }
    }
    None
}

/// Why a response body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("reading body: {0}")]
    Read(String),
}

/// Reads a response body, failing when it is longer than `limit`.
pub(crate) async fn read_limited(
    response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let mut stream = response.bytes_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(describe_reqwest_error(&e)))?;
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
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
        read_limited(response, 64 * 1024).await.unwrap_or_default()
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

fn transport(method: &str, url: &Url, error: &reqwest::Error) -> RegistryError {
    let detail = describe_reqwest_error(error);
    if error.is_redirect() {
        // A redirect loop (or more than 10 hops) is bad input: trying again loops again.
        return RegistryError::protocol(redact(url), format!("{method}: {detail}"));
    }
    let lower = detail.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("handshake") {
        return RegistryError::Tls {
            method: method.to_string(),
            url: redact(url),
            detail,
        };
    }
    RegistryError::Transport {
        method: method.to_string(),
        url: redact(url),
        detail,
    }
}

/// A request URL for messages: upload session state in the query is noise, so it is dropped.
pub(crate) fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    let keep: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| matches!(k.as_ref(), "digest" | "mount" | "from" | "n" | "last"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if keep.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(keep);
    }
    u.to_string()
}

/// reqwest's Display hides the cause ("error sending request"); walk the chain for the reason.
pub(crate) fn describe_reqwest_error(error: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    let text = parts.join(": ");
    let text = match error.url() {
        Some(u) => text.replace(u.as_str(), &redact(u)),
        None => text,
    };
    printable(&text, 400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_link_next() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::LINK,
            HeaderValue::from_static(r#"</v2/a/tags/list?last=t1&n=2>; rel="next""#),
        );
        let current = Url::parse("http://127.0.0.1:5000/v2/a/tags/list").unwrap();
        assert_eq!(
            next_link(&headers, &current).unwrap().as_str(),
            "http://127.0.0.1:5000/v2/a/tags/list?last=t1&n=2"
        );
        assert!(next_link(&HeaderMap::new(), &current).is_none());
    }

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
