//! Blob endpoints: existence, download (with `Range` to resume), cross-repository mount, and
//! the upload session (`POST`, `PATCH` chunks, final `PUT ?digest=`).

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use super::{
    MountOutcome, RegistryClient, RegistryError, RequestBody, content_length, pull, push,
    status_error,
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
        self.retrying("HEAD blob", || async {
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
        })
        .await
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
        self.retrying("mount blob", || async {
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
        })
        .await
    }

    /// `POST /v2/<name>/blobs/uploads/`: opens an upload session; returns its `Location`.
    pub async fn start_upload(&self, repository: &str) -> Result<Url, RegistryError> {
        self.retrying("start upload", || async {
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
        })
        .await
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

    /// Uploads a small blob held in memory: POST, then `PUT ?digest=` with the body.
    pub async fn upload_bytes(
        &self,
        repository: &str,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<(), RegistryError> {
        let location = self.start_upload(repository).await?;
        let length = bytes.len() as u64;
        self.finish_upload_with_body(
            repository,
            &location,
            digest,
            length,
            reqwest::Body::from(bytes),
        )
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
}
