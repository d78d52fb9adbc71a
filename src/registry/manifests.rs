//! Manifest endpoints: `HEAD`, `GET`, `PUT` and `DELETE /v2/<name>/manifests/<reference>`.
//! HEAD and GET send the same full Accept list; GET keeps the exact bytes and checks them.

use reqwest::Method;
use reqwest::header::{self, HeaderMap, HeaderValue};
use url::Url;

use super::call::{Call, Replayable, Statuses};
use super::{
    BodyError, FetchedManifest, ManifestHead, RegistryClient, RegistryError, content_length, pull,
    push, read_limited, redact, status_error,
};
use crate::manifest::{MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
use crate::reference::Digest;

/// Docker image manifest schema 1 (`v1+json`, and the signed `v1+prettyjws`): its digest is
/// computed over the manifest without its signatures, and registries re-sign it on the way, so
/// it cannot be mirrored with digests preserved.
pub fn is_schema1(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.docker.distribution.manifest.v1+")
}

impl RegistryClient {
    /// `HEAD /v2/<name>/manifests/<reference>` with the full Accept list. `None` on 404 (which
    /// some registries also answer for content a GET finds: see `Upstream::resolve`).
    pub async fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let call = Call::new("HEAD manifest", Method::HEAD, url.clone(), pull(repository))
            .headers(manifest_accept())
            .missing_ok();
        let Some(response) = self.call(&call, Replayable::Empty).await? else {
            return Ok(None);
        };
        let headers = response.headers();
        Ok(Some(ManifestHead {
            digest: content_digest(headers, &url)?,
            media_type: media_type(headers),
            size: content_length(headers),
        }))
    }

    /// The first request of a run to a host without credentials: a manifest `HEAD` sent in
    /// place of the `GET /v2/` ping, one round trip sooner. The ping only learns what the host
    /// asks for, and this answer says the same: a 200 means nothing is asked (as the ping's 200),
    /// a 401 carries the challenge (as the ping's). Either one counts as the ping. One attempt,
    /// never retried: the HEAD's answer when it is a 200; otherwise the error its status makes
    /// (`None`: no answer). The caller then pings, if still needed, and asks again the usual
    /// way, so a failure is reported, retried and logged as before; or, once the ping has found
    /// that the host asks nothing ([`RegistryClient::asks_nothing`]), takes a 404 or 405 as the
    /// answer a HEAD sent now would get.
    pub async fn head_in_place_of_ping(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<ManifestHead, Option<RegistryError>> {
        if self.auth.has_credentials() || self.pinged.initialized() {
            return Err(None);
        }
        let url = self
            .url(&format!("v2/{repository}/manifests/{reference}"))
            .map_err(|_| None)?;
        let response = self
            .send_unauthenticated(Method::HEAD, &url, manifest_accept(), false)
            .await
            .map_err(|_| None)?;
        let status = response.status();
        tracing::debug!(method = %reqwest::Method::HEAD, url = %redact(&url), status = status.as_u16(), "registry request");
        if !self.learn_challenge(&response).await {
            return Err(Some(status_error("HEAD", &url, response).await));
        }
        let _ = self.pinged.set(());
        if status != reqwest::StatusCode::OK {
            return Err(Some(status_error("HEAD", &url, response).await));
        }
        let headers = response.headers();
        Ok(ManifestHead {
            digest: content_digest(headers, &url).map_err(|_| None)?,
            media_type: media_type(headers),
            size: content_length(headers),
        })
    }

    /// Whether the host asks for no authentication (its `GET /v2/`, or the HEAD in its place,
    /// answered 200): an answer to a request sent without credentials is then the answer.
    pub async fn asks_nothing(&self) -> bool {
        self.auth.asks_nothing().await
    }

    /// `GET /v2/<name>/manifests/<reference>`: the exact bytes, at most 4 MiB, with the digest
    /// recomputed. When `reference` is a digest the content must hash to it; a
    /// `Docker-Content-Digest` header that disagrees with the content is an error. A schema 1
    /// manifest is refused with an error that says so.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let call = Call::new("GET manifest", Method::GET, url.clone(), pull(repository))
            .headers(manifest_accept());
        let fetched = self
            .call_and_read(&call, |response| read_manifest(&url, response))
            .await?
            .ok_or_else(|| RegistryError::protocol(&url, "manifest GET answered 404"))?;
        let digest = crate::manifest::digest_of(&fetched.bytes);
        if fetched.schema1 {
            return Err(RegistryError::protocol(
                &url,
                format!(
                    "{repository}:{reference} is a Docker schema 1 manifest, which cannot be mirrored with digests preserved (push it again with a current Docker or use another tag)"
                ),
            ));
        }
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
        if let Some(claimed) = fetched.header_digest
            && claimed.is_sha256()
            && claimed != digest
        {
            return Err(RegistryError::protocol(
                &url,
                format!("Docker-Content-Digest {claimed} does not match the content ({digest})"),
            ));
        }
        let media_type =
            crate::manifest::resolve_media_type(fetched.header_type.as_deref(), &fetched.bytes)
                .map_err(|e| RegistryError::protocol(&url, e.to_string()))?;
        Ok(FetchedManifest {
            bytes: fetched.bytes,
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
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let call = Call::new("PUT manifest", Method::PUT, url, push(repository))
            .accepting(Statuses::AnySuccess);
        let body = Replayable::Bytes(
            manifest.bytes.clone(),
            content_type_static(&manifest.media_type),
        );
        self.call(&call, body).await?;
        Ok(())
    }

    /// `DELETE /v2/<name>/manifests/<digest>`: removes a manifest (and, in distribution, every
    /// tag pointing at it). `false` when it was already gone.
    pub async fn delete_manifest(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let url = self.url(&format!("v2/{repository}/manifests/{digest}"))?;
        let call = Call::new("DELETE manifest", Method::DELETE, url, push(repository))
            .accepting(Statuses::AnySuccess)
            .missing_ok();
        Ok(self.call(&call, Replayable::Empty).await?.is_some())
    }
}

/// A manifest body as read, before any check.
struct RawManifest {
    bytes: bytes::Bytes,
    header_digest: Option<Digest>,
    header_type: Option<String>,
    schema1: bool,
}

async fn read_manifest(
    url: &Url,
    response: reqwest::Response,
) -> Result<RawManifest, RegistryError> {
    let header_digest = content_digest(response.headers(), url)?;
    let header_type = media_type(response.headers());
    if content_length(response.headers()).is_some_and(|n| n > MAX_MANIFEST_BYTES as u64) {
        return Err(RegistryError::protocol(
            url,
            format!("manifest is larger than {MAX_MANIFEST_BYTES} bytes"),
        ));
    }
    let bytes = read_limited(response, MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(_) => RegistryError::protocol(url, e.to_string()),
            BodyError::Read(_) => RegistryError::Transport {
                method: "GET".into(),
                url: redact(url),
                detail: e.to_string(),
            },
        })?;
    let schema1 = header_type.as_deref().is_some_and(is_schema1) || declares_schema1(&bytes);
    Ok(RawManifest {
        bytes,
        header_digest,
        header_type,
        schema1,
    })
}

/// `"schemaVersion": 1` in the document itself (some registries send it as `application/json`).
fn declares_schema1(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Version {
        #[serde(rename = "schemaVersion")]
        schema_version: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Version>(bytes)
        .ok()
        .and_then(|v| v.schema_version)
        .is_some_and(|v| v.as_u64() == Some(1))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_schema1() {
        assert!(is_schema1(
            "application/vnd.docker.distribution.manifest.v1+prettyjws"
        ));
        assert!(is_schema1(
            "application/vnd.docker.distribution.manifest.v1+json"
        ));
        assert!(!is_schema1(
            "application/vnd.docker.distribution.manifest.v2+json"
        ));
        assert!(declares_schema1(br#"{"schemaVersion":1,"name":"a"}"#));
        assert!(!declares_schema1(br#"{"schemaVersion":2}"#));
    }
}
