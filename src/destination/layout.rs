//! An OCI image layout directory as the target, so a sync needs no registry at all.
//!
//! Each target repository is its own layout, `<root>/<repository>/` with `oci-layout`,
//! `index.json` and `blobs/sha256/`, and each tag is an `index.json` entry whose
//! `org.opencontainers.image.ref.name` annotation is the tag, which is what
//! `skopeo copy oci:<root>/<repository>:<tag> ...` reads. Blobs are written to a temporary file,
//! verified, synced and renamed into place; `index.json` is replaced atomically, last.
//!
//! With `digests: preserve` manifests keep upstream's bytes and Docker media types, so every
//! digest equals upstream's. With `since: EARLIER` the layout is a delta: what the earlier
//! export holds counts as present (it is read, never written), so only the blobs it lacks are
//! written, along with the whole `index.json` of each repository that changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::TargetError;
use crate::reference::Digest;
use crate::registry::FetchedManifest;
use crate::verify::VerifiedStream;

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A directory of OCI image layouts, one per repository.
pub struct OciLayout {
    root: PathBuf,
    /// Docker manifests are converted to OCI (`digests: oci`).
    to_oci: bool,
    /// The earlier export this one is a delta against.
    since: Option<PathBuf>,
    /// Serialises `index.json` updates per repository.
    index_locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl OciLayout {
    pub fn new(root: PathBuf) -> Self {
        OciLayout {
            root,
            to_oci: true,
            since: None,
            index_locks: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The layout at `root` with the target's `digests` and `since`.
    pub fn for_target(root: &Path, target: &crate::config::TargetSettings) -> Self {
        let options = &target.layout;
        OciLayout {
            to_oci: options.digests == crate::config::LayoutDigests::Oci,
            since: options.since.clone(),
            ..OciLayout::new(root.to_path_buf())
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether Docker manifests are converted to OCI on the way in (`digests: oci`).
    pub fn converts_to_oci(&self) -> bool {
        self.to_oci
    }

    /// The same repository in the earlier export, for a delta.
    fn base_dir(&self, repository: &str) -> Result<Option<PathBuf>, TargetError> {
        self.repo_dir(repository)?;
        Ok(self.since.as_ref().map(|since| since.join(repository)))
    }

    /// Where a blob is: this layout, else the earlier export (a delta); `None` when absent.
    async fn find_blob(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<(PathBuf, u64)>, TargetError> {
        let own = self.blob_path(repository, digest)?;
        let mut candidates = vec![own];
        if let Some(base) = self.base_dir(repository)? {
            candidates.push(
                base.join("blobs")
                    .join(digest.algorithm())
                    .join(digest.encoded()),
            );
        }
        for path in candidates {
            match tokio::fs::metadata(&path).await {
                Ok(meta) => return Ok(Some((path, meta.len()))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(TargetError::Io { path, source }),
            }
        }
        Ok(None)
    }

    fn repo_dir(&self, repository: &str) -> Result<PathBuf, TargetError> {
        // Repository names were validated by the config; still never let one escape the root.
        if repository
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(TargetError::Invalid(format!(
                "repository {repository:?} cannot be a directory name"
            )));
        }
        Ok(self.root.join(repository))
    }

    fn blob_path(&self, repository: &str, digest: &Digest) -> Result<PathBuf, TargetError> {
        Ok(self
            .repo_dir(repository)?
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.encoded()))
    }

    /// Reads the `index.json` of a repository (an empty index when there is none yet).
    async fn read_index(&self, repository: &str) -> Result<serde_json::Value, TargetError> {
        let mut path = self.repo_dir(repository)?.join("index.json");
        if let Some(base) = self.base_dir(repository)?
            && tokio::fs::metadata(&path).await.is_err()
        {
            // A delta starts from the earlier export's index and writes it whole.
            path = base.join("index.json");
        }
        match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                TargetError::Invalid(format!("{}: not a valid index.json: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::json!({
                "schemaVersion": 2,
                "mediaType": crate::manifest::OCI_INDEX,
                "manifests": [],
            })),
            Err(source) => Err(TargetError::Io { path, source }),
        }
    }

    pub async fn manifest_digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Digest>, TargetError> {
        if let Ok(digest) = Digest::parse(reference) {
            return Ok(self.blob_size(repository, &digest).await?.map(|_| digest));
        }
        let index = self.read_index(repository).await?;
        let entry = index["manifests"].as_array().and_then(|entries| {
            entries
                .iter()
                .find(|e| e["annotations"][REF_NAME].as_str() == Some(reference))
        });
        let Some(entry) = entry else {
            return Ok(None);
        };
        let digest = entry["digest"].as_str().and_then(|d| Digest::parse(d).ok());
        match digest {
            // A tag whose manifest blob is gone counts as absent, so it is written again.
            Some(d) if self.blob_size(repository, &d).await?.is_some() => Ok(Some(d)),
            _ => Ok(None),
        }
    }

    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<FetchedManifest>, TargetError> {
        let Some(digest) = self.manifest_digest(repository, reference).await? else {
            return Ok(None);
        };
        let Some((path, _)) = self.find_blob(repository, &digest).await? else {
            return Ok(None);
        };
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|source| TargetError::Io { path, source })?;
        let media_type = crate::manifest::resolve_media_type(None, &bytes)
            .map_err(|e| TargetError::Invalid(e.to_string()))?;
        Ok(Some(FetchedManifest {
            bytes: bytes.into(),
            media_type,
            digest,
        }))
    }

    pub async fn blob_size(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, TargetError> {
        Ok(self
            .find_blob(repository, digest)
            .await?
            .map(|(_, size)| size))
    }

    /// Hard-links a blob from another repository's layout (copies when linking is impossible).
    pub async fn link_blob(
        &self,
        from: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, TargetError> {
        let src = match self.find_blob(from, digest).await? {
            Some((path, _)) => path,
            None => self.blob_path(from, digest)?,
        };
        let dst = self.blob_path(repository, digest)?;
        self.prepare(repository).await?;
        let tmp = crate::atomic_file::temp_path(&dst);
        if tokio::fs::hard_link(&src, &tmp).await.is_err() {
            copy_new(&src, &tmp).await?;
        }
        rename(&tmp, &dst).await?;
        Ok(true)
    }

    pub async fn write_blob(
        &self,
        repository: &str,
        digest: &Digest,
        mut source: VerifiedStream,
    ) -> Result<u64, TargetError> {
        self.prepare(repository).await?;
        let dst = self.blob_path(repository, digest)?;
        let tmp = crate::atomic_file::temp_path(&dst);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TargetError::Io { path, source }
        };
        let result = async {
            let mut file = create_new(&tmp).await.map_err(io(&tmp))?;
            while let Some(chunk) = source.next_chunk().await.map_err(TargetError::Source)? {
                file.write_all(&chunk).await.map_err(io(&tmp))?;
            }
            let size = source.finish().await.map_err(TargetError::Source)?;
            file.sync_all().await.map_err(io(&tmp))?;
            Ok(size)
        }
        .await;
        match result {
            Ok(size) => {
                rename(&tmp, &dst).await?;
                Ok(size)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    pub async fn read_blob(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<VerifiedStream, TargetError> {
        use futures_util::StreamExt;
        let path = match self.find_blob(repository, digest).await? {
            Some((path, _)) => path,
            None => self.blob_path(repository, digest)?,
        };
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|source| TargetError::Io { path, source })?;
        let stream = tokio_util::io::ReaderStream::new(file)
            .map(|r| r.map_err(|e| e.to_string()))
            .boxed();
        Ok(VerifiedStream::new(stream, digest.clone(), size))
    }

    /// Writes the manifest as a blob; for a tag, then points `index.json` at it.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        manifest: &FetchedManifest,
    ) -> Result<(), TargetError> {
        self.prepare(repository).await?;
        let dst = self.blob_path(repository, &manifest.digest)?;
        if self
            .find_blob(repository, &manifest.digest)
            .await?
            .is_none()
        {
            write_atomically(&dst, &manifest.bytes).await?;
        }
        if Digest::parse(reference).is_ok() {
            return Ok(());
        }
        let lock = self.index_lock(repository);
        let _guard = lock.lock().await;
        let mut index = self.read_index(repository).await?;
        let entries = index["manifests"].as_array_mut().ok_or_else(|| {
            TargetError::Invalid(format!("{repository}/index.json has no manifests array"))
        })?;
        entries.retain(|e| e["annotations"][REF_NAME].as_str() != Some(reference));
        entries.push(serde_json::json!({
            "mediaType": manifest.media_type,
            "digest": manifest.digest.to_string(),
            "size": manifest.bytes.len(),
            "annotations": { REF_NAME: reference },
        }));
        let bytes = serde_json::to_vec_pretty(&index)
            .map_err(|e| TargetError::Invalid(format!("serialising index.json: {e}")))?;
        write_atomically(&self.repo_dir(repository)?.join("index.json"), &bytes).await
    }

    /// Drops a tag's `index.json` entry (its blobs stay: other tags may share them).
    pub async fn remove_tag(&self, repository: &str, tag: &str) -> Result<bool, TargetError> {
        let lock = self.index_lock(repository);
        let _guard = lock.lock().await;
        let mut index = self.read_index(repository).await?;
        let Some(entries) = index["manifests"].as_array_mut() else {
            return Ok(false);
        };
        let before = entries.len();
        entries.retain(|e| e["annotations"][REF_NAME].as_str() != Some(tag));
        if entries.len() == before {
            return Ok(false);
        }
        let bytes = serde_json::to_vec_pretty(&index)
            .map_err(|e| TargetError::Invalid(format!("serialising index.json: {e}")))?;
        write_atomically(&self.repo_dir(repository)?.join("index.json"), &bytes).await?;
        Ok(true)
    }

    /// The lock that serialises `index.json` updates of one repository.
    fn index_lock(&self, repository: &str) -> Arc<Mutex<()>> {
        let mut locks = self
            .index_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(repository.to_string()).or_default().clone()
    }

    /// Creates the layout skeleton of a repository when missing.
    async fn prepare(&self, repository: &str) -> Result<(), TargetError> {
        let dir = self.repo_dir(repository)?;
        let blobs = dir.join("blobs").join("sha256");
        tokio::fs::create_dir_all(&blobs)
            .await
            .map_err(|source| TargetError::Io {
                path: blobs.clone(),
                source,
            })?;
        let marker = dir.join("oci-layout");
        if tokio::fs::metadata(&marker).await.is_err() {
            write_atomically(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).await?;
        }
        Ok(())
    }
}

/// Creates a temporary file that must not exist yet: a file or symlink planted under its name
/// makes this fail rather than be followed or overwritten.
async fn create_new(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
}

/// Copies `from` into a new temporary file `to` (see [`create_new`]); removes it on failure.
async fn copy_new(from: &Path, to: &Path) -> Result<(), TargetError> {
    let copied = async {
        let mut source = tokio::fs::File::open(from).await?;
        let mut file = create_new(to).await?;
        tokio::io::copy(&mut source, &mut file).await?;
        file.sync_all().await
    }
    .await;
    copied.map_err(|source| {
        let _ = std::fs::remove_file(to);
        TargetError::Io {
            path: from.to_path_buf(),
            source,
        }
    })
}

/// Renames a finished temporary file into place; on failure the temporary file is removed.
async fn rename(from: &Path, to: &Path) -> Result<(), TargetError> {
    if let Err(source) = tokio::fs::rename(from, to).await {
        let _ = tokio::fs::remove_file(from).await;
        return Err(TargetError::Io {
            path: to.to_path_buf(),
            source,
        });
    }
    Ok(())
}

/// Replaces a small file (`index.json`, a manifest) atomically and durably.
async fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TargetError> {
    crate::atomic_file::write_async(path, bytes.to_vec())
        .await
        .map_err(|source| TargetError::Io {
            path: path.to_path_buf(),
            source,
        })
}
