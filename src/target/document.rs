//! mirrorsync's own small documents at the target (the run state), one per tag (a shard).
//!
//! In a registry a document is an OCI artifact in [`DOCUMENT_REPOSITORY`]: a `{}` config blob,
//! one layer with the JSON, a manifest under the tag; the manifest it replaces is deleted where
//! the registry allows deletes. In an OCI layout it is a file
//! `.mirrorsync-state-<tag>.json` in the layout directory, replaced atomically.

use bytes::Bytes;

use super::Target;
use crate::manifest::{OCI_MANIFEST, digest_of};
use crate::reference::Digest;
use crate::registry::FetchedManifest;

/// The target repository that holds the documents.
pub const DOCUMENT_REPOSITORY: &str = "mirrorsync/state";
const MEDIA_TYPE: &str = "application/vnd.mirrorsync.state.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.mirrorsync.state.config.v1+json";
const LAYOUT_FILE: &str = ".mirrorsync-state";

impl Target {
    /// The document stored under `tag`; `None` when there is none. Refused above `max_bytes`
    /// or when the stored blob does not match its digest.
    pub async fn load_document(
        &self,
        tag: &str,
        max_bytes: usize,
    ) -> Result<Option<Vec<u8>>, String> {
        match self {
            Target::Layout(layout) => {
                let path = layout.root().join(format!("{LAYOUT_FILE}-{tag}.json"));
                match tokio::fs::read(&path).await {
                    Ok(b) if b.len() > max_bytes => {
                        Err(format!("{}: larger than {max_bytes} bytes", path.display()))
                    }
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(format!("{}: {e}", path.display())),
                }
            }
            Target::Registry(client) => {
                let manifest = match self.get_manifest(DOCUMENT_REPOSITORY, tag).await {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(e.to_string()),
                };
                let doc: serde_json::Value = serde_json::from_slice(&manifest.bytes)
                    .map_err(|e| format!("state manifest: {e}"))?;
                let layer = doc["layers"][0]["digest"]
                    .as_str()
                    .and_then(|d| Digest::parse(d).ok())
                    .ok_or("state manifest has no layer")?;
                let response = client
                    .get_blob(DOCUMENT_REPOSITORY, &layer)
                    .await
                    .map_err(|e| e.to_string())?;
                let body = crate::registry::read_limited(response, max_bytes)
                    .await
                    .map_err(|e| e.to_string())?;
                if digest_of(&body) != layer {
                    return Err("state blob does not match its digest".into());
                }
                Ok(Some(body.to_vec()))
            }
        }
    }

    /// Stores `body` under `tag` (in a registry: blobs first, then the manifest).
    pub async fn save_document(&self, tag: &str, body: Vec<u8>) -> Result<(), String> {
        match self {
            Target::Layout(layout) => {
                let path = layout.root().join(format!("{LAYOUT_FILE}-{tag}.json"));
                std::fs::create_dir_all(layout.root())
                    .map_err(|e| format!("{}: {e}", layout.root().display()))?;
                crate::atomic_file::write_async(&path, body)
                    .await
                    .map_err(|e| e.to_string())
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
                        .await
                        .map_err(|e| e.to_string())?
                        .is_none()
                    {
                        client
                            .upload_bytes(DOCUMENT_REPOSITORY, digest, bytes)
                            .await
                            .map_err(|e| e.to_string())?;
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
                let bytes = Bytes::from(serde_json::to_vec(&manifest).map_err(|e| e.to_string())?);
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
                    .await
                    .map_err(|e| e.to_string())?;
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
