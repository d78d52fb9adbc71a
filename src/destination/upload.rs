//! Chunked, streaming blob upload to a registry.
//!
//! `POST` opens a session (or the caller brings one: a refused mount answers with a session), each
//! chunk of at most the registry's chunk size (`target.chunk_size`, 64 MiB by default) goes up in
//! a `PATCH` whose body is fed straight from the upstream download (never the whole blob in
//! memory), and the final `PUT ?digest=` is sent only after our own size and sha256 check passed.
//! A blob that fits one chunk goes up as the body of that `PUT`. distribution 2.8 ignores a body
//! on the opening POST, so single-request upload is not used.
//!
//! Those two are shortcuts the Docker client does not take (it sends POST, one `PATCH` with the
//! whole blob and no `Content-Range`, an empty `PUT`), and registries tested only with `docker
//! push` may refuse them. The first refusal moves the host to the Docker client's flow for the
//! rest of the run ([`UploadFlow`]) and fails this attempt with [`TargetError::ShortcutRefused`]:
//! the source is a one-shot stream, so the caller reads the blob again and redoes it.
//!
//! A body answered `413` (a proxy's `client_max_body_size`) halves the chunk size for the rest
//! of the run (not below 5 MiB, ECR's smallest part). The upload then goes on in the same
//! session, from the first byte of the refused body, in smaller chunks: the refused body's bytes
//! were kept ([`Feed`]) while no body that large had been accepted by the host yet, within a
//! process-wide budget ([`REPLAY_BUDGET`]). A body too big for the budget, or refused at its
//! smallest size, fails this attempt with [`TargetError::BodyTooLarge`] and the caller starts
//! the blob again from a new upstream read, as before. Every session that does not complete is
//! cancelled (`DELETE`).

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::sync::{MutexGuard, Semaphore, SemaphorePermit, mpsc};
use url::Url;

use super::TargetError;
use crate::reference::Digest;
use crate::registry::{RegistryClient, RegistryError, UploadFlow, refuses_shortcut};
use crate::verify::VerifiedStream;

/// Chunks buffered between the download and the upload (bounded memory).
const PIPE_DEPTH: usize = 8;

/// KiB of request bodies the whole process may keep for sending again after a `413`: bodies up
/// to this size resume without a second upstream read; a bigger one (the first 64 MiB chunk of
/// a big layer at the default chunk size) restarts the blob. Bodies are kept only while the
/// host has not accepted one as large, so a run pays this memory at its start at most (a cold
/// run's peak RSS rose by up to 13 MiB with 32 MiB here: hence 16).
const REPLAY_BUDGET: usize = 16 * 1024;

static REPLAY: Semaphore = Semaphore::const_new(REPLAY_BUDGET);

/// The bytes still to send: pieces set aside (the rest of a piece split at a chunk boundary,
/// a refused body to send again), then the rest of the download.
struct Feed {
    /// `None` once drained and verified.
    source: Option<VerifiedStream>,
    size: u64,
    pending: VecDeque<Bytes>,
    /// The pieces of the body in flight (shared, not copied), while a `413` could ask for them
    /// again; with the budget they are counted against.
    kept: Option<(Vec<Bytes>, SemaphorePermit<'static>)>,
}

impl Feed {
    /// Keeps bodies of up to `body` bytes unless one that large is `known_to_pass` at the host,
    /// when the budget has room.
    fn new(source: VerifiedStream, body: u64, known_to_pass: bool) -> Self {
        let size = source.expected_size();
        let kept = (body > 0 && !known_to_pass)
            .then(|| u32::try_from(body.div_ceil(1024)).ok())
            .flatten()
            .and_then(|kib| REPLAY.try_acquire_many(kib).ok())
            .map(|permit| (Vec::new(), permit));
        Feed {
            source: Some(source),
            size,
            pending: VecDeque::new(),
            kept,
        }
    }

    async fn next_piece(&mut self) -> Result<Option<Bytes>, String> {
        if let Some(piece) = self.pending.pop_front() {
            return Ok(Some(piece));
        }
        match self.source.as_mut() {
            Some(source) => source.next_chunk().await,
            None => Ok(None),
        }
    }

    fn keep(&mut self, piece: &Bytes) {
        if let Some((kept, _)) = self.kept.as_mut() {
            kept.push(piece.clone());
        }
    }

    /// The body in flight was accepted: its bytes are no longer needed.
    fn accepted(&mut self) {
        if let Some((kept, _)) = self.kept.as_mut() {
            kept.clear();
        }
    }

    /// The body in flight was refused as too large: whether its bytes are at hand to send
    /// again (then they are put back in front).
    fn take_back(&mut self) -> bool {
        let Some((kept, _)) = self.kept.as_mut() else {
            return false;
        };
        for piece in kept.drain(..).rev() {
            self.pending.push_front(piece);
        }
        true
    }

    /// Reads what is left of the download (kept, when bodies are kept: a body answered before
    /// it was all sent can then be sent again) and checks size and digest.
    async fn finish(&mut self) -> Result<(), TargetError> {
        let Some(mut source) = self.source.take() else {
            return Ok(());
        };
        if let Some((kept, _)) = self.kept.as_mut() {
            while let Some(piece) = source.next_chunk().await.map_err(TargetError::Source)? {
                kept.push(piece);
            }
        }
        source.finish().await.map_err(TargetError::Source)?;
        Ok(())
    }
}

/// How one blob goes up, given what the run learned about the registry so far.
enum Way<'a> {
    /// The body on the closing `PUT`; the guard while nobody knows whether that works here.
    InOne(Option<MutexGuard<'a, ()>>),
    /// `PATCH` chunks with `Content-Range`; the guard likewise.
    Chunks(Option<MutexGuard<'a, ()>>, u64),
    /// One `PATCH` without `Content-Range`, empty `PUT`.
    Streamed,
}

async fn choose_way(client: &RegistryClient, size: u64) -> Way<'_> {
    let learned = client.learned();
    let chunk = learned.chunk_size();
    let flow = learned.upload_flow();
    if flow == UploadFlow::SinglePatch || (flow == UploadFlow::PatchThenPut && size <= chunk) {
        return Way::Streamed;
    }
    // Uploads do not wait for one another to learn whether a shortcut works: a probe would
    // hold every other upload for a whole blob (or chunk) at the start of the run. Uploads in
    // flight when the first refusal comes may each be refused once, and are redone.
    if size <= chunk {
        return Way::InOne(None);
    }
    Way::Chunks(None, chunk)
}

/// Uploads `source` into `repository`, in `session` when the caller has one open already.
pub async fn upload_blob(
    client: &RegistryClient,
    repository: &str,
    digest: &Digest,
    source: VerifiedStream,
    session: Option<Url>,
) -> Result<u64, TargetError> {
    let size = source.expected_size();
    let way = choose_way(client, size).await;
    let location = match session {
        Some(location) => location,
        None => client.start_upload(repository).await?,
    };
    let streamed = matches!(way, Way::Streamed);
    // One streamed PATCH carries the whole blob: smaller chunks could not help it.
    let body = match way {
        Way::InOne(_) => size,
        Way::Chunks(_, chunk) => chunk.min(size),
        Way::Streamed => 0,
    };
    let mut feed = Feed::new(source, body, client.learned().accepts_body(body));
    let (result, location) = match way {
        Way::InOne(probe) => {
            let (result, location) =
                upload_in_one(client, repository, digest, &mut feed, location, probe).await;
            match result {
                Err(Failure::TooLarge { body, error }) => {
                    let refused = (body, error);
                    go_on_smaller(client, repository, digest, &mut feed, location, refused).await
                }
                other => (other, location),
            }
        }
        Way::Chunks(probe, chunk) => {
            upload_in_chunks(
                client, repository, digest, &mut feed, location, chunk, probe,
            )
            .await
        }
        Way::Streamed => upload_streamed(client, repository, digest, &mut feed, location).await,
    };
    match result {
        Ok(()) => Ok(size),
        Err(failure) => {
            client.cancel_upload(repository, &location).await;
            Err(match failure {
                Failure::Target(e) => e,
                Failure::Refused(error) => TargetError::ShortcutRefused {
                    error: Box::new(error),
                },
                Failure::TooLarge { error, .. }
                    if streamed && client.learned().upload_flow() == UploadFlow::SinglePatch =>
                {
                    TargetError::Registry(error)
                }
                Failure::TooLarge { body, error } => {
                    if client.learned().shrink_chunks(client.host(), body) {
                        TargetError::BodyTooLarge {
                            bytes: body,
                            error: Box::new(error),
                        }
                    } else {
                        TargetError::Registry(error)
                    }
                }
                Failure::Shrunk { body, error } => TargetError::BodyTooLarge {
                    bytes: body,
                    error: Box::new(error),
                },
            })
        }
    }
}

/// The whole blob, sent as one body, was refused as too large: on in smaller chunks in the
/// same session when its bytes are at hand, else the blob starts again.
async fn go_on_smaller(
    client: &RegistryClient,
    repository: &str,
    digest: &Digest,
    feed: &mut Feed,
    location: Url,
    (body, error): (u64, RegistryError),
) -> (Result<(), Failure>, Url) {
    if !client.learned().shrink_chunks(client.host(), body) {
        return (Err(Failure::Target(TargetError::Registry(error))), location);
    }
    if !feed.take_back() {
        return (Err(Failure::Shrunk { body, error }), location);
    }
    let chunk = client.learned().chunk_size();
    resuming(repository, digest, 0, chunk);
    upload_in_chunks(client, repository, digest, feed, location, chunk, None).await
}

fn resuming(repository: &str, digest: &Digest, offset: u64, chunk: u64) {
    tracing::info!(
        repository,
        digest = %digest,
        offset,
        chunk_bytes = chunk,
        "request body too large (413); the upload goes on from the refused bytes in smaller chunks"
    );
}

/// Why an upload attempt failed.
enum Failure {
    Target(TargetError),
    /// A request body of `body` bytes was answered 413.
    TooLarge {
        body: u64,
        error: RegistryError,
    },
    /// The registry refused a shortcut; the host uses the Docker client's flow from now on.
    Refused(RegistryError),
    /// A body of `body` bytes was answered 413, the chunk size is smaller now, and the bytes
    /// are not at hand to go on: the blob starts again.
    Shrunk {
        body: u64,
        error: RegistryError,
    },
}

impl From<TargetError> for Failure {
    fn from(e: TargetError) -> Self {
        Failure::Target(e)
    }
}

fn registry_failure(error: RegistryError, body: u64) -> Failure {
    if error.status() == Some(413) {
        Failure::TooLarge { body, error }
    } else {
        Failure::Target(TargetError::Registry(error))
    }
}

/// PATCH chunk after chunk, then `PUT ?digest=`. Returns the session's last `Location`.
/// `probe` is held until the first chunk's answer says whether `Content-Range` works here. A
/// chunk refused as too large is sent again in smaller chunks when its bytes were kept.
async fn upload_in_chunks(
    client: &RegistryClient,
    repository: &str,
    digest: &Digest,
    feed: &mut Feed,
    mut location: Url,
    mut chunk: u64,
    mut probe: Option<MutexGuard<'_, ()>>,
) -> (Result<(), Failure>, Url) {
    let size = feed.size;
    let mut offset = 0u64;
    while offset < size {
        let length = chunk.min(size - offset);
        let (tx, body) = pipe();
        let fed = feed_chunk(feed, length, tx);
        let patch = client.upload_chunk(repository, &location, offset, length, body);
        let (fed, patched) = tokio::join!(fed, patch);
        // A source failure explains a failed PATCH better than the PATCH's own error.
        if let Err(e) = fed {
            return (Err(e.into()), location);
        }
        match patched {
            Ok(next) => location = next,
            Err(e) if offset == 0 && refuses_shortcut(&e, digest) => {
                let why = e.to_string();
                let failure =
                    if client
                        .learned()
                        .fall_back(client.host(), UploadFlow::SinglePatch, &why)
                    {
                        Failure::Refused(e)
                    } else {
                        registry_failure(e, length)
                    };
                return (Err(failure), location);
            }
            // The refused PATCH changed nothing in the session: the same offset, smaller.
            Err(e) if e.status() == Some(413) && feed.kept.is_some() => {
                if !client.learned().shrink_chunks(client.host(), length) {
                    return (Err(Failure::Target(TargetError::Registry(e))), location);
                }
                feed.take_back();
                chunk = client.learned().chunk_size();
                resuming(repository, digest, offset, chunk);
                continue;
            }
            Err(e) => return (Err(registry_failure(e, length)), location),
        }
        client.learned().body_accepted(length);
        feed.accepted();
        if offset == 0 {
            client.learned().ranges_worked();
            drop(probe.take());
        }
        offset += length;
    }
    if !feed.pending.is_empty() {
        let e = TargetError::Source(format!(
            "blob {digest} is longer than its descriptor's {size} bytes"
        ));
        return (Err(e.into()), location);
    }
    if let Err(e) = feed.finish().await {
        return (Err(e.into()), location);
    }
    let done = client
        .finish_upload(repository, &location, digest)
        .await
        .map_err(|e| registry_failure(e, 0));
    (done, location)
}

/// A blob that fits one chunk: the body on the final `PUT ?digest=` (one request fewer per
/// blob). The registry refuses bytes that do not match the digest, and we check too.
async fn upload_in_one(
    client: &RegistryClient,
    repository: &str,
    digest: &Digest,
    feed: &mut Feed,
    location: Url,
    _probe: Option<MutexGuard<'_, ()>>,
) -> (Result<(), Failure>, Url) {
    let size = feed.size;
    let (tx, body) = pipe();
    let put = client.finish_upload_with_body(repository, &location, digest, size, body);
    let result = match send_whole(feed, tx, put).await {
        Ok(()) => {
            client.learned().put_body_worked();
            client.learned().body_accepted(size);
            feed.accepted();
            Ok(())
        }
        Err(Failure::Target(TargetError::Registry(e))) if refuses_shortcut(&e, digest) => {
            let why = e.to_string();
            if client
                .learned()
                .fall_back(client.host(), UploadFlow::PatchThenPut, &why)
            {
                Err(Failure::Refused(e))
            } else {
                Err(Failure::Target(TargetError::Registry(e)))
            }
        }
        Err(failure) => Err(failure),
    };
    (result, location)
}

/// The Docker client's flow: one `PATCH` without `Content-Range` carrying the whole blob, then
/// an empty `PUT ?digest=` once our own check passed.
async fn upload_streamed(
    client: &RegistryClient,
    repository: &str,
    digest: &Digest,
    feed: &mut Feed,
    location: Url,
) -> (Result<(), Failure>, Url) {
    let size = feed.size;
    let (tx, body) = pipe();
    let patch = client.upload_stream(repository, &location, size, body);
    let mut next = location.clone();
    let patched = async {
        next = patch.await?;
        Ok::<(), RegistryError>(())
    };
    if let Err(failure) = send_whole(feed, tx, patched).await {
        return (Err(failure), next);
    }
    let done = client
        .finish_upload(repository, &next, digest)
        .await
        .map_err(|e| registry_failure(e, 0));
    (done, next)
}

/// Feeds the whole source into one request body while `request` sends it, then checks the
/// bytes. A failure of our own check explains a refused request best.
async fn send_whole(
    feed: &mut Feed,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    request: impl std::future::Future<Output = Result<(), RegistryError>>,
) -> Result<(), Failure> {
    let size = feed.size;
    let fed = feed_chunk(feed, size, tx);
    let (fed, sent) = tokio::join!(fed, request);
    let checked = match fed {
        Err(e) => Err(e),
        Ok(()) if !feed.pending.is_empty() => Err(TargetError::Source(format!(
            "blob is longer than its descriptor's {size} bytes"
        ))),
        Ok(()) => feed.finish().await,
    };
    match (checked, sent) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), _) => Err(e.into()),
        (Ok(()), Err(e)) => Err(registry_failure(e, size)),
    }
}

/// A request body fed through a bounded channel.
fn pipe() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, reqwest::Body) {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(PIPE_DEPTH);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    (tx, body)
}

/// Sends exactly `length` bytes of the feed into one request body, splitting a piece that
/// crosses the chunk boundary and keeping the rest for the next chunk.
async fn feed_chunk(
    feed: &mut Feed,
    length: u64,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), TargetError> {
    let mut remaining = length;
    while remaining > 0 {
        let piece = match feed.next_piece().await {
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
        };
        let piece = if piece.len() as u64 > remaining {
            let mut head = piece;
            let tail = head.split_off(remaining as usize);
            feed.pending.push_front(tail);
            head
        } else {
            piece
        };
        remaining -= piece.len() as u64;
        feed.keep(&piece);
        if tx.send(Ok(piece)).await.is_err() {
            // The request ended early; its own error says why.
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use sha2::{Digest as _, Sha256};

    const DATA: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

    /// A feed over `DATA` arriving in pieces of `piece` bytes.
    fn feed(piece: usize, body: u64, known_to_pass: bool) -> Feed {
        let parts: Vec<Result<Bytes, String>> = DATA
            .chunks(piece)
            .map(|p| Ok(Bytes::from_static(p)))
            .collect();
        let digest = Digest::from_sha256_bytes(&Sha256::digest(DATA).into());
        let source = VerifiedStream::new(
            futures_util::stream::iter(parts).boxed(),
            digest,
            DATA.len() as u64,
        );
        Feed::new(source, body, known_to_pass)
    }

    /// One whole body of `length` bytes, as the registry would receive it.
    async fn body(feed: &mut Feed, length: u64) -> Vec<u8> {
        let (tx, mut rx) = mpsc::channel(64);
        feed_chunk(feed, length, tx).await.unwrap();
        let mut got = Vec::new();
        while let Some(piece) = rx.recv().await {
            got.extend_from_slice(&piece.unwrap());
        }
        got
    }

    /// A body the request stops reading after its first piece (an early 413).
    async fn cut_short(feed: &mut Feed, length: u64) {
        let (tx, mut rx) = mpsc::channel(1);
        let answer = async move {
            let first = rx.recv().await;
            drop(rx);
            first
        };
        let (fed, first) = tokio::join!(feed_chunk(feed, length, tx), answer);
        fed.unwrap();
        assert!(first.is_some());
    }

    #[tokio::test]
    async fn a_refused_body_is_sent_again_from_its_first_byte_in_smaller_chunks() {
        let mut feed = feed(5, 20, false);
        assert_eq!(body(&mut feed, 12).await, &DATA[..12]);
        feed.accepted();
        // Refused after its first piece, the 20-byte body starting at 12 is sent again.
        cut_short(&mut feed, 20).await;
        assert!(feed.take_back(), "the refused body was not kept");
        let mut rest = Vec::new();
        for length in [8, 8, 8] {
            rest.extend(body(&mut feed, length).await);
        }
        assert_eq!(rest, &DATA[12..]);
        assert!(feed.pending.is_empty());
        feed.finish().await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_whole_body_is_kept_whole_even_when_cut_short() {
        let mut feed = feed(7, DATA.len() as u64, false);
        cut_short(&mut feed, DATA.len() as u64).await;
        // What the request did not read is read now, kept, and checked against the digest.
        feed.finish().await.unwrap();
        assert!(feed.take_back());
        assert_eq!(body(&mut feed, DATA.len() as u64).await, DATA);
    }

    #[tokio::test]
    async fn nothing_is_kept_for_a_body_size_the_host_accepted_before() {
        let mut feed = feed(5, 20, true);
        cut_short(&mut feed, 20).await;
        assert!(!feed.take_back());
    }
}
