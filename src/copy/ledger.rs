//! Run-wide bookkeeping that makes shared work happen once.
//!
//! [`BlobLedger`] knows, per blob digest, which target repositories hold it; its per-digest lock
//! makes a second image that needs a blob already in flight wait for it and then mount it, so a
//! blob crosses the upstream link at most once per run. [`ManifestLedger`] does the same for
//! manifests: one digest under several tags (or shared by several indexes) is copied once.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Mutex, OnceCell};

use crate::reference::Digest;
use crate::registry::FetchedManifest;

/// Target repositories known to hold each blob, with a lock per digest.
#[derive(Default)]
pub struct BlobLedger {
    slots: std::sync::Mutex<HashMap<Digest, Arc<Mutex<Vec<String>>>>>,
}

impl BlobLedger {
    /// The lock guarding one digest; holding it is the right to copy that blob.
    pub fn slot(&self, digest: &Digest) -> Arc<Mutex<Vec<String>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(digest.clone()).or_default().clone()
    }

    /// Every (digest, repository) known now; blobs in flight are left out.
    pub fn snapshot(&self) -> Vec<(Digest, String)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (digest, slot) in slots.iter() {
            if let Ok(holders) = slot.try_lock() {
                out.extend(holders.iter().map(|r| (digest.clone(), r.clone())));
            }
        }
        out
    }
}

/// The outcome of copying one manifest (and everything under it) into one target repository.
pub type ManifestResult = Result<Arc<FetchedManifest>, Arc<super::SyncError>>;

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
