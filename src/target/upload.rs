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
//! of the run (not below 5 MiB, ECR's smallest part) and fails this attempt with
//! [`TargetError::BodyTooLarge`]: the caller starts the blob again. Every session that does not
//! complete is cancelled (`DELETE`).

use bytes::Bytes;
use tokio::sync::{MutexGuard, mpsc};
use url::Url;

use super::TargetError;
use crate::reference::Digest;
use crate::registry::{RegistryClient, RegistryError, UploadFlow, refuses_shortcut};
use crate::verify::VerifiedStream;

/// Chunks buffered between the download and the upload (bounded memory).
const PIPE_DEPTH: usize = 8;

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
    let (result, location) = match way {
        Way::InOne(probe) => {
            upload_in_one(client, repository, digest, source, location, probe).await
        }
        Way::Chunks(probe, chunk) => {
            upload_in_chunks(client, repository, digest, source, location, chunk, probe).await
        }
        Way::Streamed => upload_streamed(client, repository, digest, source, location).await,
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
                // One PATCH carries the whole blob: smaller chunks cannot help.
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
            })
        }
    }
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
/// `probe` is held until the first chunk's answer says whether `Content-Range` works here.
async fn upload_in_chunks(
    client: &RegistryClient,
    repository: &str,
    digest: &Digest,
    mut source: VerifiedStream,
    mut location: Url,
    chunk: u64,
    mut probe: Option<MutexGuard<'_, ()>>,
) -> (Result<(), Failure>, Url) {
    let size = source.expected_size();
    let mut offset = 0u64;
    let mut carry: Option<Bytes> = None;
    while offset < size {
        let length = chunk.min(size - offset);
        let (tx, body) = pipe();
        let feed = feed_chunk(&mut source, &mut carry, length, tx);
        let patch = client.upload_chunk(repository, &location, offset, length, body);
        let (fed, patched) = tokio::join!(feed, patch);
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
            Err(e) => return (Err(registry_failure(e, length)), location),
        }
        if offset == 0 {
            client.learned().ranges_worked();
            drop(probe.take());
        }
        offset += length;
    }
    if carry.is_some() {
        let e = TargetError::Source(format!(
            "blob {digest} is longer than its descriptor's {size} bytes"
        ));
        return (Err(e.into()), location);
    }
    if let Err(e) = source.finish().await {
        return (Err(TargetError::Source(e).into()), location);
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
    source: VerifiedStream,
    location: Url,
    _probe: Option<MutexGuard<'_, ()>>,
) -> (Result<(), Failure>, Url) {
    let size = source.expected_size();
    let (tx, body) = pipe();
    let put = client.finish_upload_with_body(repository, &location, digest, size, body);
    let result = match send_whole(source, tx, put).await {
        Ok(()) => {
            client.learned().put_body_worked();
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
    source: VerifiedStream,
    location: Url,
) -> (Result<(), Failure>, Url) {
    let size = source.expected_size();
    let (tx, body) = pipe();
    let patch = client.upload_stream(repository, &location, size, body);
    let mut next = location.clone();
    let patched = async {
        next = patch.await?;
        Ok::<(), RegistryError>(())
    };
    if let Err(failure) = send_whole(source, tx, patched).await {
        return (Err(failure), next);
    }
    let done = client
        .finish_upload(repository, &next, digest)
        .await
        .map_err(|e| registry_failure(e, 0));
    (done, next)
}

/// Feeds the whole `source` into one request body while `request` sends it, then checks the
/// bytes. A failure of our own check explains a refused request best.
async fn send_whole(
    mut source: VerifiedStream,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    request: impl std::future::Future<Output = Result<(), RegistryError>>,
) -> Result<(), Failure> {
    let size = source.expected_size();
    let mut carry = None;
    let feed = feed_chunk(&mut source, &mut carry, size, tx);
    let (fed, sent) = tokio::join!(feed, request);
    let checked = match fed {
        Err(e) => Err(e),
        Ok(()) if carry.is_some() => Err(TargetError::Source(format!(
            "blob is longer than its descriptor's {size} bytes"
        ))),
        Ok(()) => source.finish().await.map_err(TargetError::Source),
    };
    match (checked, sent) {
        (Ok(_), Ok(())) => Ok(()),
        (Err(e), _) => Err(e.into()),
        (Ok(_), Err(e)) => Err(registry_failure(e, size)),
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
