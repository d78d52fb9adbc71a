//! `backup_tag`: before a tag moves, the digest it pointed at keeps a tag of its own.

use super::{Engine, SyncError};
use crate::reference::Digest;

impl Engine {
    /// `backup_tag`: before a tag moves, the digest it pointed at gets another tag.
    pub(super) async fn keep_backup(
        &self,
        repository: &str,
        tag: &str,
        current: &Digest,
        template: &str,
    ) -> Result<(), SyncError> {
        let date = chrono::Utc::now().format("%Y%m%d").to_string();
        let backup = crate::config::expand_backup_tag(template, tag, &date);
        let Some(old) = self
            .target
            .get_manifest(repository, &current.to_string())
            .await?
        else {
            return Ok(());
        };
        self.target.put_manifest(repository, &backup, &old).await?;
        tracing::info!(repository, tag, backup = %backup, digest = %current, "kept the previous digest under a backup tag");
        Ok(())
    }
}
