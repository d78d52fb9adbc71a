//! mirrorsync's own small documents at the target (the run state), one per tag (a shard).
//!
//! In a registry a document is an OCI artifact in [`DOCUMENT_REPOSITORY`]: a `{}` config blob,
//! one layer with the JSON, a manifest under the tag; the manifest it replaces is deleted where
//! the registry allows deletes. In an OCI layout it is a file
//! `.mirrorsync-state-<tag>.json` in the layout directory, replaced atomically.

use std::path::PathBuf;

use bytes::Bytes;

use super::{Target, TargetError};
use crate::manifest::{OCI_MANIFEST, digest_of};
use crate::reference::Digest;
use crate::registry::{BodyError, FetchedManifest, RegistryError};

/// The target repository that holds the documents.
pub const DOCUMENT_REPOSITORY: &str = "mirrorsync/state";
const MEDIA_TYPE: &str = "application/vnd.mirrorsync.state.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.mirrorsync.state.config.v1+json";
const LAYOUT_FILE: &str = ".mirrorsync-state";

/// Why a document could not be read or stored.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// The target did not answer as asked (down, refusing, unreachable).
    #[error("{0}")]
    Target(#[from] TargetError),
    #[error("{0}")]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Body(#[from] BodyError),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Write(#[source] std::io::Error),
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
    /// What the target holds is no document this version wrote, or it was damaged.
    #[error("{path}: larger than {max_bytes} bytes")]
    TooLarge { path: PathBuf, max_bytes: usize },
    #[error("state manifest: {0}")]
    Manifest(#[source] serde_json::Error),
    #[error("state manifest has no layer")]
    NoLayer,
    #[error("state blob does not match its digest")]
    DigestMismatch,
}

impl DocumentError {
    /// Whether the target answered with something unreadable (rather than not answering).
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            DocumentError::TooLarge { .. }
                | DocumentError::Manifest(_)
                | DocumentError::NoLayer
                | DocumentError::DigestMismatch
                | DocumentError::Body(BodyError::TooLarge(_))
        )
    }
}

impl Target {
    /// The document stored under `tag`; `None` when there is none. Refused above `max_bytes`
    /// or when the stored blob does not match its digest.
    pub async fn load_document(
        &self,
        tag: &str,
        max_bytes: usize,
    ) -> Result<Option<Vec<u8>>, DocumentError> {
        match self {
            Target::Layout(layout) => {
                let path = layout.root().join(format!("{LAYOUT_FILE}-{tag}.json"));
                match tokio::fs::read(&path).await {
                    Ok(b) if b.len() > max_bytes => {
                        Err(DocumentError::TooLarge { path, max_bytes })
                    }
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(DocumentError::File { path, source }),
                }
            }
            Target::Registry(client) => {
                let manifest = match self.get_manifest(DOCUMENT_REPOSITORY, tag).await {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let doc: serde_json::Value =
                    serde_json::from_slice(&manifest.bytes).map_err(DocumentError::Manifest)?;
                let layer = doc["layers"][0]["digest"]
                    .as_str()
                    .and_then(|d| Digest::parse(d).ok())
                    .ok_or(DocumentError::NoLayer)?;
                let response = client.get_blob(DOCUMENT_REPOSITORY, &layer).await?;
                let body = crate::registry::read_limited(response, max_bytes).await?;
                if digest_of(&body) != layer {
                    return Err(DocumentError::DigestMismatch);
                }
                Ok(Some(body.to_vec()))
            }
        }
    }

    /// Stores `body` under `tag` (in a registry: blobs first, then the manifest).
    pub async fn save_document(&self, tag: &str, body: Vec<u8>) -> Result<(), DocumentError> {
        match self {
            Target::Layout(layout) => {
                let path = layout.root().join(format!("{LAYOUT_FILE}-{tag}.json"));
                std::fs::create_dir_all(layout.root()).map_err(|source| DocumentError::File {
                    path: layout.root().to_path_buf(),
                    source,
                })?;
                crate::atomic_file::write_async(&path, body)
                    .await
                    .map_err(DocumentError::Write)
            }
            Target::Registry(client) => {
                let layer = digest_of(&body);
                let size = body.len();
                let config = Bytes::from_static(b"{}");
                let config_digest = digest_of(&config);
                for (digest, bytes) in [
                    (&config_digest, config.clone()),
                    (&layer, Bytes::from(body)),
                ] {
                    if client
                        .blob_size(DOCUMENT_REPOSITORY, digest)
                        .await?
                        .is_none()
                    {
                        client
                            .upload_bytes(DOCUMENT_REPOSITORY, digest, bytes)
                            .await?;
                    }
                }
                let manifest = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest.to_string(), "size": config.len()},
                    "layers": [{"mediaType": MEDIA_TYPE, "digest": layer.to_string(), "size": size}],
                    // The tag in the manifest keeps two shards' documents apart even when their
                    // bodies are equal: deleting one's old manifest never touches the other.
                    "annotations": {"org.opencontainers.image.title": "mirrorsync state", "io.mirrorsync.state.tag": tag},
                });
                let bytes =
                    Bytes::from(serde_json::to_vec(&manifest).map_err(DocumentError::Encode)?);
                let fetched = FetchedManifest {
                    digest: digest_of(&bytes),
                    bytes,
                    media_type: OCI_MANIFEST.to_string(),
                };
                // (Not knowing it only leaves garbage behind; the write goes on.)
                let previous = self
                    .manifest_digest(DOCUMENT_REPOSITORY, tag)
                    .await
                    .ok()
                    .flatten();
                self.put_manifest(DOCUMENT_REPOSITORY, tag, &fetched)
                    .await?;
                // The new document is in place: the old manifest is garbage. A registry that
                // does not allow deletes (405 UNSUPPORTED) keeps it until its own GC.
                if let Some(old) = previous.filter(|d| *d != fetched.digest) {
                    match client.delete_manifest(DOCUMENT_REPOSITORY, &old).await {
                        Ok(_) => {
                            tracing::debug!(digest = %old, "deleted the previous state manifest")
                        }
                        Err(e) if e.status() == Some(405) => {
                            tracing::debug!(
                                "the target does not allow deletes; the previous state manifest stays"
                            )
                        }
                        Err(e) => {
                            tracing::warn!(digest = %old, error = %e, "could not delete the previous state manifest")
                        }
                    }
                }
                Ok(())
            }
        }
    }
}
