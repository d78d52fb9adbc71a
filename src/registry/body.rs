//! Response bodies read whole, never past a limit: what a registry sends cannot make the run
//! hold more than the caller allows (see the limits in the README's security model).

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap};

use super::describe_reqwest_error;

/// Largest error (or otherwise ignored) body read: the rest is not read.
pub(crate) const MAX_ERROR_BODY: usize = 64 * 1024;

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

/// The `Content-Length` an answer announces.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}
