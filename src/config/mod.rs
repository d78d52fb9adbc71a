//! `sync.yaml`: what to mirror, where to, and how hard to pull.
//!
//! Reading goes in two steps, as in ripgrep's flag handling: `raw` deserialises the file into
//! serde structs that mirror it key for key (unknown keys and wrong types are errors with
//! `file:line:col` and the key path), then `validate` (with `images`) turns those into a
//! [`Config`] whose values are all checked: references parsed, target repositories mapped and
//! free of clashes, secrets resolved, files present. Relative paths are anchored at the
//! config file's directory. Nothing after this module re-checks the config, and nothing
//! here touches the network. `credentials` reads Docker's `config.json` and helpers.

mod credentials;
mod error;
mod images;
mod raw;
mod validate;
mod values;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use credentials::{Credentials, Secret, read_password_file};
pub use error::ConfigError;
pub use values::{DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE};

use crate::reference::{DOCKER_HUB, DOCKER_HUB_API, Reference, normalize_registry};

/// Default for [`Config::concurrency`]: tags copied at once. A tag's copy is mostly waiting for
/// round trips (manifest, child manifests, blobs), so many run at once; the streams they open
/// are bounded per host by [`RegistrySettings::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 64;
/// Default for [`RegistrySettings::concurrency`]: blob transfers at once per upstream host,
/// enough to keep a long, fast link busy with small blobs (each costs a round trip).
pub const DEFAULT_REGISTRY_CONCURRENCY: usize = 32;
/// Default for [`RegistrySettings::concurrency`] on Docker Hub: as before, gentle on Hub.
pub const DOCKER_HUB_CONCURRENCY: usize = 4;
/// Default for [`TargetSettings::concurrency`]: blob writes at once to the target. A blob
/// streams from upstream straight into its upload, so a write lasts as long as its download:
/// as many as an upstream host's default transfers, or those would wait for a write slot.
pub const DEFAULT_TARGET_CONCURRENCY: usize = DEFAULT_REGISTRY_CONCURRENCY;
/// Default `spool_size`: disk for blobs on their way to several targets.
pub const DEFAULT_SPOOL_SIZE: u64 = 4 * 1024 * 1024 * 1024;
/// Requests per second to Docker Hub unless configured: well under its abuse limits.
pub const DOCKER_HUB_REQUESTS_PER_SECOND: f64 = 10.0;
/// Request burst to Docker Hub unless configured.
pub const DOCKER_HUB_BURST: u32 = 20;

/// A validated `sync.yaml`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    /// When `sync` without `--once` starts a pass: the `schedule` key (5 or 6 cron fields, or
    /// a nickname such as `@daily`) parsed at load in `timezone` (default `UTC`).
    pub schedule: Option<crate::schedule::Schedule>,
    /// Time zone for `schedule`; default `UTC`.
    pub timezone: String,
    /// Tags copied at once (1..=256), default 64; up to twice as many are inspected at once.
    pub concurrency: usize,
    /// Where images are written: the first of `targets:` (the only one with `target:`). A pass
    /// over several targets runs once per [`Config::per_target`] view.
    pub target: TargetSettings,
    /// Per-upstream settings, keyed by normalised host (`docker.io`).
    pub registries: BTreeMap<String, RegistrySettings>,
    /// Docker config with `auths`/`credHelpers`: the `docker_config` key (`~` expanded), or
    /// else `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` when that file exists.
    pub docker_config: Option<PathBuf>,
    /// One item per (source tag, target), in file order.
    pub images: Vec<SyncItem>,
    /// Entries whose tags are chosen at run time from the upstream tag list.
    pub selections: Vec<TagSelection>,
    /// Which tags get per-tag series (`tag_series`, default every tag).
    pub tag_series: TagSeries,
    /// Every target with its own image list, in file order: one for `target:`, one per
    /// element of `targets:`. `target`, `images` and `selections` above are the first's.
    pub targets: Vec<TargetPlan>,
    /// With several targets: where blobs are spooled for them (`spool_dir`, default the
    /// system's temporary directory) and how many bytes at most (`spool_size`).
    pub spool_dir: PathBuf,
    pub spool_size: u64,
}

/// One target and what goes to it (entries whose `targets:` name it, or every entry).
#[derive(Debug, Clone)]
pub struct TargetPlan {
    pub target: TargetSettings,
    /// Its items, mapped with its `prefix`.
    pub images: Vec<SyncItem>,
    pub selections: Vec<TagSelection>,
}

/// `tag_series`: which tags have their own `mirrorsync_tag_*` series. The aggregate lag series
/// are exported either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TagSeries {
    /// Every configured tag: three series each (in sync, last synced, lag).
    #[default]
    All,
    /// Only tags the last pass could not confirm in sync (failed, deferred, lagging): for lists
    /// of thousands of tags, where a series per tag is more than Prometheus should hold.
    OutOfSync,
}

/// Where mirrored images go.
#[derive(Debug, Clone)]
pub enum TargetKind {
    /// A registry reached over HTTP(S).
    Registry(Endpoint),
    /// An OCI image layout directory.
    Path(PathBuf),
}

/// `target:`: the destination and the prefix put before every source repository path.
#[derive(Debug, Clone)]
pub struct TargetSettings {
    /// `name:`: required in `targets:`, labels logs and metrics (`target_name`); `None` for a
    /// single `target:` without one, whose series keep their identity.
    pub name: Option<String>,
    pub kind: TargetKind,
    /// Without leading or trailing `/`; `""` keeps upstream paths unchanged.
    pub prefix: String,
    /// Request and bandwidth limits at a target registry.
    pub limits: LimitSettings,
    /// Blob uploads at once to the target.
    pub concurrency: usize,
    /// Bytes per upload request (`target.chunk_size`): a blob up to this size goes up in one
    /// request, a larger one in chunks of this size.
    pub chunk_size: u64,
    /// `digests:` and `since:` of a `target.path` layout.
    pub layout: LayoutOptions,
}

/// How a layout target stores manifests: `target.digests`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LayoutDigests {
    /// Docker manifests and lists converted to OCI (what `skopeo copy oci:` reads); their
    /// digests differ from upstream's.
    #[default]
    Oci,
    /// Upstream's exact bytes and media types: every digest equals upstream's.
    Preserve,
}

/// Options of a layout target.
#[derive(Debug, Clone, Default)]
pub struct LayoutOptions {
    pub digests: LayoutDigests,
    /// `target.since`: an earlier export; only what it lacks is written (a delta).
    pub since: Option<PathBuf>,
}

/// Request and bandwidth limits an operator configured for one host.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimitSettings {
    pub requests_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub bytes_per_second: Option<u64>,
}

/// How to reach one registry.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host[:port]`: as written for the target; the API host for an upstream
    /// (`registry-1.docker.io` for `docker.io`).
    pub host: String,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// Extra CA certificate (PEM) to trust; checked to be readable at load time.
    pub ca_file: Option<PathBuf>,
    /// From `auth:`, resolved at load time. `None`: try the docker config, then anonymous.
    pub credentials: Option<Credentials>,
    /// `auth.password_file`: read again at the start of every pass of the daemon
    /// ([`Config::reread_password_files`]) and when the registry refuses the password.
    pub password_file: Option<PathBuf>,
}

/// Settings for one upstream registry host.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub endpoint: Endpoint,
    /// Pull-through mirrors (`http`/`https` URLs) asked for content by digest first.
    pub mirrors: Vec<String>,
    /// Overrides `target.prefix` for images from this host.
    pub prefix: Option<String>,
    /// Request rate limit (> 0).
    pub requests_per_second: Option<f64>,
    /// Request burst allowed above the rate (> 0).
    pub burst: Option<u32>,
    /// Download bandwidth limit in bytes per second (> 0).
    pub bytes_per_second: Option<u64>,
    /// Blob transfers at once for this host (1..=64), default 32 (Docker Hub: 4).
    pub concurrency: usize,
    /// Stop pulling when the registry's `ratelimit-remaining` reaches this.
    pub rate_limit_reserve: Option<u32>,
    /// `path:`: the host is served from this OCI layout directory instead of the network.
    pub layout: Option<PathBuf>,
}

impl RegistrySettings {
    /// The request and bandwidth limits configured for this host.
    pub fn limits(&self) -> LimitSettings {
        LimitSettings {
            requests_per_second: self.requests_per_second,
            burst: self.burst,
            bytes_per_second: self.bytes_per_second,
        }
    }

    /// Settings for a host that `registries:` does not mention.
    pub fn default_for(host: &str) -> RegistrySettings {
        let docker_hub = normalize_registry(host) == crate::reference::DOCKER_HUB;
        RegistrySettings {
            endpoint: Endpoint {
                host: api_host(&normalize_registry(host)),
                insecure: false,
                ca_file: None,
                credentials: None,
                password_file: None,
            },
            mirrors: Vec::new(),
            prefix: None,
            requests_per_second: docker_hub.then_some(DOCKER_HUB_REQUESTS_PER_SECOND),
            burst: docker_hub.then_some(DOCKER_HUB_BURST),
            bytes_per_second: None,
            concurrency: if docker_hub {
                DOCKER_HUB_CONCURRENCY
            } else {
                DEFAULT_REGISTRY_CONCURRENCY
            },
            rate_limit_reserve: None,
            layout: None,
        }
    }
}

/// Where a normalised registry's HTTP API is served.
fn api_host(registry: &str) -> String {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API.to_string()
    } else {
        registry.to_string()
    }
}

/// An OCI platform such as `linux/arm64` or `linux/arm/v7`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// One tag (or digest pin) to mirror, and where it lands.
#[derive(Debug, Clone)]
pub struct SyncItem {
    /// The upstream image, with the tag to sync (and the digest if pinned).
    pub source: Reference,
    /// Repository in the target, e.g. `mirror/library/nginx`.
    pub target_repository: String,
    /// Tag in the target; `None` only for a digest-only pin, pushed by digest.
    pub target_tag: Option<String>,
    /// Platforms to copy from an index; `None` copies all.
    pub platforms: Option<Vec<Platform>>,
    /// Where it was configured, e.g. `sync.yaml:14:5 (images[3])`.
    pub location: String,
    /// Per-entry behaviour beyond what to copy.
    pub options: ItemOptions,
}

pub use images::expand_backup_tag;

/// Per-entry behaviour (`immutable:`, `referrers:`, `backup_tag:`, `platforms_mode:`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemOptions {
    /// Matches an `immutable:` pattern: once at the target, never checked upstream again.
    pub immutable: bool,
    /// Also copy cosign signature/attestation/SBOM tags and the OCI referrers fallback tag.
    pub referrers: bool,
    /// Before a tag moves at the target, keep the old digest under this tag (`{tag}`,
    /// `{date}` replaced).
    pub backup_tag: Option<String>,
    /// With `platforms:`, keep the upstream index as is and copy only the chosen children.
    pub sparse: bool,
    /// `platforms_mode: single`: the one chosen platform's own manifest goes under the tag
    /// (no index), for targets that refuse manifests pushed by digest.
    pub single: bool,
    /// Remove tags this entry no longer selects from the target repository (only tags
    /// mirrorsync itself created).
    pub prune: bool,
}

/// An `images:` entry whose tags are chosen from the repository's tag list at run time.
#[derive(Debug, Clone)]
pub struct TagSelection {
    /// The repository (its tag is meaningless).
    pub source: Reference,
    pub target_repository: String,
    pub filters: Vec<crate::tags::TagFilter>,
    pub platforms: Option<Vec<Platform>>,
    /// `immutable:` glob patterns.
    pub immutable: Vec<String>,
    /// Options for every chosen tag (`immutable` is set per tag from the patterns).
    pub options: ItemOptions,
    pub location: String,
}

impl Config {
    /// Reads, parses and validates a config file. No network access.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_str(&text, path)
    }

    /// Parses and validates config text; `path_for_messages` names it in errors and anchors
    /// relative paths (`ca_file`, `password_file`, `target.path`) at its directory.
    pub fn from_str(text: &str, path_for_messages: &Path) -> Result<Config, ConfigError> {
        validate::from_str(text, path_for_messages, &|name| std::env::var(name).ok())
    }

    /// Reads every `auth.password_file` again (a mounted Kubernetes Secret that was updated, a
    /// token a sidecar refreshed). A file that cannot be read now keeps the password read
    /// before; the returned lines say which and why.
    pub fn reread_password_files(&mut self) -> Vec<String> {
        let targets = std::iter::once(&mut self.target)
            .chain(self.targets.iter_mut().map(|p| &mut p.target))
            .filter_map(|t| match &mut t.kind {
                TargetKind::Registry(endpoint) => Some(endpoint),
                TargetKind::Path(_) => None,
            });
        let endpoints = targets.chain(self.registries.values_mut().map(|r| &mut r.endpoint));
        let mut problems = Vec::new();
        for endpoint in endpoints {
            let (Some(path), Some(credentials)) =
                (&endpoint.password_file, &mut endpoint.credentials)
            else {
                continue;
            };
            match read_password_file(path) {
                Ok(secret) => credentials.password = secret,
                Err(e) => problems.push(format!(
                    "{}: keeping the password read before: {e}",
                    endpoint.host
                )),
            }
        }
        // The first target is listed twice (`target` and `targets[0]`).
        problems.dedup();
        problems
    }

    /// One single-target config per target, each with its own images (a config with one
    /// target gives itself).
    pub fn per_target(&self) -> Vec<Config> {
        if self.targets.len() <= 1 {
            return vec![self.clone()];
        }
        self.targets
            .iter()
            .map(|plan| Config {
                target: plan.target.clone(),
                images: plan.images.clone(),
                selections: plan.selections.clone(),
                targets: vec![plan.clone()],
                ..self.without_targets()
            })
            .collect()
    }

    /// Whether the targets carry names (`targets:`), so series get a `target_name` label.
    pub fn named_targets(&self) -> bool {
        self.targets.iter().any(|t| t.target.name.is_some())
    }

    /// This config without its image lists, to build per-target views from.
    fn without_targets(&self) -> Config {
        Config {
            path: self.path.clone(),
            schedule: self.schedule.clone(),
            timezone: self.timezone.clone(),
            concurrency: self.concurrency,
            target: self.target.clone(),
            registries: self.registries.clone(),
            docker_config: self.docker_config.clone(),
            images: Vec::new(),
            selections: Vec::new(),
            tag_series: self.tag_series,
            targets: Vec::new(),
            spool_dir: self.spool_dir.clone(),
            spool_size: self.spool_size,
        }
    }

    /// Settings for an upstream host (normalised, so `index.docker.io` finds `docker.io`);
    /// defaults when `registries:` does not configure it.
    pub fn registry(&self, host: &str) -> RegistrySettings {
        let host = normalize_registry(host);
        match self.registries.get(&host) {
            Some(settings) => settings.clone(),
            None => RegistrySettings::default_for(&host),
        }
    }
}
