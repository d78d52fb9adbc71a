//! The first step of reading `sync.yaml`: serde structs that mirror the file exactly.
//!
//! Nothing here is checked beyond YAML types and key names (`deny_unknown_fields`); every value
//! that `validate` checks later is wrapped in [`Spanned`] so its errors can still name the
//! line and column it came from.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub schedule: Option<Spanned<String>>,
    pub timezone: Option<Spanned<String>>,
    pub concurrency: Option<Spanned<u64>>,
    pub target: Option<Spanned<RawTarget>>,
    pub targets: Option<Spanned<Vec<Spanned<RawTarget>>>>,
    pub docker_config: Option<Spanned<String>>,
    pub registries: Option<RawRegistries>,
    pub images: Option<Spanned<Vec<Spanned<RawImage>>>>,
    pub tag_series: Option<Spanned<String>>,
    pub spool_dir: Option<Spanned<String>>,
    pub spool_size: Option<Spanned<String>>,
}

/// `target:`, where mirrored images are written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTarget {
    pub name: Option<Spanned<String>>,
    pub registry: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub insecure: Option<bool>,
    pub ca_file: Option<Spanned<String>>,
    pub auth: Option<Spanned<RawAuth>>,
    pub requests_per_second: Option<Spanned<f64>>,
    pub burst: Option<Spanned<u32>>,
    pub bytes_per_second: Option<Spanned<String>>,
    pub concurrency: Option<Spanned<u64>>,
    pub chunk_size: Option<Spanned<String>>,
    pub digests: Option<Spanned<String>>,
    pub since: Option<Spanned<String>>,
}

/// `auth:` of the target or of an upstream registry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub username: Spanned<String>,
    pub password_env: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
}

/// `registries.<host>:`, settings for one upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRegistry {
    pub mirrors: Option<Vec<Spanned<String>>>,
    pub prefix: Option<Spanned<String>>,
    pub auth: Option<Spanned<RawAuth>>,
    pub insecure: Option<bool>,
    pub ca_file: Option<Spanned<String>>,
    pub requests_per_second: Option<Spanned<f64>>,
    pub burst: Option<Spanned<u32>>,
    pub bytes_per_second: Option<Spanned<String>>,
    pub concurrency: Option<Spanned<u64>>,
    pub rate_limit_reserve: Option<u32>,
    pub path: Option<Spanned<String>>,
}

/// `registries:` in file order (a map would lose the order and duplicate-host detection).
///
/// Keys are plain strings: a `Spanned` key would hide the host from the error key path.
#[derive(Debug, Default)]
pub(crate) struct RawRegistries(pub Vec<(String, Spanned<RawRegistry>)>);

impl<'de> Deserialize<'de> for RawRegistries {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RegistriesVisitor;
        impl<'de> Visitor<'de> for RegistriesVisitor {
            type Value = RawRegistries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping from registry host to its settings")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawRegistries::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(RawRegistries(entries))
            }
        }
        deserializer.deserialize_map(RegistriesVisitor)
    }
}

/// One `images:` entry: a plain reference, or a mapping with tags, platforms and target.
#[derive(Debug)]
pub(crate) enum RawImage {
    Short(String),
    Full(Box<RawImageSpec>),
}

/// The mapping form of an `images:` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImageSpec {
    pub source: Spanned<String>,
    pub tags: Option<Spanned<Vec<Spanned<RawTag>>>>,
    pub platforms: Option<Spanned<Vec<Spanned<String>>>>,
    pub platforms_mode: Option<Spanned<String>>,
    pub target: Option<Spanned<String>>,
    pub targets: Option<Spanned<Vec<Spanned<String>>>>,
    pub immutable: Option<Spanned<Vec<Spanned<String>>>>,
    pub referrers: Option<bool>,
    pub backup_tag: Option<Spanned<String>>,
    pub prune: Option<bool>,
}

/// One `tags:` entry: an exact tag, or a filter mapping.
#[derive(Debug)]
pub(crate) enum RawTag {
    Exact(String),
    Filter(Box<RawTagFilter>),
}

/// A tag filter: `regex:` (+ `exclude:`), `semver:`, `newest:` (+ `semver:`), `all: true`;
/// `prerelease: true` lets pre-release versions into `semver:` and `newest:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTagFilter {
    pub regex: Option<String>,
    pub exclude: Option<String>,
    pub semver: Option<String>,
    pub newest: Option<u64>,
    pub prerelease: Option<bool>,
    pub all: Option<bool>,
}

impl<'de> Deserialize<'de> for RawTag {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TagVisitor;
        impl<'de> Visitor<'de> for TagVisitor {
            type Value = RawTag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a tag, or a mapping with regex, exclude, semver, newest, prerelease or all",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTag::Exact(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawTag::Exact(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawTag::Exact(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "tag {v} was read as a number; quote it (\"{v}\") so that e.g. 7.10 is not read as 7.1"
                )))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawTagFilter::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|f| RawTag::Filter(Box::new(f)))
            }
        }
        deserializer.deserialize_any(TagVisitor)
    }
}

impl<'de> Deserialize<'de> for RawImage {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Hand-written instead of `#[serde(untagged)]`, which buffers the input and so loses
        // both the real error (unknown key, wrong type) and the positions of nested values.
        struct ImageVisitor;
        impl<'de> Visitor<'de> for ImageVisitor {
            type Value = RawImage;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an image reference or a mapping with source, tags, platforms, target")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawImage::Short(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawImageSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|spec| RawImage::Full(Box::new(spec)))
            }
        }
        deserializer.deserialize_any(ImageVisitor)
    }
}
