//! Run-wide bookkeeping that makes shared work happen once.
//!
//! [`BlobLedger`] knows, per blob digest, which target repositories hold it; its per-digest lock
//! makes a second image that needs a blob already in flight wait for it and then mount it, so a
//! blob crosses the upstream link at most once per run. [`ManifestLedger`] does the same for
//! manifests: one digest under several tags (or shared by several indexes) is copied once, and
//! it keeps their descriptors, not their bytes; [`ManifestBudget`] bounds the manifest bytes
//! held at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::{Mutex, OnceCell};

use crate::reference::Digest;
use crate::registry::FetchedManifest;

/// Target repositories known to hold each blob, with a lock per digest. A lock exists only
/// for a digest some image has asked for this run: the locations remembered from earlier runs
/// (thousands of blobs on a big list, most never asked for on a run where little changed) stay
/// plain entries until then.
#[derive(Default)]
pub struct BlobLedger {
    inner: std::sync::Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    /// Remembered, and not asked for yet this run.
    known: HashMap<Digest, Vec<String>>,
    /// Asked for this run: the lock holds the holders.
    slots: HashMap<Digest, Arc<Mutex<Vec<String>>>>,
}

impl BlobLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock guarding one digest; holding it is the right to copy that blob.
    pub fn slot(&self, digest: &Digest) -> Arc<Mutex<Vec<String>>> {
        let mut ledger = self.lock();
        if let Some(slot) = ledger.slots.get(digest) {
            return Arc::clone(slot);
        }
        let holders = ledger.known.remove(digest).unwrap_or_default();
        let slot = Arc::new(Mutex::new(holders));
        ledger.slots.insert(digest.clone(), Arc::clone(&slot));
        slot
    }

    /// Notes that `repository` holds `digest` (from an earlier run's state). A digest in
    /// flight now is left alone: its copy decides.
    pub fn remember(&self, digest: Digest, repository: String) {
        let mut ledger = self.lock();
        if let Some(slot) = ledger.slots.get(&digest) {
            if let Ok(mut holders) = slot.try_lock()
                && !holders.contains(&repository)
            {
                holders.push(repository);
            }
            return;
        }
        let holders = ledger.known.entry(digest).or_default();
        if !holders.contains(&repository) {
            holders.push(repository);
        }
    }

    /// Every (digest, repository) known now; blobs in flight are left out.
    pub fn snapshot(&self) -> Vec<(Digest, String)> {
        let ledger = self.lock();
        let mut out = Vec::new();
        for (digest, holders) in &ledger.known {
            out.extend(holders.iter().map(|r| (digest.clone(), r.clone())));
        }
        for (digest, slot) in &ledger.slots {
            if let Ok(holders) = slot.try_lock() {
                out.extend(holders.iter().map(|r| (digest.clone(), r.clone())));
            }
        }
        out
    }
}

/// The outcome of copying one manifest (and everything under it) into one target repository,
/// as the run remembers it: what it became, not its bytes (see [`CopiedManifest`]).
pub type ManifestResult = Result<CopiedManifest, Arc<super::SyncError>>;

/// A manifest copied this run. Its descriptor stays for the whole run; its bytes only while a
/// tag that is still pushing holds them (a weak reference), so a run that copies thousands of
/// manifests keeps their digests, not their bodies.
#[derive(Clone)]
pub struct CopiedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    body: Weak<FetchedManifest>,
}

impl CopiedManifest {
    pub fn of(manifest: &Arc<FetchedManifest>) -> CopiedManifest {
        CopiedManifest {
            digest: manifest.digest.clone(),
            media_type: manifest.media_type.clone(),
            size: manifest.bytes.len() as u64,
            body: Arc::downgrade(manifest),
        }
    }

    /// The bytes, while some task still holds them.
    pub fn body(&self) -> Option<Arc<FetchedManifest>> {
        self.body.upgrade()
    }
}

type ManifestKey = (String, Digest, String);

/// One cell per (target repository, manifest digest, platform filter): the first caller copies,
/// the rest wait for its result.
#[derive(Default)]
pub struct ManifestLedger {
    cells: std::sync::Mutex<HashMap<ManifestKey, Arc<OnceCell<ManifestResult>>>>,
}

impl ManifestLedger {
    pub fn cell(
        &self,
        repository: &str,
        digest: &Digest,
        filter: &str,
    ) -> Arc<OnceCell<ManifestResult>> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        cells
            .entry((repository.to_string(), digest.clone(), filter.to_string()))
            .or_default()
            .clone()
    }
}

/// Most manifest bytes the run holds at once while copying what they reference (an index
/// while its children are copied, each child while its blobs are): 32 manifests of the 4 MiB
/// maximum. Real manifests are a few KiB; only a hostile upstream gets near it.
pub const MAX_HELD_MANIFEST_BYTES: usize = 128 << 20;

/// Manifest bytes held now, against [`MAX_HELD_MANIFEST_BYTES`].
#[derive(Default)]
pub struct ManifestBudget {
    held: AtomicUsize,
}

/// Bytes counted in a [`ManifestBudget`] until dropped.
pub struct Held<'a> {
    budget: &'a ManifestBudget,
    bytes: usize,
}

impl ManifestBudget {
    /// Counts `bytes` more, or fails (nothing counted) when that would pass the limit.
    pub fn hold(&self, bytes: usize) -> Result<Held<'_>, super::SyncError> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes)
                    .filter(|total| *total <= MAX_HELD_MANIFEST_BYTES)
            })
            .map_err(|held| super::SyncError::ManifestBudget { bytes, held })?;
        Ok(Held {
            budget: self,
            bytes,
        })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::from_sha256_bytes(&[n; 32])
    }

    #[tokio::test]
    async fn remembered_holders_reach_the_lock_and_the_snapshot() {
        let ledger = BlobLedger::default();
        ledger.remember(digest(1), "a/x".into());
        ledger.remember(digest(1), "a/x".into());
        ledger.remember(digest(2), "b/y".into());
        let mut all = ledger.snapshot();
        all.sort();
        assert_eq!(
            all,
            vec![(digest(1), "a/x".into()), (digest(2), "b/y".into())]
        );
        // Asked for: the lock starts with what was remembered, and holds what the copy adds.
        let slot = ledger.slot(&digest(1));
        assert_eq!(*slot.lock().await, vec!["a/x".to_string()]);
        slot.lock().await.push("c/z".into());
        ledger.remember(digest(1), "d/w".into());
        let mut all = ledger.snapshot();
        all.sort();
        assert_eq!(all.len(), 4, "{all:?}");
        assert!(
            Arc::ptr_eq(&slot, &ledger.slot(&digest(1))),
            "one lock per digest"
        );
        // In flight: left out of the snapshot, and a remembered holder is not added under it.
        let held = slot.lock().await;
        ledger.remember(digest(1), "e/v".into());
        assert_eq!(ledger.snapshot(), vec![(digest(2), "b/y".into())]);
        drop(held);
        assert!(!slot.lock().await.contains(&"e/v".to_string()));
    }
}
