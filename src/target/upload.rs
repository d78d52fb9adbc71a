//! Chunked, streaming blob upload to a registry.
//!
//! `POST` opens a session, each chunk of at most [`CHUNK_SIZE`] bytes goes up in a `PATCH` whose
//! body is fed straight from the upstream download (never the whole blob in memory), and the
//! final `PUT ?digest=` is sent only after our own size and sha256 check passed. distribution 2.8
//! ignores a body on the opening POST, so single-request upload is not used.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::TargetError;
use crate::reference::Digest;
use crate::registry::RegistryClient;
use crate::verify::VerifiedStream;

/// Bytes per PATCH request: large enough that request overhead is small, small enough that a
/// failed chunk is cheap to redo.
pub const CHUNK_SIZE: u64 = 64 * 1024 * 1024;

/// Chunks buffered between the download and the upload (bounded memory).
const PIPE_DEPTH: usize = 8;

pub async fn upload_blob(
    client: &RegistryClient,
    repository: &str,
    digest: &Digest,
    mut source: VerifiedStream,
) -> Result<u64, TargetError> {
    let mut location = client.start_upload(repository).await?;
    let size = source.expected_size();
    if size <= CHUNK_SIZE {
        return upload_in_one(client, repository, digest, source, location).await;
    }
    let mut offset = 0u64;
    let mut carry: Option<Bytes> = None;
    let result: Result<(), TargetError> = async {
        while offset < size {
            let length = CHUNK_SIZE.min(size - offset);
            let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(PIPE_DEPTH);
            let body =
                reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                }));
            let feed = feed_chunk(&mut source, &mut carry, length, tx);
            let patch = client.upload_chunk(repository, &location, offset, length, body);
            let (fed, patched) = tokio::join!(feed, patch);
            // A source failure explains a failed PATCH better than the PATCH's own error.
            fed?;
            location = patched?;
            offset += length;
        }
        if carry.is_some() {
            return Err(TargetError::Source(format!(
                "blob {digest} is longer than its descriptor's {size} bytes"
            )));
        }
        source.finish().await.map_err(TargetError::Source)?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            client.finish_upload(repository, &location, digest).await?;
            Ok(size)
        }
        Err(e) => {
            client.cancel_upload(repository, &location).await;
            Err(e)
        }
    }
}

/// A blob that fits one chunk: POST, then the body on the final `PUT ?digest=` (one request
/// fewer per blob). The registry refuses bytes that do not match the digest, and we check too.
async fn upload_in_one(
    client: &RegistryClient,
    repository: &str,
    digest: &Digest,
    mut source: VerifiedStream,
    location: url::Url,
) -> Result<u64, TargetError> {
    let size = source.expected_size();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(PIPE_DEPTH);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let mut carry = None;
    let feed = feed_chunk(&mut source, &mut carry, size, tx);
    let put = async {
        client
            .finish_upload_with_body(repository, &location, digest, size, body)
            .await
            .map_err(TargetError::from)
    };
    let (fed, put) = tokio::join!(feed, put);
    let checked = match fed {
        Err(e) => Err(e),
        Ok(()) if carry.is_some() => Err(TargetError::Source(format!(
            "blob {digest} is longer than its descriptor's {size} bytes"
        ))),
        Ok(()) => source.finish().await.map_err(TargetError::Source),
    };
    match (checked, put) {
        (Ok(_), Ok(())) => Ok(size),
        // A failure of our own check explains a refused PUT best.
        (Err(e), _) | (Ok(_), Err(e)) => {
            client.cancel_upload(repository, &location).await;
            Err(e)
        }
    }
}

/// Sends exactly `length` bytes of the source into one PATCH body, splitting a piece that
/// crosses the chunk boundary and keeping the rest for the next chunk.
async fn feed_chunk(
    source: &mut VerifiedStream,
    carry: &mut Option<Bytes>,
    length: u64,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), TargetError> {
    let mut remaining = length;
    while remaining > 0 {
        let piece = match carry.take() {
            Some(p) => p,
            None => match source.next_chunk().await {
                Ok(Some(p)) => p,
                Ok(None) => {
                    let reason = format!("source ended {remaining} bytes early");
                    let _ = tx.send(Err(std::io::Error::other(reason.clone()))).await;
                    return Err(TargetError::Source(reason));
                }
                Err(reason) => {
                    let _ = tx.send(Err(std::io::Error::other(reason.clone()))).await;
                    return Err(TargetError::Source(reason));
                }
            },
        };
        let piece = if piece.len() as u64 > remaining {
            let mut head = piece;
            let tail = head.split_off(remaining as usize);
            *carry = Some(tail);
            head
        } else {
            piece
        };
        remaining -= piece.len() as u64;
        if tx.send(Ok(piece)).await.is_err() {
            // The PATCH ended early; its own error says why.
            return Ok(());
        }
    }
    Ok(())
}
