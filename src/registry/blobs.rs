//! Blob endpoints: existence, download (with `Range` to resume), cross-repository mount, and
//! the upload session (`POST`, `PATCH` chunks, final `PUT ?digest=`, `DELETE` to abandon).
//!
//! Upload sessions are tracked from the answer that opened them until they are completed or
//! cancelled, so sessions a run leaves behind (an error, a copy cut off at the grace period) can
//! be cancelled at its end ([`RegistryClient::cancel_abandoned_uploads`]).

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use super::call::{Call, Replayable, Statuses};
use super::{
    MountOutcome, RegistryClient, RegistryError, RequestBody, UploadFlow, content_length, pull,
    push,
};
use crate::reference::Digest;

impl RegistryClient {
    /// `HEAD /v2/<name>/blobs/<digest>`: the size when present, `None` on 404 (only 404 means
    /// missing; any other answer is an error).
    pub async fn blob_size(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"))?;
        let call = Call::new("HEAD blob", Method::HEAD, url, pull(repository)).missing_ok();
        Ok(self
            .call(&call, Replayable::Empty)
            .await?
            .map(|r| content_length(r.headers()).unwrap_or(0)))
    }

    /// `GET /v2/<name>/blobs/<digest>`, following redirects (to object storage, say) without
    /// sending `Authorization` to another host. The caller streams and verifies the body.
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<reqwest::Response, RegistryError> {
        Ok(self.get_blob_from(repository, digest, 0, false).await?.0)
    }

    /// `GET /v2/<name>/blobs/<digest>` with `Range: bytes=<offset>-` to resume a download.
    /// Returns the response and whether it starts at `offset` (206) or at 0 (200: the registry
    /// ignored the range, and the caller must skip `offset` bytes). A `bulk` download gets an
    /// HTTP/1.1 connection of its own (see [`RegistryClient::send`]).
    pub async fn get_blob_from(
        &self,
        repository: &str,
        digest: &Digest,
        offset: u64,
        bulk: bool,
    ) -> Result<(reqwest::Response, bool), RegistryError> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"))?;
        let mut headers = HeaderMap::new();
        if offset > 0 {
            let range = HeaderValue::from_str(&format!("bytes={offset}-"))
                .map_err(|e| RegistryError::protocol(&url, e.to_string()))?;
            headers.insert(header::RANGE, range);
        }
        let call = Call::new("GET blob", Method::GET, url.clone(), pull(repository))
            .headers(headers)
            .accepting(Statuses::AnySuccess)
            .bulk(bulk);
        let response = self.call(&call, Replayable::Empty).await?.ok_or_else(|| {
            RegistryError::protocol(&url, "blob GET answered 404 where a body was expected")
        })?;
        match response.status() {
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
                        format!(
                            "asked for bytes from {offset}, got Content-Range starting at {starts:?}"
                        ),
                    ));
                }
                Ok((response, true))
            }
            StatusCode::OK => Ok((response, offset == 0)),
            other => Err(RegistryError::protocol(
                &url,
                format!("blob GET answered {} without a body", other.as_u16()),
            )),
        }
    }

    /// `POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<other>`: 201 mounted, 202 an upload
    /// session was opened instead (the caller may upload into it). Once a registry has refused
    /// a mount this way, later calls do not ask again and answer [`MountOutcome::Refused`].
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<MountOutcome, RegistryError> {
        let _probe = self.learned.mount_probe().await;
        if self.learned.mounts_refused() {
            return Ok(MountOutcome::Refused);
        }
        let mut url = self.url(&format!("v2/{repository}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let mut scopes = push(repository);
        scopes.push(format!("repository:{from}:pull"));
        let call = Call::new("mount blob", Method::POST, url.clone(), scopes)
            .accepting(Statuses::AnySuccess);
        let response = self
            .call(&call, Replayable::Empty)
            .await?
            .ok_or_else(|| RegistryError::protocol(&url, "mount answered 404"))?;
        if response.status() == StatusCode::CREATED {
            self.learned.mounts_work();
            return Ok(MountOutcome::Mounted);
        }
        // 202 (or another success): no mount, but an upload session to use instead.
        self.learned.refuse_mounts(self.host());
        let location = self.location(&url, &response)?;
        self.uploads.opened(repository, &location);
        Ok(MountOutcome::UploadStarted(location))
    }

    /// `POST /v2/<name>/blobs/uploads/`: opens an upload session; returns its `Location`.
    pub async fn start_upload(&self, repository: &str) -> Result<Url, RegistryError> {
        let url = self.url(&format!("v2/{repository}/blobs/uploads/"))?;
        let call = Call::new("start upload", Method::POST, url.clone(), push(repository))
            .accepting(Statuses::AnySuccess);
        let response = self
            .call(&call, Replayable::Empty)
            .await?
            .ok_or_else(|| RegistryError::protocol(&url, "upload POST answered 404"))?;
        let location = self.location(&url, &response)?;
        self.uploads.opened(repository, &location);
        Ok(location)
    }

    /// `PATCH <location>` with `Content-Range: <start>-<end>`: one chunk of a chunked upload.
    /// Any 2xx is accepted (the spec says 202; ECR answers 201). Returns the next `Location`.
    pub async fn upload_chunk(
        &self,
        repository: &str,
        location: &Url,
        offset: u64,
        length: u64,
        body: reqwest::Body,
    ) -> Result<Url, RegistryError> {
        let range = (length > 0).then(|| (offset, offset + length - 1));
        self.patch(repository, location, length, range, body).await
    }

    /// `PATCH <location>` without `Content-Range`, carrying the whole blob: the Docker client's
    /// streamed upload (see [`super::UploadFlow::SinglePatch`]). Returns the next `Location`.
    pub async fn upload_stream(
        &self,
        repository: &str,
        location: &Url,
        length: u64,
        body: reqwest::Body,
    ) -> Result<Url, RegistryError> {
        self.patch(repository, location, length, None, body).await
    }

    async fn patch(
        &self,
        repository: &str,
        location: &Url,
        length: u64,
        range: Option<(u64, u64)>,
        body: reqwest::Body,
    ) -> Result<Url, RegistryError> {
        let call = Call::new(
            "PATCH upload",
            Method::PATCH,
            location.clone(),
            push(repository),
        )
        .accepting(Statuses::AnySuccess);
        let stream = RequestBody::Stream {
            body,
            length,
            range,
        };
        let response = self
            .call_once(&call, stream)
            .await?
            .ok_or_else(|| RegistryError::protocol(location, "upload PATCH answered 404"))?;
        let next = match response.headers().get(header::LOCATION) {
            Some(_) => self.location(location, &response)?,
            // A registry that keeps the session URL may not repeat it.
            None => location.clone(),
        };
        self.uploads.moved(location, &next);
        Ok(next)
    }

    /// `PUT <location>&digest=<digest>`: completes an upload whose bytes were all sent by PATCH.
    pub async fn finish_upload(
        &self,
        repository: &str,
        location: &Url,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        self.finish(repository, location, digest, RequestBody::Empty)
            .await
    }

    /// Uploads a small blob held in memory: POST, then `PUT ?digest=` with the body; where the
    /// registry refused that (or refused it before, this run), POST, one `PATCH` with the
    /// body, empty `PUT`: the bytes are at hand, so the refused upload is redone at once. The
    /// whole again when the registry refuses it for a reason worth a retry (429 under load).
    pub async fn upload_bytes(
        &self,
        repository: &str,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<(), RegistryError> {
        self.retrying("upload", || {
            self.upload_bytes_once(repository, digest, bytes.clone())
        })
        .await
    }

    async fn upload_bytes_once(
        &self,
        repository: &str,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<(), RegistryError> {
        let _probe = self.learned.put_body_probe().await;
        if self.learned.upload_flow() == UploadFlow::PutWithBody {
            let location = self.start_upload(repository).await?;
            let body = reqwest::Body::from(bytes.clone());
            let length = bytes.len() as u64;
            match self
                .finish_upload_with_body(repository, &location, digest, length, body)
                .await
            {
                Ok(()) => {
                    self.learned.put_body_worked();
                    return Ok(());
                }
                Err(e) => {
                    self.cancel_upload(repository, &location).await;
                    let why = e.to_string();
                    if !refuses_shortcut(&e, digest)
                        || !self
                            .learned
                            .fall_back(self.host(), UploadFlow::PatchThenPut, &why)
                    {
                        return Err(e);
                    }
                }
            }
        }
        let location = self.start_upload(repository).await?;
        let length = bytes.len() as u64;
        let result = async {
            let next = self
                .upload_stream(repository, &location, length, reqwest::Body::from(bytes))
                .await?;
            self.finish_upload(repository, &next, digest).await
        }
        .await;
        if result.is_err() {
            self.cancel_upload(repository, &location).await;
        }
        result
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
        let stream = RequestBody::Stream {
            body,
            length,
            range: None,
        };
        self.finish(repository, location, digest, stream).await
    }

    async fn finish(
        &self,
        repository: &str,
        location: &Url,
        digest: &Digest,
        body: RequestBody,
    ) -> Result<(), RegistryError> {
        let mut url = location.clone();
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let call = Call::new("PUT upload", Method::PUT, url, push(repository))
            .accepting(Statuses::AnySuccess);
        self.call_once(&call, body).await?.ok_or_else(|| {
            RegistryError::protocol(location, "upload PUT answered 404 (session gone)")
        })?;
        self.uploads.closed(location);
        Ok(())
    }

    /// `DELETE <location>`: abandons an upload session (best effort: a registry that does not
    /// support it drops the session on its own schedule).
    pub async fn cancel_upload(&self, repository: &str, location: &Url) {
        self.uploads.closed(location);
        let call = Call::new(
            "cancel upload",
            Method::DELETE,
            location.clone(),
            push(repository),
        )
        .accepting(Statuses::AnySuccess)
        .missing_ok();
        if let Err(e) = self.call_once(&call, RequestBody::Empty).await {
            tracing::debug!(error = %e, "could not cancel upload session");
        }
    }

    /// Cancels every upload session this client opened and neither completed nor cancelled
    /// (their copies failed or were cut off). Returns how many it cancelled.
    pub async fn cancel_abandoned_uploads(&self) -> usize {
        let open = self.uploads.take_all();
        for (repository, location) in &open {
            self.cancel_upload(repository, location).await;
        }
        if !open.is_empty() {
            tracing::info!(registry = %self.label, sessions = open.len(), "cancelled abandoned upload sessions");
        }
        open.len()
    }

    /// Resolves an upload answer's `Location` header (absolute or relative) against the request
    /// URL. On another host it is used without our credentials (see [`RegistryClient::send`]).
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
        if !super::origin::is_web_url(&url) {
            return Err(RegistryError::protocol(
                request,
                format!("bad Location {value:?}"),
            ));
        }
        Ok(url)
    }
}

/// Whether `error`, the answer to a shortcut (a closing `PUT` with a body, a `PATCH` with
/// `Content-Range`), says the registry does not take the shortcut rather than the content:
/// any 4xx or 5xx except an authorisation refusal (401, 403), a lost session (404), a body too
/// large (413, handled by smaller chunks), throttling or a passing outage (408, 429, 502, 503,
/// 504), and a digest or upload refusal that names the blob's digest (a `DIGEST_INVALID`
/// that does not may come from a registry that ignored the body and hashed nothing; our own
/// check of the bytes runs before any redo, so a real mismatch is still caught).
pub fn refuses_shortcut(error: &RegistryError, digest: &Digest) -> bool {
    let RegistryError::Status { status, errors, .. } = error else {
        return false;
    };
    if !(400..600).contains(status)
        || matches!(status, 401 | 403 | 404 | 408 | 413 | 429 | 502 | 503 | 504)
    {
        return false;
    }
    let digest = digest.to_string();
    !errors.iter().any(|e| {
        matches!(e.code.as_str(), "DIGEST_INVALID" | "BLOB_UPLOAD_INVALID")
            && e.message.contains(&digest)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::error::ApiError;

    fn status(status: u16, code: &str, message: &str) -> RegistryError {
        RegistryError::Status {
            method: "PUT".into(),
            url: "u".into(),
            status,
            errors: vec![ApiError {
                code: code.into(),
                message: message.into(),
            }],
            body_excerpt: None,
            retry_after: None,
        }
    }

    #[test]
    fn which_answers_refuse_the_shortcut_rather_than_the_content() {
        let digest = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        for refused in [500, 400, 405, 415, 416, 501] {
            assert!(refuses_shortcut(
                &status(refused, "UNKNOWN", "not supported"),
                &digest
            ));
        }
        for not in [401, 403, 404, 408, 413, 429, 502, 503, 504] {
            assert!(!refuses_shortcut(&status(not, "X", ""), &digest), "{not}");
        }
        let named = format!("digest {digest} does not match");
        assert!(!refuses_shortcut(
            &status(400, "DIGEST_INVALID", &named),
            &digest
        ));
        assert!(!refuses_shortcut(
            &status(400, "BLOB_UPLOAD_INVALID", &named),
            &digest
        ));
        // A registry that ignored the body hashes nothing: its digest refusal names no digest.
        assert!(refuses_shortcut(
            &status(
                400,
                "DIGEST_INVALID",
                "provided digest did not match uploaded content"
            ),
            &digest
        ));
        let transport = RegistryError::Transport {
            method: "PUT".into(),
            url: "u".into(),
            detail: "reset".into(),
        };
        assert!(!refuses_shortcut(&transport, &digest));
    }
}
