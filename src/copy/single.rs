//! `platforms_mode: single`: one platform of a multi-platform image stored as a plain image,
//! its own manifest under the tag and no index, for targets that refuse manifests pushed by
//! digest. The tag's digest at the target is then the platform manifest's, which is what a
//! client pulling that platform resolves to anyway.

use super::manifests::{Copied, Route};
use super::{Engine, SyncError, rewrite};
use crate::config::{Platform, SyncItem};
use crate::manifest::{self, Parsed};
use crate::reference::Digest;

impl Engine {
    /// The manifest `digest` stands for in single mode: the chosen platform's child when it is
    /// an index, else `digest` itself. Reads the manifest from upstream (a GET, which Docker Hub
    /// counts as a pull); a plain image is left for the copy that follows, so it is read once.
    pub(super) async fn single_platform(
        &self,
        route: Route<'_>,
        digest: &Digest,
        platforms: &[Platform],
    ) -> Result<Digest, SyncError> {
        let fetched = self.fetch_manifest(route, digest).await?;
        let parsed = manifest::parse(&fetched.media_type, &fetched.bytes).map_err(|source| {
            SyncError::Manifest {
                digest: digest.clone(),
                source,
            }
        })?;
        let Parsed::Index { manifests } = parsed else {
            route
                .upstream
                .prefetched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((route.source_repo.to_string(), digest.clone()), fetched);
            return Ok(digest.clone());
        };
        let keep = rewrite::select(&manifests, Some(platforms));
        let chosen: Vec<&Digest> = manifests
            .iter()
            .zip(&keep)
            .filter(|(child, keep)| **keep && child.attests.is_none())
            .map(|(child, _)| &child.digest)
            .collect();
        let wanted = rewrite::filter_key(platforms);
        match chosen.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(SyncError::NoPlatform {
                index: digest.clone(),
                wanted,
            }),
            more => Err(SyncError::AmbiguousPlatform {
                index: digest.clone(),
                wanted,
                matches: more.len(),
            }),
        }
    }

    /// Copies what an item's tag will point at: the manifest (filtered to `platforms:`), or in
    /// single mode the chosen platform's image.
    pub(super) async fn copy_item(
        &self,
        route: Route<'_>,
        item: &SyncItem,
        digest: &Digest,
    ) -> Result<Copied, SyncError> {
        match (&item.platforms, item.options.single) {
            (Some(platforms), true) => self.copy_single(route, digest, platforms).await,
            (filter, _) => {
                self.copy_manifest(route, digest, filter.as_deref(), 0)
                    .await
            }
        }
    }

    /// Copies the chosen platform's image (blobs, then nothing else: the caller puts its
    /// manifest under the tag).
    pub(super) async fn copy_single(
        &self,
        route: Route<'_>,
        digest: &Digest,
        platforms: &[Platform],
    ) -> Result<Copied, SyncError> {
        let chosen = self.single_platform(route, digest, platforms).await?;
        let depth = usize::from(chosen != *digest);
        let route = Route {
            sparse: false,
            ..route
        };
        self.copy_manifest(route, &chosen, None, depth).await
    }
}
