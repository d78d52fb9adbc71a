//! Image model for seeding: media types, descriptors, platforms, image specs.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// in-toto attestation layer (buildx).
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
/// Accept list covering every manifest kind (send on HEAD and GET alike).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifest flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OCI manifest / OCI index.
    Oci,
    /// Docker schema2 manifest / Docker manifest list.
    Docker,
}

impl Format {
    /// Media type of a single-platform manifest.
    pub fn manifest_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }
    /// Media type of an index / manifest list.
    pub fn index_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_LIST,
        }
    }
    /// Media type of the config blob.
    pub fn config_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::Docker => DOCKER_CONFIG,
        }
    }
    /// Media type of layers.
    pub fn layer_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_LAYER,
            Format::Docker => DOCKER_LAYER,
        }
    }
}

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

impl Descriptor {
    /// `{"mediaType","digest","size"}`.
    pub fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
    /// Same blob, another media type.
    pub fn with_media_type(mut self, mt: &str) -> Descriptor {
        self.media_type = mt.to_string();
        self
    }
}

/// An OS/architecture(/variant) platform.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`, `windows`, `unknown`.
    pub os: String,
    /// `amd64`, `arm64`, `arm`, `unknown`.
    pub architecture: String,
    /// `v7`, `v8`, ...
    pub variant: Option<String>,
}

impl Platform {
    /// A platform from parts.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(String::from),
        }
    }
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Platform {
        let mut p = s.split('/');
        let os = p.next().unwrap_or("linux");
        let arch = p.next().unwrap_or("amd64");
        Platform::new(os, arch, p.next())
    }
    /// `linux/amd64`.
    pub fn linux_amd64() -> Platform {
        Platform::new("linux", "amd64", None)
    }
    /// `unknown/unknown` (attestation manifests).
    pub fn unknown() -> Platform {
        Platform::new("unknown", "unknown", None)
    }
    /// The index entry's `platform` object.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"architecture": self.architecture, "os": self.os});
        if let Some(var) = &self.variant {
            v["variant"] = json!(var);
        }
        v
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// One layer of a test image.
#[derive(Clone, Debug)]
pub enum Layer {
    /// These exact bytes.
    Bytes(Vec<u8>),
    /// `size` deterministic bytes for `seed` (the bytes of `util::layer(seed, size)`), streamed
    /// in chunks, never held in memory whole.
    Generated {
        /// Size in bytes.
        size: u64,
        /// Data seed.
        seed: u64,
    },
}

/// What image to build.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// OCI or Docker media types.
    pub format: Format,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// Platform written into the config (and used in an index unless overridden).
    pub platform: Platform,
    /// Config labels: change one to get a different image digest from the same layers.
    pub labels: BTreeMap<String, String>,
}

/// An OCI image of one `size`-byte layer generated from `seed`.
pub fn oci_image(seed: u64, size: usize) -> ImageSpec {
    ImageSpec::new(Format::Oci, vec![super::util::layer(seed, size)])
}

/// A Docker (schema 2) image of one `size`-byte layer generated from `seed`.
pub fn docker_image(seed: u64, size: usize) -> ImageSpec {
    ImageSpec::new(Format::Docker, vec![super::util::layer(seed, size)])
}

impl ImageSpec {
    /// linux/amd64 image with these layer bytes.
    pub fn new(format: Format, layers: Vec<Vec<u8>>) -> ImageSpec {
        ImageSpec {
            format,
            layers: layers.into_iter().map(Layer::Bytes).collect(),
            platform: Platform::linux_amd64(),
            labels: BTreeMap::new(),
        }
    }
    /// Sets the platform (`"linux/arm64/v8"`).
    pub fn platform(mut self, p: &str) -> ImageSpec {
        self.platform = Platform::parse(p);
        self
    }
    /// Adds a config label.
    pub fn label(mut self, k: &str, v: &str) -> ImageSpec {
        self.labels.insert(k.to_string(), v.to_string());
        self
    }
    /// Appends a generated (streamed) layer.
    pub fn big_layer(mut self, size: u64, seed: u64) -> ImageSpec {
        self.layers.push(Layer::Generated { size, seed });
        self
    }
}

/// Something pushed: a manifest (or index) and the blobs it references.
#[derive(Clone, Debug)]
pub struct PushedImage {
    /// Manifest digest (recomputed from `manifest_bytes`).
    pub digest: String,
    /// The exact bytes pushed.
    pub manifest_bytes: Vec<u8>,
    /// Manifest media type.
    pub media_type: String,
    /// Config then layers (for an index: every child's blobs, deduplicated).
    pub blobs: Vec<Descriptor>,
    /// Platform it is listed under in an index (None for an index).
    pub platform: Option<Platform>,
    /// Annotations it carries in an index entry (attestations).
    pub annotations: BTreeMap<String, String>,
}

impl PushedImage {
    /// Descriptor of the manifest itself.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.manifest_bytes.len() as u64,
        }
    }
}
