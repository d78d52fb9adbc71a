//! The two cases where the target gets other bytes than upstream's: a `platforms:` filter, and
//! Docker-format content written to an OCI layout.
//!
//! A filter keeps only the chosen platforms of an index (and the attestation manifests of those).
//! An OCI layout gets Docker schema2 manifests and manifest lists converted to their OCI
//! equivalents, as `skopeo copy` does for `oci:` destinations, because OCI layout readers ignore
//! other media types. Blobs are never changed; only manifest JSON is.
//!
//! Either way the manifest's digest changes, so the rewritten manifest records the upstream
//! digest (and the filter) in its annotations: the next run knows the target is current by
//! reading the target's own copy, which costs no upstream request.

use std::collections::HashMap;

use serde_json::Value;

use crate::config::Platform;
use crate::manifest::{
    self, DOCKER_LIST, DOCKER_MANIFEST, Descriptor, OCI_INDEX, OCI_MANIFEST, PlatformSpec,
};
use crate::reference::Digest;
use crate::registry::FetchedManifest;

/// Annotation holding the upstream digest a rewritten manifest was made from.
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

/// Which entries of an index a filter keeps: matching images, and attestations of kept images.
pub fn select(entries: &[Descriptor], platforms: Option<&[Platform]>) -> Vec<bool> {
    let Some(platforms) = platforms else {
        return vec![true; entries.len()];
    };
    let images: Vec<bool> = entries
        .iter()
        .map(|d| {
            d.attests.is_none()
                && d.platform
                    .as_ref()
                    .is_some_and(|p| platforms.iter().any(|w| matches(p, w)))
        })
        .collect();
    let kept: Vec<String> = entries
        .iter()
        .zip(&images)
        .filter(|(_, keep)| **keep)
        .map(|(d, _)| d.digest.to_string())
        .collect();
    entries
        .iter()
        .zip(images)
        .map(|(d, keep)| keep || d.attests.as_ref().is_some_and(|a| kept.contains(a)))
        .collect()
}

/// What a child became at the target when it was rewritten.
#[derive(Debug, Clone)]
pub struct Replacement {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// How an index is to be rewritten.
pub struct IndexRewrite<'a> {
    pub keep: &'a [bool],
    pub platforms: Option<&'a [Platform]>,
    /// Children that were rewritten, by upstream digest.
    pub replacements: &'a HashMap<Digest, Replacement>,
    pub to_oci: bool,
}

/// The index the target gets, or `None` when it is upstream's exact bytes.
pub fn rewrite_index(
    upstream: &FetchedManifest,
    entries: &[Descriptor],
    how: &IndexRewrite<'_>,
) -> Result<Option<FetchedManifest>, String> {
    let convert = how.to_oci && upstream.media_type == DOCKER_LIST;
    if how.platforms.is_none() && how.replacements.is_empty() && !convert {
        return Ok(None);
    }
    if let Some(platforms) = how.platforms
        && !how.keep.iter().any(|k| *k)
    {
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
    let mut doc: Value = serde_json::from_slice(&upstream.bytes)
        .map_err(|e| format!("index is not valid JSON: {e}"))?;
    let list = doc
        .get_mut("manifests")
        .and_then(|m| m.as_array_mut())
        .ok_or("index has no manifests array")?;
    let mut flags = how.keep.iter();
    list.retain(|_| *flags.next().unwrap_or(&false));
    for entry in list.iter_mut() {
        let Some(old) = entry["digest"].as_str().and_then(|d| Digest::parse(d).ok()) else {
            continue;
        };
        if let Some(new) = how.replacements.get(&old) {
            entry["digest"] = new.digest.to_string().into();
            entry["size"] = new.size.into();
            entry["mediaType"] = new.media_type.clone().into();
        }
    }
    let media_type = if convert {
        OCI_INDEX
    } else {
        upstream.media_type.as_str()
    };
    finish(doc, media_type, upstream, how.platforms)
}

/// A Docker schema2 image manifest as an OCI image manifest (same config and layer blobs).
pub fn convert_image(upstream: &FetchedManifest) -> Result<FetchedManifest, String> {
    let mut doc: Value = serde_json::from_slice(&upstream.bytes)
        .map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    if let Some(config) = doc.get_mut("config") {
        config["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    }
    if let Some(layers) = doc.get_mut("layers").and_then(|l| l.as_array_mut()) {
        for layer in layers {
            let oci = match layer["mediaType"].as_str().unwrap_or_default() {
                "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                }
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
                }
                "application/vnd.docker.image.rootfs.diff.tar" => {
                    "application/vnd.oci.image.layer.v1.tar"
                }
                other => return Err(format!("layer media type {other:?} has no OCI equivalent")),
            };
            layer["mediaType"] = oci.into();
        }
    }
    finish(doc, OCI_MANIFEST, upstream, None)?.ok_or_else(|| "conversion produced nothing".into())
}

/// Whether a manifest needs converting for an OCI layout.
pub fn needs_oci_conversion(media_type: &str) -> bool {
    media_type == DOCKER_MANIFEST || media_type == DOCKER_LIST
}

fn finish(
    mut doc: Value,
    media_type: &str,
    upstream: &FetchedManifest,
    platforms: Option<&[Platform]>,
) -> Result<Option<FetchedManifest>, String> {
    let object = doc.as_object_mut().ok_or("manifest is not a JSON object")?;
    object.insert("mediaType".into(), media_type.into());
    let annotations = object
        .entry("annotations")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(map) = annotations.as_object_mut() {
        map.insert(SOURCE_DIGEST.into(), upstream.digest.to_string().into());
        if let Some(platforms) = platforms {
            map.insert(PLATFORMS.into(), filter_key(platforms).into());
        }
    }
    let bytes = serde_json::to_vec(&doc).map_err(|e| format!("serialising manifest: {e}"))?;
    Ok(Some(FetchedManifest {
        digest: manifest::digest_of(&bytes),
        bytes: bytes.into(),
        media_type: media_type.to_string(),
    }))
}

/// Whether a rewritten manifest at the target was made from `source` with this filter.
pub fn is_current(target_bytes: &[u8], source: &Digest, platforms: Option<&[Platform]>) -> bool {
    let Ok(doc) = serde_json::from_slice::<Value>(target_bytes) else {
        return false;
    };
    let annotations = &doc["annotations"];
    annotations[SOURCE_DIGEST].as_str() == Some(source.to_string().as_str())
        && annotations[PLATFORMS].as_str() == platforms.map(filter_key).as_deref()
}
