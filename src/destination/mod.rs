//! Where content goes: a registry, or an OCI image layout directory.
//!
//! The copy engine speaks only to [`Target`]; each kind guarantees the same ordering rule: a
//! blob or manifest becomes visible only once it is complete and verified, and a tag is written
//! last, so a tag never points at content that is not entirely present.

mod document;
mod layout;
mod upload;

use std::path::PathBuf;

pub use document::{DOCUMENT_REPOSITORY, DocumentError};
pub use layout::OciLayout;

use crate::reference::Digest;
use crate::registry::{FetchedManifest, MountOutcome, RegistryClient, RegistryError, UploadFlow};
use crate::verify::VerifiedStream;

/// A failure at the target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("target registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The source stream failed or did not match its descriptor; nothing was committed.
    #[error("{0}")]
    Source(String),
    #[error("{0}")]
    Invalid(String),
    /// A request body of `bytes` was refused as too large (413); the chunk size is smaller now
    /// and the blob may be sent again from the start.
    #[error("target registry refused a {bytes}-byte request body as too large: {error}")]
    BodyTooLarge {
        bytes: u64,
        error: Box<RegistryError>,
    },
    /// The registry refused an upload shortcut (a body on the closing `PUT`, `Content-Range` on
    /// a `PATCH`); the host uses the Docker client's flow from now on, and the blob may be sent
    /// again from the start.
    #[error(
        "target registry refused the upload as sent, so it is redone the way the Docker client uploads: {error}"
    )]
    ShortcutRefused { error: Box<RegistryError> },
}

impl TargetError {
    /// The registry refuses to delete manifests: 405, or the `UNSUPPORTED` code (distribution
    /// without `storage.delete.enabled`, registries that have no delete at all).
    pub fn refuses_deletes(&self) -> bool {
        match self {
            TargetError::Registry(RegistryError::Status { status, errors, .. }) => {
                *status == 405 || errors.iter().any(|e| e.code == "UNSUPPORTED")
            }
            _ => false,
        }
    }
}

/// The outcome of [`Target::mount`].
#[derive(Debug)]
pub enum Mounted {
    Yes,
    /// Not mounted: copy the blob, into `session` when the registry opened one instead.
    No {
        session: Option<url::Url>,
    },
}

/// The mirror's destination.
pub enum Target {
    Registry(Box<RegistryClient>),
    Layout(OciLayout),
}

impl Target {
    /// A short name for messages.
    pub fn describe(&self) -> String {
        match self {
            Target::Registry(c) => c.host().to_string(),
            Target::Layout(l) => l.root().display().to_string(),
        }
    }

    /// The digest a tag (or digest reference) currently resolves to, if any.
    pub async fn manifest_digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Digest>, TargetError> {
        match self {
            Target::Registry(c) => {
                let head = c.head_manifest(repository, reference).await?;
                match head {
                    None => Ok(None),
                    Some(h) => match h.digest {
                        Some(d) => Ok(Some(d)),
                        // No Docker-Content-Digest: fetch to know (our own registry, costs no quota).
                        None => Ok(Some(c.get_manifest(repository, reference).await?.digest)),
                    },
                }
            }
            Target::Layout(l) => l.manifest_digest(repository, reference).await,
        }
    }

    /// A manifest stored at the target (our own registry: reading it costs no upstream quota).
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<FetchedManifest>, TargetError> {
        match self {
            Target::Registry(c) => match c.get_manifest(repository, reference).await {
                Ok(m) => Ok(Some(m)),
                Err(e) if e.status() == Some(404) => Ok(None),
                Err(e) => Err(e.into()),
            },
            Target::Layout(l) => l.get_manifest(repository, reference).await,
        }
    }

    /// The size of a blob when the repository has it.
    pub async fn blob_size(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, TargetError> {
        match self {
            Target::Registry(c) => Ok(c.blob_size(repository, digest).await?),
            Target::Layout(l) => l.blob_size(repository, digest).await,
        }
    }

    /// Makes a blob known in `from` available in `repository` without downloading it again.
    /// When the registry refuses (a 202 with an upload session: Harbor across projects, ECR),
    /// the caller copies the blob into that session, and later blobs skip the attempt.
    pub async fn mount(
        &self,
        repository: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<Mounted, TargetError> {
        match self {
            Target::Registry(c) => Ok(match c.mount_blob(repository, digest, from).await? {
                MountOutcome::Mounted => Mounted::Yes,
                MountOutcome::UploadStarted(location) => Mounted::No {
                    session: Some(location),
                },
                MountOutcome::Refused => Mounted::No { session: None },
            }),
            Target::Layout(l) => Ok(match l.link_blob(from, repository, digest).await? {
                true => Mounted::Yes,
                false => Mounted::No { session: None },
            }),
        }
    }

    /// Streams a verified blob into `repository`; commits only when size and digest match.
    /// `session` is an upload session the registry opened already (from [`Target::mount`]).
    pub async fn write_blob(
        &self,
        repository: &str,
        digest: &Digest,
        source: VerifiedStream,
        session: Option<url::Url>,
    ) -> Result<u64, TargetError> {
        match self {
            Target::Registry(c) => {
                upload::upload_blob(c, repository, digest, source, session).await
            }
            Target::Layout(l) => l.write_blob(repository, digest, source).await,
        }
    }

    /// The blob upload flow a registry target is on now (see [`UploadFlow`]).
    pub fn upload_flow(&self) -> Option<UploadFlow> {
        match self {
            Target::Registry(c) => Some(c.learned().upload_flow()),
            Target::Layout(_) => None,
        }
    }

    /// Cancels upload sessions the run opened and left (failed or cut-off copies).
    pub async fn cancel_abandoned_uploads(&self) -> usize {
        match self {
            Target::Registry(c) => c.cancel_abandoned_uploads().await,
            Target::Layout(_) => 0,
        }
    }

    /// A blob's body from the target itself (to copy between target repositories when the
    /// registry refuses a mount, without pulling upstream again).
    pub async fn read_blob(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<VerifiedStream, TargetError> {
        match self {
            Target::Registry(c) => {
                let response = c.get_blob(repository, digest).await?;
                Ok(crate::verify::from_response(response, digest.clone(), size))
            }
            Target::Layout(l) => l.read_blob(repository, digest, size).await,
        }
    }

    /// Removes a tag: in a registry by deleting the manifest it points at (the caller makes
    /// sure no tag to keep shares that digest); in a layout, the `index.json` entry.
    pub async fn remove_tag(
        &self,
        repository: &str,
        tag: &str,
        digest: &Digest,
    ) -> Result<bool, TargetError> {
        match self {
            Target::Registry(c) => Ok(c.delete_manifest(repository, digest).await?),
            Target::Layout(l) => l.remove_tag(repository, tag).await,
        }
    }

    /// What the target said when it first refused a manifest pushed by digest this run.
    pub fn by_digest_refusal(&self) -> Option<&str> {
        match self {
            Target::Registry(c) => c.learned().by_digest_refusal(),
            Target::Layout(_) => None,
        }
    }

    /// The target refused a manifest pushed by digest (`why`: its answer).
    pub fn refuse_by_digest(&self, why: &str) {
        if let Target::Registry(c) = self {
            c.learned().refuse_by_digest(c.host(), why);
        }
    }

    /// Stores a manifest under a tag or its digest.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        manifest: &FetchedManifest,
    ) -> Result<(), TargetError> {
        match self {
            Target::Registry(c) => Ok(c.put_manifest(repository, reference, manifest).await?),
            Target::Layout(l) => l.put_manifest(repository, reference, manifest).await,
        }
    }
}
