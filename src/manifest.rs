//! Manifests are bytes: this module only reads them to find what they reference.
//!
//! We never re-serialise a manifest we copy; the exact bytes fetched upstream are pushed to the
//! target so digests are preserved. Parsing is lenient about unknown fields and strict about the
//! parts we rely on (media types, digests, sizes).

use serde::Deserialize;

use crate::reference::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The manifest media types we copy.
pub const KNOWN_MEDIA_TYPES: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// The Accept header sent on every manifest HEAD and GET (the same list on both, so a registry
/// never converts a manifest to another format behind our back).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Registries must accept manifests up to 4 MiB; we refuse larger ones.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "unsupported manifest media type {0:?} (only OCI and Docker schema2 images and indexes are copied)"
    )]
    UnsupportedMediaType(String),
    #[error("manifest is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("manifest is invalid: {0}")]
    Invalid(String),
}

/// A content descriptor from a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// `os/architecture[/variant]` for index entries that declare a platform.
    pub platform: Option<PlatformSpec>,
    /// For buildx attestation manifests: the digest of the image they describe.
    pub attests: Option<String>,
    /// Foreign (non-distributable) layers carry URLs and are not copied.
    pub foreign: bool,
}

/// The platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// What a manifest references.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// An image manifest: config and layers are blobs.
    Image { blobs: Vec<Descriptor> },
    /// An index or manifest list: each entry is a manifest in the same repository.
    Index { manifests: Vec<Descriptor> },
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<serde_json::Value>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    urls: Option<Vec<String>>,
    #[serde(default)]
    platform: Option<RawPlatform>,
    #[serde(default)]
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// Decides a manifest's media type: the `Content-Type` the registry sent when it names a known
/// type, otherwise the document's own `mediaType`, otherwise its shape (OCI allows omitting it).
pub fn resolve_media_type(header: Option<&str>, bytes: &[u8]) -> Result<String, ManifestError> {
    if let Some(h) = header
        && KNOWN_MEDIA_TYPES.contains(&h)
    {
        return Ok(h.to_string());
    }
    let raw: Raw =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::InvalidJson(e.to_string()))?;
    if let Some(mt) = raw.media_type.as_deref() {
        return if KNOWN_MEDIA_TYPES.contains(&mt) {
            Ok(mt.to_string())
        } else {
            Err(ManifestError::UnsupportedMediaType(mt.to_string()))
        };
    }
    if matches!(&raw.schema_version, Some(v) if v.as_u64() == Some(1)) {
        return Err(ManifestError::UnsupportedMediaType(
            "application/vnd.docker.distribution.manifest.v1+json (schema1)".into(),
        ));
    }
    match (raw.manifests.is_some(), raw.config.is_some()) {
        (true, false) => Ok(OCI_INDEX.to_string()),
        (false, true) => Ok(OCI_MANIFEST.to_string()),
        _ => Err(ManifestError::UnsupportedMediaType(
            header.unwrap_or("unknown").to_string(),
        )),
    }
}

/// The sha256 digest of some bytes (manifests are always addressed by sha256 here).
pub fn digest_of(bytes: &[u8]) -> Digest {
    use sha2::Digest as _;
    Digest::from_sha256_bytes(&sha2::Sha256::digest(bytes).into())
}

/// Whether a media type is an index or manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// Parses a manifest of a known media type into what it references.
pub fn parse(media_type: &str, bytes: &[u8]) -> Result<Parsed, ManifestError> {
    if !KNOWN_MEDIA_TYPES.contains(&media_type) {
        return Err(ManifestError::UnsupportedMediaType(media_type.to_string()));
    }
    let raw: Raw =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::InvalidJson(e.to_string()))?;
    if let Some(inner) = raw.media_type.as_deref()
        && inner != media_type
    {
        return Err(ManifestError::Invalid(format!(
            "document says mediaType {inner:?} but was served as {media_type:?}"
        )));
    }
    if is_index(media_type) {
        let entries = raw
            .manifests
            .ok_or_else(|| ManifestError::Invalid("index has no \"manifests\"".into()))?;
        let manifests = entries
            .into_iter()
            .enumerate()
            .map(|(i, d)| descriptor(d, &format!("manifests[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Parsed::Index { manifests })
    } else {
        let config = raw
            .config
            .ok_or_else(|| ManifestError::Invalid("image manifest has no \"config\"".into()))?;
        let mut blobs = vec![descriptor(config, "config")?];
        for (i, layer) in raw.layers.unwrap_or_default().into_iter().enumerate() {
            blobs.push(descriptor(layer, &format!("layers[{i}]"))?);
        }
        Ok(Parsed::Image { blobs })
    }
}

fn descriptor(raw: RawDescriptor, at: &str) -> Result<Descriptor, ManifestError> {
    let digest = Digest::parse(&raw.digest)
        .map_err(|e| ManifestError::Invalid(format!("{at}.digest: {e}")))?;
    if !digest.is_sha256() {
        return Err(ManifestError::Invalid(format!(
            "{at}.digest: unsupported digest algorithm {:?}",
            digest.algorithm()
        )));
    }
    let size = u64::try_from(raw.size)
        .map_err(|_| ManifestError::Invalid(format!("{at}.size is negative")))?;
    let attests = raw
        .annotations
        .as_ref()
        .filter(|a| {
            a.get("vnd.docker.reference.type")
                .is_some_and(|t| t == "attestation-manifest")
        })
        .and_then(|a| a.get("vnd.docker.reference.digest").cloned());
    Ok(Descriptor {
        foreign: raw.urls.as_ref().is_some_and(|u| !u.is_empty())
            && raw.media_type.contains("foreign"),
        media_type: raw.media_type,
        digest,
        size,
        platform: raw.platform.map(|p| PlatformSpec {
            os: p.os,
            architecture: p.architecture,
            variant: p.variant.filter(|v| !v.is_empty()),
        }),
        attests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn finds_config_and_layers_of_an_image() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"x","digest":"{D1}","size":10}},"layers":[{{"mediaType":"y","digest":"{D2}","size":20}}]}}"#
        );
        let Parsed::Image { blobs } = parse(DOCKER_MANIFEST, json.as_bytes()).unwrap() else {
            panic!("expected an image");
        };
        assert_eq!(blobs.len(), 2);
        assert_eq!(blobs[1].size, 20);
    }

    #[test]
    fn finds_index_children_with_platforms_and_attestations() {
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":5,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":6,"platform":{{"os":"unknown","architecture":"unknown"}},"annotations":{{"vnd.docker.reference.type":"attestation-manifest","vnd.docker.reference.digest":"{D1}"}}}}]}}"#
        );
        assert_eq!(
            resolve_media_type(None, json.as_bytes()).unwrap(),
            OCI_INDEX
        );
        let Parsed::Index { manifests } = parse(OCI_INDEX, json.as_bytes()).unwrap() else {
            panic!("expected an index");
        };
        assert_eq!(
            manifests[0].platform.as_ref().unwrap().variant.as_deref(),
            Some("v8")
        );
        assert_eq!(manifests[1].attests.as_deref(), Some(D1));
    }

    #[test]
    fn rejects_bad_manifests_with_reasons() {
        assert!(matches!(
            resolve_media_type(None, br#"{"schemaVersion":1,"fsLayers":[]}"#),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            parse(OCI_INDEX, b"{not json"),
            Err(ManifestError::InvalidJson(_))
        ));
        let bad_alg = r#"{"manifests":[{"mediaType":"m","digest":"md5:abc","size":1}]}"#;
        assert!(parse(OCI_INDEX, bad_alg.as_bytes()).is_err());
        let negative = format!(r#"{{"config":{{"mediaType":"m","digest":"{D1}","size":-1}}}}"#);
        assert!(parse(OCI_MANIFEST, negative.as_bytes()).is_err());
        assert!(matches!(
            parse("application/vnd.example+json", b"{}"),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
    }
}
