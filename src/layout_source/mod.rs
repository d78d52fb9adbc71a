//! An upstream host served from an OCI image layout directory (`registries.<host>.path`), so the
//! far side of an air gap runs the same `sync.yaml` against a carried directory.
//!
//! At the first use of the host in a run, the layout is opened: the `index.json` of each
//! repository the config reads from it is loaded, and every blob its manifests reference must
//! be on disk (a delta loaded without the export it was made against fails here, with the list
//! of missing digests, before anything is pushed). The layout is then served read-only on a
//! loopback port ([`server`]) speaking the part of the registry API the engine uses, and the
//! host's registry client is pointed at it: tag selection, HEADs, metrics, lag, `plan` and the
//! daemon work as for any upstream. The port asks for a password made for the run (Basic
//! auth), so other local users cannot read the layout through it. Every file is checked against its digest before it is
//! served; a truncated or altered file is answered with an error that names it, so only the
//! tags that need it fail, and nothing of it reaches the target.
//!
//! Repositories are found where the layout target writes them: `<dir>/<target repository>`
//! as the config maps the source (same prefix and `target:` on both sides), else
//! `<dir>/<source repository>`. A tag is an `index.json` entry whose
//! `org.opencontainers.image.ref.name` annotation is the tag.

mod server;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, Endpoint};
use crate::manifest::{self, MAX_MANIFEST_BYTES, Parsed};
use crate::reference::Digest;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Missing digests named in a tag's error line; the full list is logged.
const MISSING_NAMED: usize = 12;

/// One tag of a layout repository.
#[derive(Debug, Clone)]
struct Tagged {
    digest: Digest,
    media_type: Option<String>,
}

/// A repository of the layout as served: the directories it is read from, and their tags.
#[derive(Debug, Default)]
struct Repository {
    dirs: Vec<PathBuf>,
    /// Tag -> manifest, the first directory's entry winning.
    tags: BTreeMap<String, Tagged>,
}

/// An opened layout: what it serves, by source repository.
#[derive(Debug)]
pub struct Catalogue {
    root: PathBuf,
    repositories: HashMap<String, Repository>,
}

impl Catalogue {
    /// Opens `root` for the `(source, target)` repositories wanted from it (see [`wanted`]),
    /// and checks that every blob their manifests reference is present.
    fn open(root: &Path, wanted: Vec<(String, String)>) -> Result<Catalogue, String> {
        let mut repositories: HashMap<String, Repository> = HashMap::new();
        for (source, target) in wanted {
            let repo = repositories.entry(source.clone()).or_default();
            for name in [target, source] {
                let dir = root.join(&name);
                if !repo.dirs.contains(&dir) && dir.join("index.json").is_file() {
                    repo.dirs.push(dir);
                }
            }
        }
        let mut missing = Vec::new();
        for repo in repositories.values_mut() {
            for dir in repo.dirs.clone() {
                for (tag, tagged) in read_index(&dir)? {
                    repo.tags.entry(tag).or_insert(tagged);
                }
                missing.extend(missing_blobs(&dir)?);
            }
        }
        if !missing.is_empty() {
            return Err(missing_error(root, missing));
        }
        Ok(Catalogue {
            root: root.to_path_buf(),
            repositories,
        })
    }

    fn repository(&self, name: &str) -> Option<&Repository> {
        self.repositories.get(name)
    }
}

impl Repository {
    /// A blob's file, from the first directory that has it.
    fn blob(&self, digest: &Digest) -> Option<PathBuf> {
        self.dirs
            .iter()
            .map(|d| blob_path(d, digest))
            .find(|p| p.is_file())
    }
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm())
        .join(digest.encoded())
}

/// (source repository, target repository) of every configured image and tag selection of
/// `registry`.
fn wanted(config: &Config, registry: &str) -> Vec<(String, String)> {
    let items = config
        .images
        .iter()
        .map(|i| (&i.source, &i.target_repository));
    let selections = config
        .selections
        .iter()
        .map(|s| (&s.source, &s.target_repository));
    items
        .chain(selections)
        .filter(|(source, _)| source.registry() == registry)
        .map(|(source, target)| (source.repository().to_string(), target.clone()))
        .collect()
}

/// The tags of one layout directory's `index.json`.
fn read_index(dir: &Path) -> Result<Vec<(String, Tagged)>, String> {
    let path = dir.join("index.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let index: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a valid index.json: {e}", path.display()))?;
    let entries = index["manifests"]
        .as_array()
        .ok_or_else(|| format!("{}: has no manifests array", path.display()))?;
    let mut tags = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let Some(tag) = entry["annotations"][REF_NAME].as_str() else {
            continue;
        };
        let digest = entry["digest"]
            .as_str()
            .and_then(|d| Digest::parse(d).ok())
            .filter(Digest::is_sha256)
            .ok_or_else(|| {
                format!(
                    "{}: manifests[{i}] has no valid sha256 digest",
                    path.display()
                )
            })?;
        if crate::reference::validate_tag(tag).is_err() {
            tracing::warn!(index = %path.display(), tag = %tag.escape_debug(), "layout tag is not a valid tag; skipped");
            continue;
        }
        let media_type = entry["mediaType"].as_str().map(str::to_string);
        tags.push((tag.to_string(), Tagged { digest, media_type }));
    }
    Ok(tags)
}

/// The blobs the manifests of `dir`'s `index.json` reference that are not in `dir`: each tag's
/// manifest, and the config and layers of every image manifest reached. A missing child of
/// an index is not counted (`platforms_mode: sparse` copies only some); loading that child
/// fails its tag.
fn missing_blobs(dir: &Path) -> Result<Vec<(PathBuf, Digest)>, String> {
    let mut missing = Vec::new();
    let mut seen = HashSet::new();
    let mut todo: Vec<(Digest, bool)> = read_index(dir)?
        .into_iter()
        .map(|(_, t)| (t.digest, true))
        .collect();
    while let Some((digest, required)) = todo.pop() {
        if !seen.insert(digest.clone()) {
            continue;
        }
        let path = blob_path(dir, &digest);
        let Ok(meta) = std::fs::metadata(&path) else {
            if required {
                missing.push((dir.to_path_buf(), digest));
            }
            continue;
        };
        if meta.len() > MAX_MANIFEST_BYTES as u64 {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        // Unknown or broken documents are served as they are; the copy reports them.
        let Ok(media_type) = manifest::resolve_media_type(None, &bytes) else {
            continue;
        };
        match manifest::parse(&media_type, &bytes) {
            Ok(Parsed::Index { manifests }) => {
                todo.extend(manifests.into_iter().map(|d| (d.digest, false)));
            }
            Ok(Parsed::Image { blobs }) => {
                for blob in blobs.into_iter().filter(|b| !b.foreign) {
                    if !seen.contains(&blob.digest) && !blob_path(dir, &blob.digest).is_file() {
                        missing.push((dir.to_path_buf(), blob.digest.clone()));
                    }
                    seen.insert(blob.digest);
                }
            }
            Err(_) => {}
        }
    }
    Ok(missing)
}

fn missing_error(root: &Path, missing: Vec<(PathBuf, Digest)>) -> String {
    let describe = |(dir, digest): &(PathBuf, Digest)| {
        let repo = dir.strip_prefix(root).unwrap_or(dir);
        format!("{}@{digest}", repo.display())
    };
    let all: Vec<String> = missing.iter().map(describe).collect();
    tracing::error!(layout = %root.display(), missing = %all.join(" "), "layout lacks blobs its manifests reference");
    let mut named = all.iter().take(MISSING_NAMED).cloned().collect::<Vec<_>>();
    if all.len() > MISSING_NAMED {
        named.push(format!(
            "and {} more (all logged)",
            all.len() - MISSING_NAMED
        ));
    }
    format!(
        "layout {} lacks {} blob(s) its manifests reference, so nothing is loaded from it (a delta needs the export it was made against merged into it first): {}",
        root.display(),
        all.len(),
        named.join(", ")
    )
}

/// The layouts served during one run, by upstream host: opened and checked on first use,
/// stopped when dropped.
#[derive(Default)]
pub struct Sources {
    served: tokio::sync::Mutex<HashMap<String, Result<Served, String>>>,
}

/// A layout being served on a loopback port.
struct Served {
    endpoint: Endpoint,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sources {
    /// The settings of upstream `registry`: as configured, with the endpoint of its layout
    /// server when it is served from a layout (`registries.<host>.path`).
    pub async fn settings(
        &self,
        registry: &str,
        config: &Config,
    ) -> Result<crate::config::RegistrySettings, String> {
        let mut settings = config.registry(registry);
        if let Some(dir) = &settings.layout {
            settings.endpoint = self.endpoint(registry, dir, config).await?;
        }
        Ok(settings)
    }

    /// The endpoint serving `registry`'s layout `root`: opened, checked and started on the
    /// first call of the run; an error (the layout is incomplete or unreadable) is the same
    /// for every later call.
    async fn endpoint(
        &self,
        registry: &str,
        root: &Path,
        config: &Config,
    ) -> Result<Endpoint, String> {
        let mut served = self.served.lock().await;
        if let Some(existing) = served.get(registry) {
            return existing
                .as_ref()
                .map(|s| s.endpoint.clone())
                .map_err(Clone::clone);
        }
        let started = start(registry, root, config).await;
        if let Err(e) = &started {
            tracing::error!(registry = %registry, layout = %root.display(), error = %e, "cannot load from the layout");
        }
        let endpoint = started
            .as_ref()
            .map(|s| s.endpoint.clone())
            .map_err(Clone::clone);
        served.insert(registry.to_string(), started);
        endpoint
    }
}

async fn start(registry: &str, root: &Path, config: &Config) -> Result<Served, String> {
    let (root, wanted) = (root.to_path_buf(), wanted(config, registry));
    let catalogue = tokio::task::spawn_blocking(move || Catalogue::open(&root, wanted))
        .await
        .map_err(|e| format!("opening the layout: {e}"))??;
    let layout = catalogue.root.display().to_string();
    let password = run_password()?;
    let credentials = crate::config::Credentials {
        username: "mirrorsync".into(),
        password: crate::config::Secret::new(password),
    };
    let (addr, task) = server::serve(Arc::new(catalogue), &credentials)
        .await
        .map_err(|e| format!("serving layout {layout} on a loopback port: {e}"))?;
    tracing::info!(registry = %registry, layout = %layout, %addr, "serving the layout to this run");
    Ok(Served {
        endpoint: Endpoint {
            host: addr.to_string(),
            insecure: true,
            ca_file: None,
            credentials: Some(credentials),
            password_file: None,
        },
        task,
    })
}

/// 32 random bytes, hex: the password of one run's layout server.
fn run_password() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| "no random source for the layout server's password".to_string())?;
    Ok(hex::encode(bytes))
}
