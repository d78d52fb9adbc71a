//! `platforms:` filtering: copy only the chosen platforms of an index.
//!
//! Keeping fewer entries changes the index's bytes and so its digest; the rewritten index
//! records the upstream digest and the filter in its annotations, so the next run can tell the
//! target is current by reading the target's own copy (free) instead of fetching upstream.
//! Attestation manifests are kept when the image they describe is kept.

use crate::config::Platform;
use crate::manifest::{self, Descriptor, PlatformSpec};
use crate::reference::Digest;
use crate::registry::FetchedManifest;

/// Annotation holding the upstream index digest a filtered index was made from.
pub const SOURCE_DIGEST: &str = "io.mirrorsync.source.digest";
/// Annotation holding the platform filter, as [`filter_key`] writes it.
pub const PLATFORMS: &str = "io.mirrorsync.platforms";

/// The filter as a stable string: `linux/amd64,linux/arm/v7`.
pub fn filter_key(platforms: &[Platform]) -> String {
    let mut names: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
    names.sort();
    names.dedup();
    names.join(",")
}

fn matches(spec: &PlatformSpec, wanted: &Platform) -> bool {
    spec.os == wanted.os
        && spec.architecture == wanted.architecture
        && match &wanted.variant {
            None => true,
            Some(v) => spec.variant.as_deref() == Some(v.as_str()),
        }
}

/// Which entries of an index a filter keeps.
pub fn select(entries: &[Descriptor], platforms: &[Platform]) -> Vec<bool> {
    let images: Vec<bool> = entries
        .iter()
        .map(|d| {
            d.attests.is_none()
                && d.platform
                    .as_ref()
                    .is_some_and(|p| platforms.iter().any(|w| matches(p, w)))
        })
        .collect();
    let kept_digests: Vec<String> = entries
        .iter()
        .zip(&images)
        .filter(|(_, keep)| **keep)
        .map(|(d, _)| d.digest.to_string())
        .collect();
    entries
        .iter()
        .zip(images)
        .map(|(d, keep)| keep || d.attests.as_ref().is_some_and(|a| kept_digests.contains(a)))
        .collect()
}

/// The filtered index: only kept entries, plus our annotations. Errors when nothing is kept.
pub fn rewrite(
    upstream: &FetchedManifest,
    entries: &[Descriptor],
    keep: &[bool],
    platforms: &[Platform],
) -> Result<FetchedManifest, String> {
    if !keep.iter().any(|k| *k) {
        let available: Vec<String> = entries
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            })
            .collect();
        return Err(format!(
            "none of the platforms {} is in the index (it has {})",
            filter_key(platforms),
            available.join(", ")
        ));
    }
    let mut doc: serde_json::Value = serde_json::from_slice(&upstream.bytes)
        .map_err(|e| format!("index is not valid JSON: {e}"))?;
    let list = doc
        .get_mut("manifests")
        .and_then(|m| m.as_array_mut())
        .ok_or("index has no manifests array")?;
    let mut flags = keep.iter();
    list.retain(|_| *flags.next().unwrap_or(&false));
    let annotations = doc
        .as_object_mut()
        .ok_or("index is not a JSON object")?
        .entry("annotations")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(map) = annotations.as_object_mut() {
        map.insert(SOURCE_DIGEST.into(), upstream.digest.to_string().into());
        map.insert(PLATFORMS.into(), filter_key(platforms).into());
    }
    let bytes = serde_json::to_vec(&doc).map_err(|e| format!("serialising index: {e}"))?;
    Ok(FetchedManifest {
        digest: manifest::digest_of(&bytes),
        bytes: bytes.into(),
        media_type: upstream.media_type.clone(),
    })
}

/// Whether a filtered index at the target was made from `source` with this filter.
pub fn is_current(target_bytes: &[u8], source: &Digest, platforms: &[Platform]) -> bool {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(target_bytes) else {
        return false;
    };
    let annotations = &doc["annotations"];
    annotations[SOURCE_DIGEST].as_str() == Some(source.to_string().as_str())
        && annotations[PLATFORMS].as_str() == Some(filter_key(platforms).as_str())
}
