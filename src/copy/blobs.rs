//! Making one blob present in one target repository: skip it, mount it, or stream it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::SemaphorePermit;

use super::progress::TransferGuard;
use super::queue::{OWN_CONNECTION, is_round_trip};
use super::spool::Spool;
use super::upstream::UpstreamRef;
use super::{Counters, Engine, Mode, SyncError, download};
use crate::destination::{Mounted, Target, TargetError};
use crate::manifest::Descriptor;
use crate::registry::HostLimits;
use crate::verify;

/// Times one blob is started again after the target refused a body as too large (each time
/// with half the chunk size: 64 MiB comes down to the 5 MiB floor in four).
const MAX_RESTARTS: u32 = 4;
/// Times one blob is redone after the target refused an upload shortcut (a host falls back
/// at most twice: to `patch-then-put`, then to `single-patch`).
const MAX_REDOS: u32 = 2;

/// Round trips (blobs up to [`OWN_CONNECTION`], see [`is_round_trip`]) read ahead into memory
/// at once, over the whole run: at most 4 MiB of bodies, however many tags and blobs are in
/// flight.
pub const SMALL_READS_AT_ONCE: usize = 64;

/// One source's answer to a blob `GET`.
enum Answer {
    Body(reqwest::Response),
    /// A mirror failed: try the next source, with this error to report if none is left.
    Skip(Option<SyncError>),
}

impl Engine {
    /// Present already: skip. Held by another target repository: mount (or copy within the
    /// target). Otherwise stream it from upstream (mirrors first), verified on the way.
    ///
    /// The per-digest lock makes every other tag that needs this blob wait while it is in
    /// flight, then find it known and mount it: a blob crosses the upstream link once per run.
    pub(super) async fn ensure_blob(
        &self,
        upstream: &UpstreamRef,
        source_repo: &str,
        target_repo: &str,
        blob: &Descriptor,
        counters: &Arc<Counters>,
    ) -> Result<(), SyncError> {
        let ensured = self
            .ensure_blob_here(upstream, source_repo, target_repo, blob, counters)
            .await;
        // Copied, found, or given up on: this target needs no spooled copy of it any more.
        if let Some(spool) = self.hub.spool() {
            spool.settle(&blob.digest, self.index);
        }
        ensured
    }

    async fn ensure_blob_here(
        &self,
        upstream: &UpstreamRef,
        source_repo: &str,
        target_repo: &str,
        blob: &Descriptor,
        counters: &Arc<Counters>,
    ) -> Result<(), SyncError> {
        if blob.foreign {
            return Ok(());
        }
        let slot = self.blobs.slot(&blob.digest);
        let mut holders = slot.lock().await;
        if holders.iter().any(|r| r == target_repo) {
            counters.present.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if self
            .target
            .blob_size(target_repo, &blob.digest)
            .await?
            .is_some()
        {
            holders.push(target_repo.to_string());
            counters.present.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        for from in holders.clone() {
            if self.mode == Mode::Plan || self.mount_or_copy_within(&from, target_repo, blob).await
            {
                holders.push(target_repo.to_string());
                counters.mounted.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        if self.mode == Mode::Sync {
            self.stop_if_requested()?;
            let spooled = match self.hub.spool() {
                Some(spool) => {
                    let _writing = self.target_write_slot().await?;
                    self.copy_through_spool(spool, upstream, source_repo, target_repo, blob)
                        .await?
                }
                None => false,
            };
            if !spooled {
                // A transfer takes its write slot before the download starts, so no upstream
                // body waits on an idle socket. A round trip (a config or the like) takes one
                // of the bounded read-aheads instead: its body is read whole before the write
                // slot is taken (in `stream_from_upstream`), so neither slot is held over a
                // round trip to a far upstream.
                let _held = match upstream.transfers.for_blob(blob.size, &blob.digest).await {
                    Some(transfer) => (Some(transfer), self.target_write_slot().await?),
                    None => (
                        None,
                        self.small_reads.acquire().await.map_err(SyncError::from)?,
                    ),
                };
                self.stream_from_upstream(upstream, source_repo, target_repo, blob)
                    .await?;
            }
        }
        holders.push(target_repo.to_string());
        counters.copied.fetch_add(1, Ordering::Relaxed);
        counters
            .copied_bytes
            .fetch_add(blob.size, Ordering::Relaxed);
        Ok(())
    }

    /// Tries each content source in turn (mirrors, then the origin); a source that fails or
    /// serves bytes that do not match the digest is skipped, and nothing it sent is committed.
    async fn stream_from_upstream(
        &self,
        upstream: &UpstreamRef,
        source_repo: &str,
        target_repo: &str,
        blob: &Descriptor,
    ) -> Result<(), SyncError> {
        let mut last_error = None;
        let mut restarts = 0;
        let mut redone = 0;
        let mut sources = (0..upstream.source_count()).filter(|s| upstream.usable(*s));
        let mut current = None;
        let mut retry_same = false;
        loop {
            if !std::mem::take(&mut retry_same) {
                current = sources.next();
            }
            let Some(source) = current else {
                break;
            };
            let client = upstream.source(source);
            let response = match self
                .open_source(upstream, source, source_repo, blob)
                .await?
            {
                Answer::Body(response) => response,
                Answer::Skip(error) => {
                    last_error = error.or(last_error);
                    continue;
                }
            };
            // Shown on the progress line while the blob is written.
            let (_transfer, mut stream) =
                self.verified_body(upstream, source, source_repo, blob, response);
            let mut _writing = None;
            if is_round_trip(blob.size) {
                stream = stream.read_ahead().await;
                _writing = Some(self.target_write_slot().await?);
            }
            match self
                .target
                .write_blob(target_repo, &blob.digest, stream, None)
                .await
            {
                // The chunk size is smaller now, or the upload flow the Docker client's: start
                // this blob again from the same source (its body cannot be replayed).
                Err(TargetError::ShortcutRefused { .. }) if redone < MAX_REDOS => {
                    redone += 1;
                    retry_same = true;
                    continue;
                }
                Err(TargetError::BodyTooLarge { .. }) if restarts < MAX_RESTARTS => {
                    restarts += 1;
                    retry_same = true;
                    continue;
                }
                // A streamed body cannot be replayed: a refusal the registry asks us to retry
                // (429 or 503 under load, after its `Retry-After`) redoes the blob from a new
                // upstream read, within the run's retry budget; so does, once, a 401 after the
                // session opened fine (credentials that rotated meanwhile: read again by then).
                Err(TargetError::Registry(e))
                    if self.retry.may_retry(redone, &e)
                        || (redone == 0 && e.status() == Some(401)) =>
                {
                    let delay = self.retry.delay(redone, &e);
                    tracing::warn!(digest = %blob.digest, repository = target_repo, attempt = redone + 1, delay_ms = delay.as_millis() as u64, error = %e, "upload refused; sending the blob again");
                    tokio::time::sleep(delay).await;
                    redone += 1;
                    retry_same = true;
                }
                Ok(_) => {
                    tracing::debug!(digest = %blob.digest, bytes = blob.size, from = client.host(), repository = target_repo, "blob copied");
                    return Ok(());
                }
                Err(e) if !upstream.is_origin(source) => {
                    tracing::info!(mirror = client.host(), digest = %blob.digest, error = %e, "copy from mirror failed; trying the next source");
                    last_error = Some(SyncError::Mirror(e.to_string()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_error.unwrap_or(SyncError::NoBlobSource))
    }

    /// Asks source `source` for the blob. A mirror that fails is skipped (and its failure
    /// noted); the origin's failure is the blob's.
    async fn open_source(
        &self,
        upstream: &UpstreamRef,
        source: usize,
        source_repo: &str,
        blob: &Descriptor,
    ) -> Result<Answer, SyncError> {
        let client = upstream.source(source);
        let response = match client
            .get_blob_from(source_repo, &blob.digest, 0, blob.size > OWN_CONNECTION)
            .await
        {
            Ok((response, _)) => response,
            Err(e) if !upstream.is_origin(source) => {
                upstream.note_failure(source, &e);
                tracing::info!(mirror = client.host(), digest = %blob.digest, error = %e, "mirror failed; trying the next source");
                return Ok(Answer::Skip(None));
            }
            Err(e) => return Err(upstream.error(e)),
        };
        if let Some(length) = response.content_length()
            && length != blob.size
        {
            let e = SyncError::BlobLength {
                host: client.host().to_string(),
                digest: blob.digest.clone(),
                sent: length,
                expected: blob.size,
            };
            if upstream.is_origin(source) {
                return Err(e);
            }
            return Ok(Answer::Skip(Some(e)));
        }
        Ok(Answer::Body(response))
    }

    /// The body of `response`, resumed from the same source if it breaks, counted for the
    /// progress line (a transfer shown there while its guard lives), verified against the
    /// digest and paced to `target.bytes_per_second`.
    fn verified_body(
        &self,
        upstream: &UpstreamRef,
        source: usize,
        source_repo: &str,
        blob: &Descriptor,
        response: reqwest::Response,
    ) -> (TransferGuard, verify::VerifiedStream) {
        let body = download::resumable(
            Arc::clone(upstream),
            source,
            source_repo,
            &blob.digest,
            blob.size,
            response,
        );
        let label = blob.digest.encoded().chars().take(12).collect::<String>();
        let transfer = self.progress.transfer(label, blob.size);
        let (received, progress) = (Arc::clone(&transfer.received), Arc::clone(&self.progress));
        let body = body
            .inspect(move |piece| {
                if let Ok(bytes) = piece {
                    received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    progress
                        .bytes
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
            })
            .boxed();
        let stream = verify::VerifiedStream::new(body, blob.digest.clone(), blob.size)
            .map_body(|body| paced(Arc::clone(&self.target_bytes), body));
        (transfer, stream)
    }

    /// With several targets: the blob from the run's spool, downloaded once for all of them
    /// (by whichever target asks first) and read by each at its own pace. `false` when the
    /// spool has no room for it: the caller streams it from upstream itself.
    async fn copy_through_spool(
        &self,
        spool: &Arc<Spool>,
        upstream: &UpstreamRef,
        source_repo: &str,
        target_repo: &str,
        blob: &Descriptor,
    ) -> Result<bool, SyncError> {
        let mut tries = 0;
        loop {
            let download = {
                let (upstream, repository, blob) =
                    (Arc::clone(upstream), source_repo.to_string(), blob.clone());
                move |writer| download::into_spool(upstream, repository, blob, writer)
            };
            let Some(stream) = spool
                .open(&blob.digest, blob.size, download)
                .await
                .map_err(SyncError::Spool)?
            else {
                return Ok(false);
            };
            let progress = Arc::clone(&self.progress);
            let stream = stream.map_body(|body| {
                let counted = body
                    .inspect(move |piece| {
                        if let Ok(bytes) = piece {
                            progress
                                .bytes
                                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        }
                    })
                    .boxed();
                paced(Arc::clone(&self.target_bytes), counted)
            });
            let error = match self
                .target
                .write_blob(target_repo, &blob.digest, stream, None)
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) => e,
            };
            // The spool can be read again: a refusal the target asks us to retry, a smaller
            // chunk size, the Docker client's flow, or a download that started over.
            let again = match &error {
                TargetError::ShortcutRefused { .. } | TargetError::BodyTooLarge { .. } => true,
                TargetError::Source(_) => true,
                TargetError::Registry(e) => {
                    self.retry.may_retry(tries, e) || (tries == 0 && e.status() == Some(401))
                }
                _ => false,
            };
            if !again || tries >= MAX_RESTARTS {
                return Err(error.into());
            }
            let delay = match &error {
                TargetError::Registry(e) => self.retry.delay(tries, e),
                _ => std::time::Duration::from_millis(100),
            };
            tracing::warn!(digest = %blob.digest, repository = target_repo, attempt = tries + 1, error = %error, "blob from the spool not stored; sending it again");
            tokio::time::sleep(delay).await;
            tries += 1;
        }
    }

    /// One of the `target.concurrency` blob writes to the target allowed at once.
    async fn target_write_slot(&self) -> Result<SemaphorePermit<'_>, SyncError> {
        self.target_writes.acquire().await.map_err(SyncError::from)
    }

    /// A blob another target repository holds: mount it, or, when the registry refuses mounts,
    /// copy it between target repositories. `false` when neither worked (the holder may have
    /// lost it since: state from an earlier run can be stale), so the caller copies from upstream.
    async fn mount_or_copy_within(&self, from: &str, target_repo: &str, blob: &Descriptor) -> bool {
        let session = match self.target.mount(target_repo, &blob.digest, from).await {
            Ok(Mounted::Yes) => return true,
            Ok(Mounted::No { session }) => session,
            Err(e) => {
                tracing::debug!(error = %e, from, "cross-repository mount failed");
                None
            }
        };
        let copied = async {
            let _writing = self.target_write_slot().await?;
            let source = match self.target.read_blob(from, &blob.digest, blob.size).await {
                Ok(source) => source.map_body(|body| paced(Arc::clone(&self.target_bytes), body)),
                Err(e) => {
                    if let (Some(location), Target::Registry(c)) = (&session, &self.target) {
                        c.cancel_upload(target_repo, location).await;
                    }
                    return Err(SyncError::from(e));
                }
            };
            Ok::<_, SyncError>(
                self.target
                    .write_blob(target_repo, &blob.digest, source, session)
                    .await?,
            )
        }
        .await;
        match copied {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(error = %e, from, "copy within the target failed");
                false
            }
        }
    }
}

/// A blob body paced to the target's `bytes_per_second` (uploads and copies within the target
/// alike); without a limit the pieces pass straight through.
fn paced(
    limits: Arc<HostLimits>,
    body: BoxStream<'static, Result<Bytes, String>>,
) -> BoxStream<'static, Result<Bytes, String>> {
    body.then(move |piece| {
        let limits = Arc::clone(&limits);
        async move {
            if let Ok(bytes) = &piece {
                limits.bytes(bytes.len()).await;
            }
            piece
        }
    })
    .boxed()
}
