//! The second step of reading `sync.yaml`: raw structs -> a checked [`Config`]
//! (the `images:` part lives in `images.rs`).
//!
//! Everything a later stage would otherwise have to re-check happens here: references are
//! parsed, each image entry is expanded into one [`SyncItem`] per tag with its target
//! repository, clashes between targets are found, secrets and files are read. Errors carry
//! the line and column of the offending value and its key path.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::error::ErrorSite;
use super::raw::{RawAuth, RawConfig, RawImage, RawRegistry};
use super::values::{check_ca_pem, check_mirror_url, parse_byte_size, resolve_path, trim_prefix};
use super::{
    Config, ConfigError, Credentials, DEFAULT_CONCURRENCY, DEFAULT_REGISTRY_CONCURRENCY, Endpoint,
    RegistrySettings, Secret, TagSeries, TargetSettings, api_host, read_password_file,
};
use crate::reference::{normalize_registry, validate_registry, validate_repository};

mod airgap;
mod targets;

/// Reads an environment variable; injectable so tests need not mutate the process env.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Parses and validates config text.
pub(crate) fn from_str(text: &str, path: &Path, env: Env<'_>) -> Result<Config, ConfigError> {
    let site = ErrorSite::new(path);
    let raw = parse(text, &site)?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Validator {
        site,
        base_dir,
        env,
    }
    .config(raw, path)
}

/// YAML -> [`RawConfig`], tracking the key path of whatever fails.
fn parse(text: &str, site: &ErrorSite) -> Result<RawConfig, ConfigError> {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let mut failed_at = None;
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        let mut track = serde_path_to_error::Track::new();
        let result = RawConfig::deserialize(serde_path_to_error::Deserializer::new(de, &mut track));
        if result.is_err() {
            failed_at = Some(track.path());
        }
        result
    })
    .map_err(|e| site.yaml_error(&e, failed_at.as_ref()))
}

pub(super) struct Validator<'a> {
    pub(super) site: ErrorSite,
    /// Relative paths in the file are relative to the file's directory.
    base_dir: PathBuf,
    env: Env<'a>,
}

impl Validator<'_> {
    fn config(&self, raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
        let timezone = self.timezone(raw.timezone.as_ref())?;
        let schedule = match raw.schedule {
            Some(s) => Some(
                crate::schedule::Schedule::parse(&s.value, &timezone)
                    .map_err(|m| self.site.spanned(&s, "schedule", m))?,
            ),
            None => None,
        };
        let concurrency = match raw.concurrency {
            Some(c) => self.in_range(&c, "concurrency", 1, 256)?,
            None => DEFAULT_CONCURRENCY,
        };
        let targets = self.targets(raw.target.as_ref(), raw.targets.as_ref())?;
        let docker_config = self.docker_config(raw.docker_config.as_ref())?;
        let registries = self.registries(raw.registries.unwrap_or_default().0)?;
        let plans = self.plans(raw.images, targets, &registries)?;
        let first = plans[0].clone();
        let (target, images, selections) = (first.target, first.images, first.selections);
        let tag_series = self.tag_series(raw.tag_series.as_ref())?;
        Ok(Config {
            path: path.to_path_buf(),
            schedule,
            timezone,
            concurrency,
            target,
            registries,
            docker_config,
            images,
            selections,
            tag_series,
            targets: plans,
            spool_dir: match &raw.spool_dir {
                Some(d) => self.path(d, "spool_dir")?,
                None => std::env::temp_dir(),
            },
            spool_size: self.spool_size(raw.spool_size.as_ref())?,
        })
    }

    /// `timezone:`, an IANA name; UTC when left out.
    fn timezone(&self, raw: Option<&Spanned<String>>) -> Result<String, ConfigError> {
        match raw {
            Some(tz) if tz.value.trim().is_empty() => {
                Err(self.site.spanned(tz, "timezone", "must not be empty"))
            }
            Some(tz) => {
                let name = tz.value.trim();
                if name.parse::<chrono_tz::Tz>().is_err() {
                    return Err(self.site.spanned(
                        tz,
                        "timezone",
                        format!("unknown time zone \"{name}\" (use an IANA name such as UTC or Europe/Berlin)"),
                    ));
                }
                Ok(name.to_string())
            }
            None => Ok("UTC".to_string()),
        }
    }

    /// `images:` expanded for each target: one plan per target, in the order of `targets:`.
    fn plans(
        &self,
        images: Option<Spanned<Vec<Spanned<RawImage>>>>,
        targets: Vec<TargetSettings>,
        registries: &BTreeMap<String, RegistrySettings>,
    ) -> Result<Vec<super::TargetPlan>, ConfigError> {
        let Some(images) = images else {
            return Err(self.missing("images"));
        };
        if images.value.is_empty() {
            return Err(self.site.spanned(
                &images,
                "images",
                "lists no image; add at least one reference such as busybox:1.36",
            ));
        }
        self.check_image_targets(&images.value, &targets)?;
        let mut plans = Vec::new();
        for target in targets {
            let (images, selections) = self.images(&images.value, &target, registries)?;
            plans.push(super::TargetPlan {
                target,
                images,
                selections,
            });
        }
        let all_items: Vec<_> = plans
            .iter()
            .flat_map(|p| p.images.iter().cloned())
            .collect();
        let all_selections: Vec<_> = plans
            .iter()
            .flat_map(|p| p.selections.iter().cloned())
            .collect();
        warn_unused_registries(registries, &all_items, &all_selections);
        Ok(plans)
    }

    /// `tag_series:`, `all` when left out.
    fn tag_series(&self, raw: Option<&Spanned<String>>) -> Result<TagSeries, ConfigError> {
        let Some(m) = raw else {
            return Ok(TagSeries::All);
        };
        match m.value.trim() {
            "all" => Ok(TagSeries::All),
            "out_of_sync" => Ok(TagSeries::OutOfSync),
            other => Err(self.site.spanned(
                m,
                "tag_series",
                format!("\"{other}\" is not a series mode (use all or out_of_sync)"),
            )),
        }
    }

    /// `spool_size:`, a byte size above 0.
    fn spool_size(&self, raw: Option<&Spanned<String>>) -> Result<u64, ConfigError> {
        let Some(v) = raw else {
            return Ok(super::DEFAULT_SPOOL_SIZE);
        };
        let n = parse_byte_size(&v.value).map_err(|e| self.site.spanned(v, "spool_size", e))?;
        if n == 0 {
            return Err(self.site.spanned(v, "spool_size", "must be above 0"));
        }
        Ok(n)
    }

    fn missing(&self, key: &str) -> ConfigError {
        self.site
            .at(Location::UNKNOWN, key, "required key is missing")
    }

    fn in_range(
        &self,
        v: &Spanned<u64>,
        key: &str,
        min: u64,
        max: u64,
    ) -> Result<usize, ConfigError> {
        if (min..=max).contains(&v.value) {
            usize::try_from(v.value).map_err(|_| self.site.spanned(v, key, "too large"))
        } else {
            Err(self.site.spanned(
                v,
                key,
                format!("must be between {min} and {max}, not {}", v.value),
            ))
        }
    }

    fn path(&self, s: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let home = (self.env)("HOME");
        resolve_path(s.value.trim(), &self.base_dir, home.as_deref())
            .map_err(|m| self.site.spanned(s, key, m))
    }

    /// A file that must be readable now (CA certificates, docker config).
    fn readable_file(&self, s: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let path = self.path(s, key)?;
        std::fs::File::open(&path)
            .and_then(|f| f.metadata())
            .and_then(|m| {
                if m.is_file() {
                    Ok(())
                } else {
                    Err(std::io::Error::other("not a regular file"))
                }
            })
            .map_err(|e| {
                self.site
                    .spanned(s, key, format!("cannot read {}: {e}", path.display()))
            })?;
        Ok(path)
    }

    /// A CA bundle: readable, and holding at least one PEM certificate.
    fn ca_file(&self, s: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let path = self.readable_file(s, key)?;
        let pem = std::fs::read(&path).map_err(|e| {
            self.site
                .spanned(s, key, format!("cannot read {}: {e}", path.display()))
        })?;
        check_ca_pem(&pem)
            .map_err(|e| self.site.spanned(s, key, format!("{} {e}", path.display())))?;
        Ok(path)
    }

    fn prefix(&self, s: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        let prefix = trim_prefix(s.value.trim());
        if !prefix.is_empty() {
            validate_repository(prefix).map_err(|e| self.site.spanned(s, key, e.to_string()))?;
        }
        Ok(prefix.to_string())
    }

    fn endpoint(
        &self,
        host: String,
        insecure: Option<bool>,
        ca_file: Option<&Spanned<String>>,
        auth: Option<&Spanned<RawAuth>>,
        key: &str,
    ) -> Result<Endpoint, ConfigError> {
        Ok(Endpoint {
            host,
            insecure: insecure.unwrap_or(false),
            ca_file: ca_file
                .map(|c| self.ca_file(c, &format!("{key}.ca_file")))
                .transpose()?,
            credentials: auth
                .map(|a| self.credentials(a, &format!("{key}.auth")))
                .transpose()?,
            password_file: auth
                .and_then(|a| a.value.password_file.as_ref())
                .map(|f| self.path(f, &format!("{key}.auth.password_file")))
                .transpose()?,
        })
    }

    /// Resolves `auth: {username, password_env | password_file}` now, so a missing secret is
    /// a config error and not a failure halfway through a sync.
    fn credentials(&self, raw: &Spanned<RawAuth>, key: &str) -> Result<Credentials, ConfigError> {
        let a = &raw.value;
        let username = a.username.value.trim();
        if username.is_empty() {
            return Err(self.site.spanned(
                &a.username,
                format!("{key}.username"),
                "must not be empty",
            ));
        }
        let password = match (&a.password_env, &a.password_file) {
            (Some(var), None) => {
                let name = var.value.trim();
                let k = format!("{key}.password_env");
                match (self.env)(name) {
                    Some(v) if !v.is_empty() => v,
                    Some(_) => {
                        return Err(self.site.spanned(
                            var,
                            k,
                            format!("environment variable {name} is empty"),
                        ));
                    }
                    None => {
                        return Err(self.site.spanned(
                            var,
                            k,
                            format!("environment variable {name} is not set"),
                        ));
                    }
                }
            }
            (None, Some(file)) => {
                let k = format!("{key}.password_file");
                let path = self.path(file, &k)?;
                read_password_file(&path)
                    .map_err(|m| self.site.spanned(file, k, m))?
                    .expose()
                    .to_string()
            }
            _ => {
                return Err(self.site.spanned(
                    raw,
                    key,
                    "set exactly one of password_env or password_file",
                ));
            }
        };
        Ok(Credentials {
            username: username.to_string(),
            password: Secret::new(password),
        })
    }

    fn docker_config(&self, raw: Option<&Spanned<String>>) -> Result<Option<PathBuf>, ConfigError> {
        if let Some(s) = raw {
            return self.readable_file(s, "docker_config").map(Some);
        }
        let candidate = match ((self.env)("DOCKER_CONFIG"), (self.env)("HOME")) {
            (Some(dir), _) if !dir.is_empty() => PathBuf::from(dir).join("config.json"),
            (_, Some(home)) if !home.is_empty() => PathBuf::from(home).join(".docker/config.json"),
            _ => return Ok(None),
        };
        Ok(candidate.is_file().then_some(candidate))
    }

    fn registries(
        &self,
        raw: Vec<(String, Spanned<RawRegistry>)>,
    ) -> Result<BTreeMap<String, RegistrySettings>, ConfigError> {
        let mut out = BTreeMap::new();
        let mut seen: HashMap<String, (String, Location)> = HashMap::new();
        for (name, settings) in raw {
            let key = format!("registries.{name}");
            let host = normalize_registry(name.trim());
            if host.contains("://") || host.contains('/') {
                return Err(self.site.spanned(
                    &settings,
                    key,
                    format!("\"{name}\" must be a registry host[:port], without scheme or path"),
                ));
            }
            validate_registry(&host)
                .map_err(|e| self.site.spanned(&settings, &key, e.to_string()))?;
            if let Some((first, at)) = seen.get(&host) {
                return Err(self.site.spanned(
                    &settings,
                    key,
                    format!(
                        "{host} is already configured as registries.{first} ({})",
                        self.site.describe(*at, &format!("registries.{first}"))
                    ),
                ));
            }
            seen.insert(host.clone(), (name.clone(), settings.referenced));
            let layout = self.layout_source(&settings, &key)?;
            let mut value = self.registry(&host, &settings.value, &key)?;
            value.layout = layout;
            if value.layout.is_some() {
                // A local directory: no Docker Hub politeness unless configured.
                let r = &settings.value;
                value.requests_per_second = value
                    .requests_per_second
                    .filter(|_| r.requests_per_second.is_some());
                value.burst = value.burst.filter(|_| r.burst.is_some());
                if r.concurrency.is_none() {
                    value.concurrency = DEFAULT_REGISTRY_CONCURRENCY;
                }
            }
            out.insert(host, value);
        }
        Ok(out)
    }

    fn registry(
        &self,
        host: &str,
        r: &RawRegistry,
        key: &str,
    ) -> Result<RegistrySettings, ConfigError> {
        let mut mirrors = Vec::new();
        for (i, m) in r.mirrors.iter().flatten().enumerate() {
            let url = check_mirror_url(m.value.trim())
                .map_err(|e| self.site.spanned(m, format!("{key}.mirrors[{i}]"), e))?;
            mirrors.push(url);
        }
        let docker_hub = host == crate::reference::DOCKER_HUB;
        let (requests_per_second, burst, bytes_per_second) =
            self.rate_knobs(&r.requests_per_second, &r.burst, &r.bytes_per_second, key)?;
        let requests_per_second =
            requests_per_second.or(docker_hub.then_some(super::DOCKER_HUB_REQUESTS_PER_SECOND));
        let burst = burst.or(docker_hub.then_some(super::DOCKER_HUB_BURST));
        Ok(RegistrySettings {
            endpoint: self.endpoint(
                api_host(host),
                r.insecure,
                r.ca_file.as_ref(),
                r.auth.as_ref(),
                key,
            )?,
            mirrors,
            prefix: r
                .prefix
                .as_ref()
                .map(|p| self.prefix(p, &format!("{key}.prefix")))
                .transpose()?,
            requests_per_second,
            burst,
            bytes_per_second,
            concurrency: match &r.concurrency {
                Some(c) => self.in_range(c, &format!("{key}.concurrency"), 1, 64)?,
                None if docker_hub => super::DOCKER_HUB_CONCURRENCY,
                None => DEFAULT_REGISTRY_CONCURRENCY,
            },
            rate_limit_reserve: r.rate_limit_reserve,
            layout: None,
        })
    }

    /// `requests_per_second`, `burst` and `bytes_per_second`, checked.
    #[allow(clippy::type_complexity)]
    fn rate_knobs(
        &self,
        rps: &Option<Spanned<f64>>,
        burst: &Option<Spanned<u32>>,
        bps: &Option<Spanned<String>>,
        key: &str,
    ) -> Result<(Option<f64>, Option<u32>, Option<u64>), ConfigError> {
        let requests_per_second = match rps {
            Some(v) if !(v.value.is_finite() && v.value > 0.0) => {
                return Err(self.site.spanned(
                    v,
                    format!("{key}.requests_per_second"),
                    "must be a number above 0",
                ));
            }
            v => v.as_ref().map(|v| v.value),
        };
        let burst = match burst {
            Some(v) if v.value == 0 => {
                return Err(self
                    .site
                    .spanned(v, format!("{key}.burst"), "must be at least 1"));
            }
            v => v.as_ref().map(|v| v.value),
        };
        let bytes_per_second = match bps {
            Some(v) => {
                let k = format!("{key}.bytes_per_second");
                let n = parse_byte_size(&v.value).map_err(|e| self.site.spanned(v, &k, e))?;
                if n == 0 {
                    return Err(self.site.spanned(v, k, "must be above 0"));
                }
                Some(n)
            }
            None => None,
        };
        Ok((requests_per_second, burst, bytes_per_second))
    }
}

/// A `registries:` entry no image uses is most often a typo (`localhost:5000` for
/// `127.0.0.1:5000`): its settings (`insecure`, `auth`, `ca_file`) silently do not apply.
fn warn_unused_registries(
    registries: &BTreeMap<String, RegistrySettings>,
    images: &[super::SyncItem],
    selections: &[super::TagSelection],
) {
    let used: std::collections::BTreeSet<String> = images
        .iter()
        .map(|i| normalize_registry(i.source.registry()))
        .chain(
            selections
                .iter()
                .map(|s| normalize_registry(s.source.registry())),
        )
        .collect();
    for host in registries.keys().filter(|h| !used.contains(*h)) {
        let names: Vec<&str> = used.iter().map(String::as_str).collect();
        tracing::warn!(
            "registries.\"{host}\" is not used by any image (images come from {}); its settings do not apply. A typo such as localhost:5000 for 127.0.0.1:5000?",
            names.join(", ")
        );
    }
}
