//! What one run learns about a registry's behaviour, so each quirk costs one failed request per
//! run instead of one per tag or blob: manifest `HEAD` that does not work, cross-repository
//! mounts that are refused, the largest request body the registry (or a proxy in front of it)
//! accepts, and the upload flow it takes ([`UploadFlow`]: the Docker client's when a shortcut
//! was refused). Also the upload sessions open at the moment, so the ones a run abandons can be
//! cancelled.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use url::Url;

pub use crate::config::{DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE};

/// Registry behaviour learned during a run.
pub struct Learned {
    head_unreliable: AtomicBool,
    /// A manifest HEAD answered with a digest: HEAD works here.
    head_works: AtomicBool,
    mounts_refused: AtomicBool,
    /// A mount answered 201: mounts work here.
    mounts_work: AtomicBool,
    /// `GET /v2/<name>/referrers/<digest>` is not answered with an index here.
    no_referrers_api: AtomicBool,
    /// Until a behaviour is known, one request at a time finds it out, so tags or blobs in
    /// flight together do not all pay for the same failure.
    head_probe: tokio::sync::Mutex<()>,
    mount_probe: tokio::sync::Mutex<()>,
    chunk_size: AtomicU64,
    /// The [`UploadFlow`] in use, as a number (it only ever goes up).
    upload_flow: AtomicU8,
    /// A closing `PUT` with a body was accepted: the shortcut works here.
    put_body_works: AtomicBool,
    /// A `PATCH` with `Content-Range` was accepted: chunked uploads work here.
    ranges_work: AtomicBool,
    put_body_probe: tokio::sync::Mutex<()>,
    /// The largest upload request body accepted so far.
    accepted_body: AtomicU64,
    /// What the host said when it first refused a manifest pushed by digest.
    by_digest_refused: std::sync::OnceLock<String>,
}

/// How blobs go up to a registry. The first is ours (one request fewer per small blob, bounded
/// requests for big ones); the last is the Docker client's, which every registry that `docker
/// push` works with accepts. A host moves down the list when a registry refuses a shortcut,
/// never back within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UploadFlow {
    /// Small blobs: POST, then `PUT ?digest=` carrying the bytes. Big ones: `PATCH` chunks with
    /// `Content-Range`, then an empty `PUT`.
    PutWithBody,
    /// The closing `PUT` refused a body: small blobs go up as POST, one `PATCH` with the bytes,
    /// empty `PUT`; big ones still in chunks.
    PatchThenPut,
    /// A `PATCH` with `Content-Range` was refused: every blob goes up as POST, one streamed
    /// `PATCH` without it, empty `PUT` (the Docker client's flow).
    SinglePatch,
}

impl UploadFlow {
    /// Every flow, in the order a host moves through them.
    pub const ALL: [UploadFlow; 3] = [
        UploadFlow::PutWithBody,
        UploadFlow::PatchThenPut,
        UploadFlow::SinglePatch,
    ];

    /// The name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadFlow::PutWithBody => "put-with-body",
            UploadFlow::PatchThenPut => "patch-then-put",
            UploadFlow::SinglePatch => "single-patch",
        }
    }

    fn from_u8(n: u8) -> UploadFlow {
        match n {
            0 => UploadFlow::PutWithBody,
            1 => UploadFlow::PatchThenPut,
            _ => UploadFlow::SinglePatch,
        }
    }
}

impl Default for Learned {
    fn default() -> Self {
        Learned {
            head_unreliable: AtomicBool::new(false),
            head_works: AtomicBool::new(false),
            mounts_refused: AtomicBool::new(false),
            mounts_work: AtomicBool::new(false),
            no_referrers_api: AtomicBool::new(false),
            head_probe: tokio::sync::Mutex::new(()),
            mount_probe: tokio::sync::Mutex::new(()),
            chunk_size: AtomicU64::new(DEFAULT_CHUNK_SIZE),
            accepted_body: AtomicU64::new(0),
            upload_flow: AtomicU8::new(0),
            put_body_works: AtomicBool::new(false),
            ranges_work: AtomicBool::new(false),
            put_body_probe: tokio::sync::Mutex::new(()),
            by_digest_refused: std::sync::OnceLock::new(),
        }
    }
}

impl Learned {
    /// Whether manifest `HEAD` was answered 405/501, or 404 for something a GET then found.
    pub fn head_unreliable(&self) -> bool {
        self.head_unreliable.load(Ordering::Relaxed)
    }

    /// Manifest `HEAD` does not work here: resolve tags with `GET` for the rest of the run.
    pub fn distrust_head(&self, host: &str, why: &str) {
        if !self.head_unreliable.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                registry = host,
                reason = why,
                "manifest HEAD does not work here; using GET for the rest of the run (each GET counts as a pull)"
            );
        }
    }

    /// While nobody knows yet whether manifest HEAD works, a guard that makes callers take turns.
    /// A caller that waited for its turn while the first one found out gets no guard: the
    /// behaviour is known by then, and holding the lock would make every tag in flight take
    /// turns for the whole run.
    pub async fn head_probe(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if self.head_known() {
            return None;
        }
        let guard = self.head_probe.lock().await;
        (!self.head_known()).then_some(guard)
    }

    /// Whether it is known if manifest HEAD works here.
    fn head_known(&self) -> bool {
        self.head_works.load(Ordering::Relaxed) || self.head_unreliable()
    }

    /// A manifest HEAD answered with a usable digest.
    pub fn trust_head(&self) {
        self.head_works.store(true, Ordering::Relaxed);
    }

    /// While nobody knows yet whether mounts work, a guard that makes callers take turns.
    /// As with [`Learned::head_probe`], a caller that waited while another found out gets none.
    pub async fn mount_probe(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let known = || self.mounts_work.load(Ordering::Relaxed) || self.mounts_refused();
        if known() {
            return None;
        }
        let guard = self.mount_probe.lock().await;
        (!known()).then_some(guard)
    }

    /// A mount answered 201.
    pub fn mounts_work(&self) {
        self.mounts_work.store(true, Ordering::Relaxed);
    }

    /// Whether a mount was answered with an upload session instead (202).
    pub fn mounts_refused(&self) -> bool {
        self.mounts_refused.load(Ordering::Relaxed)
    }

    pub fn refuse_mounts(&self, host: &str) {
        if !self.mounts_refused.swap(true, Ordering::Relaxed) {
            tracing::info!(
                registry = host,
                "cross-repository mount refused; not asking again this run"
            );
        }
    }

    /// Whether the referrers API was found missing this run.
    pub fn no_referrers_api(&self) -> bool {
        self.no_referrers_api.load(Ordering::Relaxed)
    }

    /// The referrers API is missing: the `sha256-<hex>` fallback tags are used for the rest of
    /// the run.
    pub fn lacks_referrers_api(&self, host: &str, why: &str) {
        if !self.no_referrers_api.swap(true, Ordering::Relaxed) {
            tracing::info!(
                registry = host,
                reason = why,
                "no OCI referrers API; using sha256-<hex> fallback tags for the rest of the run"
            );
        }
    }

    /// What the host said when it first refused a manifest pushed by digest this run.
    pub fn by_digest_refusal(&self) -> Option<&str> {
        self.by_digest_refused.get().map(String::as_str)
    }

    /// A manifest pushed by digest was refused: no other is sent for the rest of the run, so
    /// multi-platform tags fail before their blobs are copied.
    pub fn refuse_by_digest(&self, host: &str, why: &str) {
        if self.by_digest_refused.set(why.to_string()).is_ok() {
            tracing::info!(
                registry = host,
                reason = why,
                "manifests pushed by digest refused; not sending another this run"
            );
        }
    }

    /// The upload flow in use now.
    pub fn upload_flow(&self) -> UploadFlow {
        UploadFlow::from_u8(self.upload_flow.load(Ordering::Relaxed))
    }

    /// A shortcut was refused: use `flow` (or a later one already chosen) for the rest of the
    /// run. `false` when the shortcut had worked here before (then the refusal is something
    /// else, and the caller reports it as the failure it is).
    pub fn fall_back(&self, host: &str, flow: UploadFlow, why: &str) -> bool {
        let worked = match flow {
            UploadFlow::PutWithBody => return false,
            UploadFlow::PatchThenPut => self.put_body_works.load(Ordering::Relaxed),
            UploadFlow::SinglePatch => self.ranges_work.load(Ordering::Relaxed),
        };
        if worked {
            return false;
        }
        let before = self.upload_flow.fetch_max(flow as u8, Ordering::Relaxed);
        if before < flow as u8 {
            tracing::warn!(
                registry = host,
                flow = flow.as_str(),
                reason = why,
                "the registry refused an upload shortcut; using the Docker client's upload flow for the rest of the run"
            );
        }
        true
    }

    /// A closing `PUT` with a body was accepted.
    pub fn put_body_worked(&self) {
        self.put_body_works.store(true, Ordering::Relaxed);
    }

    /// A `PATCH` with `Content-Range` was accepted.
    pub fn ranges_worked(&self) {
        self.ranges_work.store(true, Ordering::Relaxed);
    }

    /// While nobody knows whether the closing `PUT` takes a body here, a guard that makes the
    /// small uploads take turns, so one refusal teaches the rest before they try.
    pub async fn put_body_probe(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let known = || {
            self.put_body_works.load(Ordering::Relaxed)
                || self.upload_flow() >= UploadFlow::PatchThenPut
        };
        if known() {
            return None;
        }
        let guard = self.put_body_probe.lock().await;
        (!known()).then_some(guard)
    }

    /// Bytes per upload request now.
    /// An upload request body of `bytes` was accepted.
    pub fn body_accepted(&self, bytes: u64) {
        self.accepted_body.fetch_max(bytes, Ordering::Relaxed);
    }

    /// Whether a body of `bytes` is known to pass: one at least as large was accepted.
    pub fn accepts_body(&self, bytes: u64) -> bool {
        bytes <= self.accepted_body.load(Ordering::Relaxed)
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size.load(Ordering::Relaxed)
    }

    /// Sets the configured chunk size (at least [`MIN_CHUNK_SIZE`]).
    pub fn set_chunk_size(&self, bytes: u64) {
        self.chunk_size
            .store(bytes.max(MIN_CHUNK_SIZE), Ordering::Relaxed);
    }

    /// A request body of `refused` bytes was answered 413: halve (the smaller of the chunk size
    /// and that body), not below [`MIN_CHUNK_SIZE`]. `false` when the chunk cannot get smaller.
    pub fn shrink_chunks(&self, host: &str, refused: u64) -> bool {
        let mut shrunk = None;
        let _ = self
            .chunk_size
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                let next = (now.min(refused) / 2).max(MIN_CHUNK_SIZE);
                if next < now {
                    shrunk = Some(next);
                    Some(next)
                } else {
                    shrunk = None;
                    None
                }
            });
        match shrunk {
            Some(next) => {
                tracing::warn!(
                    registry = host,
                    refused_bytes = refused,
                    chunk_bytes = next,
                    "request body too large (413); uploading in smaller chunks for the rest of the run"
                );
                true
            }
            // Another blob shrank it already while this one was in flight.
            None => self.chunk_size() < refused,
        }
    }
}

/// Upload sessions opened and not yet completed or cancelled, keyed by URL path (the query
/// carries state that changes with every chunk).
#[derive(Default)]
pub struct OpenUploads {
    open: Mutex<HashMap<String, (String, Url)>>,
}

impl OpenUploads {
    pub fn opened(&self, repository: &str, location: &Url) {
        self.lock().insert(
            location.path().to_string(),
            (repository.to_string(), location.clone()),
        );
    }

    pub fn moved(&self, from: &Url, to: &Url) {
        let mut open = self.lock();
        if let Some((repository, _)) = open.remove(from.path()) {
            open.insert(to.path().to_string(), (repository, to.clone()));
        }
    }

    pub fn closed(&self, location: &Url) {
        self.lock().remove(location.path());
    }

    pub fn take_all(&self) -> Vec<(String, Url)> {
        self.lock().drain().map(|(_, v)| v).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Url)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn chunks_halve_from_the_refused_body_down_to_five_mib() {
        let learned = Learned::default();
        assert!(learned.shrink_chunks("r", 20 * MIB));
        assert_eq!(learned.chunk_size(), 10 * MIB);
        assert!(learned.shrink_chunks("r", 10 * MIB));
        assert_eq!(learned.chunk_size(), 5 * MIB);
        assert!(!learned.shrink_chunks("r", 5 * MIB), "5 MiB is the floor");
        assert_eq!(learned.chunk_size(), 5 * MIB);
        learned.set_chunk_size(MIB);
        assert_eq!(learned.chunk_size(), 5 * MIB);
    }

    #[tokio::test]
    async fn callers_queued_behind_the_first_probe_go_free_once_it_found_out() {
        let learned = std::sync::Arc::new(Learned::default());
        let first = learned.head_probe().await;
        assert!(first.is_some(), "nobody knows yet: the first caller probes");
        let queued: Vec<_> = (0..3)
            .map(|_| {
                let learned = std::sync::Arc::clone(&learned);
                tokio::spawn(async move { learned.head_probe().await.is_some() })
            })
            .collect();
        tokio::task::yield_now().await;
        learned.trust_head();
        drop(first);
        for waiting in queued {
            assert!(
                !waiting.await.unwrap(),
                "a caller that waited kept a guard after HEAD was known to work"
            );
        }

        let first = learned.mount_probe().await;
        assert!(first.is_some());
        let queued = {
            let learned = std::sync::Arc::clone(&learned);
            tokio::spawn(async move { learned.mount_probe().await.is_some() })
        };
        tokio::task::yield_now().await;
        learned.refuse_mounts("r");
        drop(first);
        assert!(!queued.await.unwrap());
    }

    #[test]
    fn a_refused_shortcut_moves_the_flow_down_once_and_never_back() {
        let learned = Learned::default();
        assert_eq!(learned.upload_flow(), UploadFlow::PutWithBody);
        assert!(learned.fall_back("r", UploadFlow::PatchThenPut, "500"));
        assert_eq!(learned.upload_flow(), UploadFlow::PatchThenPut);
        assert!(learned.fall_back("r", UploadFlow::SinglePatch, "416"));
        assert!(learned.fall_back("r", UploadFlow::PatchThenPut, "500 again"));
        assert_eq!(learned.upload_flow(), UploadFlow::SinglePatch, "never back");

        // A shortcut that worked here: a later refusal is a failure, not a lesson.
        let learned = Learned::default();
        learned.put_body_worked();
        assert!(!learned.fall_back("r", UploadFlow::PatchThenPut, "500"));
        assert_eq!(learned.upload_flow(), UploadFlow::PutWithBody);
        learned.ranges_worked();
        assert!(!learned.fall_back("r", UploadFlow::SinglePatch, "416"));
    }

    #[test]
    fn sessions_follow_their_location() {
        let uploads = OpenUploads::default();
        let a = Url::parse("http://r/v2/x/blobs/uploads/u1?_state=1").unwrap();
        let b = Url::parse("http://r/v2/x/blobs/uploads/u1?_state=2").unwrap();
        uploads.opened("x", &a);
        uploads.moved(&a, &b);
        let all = uploads.take_all();
        assert_eq!(all, vec![("x".to_string(), b.clone())]);
        uploads.opened("x", &b);
        uploads.closed(&a);
        assert!(uploads.take_all().is_empty());
    }
}
