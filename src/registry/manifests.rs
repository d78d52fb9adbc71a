//! Manifest endpoints: `HEAD`, `GET`, `PUT` and `DELETE /v2/<name>/manifests/<reference>`.
//! HEAD and GET send the same full Accept list; GET keeps the exact bytes and checks them.

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use super::{
    BodyError, FetchedManifest, ManifestHead, RegistryClient, RegistryError, RequestBody,
    content_length, pull, push, read_limited, redact, status_error,
};
use crate::manifest::{MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
use crate::reference::Digest;

impl RegistryClient {
    /// `HEAD /v2/<name>/manifests/<reference>` with the full Accept list. `None` on 404.
    pub async fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        self.retrying("HEAD manifest", || async {
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
        })
        .await
    }

    /// `GET /v2/<name>/manifests/<reference>`: the exact bytes, at most 4 MiB, with the digest
    /// recomputed. When `reference` is a digest the content must hash to it; a
    /// `Docker-Content-Digest` header that disagrees with the content is an error.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        self.retrying("GET manifest", || async {
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
                    format!(
                        "Docker-Content-Digest {claimed} does not match the content ({digest})"
                    ),
                ));
            }
            let media_type = crate::manifest::resolve_media_type(header_type.as_deref(), &bytes)
                .map_err(|e| RegistryError::protocol(&url, e.to_string()))?;
            Ok(FetchedManifest {
                bytes,
                media_type,
                digest,
            })
        })
        .await
    }

    /// `PUT /v2/<name>/manifests/<reference>` with `Content-Type` = the manifest's media type.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        manifest: &FetchedManifest,
    ) -> Result<(), RegistryError> {
        self.retrying("PUT manifest", || async {
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
        })
        .await
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
