//! A blob body checked while it streams: size and sha256 against the descriptor.
//!
//! Nothing is committed at the target until [`VerifiedStream::finish`] has confirmed both, so
//! corrupted or truncated bytes can never land under the digest they claim.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use sha2::{Digest as _, Sha256};

use crate::reference::Digest;

/// A blob arriving from upstream, hashed and counted as it is read.
pub struct VerifiedStream {
    inner: BoxStream<'static, Result<Bytes, String>>,
    hasher: Sha256,
    received: u64,
    expected_digest: Digest,
    expected_size: u64,
}

impl VerifiedStream {
    pub fn new(
        inner: BoxStream<'static, Result<Bytes, String>>,
        expected_digest: Digest,
        expected_size: u64,
    ) -> Self {
        VerifiedStream {
            // Fused: `finish` may ask again after the end.
            inner: inner.fuse().boxed(),
            hasher: Sha256::new(),
            received: 0,
            expected_digest,
            expected_size,
        }
    }

    /// The size the descriptor promised.
    pub fn expected_size(&self) -> u64 {
        self.expected_size
    }

    /// The same checks over a transformed body (e.g. paced to a bandwidth limit). Only for a
    /// stream nothing has been read from yet.
    pub fn map_body(
        self,
        f: impl FnOnce(
            BoxStream<'static, Result<Bytes, String>>,
        ) -> BoxStream<'static, Result<Bytes, String>>,
    ) -> VerifiedStream {
        VerifiedStream {
            inner: f(self.inner).fuse().boxed(),
            ..self
        }
    }

    /// The body read into memory ahead of its reader, whole (and at most one piece past the
    /// promised size), or up to the source's error; the reader then gets the same pieces and
    /// the same checks. For a small blob, so that whatever the reader holds while it reads (a
    /// write slot at the target) is not held over the round trip to the source. Only for a
    /// stream nothing has been read from yet.
    pub async fn read_ahead(mut self) -> VerifiedStream {
        let mut pieces = Vec::new();
        let mut held = 0u64;
        while held <= self.expected_size {
            match self.inner.next().await {
                Some(Ok(piece)) => {
                    held += piece.len() as u64;
                    pieces.push(Ok(piece));
                }
                Some(Err(e)) => {
                    pieces.push(Err(e));
                    break;
                }
                None => break,
            }
        }
        let rest = std::mem::replace(&mut self.inner, futures_util::stream::empty().boxed());
        self.inner = futures_util::stream::iter(pieces)
            .chain(rest)
            .fuse()
            .boxed();
        self
    }

    /// The next piece of the body; an error when the source fails or sends more than promised.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, String> {
        match self.inner.next().await {
            None => Ok(None),
            Some(Err(e)) => Err(format!(
                "download of {} failed after {} of {} bytes: {e}",
                self.expected_digest, self.received, self.expected_size
            )),
            Some(Ok(chunk)) => {
                self.received += chunk.len() as u64;
                if self.received > self.expected_size {
                    return Err(format!(
                        "blob {} is longer than its descriptor's {} bytes",
                        self.expected_digest, self.expected_size
                    ));
                }
                self.hasher.update(&chunk);
                Ok(Some(chunk))
            }
        }
    }

    /// Confirms the whole body arrived and hashes to the expected digest.
    pub async fn finish(mut self) -> Result<u64, String> {
        // Drain anything left (a body longer than promised is an error in next_chunk).
        while self.next_chunk().await?.is_some() {}
        if self.received != self.expected_size {
            return Err(format!(
                "blob {} ended after {} of {} bytes",
                self.expected_digest, self.received, self.expected_size
            ));
        }
        let actual = Digest::from_sha256_bytes(&self.hasher.finalize().into());
        if actual != self.expected_digest {
            return Err(format!(
                "blob content hashes to {actual}, not {}: corrupted in transit, not pushed",
                self.expected_digest
            ));
        }
        Ok(self.received)
    }
}

/// Wraps a blob GET response, checking it against `digest` and `size` as it streams.
pub fn from_response(response: reqwest::Response, digest: Digest, size: u64) -> VerifiedStream {
    let stream = response
        .bytes_stream()
        .map(|r| r.map_err(|e| crate::registry::describe_reqwest_error(&e)))
        .boxed();
    VerifiedStream::new(stream, digest, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(parts: Vec<&'static [u8]>) -> BoxStream<'static, Result<Bytes, String>> {
        futures_util::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from_static(p)))).boxed()
    }

    fn digest_of(data: &[u8]) -> Digest {
        Digest::from_sha256_bytes(&Sha256::digest(data).into())
    }

    #[tokio::test]
    async fn accepts_exact_content_and_rejects_corruption() {
        let good = VerifiedStream::new(
            stream_of(vec![b"hello ", b"world"]),
            digest_of(b"hello world"),
            11,
        );
        assert_eq!(good.finish().await.unwrap(), 11);

        let flipped = VerifiedStream::new(
            stream_of(vec![b"hello World"]),
            digest_of(b"hello world"),
            11,
        );
        assert!(flipped.finish().await.unwrap_err().contains("corrupted"));

        let short = VerifiedStream::new(stream_of(vec![b"hello"]), digest_of(b"hello world"), 11);
        assert!(
            short
                .finish()
                .await
                .unwrap_err()
                .contains("ended after 5 of 11")
        );

        let long = VerifiedStream::new(
            stream_of(vec![b"hello world!"]),
            digest_of(b"hello world"),
            11,
        );
        assert!(long.finish().await.unwrap_err().contains("longer"));
    }

    #[tokio::test]
    async fn read_ahead_takes_the_body_before_the_reader_and_keeps_every_check() {
        let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = |parts: Vec<Result<&'static [u8], &'static str>>| {
            let pulled = std::sync::Arc::clone(&pulled);
            futures_util::stream::iter(parts)
                .map(move |p| {
                    pulled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    p.map(Bytes::from_static).map_err(str::to_string)
                })
                .boxed()
        };
        let whole = VerifiedStream::new(
            counted(vec![Ok(b"hello "), Ok(b"world")]),
            digest_of(b"hello world"),
            11,
        )
        .read_ahead()
        .await;
        assert_eq!(
            pulled.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "read before the reader asked"
        );
        assert_eq!(whole.finish().await.unwrap(), 11);

        let broken = VerifiedStream::new(
            counted(vec![Ok(b"hello "), Err("connection reset")]),
            digest_of(b"hello world"),
            11,
        )
        .read_ahead()
        .await;
        let error = broken.finish().await.unwrap_err();
        assert!(
            error.contains("after 6 of 11 bytes: connection reset"),
            "{error}"
        );

        let long = VerifiedStream::new(
            counted(vec![Ok(b"hello world"), Ok(b"!"), Ok(b"never read")]),
            digest_of(b"hello world"),
            11,
        )
        .read_ahead()
        .await;
        assert!(long.finish().await.unwrap_err().contains("longer than"));
    }
}
