//! Why one tag could not be synced: [`SyncError`], one variant per case a caller (or the
//! failure's `reason` label, see `refusals`) can tell apart. The messages are what the tag's
//! log line says.

use std::sync::Arc;

use super::MAX_INDEX_DEPTH;
use super::ledger::MAX_HELD_MANIFEST_BYTES;
use crate::destination::TargetError;
use crate::manifest::ManifestError;
use crate::outcome::FailureCause;
use crate::reference::Digest;
use crate::registry::{CredentialError, EndpointError, RegistryError};

/// Why one tag could not be synced.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("upstream {host}: {source}")]
    Upstream {
        host: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("{0}")]
    Target(#[from] TargetError),
    #[error("manifest {digest}: {source}")]
    Manifest {
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error("not found upstream: {0}")]
    NotFound(String),
    /// Not a failure: the tag is left for a later run (quota reserve reached, stop requested).
    #[error("deferred: {0}")]
    Deferred(String),
    /// The same error, met by another tag that shared this work.
    #[error("{0}")]
    Shared(Arc<SyncError>),
    /// The target refused something for a reason the user can act on, said in words.
    #[error("{message}")]
    Refused {
        cause: FailureCause,
        message: String,
    },
    /// The Docker config (`docker_config`) could not be read.
    #[error("{0}")]
    Credentials(#[from] CredentialError),
    /// A client could not be built for reasons other than the registry's answer (credential
    /// lookup).
    #[error("{0}")]
    Endpoint(EndpointError),
    /// The upstream did not answer `GET /v2/` this run; every tag of it fails with these
    /// words (the error itself is logged once).
    #[error("{0}")]
    Unreachable(String),
    /// An upstream served from a layout directory (`registries.<host>.path`) could not be
    /// opened.
    #[error("{0}")]
    Layout(String),
    /// The tag resolves to a Docker schema 1 manifest (`image` is `host/repository:tag`).
    #[error(
        "{image} is a Docker schema 1 manifest, which cannot be mirrored with digests preserved (push it again with a current Docker or use another tag)"
    )]
    Schema1 { image: String },
    /// The item's reference names neither a tag nor a digest.
    #[error("reference has neither tag nor digest")]
    NoReference,
    /// `platforms_mode: single`: no platform of the index matches.
    #[error("index {index} has no manifest for {wanted} (platforms_mode: single)")]
    NoPlatform { index: Digest, wanted: String },
    /// `platforms_mode: single`: several manifests of the index match.
    #[error(
        "{wanted} matches {matches} manifests of index {index}; name the variant too (platforms_mode: single stores one)"
    )]
    AmbiguousPlatform {
        index: Digest,
        wanted: String,
        matches: usize,
    },
    /// Holding this manifest would pass [`MAX_HELD_MANIFEST_BYTES`].
    #[error(
        "this manifest ({bytes} bytes) would take the manifest bytes the run holds at once past {} MiB (now {held} bytes): a limit of mirrorsync against oversized indexes",
        MAX_HELD_MANIFEST_BYTES >> 20
    )]
    ManifestBudget { bytes: usize, held: usize },
    /// Indexes nest deeper than [`MAX_INDEX_DEPTH`].
    #[error("manifest {digest}: indexes nested deeper than {MAX_INDEX_DEPTH} levels")]
    IndexTooDeep { digest: Digest },
    /// The manifest could not be rewritten (platform filter, conversion to OCI).
    #[error("manifest {digest}: {reason}")]
    Rewrite { digest: Digest, reason: String },
    /// Every source of the manifest was tried and none served it.
    #[error("no source for manifest {digest}")]
    NoManifestSource { digest: Digest },
    /// Another tag of this run copied the manifest but not into this repository.
    #[error(
        "manifest {digest} was copied by another tag of this run, which did not push it to {repository}"
    )]
    SharedManifestMissing { digest: Digest, repository: String },
    /// The target tag holds something other than an OCI index, so referrers cannot be added
    /// to it.
    #[error("{repository}:{tag} exists and is not an OCI index; left as it is")]
    NotAnIndex { repository: String, tag: String },
    /// A source's `Content-Length` for a blob is not the descriptor's size.
    #[error(
        "{host} sent Content-Length {sent} for blob {digest}, whose descriptor says {expected}"
    )]
    BlobLength {
        host: String,
        digest: Digest,
        sent: u64,
        expected: u64,
    },
    /// The last mirror's failure to copy a blob, when the origin was not tried.
    #[error("{0}")]
    Mirror(String),
    /// No source could be tried for a blob.
    #[error("no source for blob")]
    NoBlobSource,
    /// The run's spool could not serve a blob (its shared download failed).
    #[error("{0}")]
    Spool(String),
    /// The target's write slots were closed (the run is shutting down).
    #[error("{0}")]
    WriteSlots(#[from] tokio::sync::AcquireError),
}

impl SyncError {
    pub(super) fn deferred_reason(&self) -> Option<&str> {
        match self {
            SyncError::Deferred(reason) => Some(reason),
            SyncError::Shared(inner) => inner.deferred_reason(),
            _ => None,
        }
    }
}
