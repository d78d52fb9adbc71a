//! What the engines of one run share: the upstream hosts (so a tag is resolved with one HEAD,
//! a host probed once, a pull quota counted once, however many targets), the tag lists, and,
//! with several targets, the manifests fetched and the blob spool, so each crosses the upstream
//! link once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::spool::Spool;
use super::upstream::UpstreamRef;
use crate::reference::Digest;
use crate::registry::FetchedManifest;

/// A repository's tag list, fetched on first use.
pub(super) type TagListCell = Arc<tokio::sync::OnceCell<Arc<Vec<String>>>>;

/// Manifest bytes kept for targets that have not asked for them yet: beyond this, a later
/// target fetches a manifest again.
const SHARED_MANIFEST_BYTES: usize = 64 * 1024 * 1024;

/// Shared by every engine of a run.
#[derive(Default)]
pub struct Hub {
    pub(super) upstreams: tokio::sync::Mutex<HashMap<String, UpstreamRef>>,
    /// Tag lists, fetched once per repository per run.
    pub(super) tag_lists: Mutex<HashMap<String, TagListCell>>,
    /// Upstream hosts served from a layout directory (`registries.<host>.path`), each on a
    /// loopback server that lives as long as the run.
    pub(super) layouts: crate::layout_source::Sources,
    /// With several targets.
    pub(super) fan_out: Option<FanOut>,
}

impl Hub {
    /// A hub for a run over `targets` targets; with more than one, blobs go through a spool
    /// under `spool_dir` of at most `spool_size` bytes.
    pub fn new(targets: usize, spool_dir: &std::path::Path, spool_size: u64) -> Arc<Hub> {
        Arc::new(Hub {
            fan_out: (targets > 1).then(|| FanOut {
                targets,
                spool: Arc::new(Spool::new(spool_dir, spool_size, targets)),
                manifests: Mutex::default(),
            }),
            ..Hub::default()
        })
    }

    /// The spool, with several targets.
    pub(super) fn spool(&self) -> Option<&Arc<Spool>> {
        self.fan_out.as_ref().map(|f| &f.spool)
    }

    /// Target `index` finished its part of the run.
    pub fn finished(&self, index: usize) {
        if let Some(spool) = self.spool() {
            spool.finish(index);
        }
    }

    /// Blobs streamed by each target on its own because the spool had no room for them.
    pub fn spool_overflows(&self) -> usize {
        self.spool().map_or(0, |s| {
            s.overflowed.load(std::sync::atomic::Ordering::Relaxed)
        })
    }
}

/// The part of a hub only a run over several targets has.
pub(super) struct FanOut {
    targets: usize,
    pub(super) spool: Arc<Spool>,
    manifests: Mutex<SharedManifests>,
}

/// A manifest fetched once for every target.
type ManifestCell = Arc<tokio::sync::OnceCell<FetchedManifest>>;

#[derive(Default)]
struct SharedManifests {
    /// (host/repository, digest) -> the manifest and the targets that took it.
    entries: HashMap<(String, Digest), (ManifestCell, usize)>,
    bytes: usize,
}

impl FanOut {
    /// A manifest by digest, fetched by the first target that asks and kept for the others
    /// until each has taken it (within [`SHARED_MANIFEST_BYTES`]).
    pub(super) async fn manifest<F, Fut, E>(
        &self,
        key: (String, Digest),
        fetch: F,
    ) -> Result<FetchedManifest, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<FetchedManifest, E>>,
    {
        let cell = {
            let mut shared = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(&shared.entries.entry(key.clone()).or_default().0)
        };
        let fetched = cell.get_or_try_init(fetch).await?.clone();
        let mut shared = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        let size = fetched.bytes.len();
        let first = cell_taken(&mut shared, &key);
        let SharedManifests { entries, bytes } = &mut *shared;
        match first {
            Some(taken) if taken >= self.targets => {
                entries.remove(&key);
                *bytes = bytes.saturating_sub(size);
            }
            Some(1) if *bytes + size > SHARED_MANIFEST_BYTES => {
                // No room to keep it for the others: they fetch it again.
                entries.remove(&key);
            }
            Some(1) => *bytes += size,
            _ => {}
        }
        Ok(fetched)
    }
}

/// Counts one more target that took the manifest under `key`; the new count.
fn cell_taken(shared: &mut SharedManifests, key: &(String, Digest)) -> Option<usize> {
    let entry = shared.entries.get_mut(key)?;
    entry.1 += 1;
    Some(entry.1)
}
