//! `target:` or `targets:` (named targets), and the `targets:` of an `images:` entry.

use std::collections::HashMap;

use serde_saphyr::{Location, Spanned};

use super::Validator;
use crate::config::raw::{RawImage, RawTarget};
use crate::config::values::parse_byte_size;
use crate::config::{
    ConfigError, DEFAULT_CHUNK_SIZE, DEFAULT_TARGET_CONCURRENCY, LimitSettings, MIN_CHUNK_SIZE,
    TargetKind, TargetSettings,
};
use crate::reference::validate_registry;

/// The largest `target.chunk_size`: one request body, held by proxies and load balancers.
const MAX_CHUNK_SIZE: u64 = 1024 * 1024 * 1024;

impl Validator<'_> {
    /// `target:` (one target, name optional) or `targets:` (a list, each named, names unique).
    pub(super) fn targets(
        &self,
        single: Option<&Spanned<RawTarget>>,
        list: Option<&Spanned<Vec<Spanned<RawTarget>>>>,
    ) -> Result<Vec<TargetSettings>, ConfigError> {
        let list = match (single, list) {
            (Some(_), Some(list)) => {
                return Err(self.site.spanned(
                    list,
                    "targets",
                    "set either target (one target) or targets (a list), not both",
                ));
            }
            (None, None) => return Err(self.missing("target")),
            (Some(one), None) => return Ok(vec![self.target(one, "target")?]),
            (None, Some(list)) => list,
        };
        if list.value.is_empty() {
            return Err(self.site.spanned(
                list,
                "targets",
                "lists no target; add at least one with a name and a registry or path",
            ));
        }
        let mut seen: HashMap<String, Location> = HashMap::new();
        let mut out = Vec::new();
        for (i, raw) in list.value.iter().enumerate() {
            let key = format!("targets[{i}]");
            let target = self.target(raw, &key)?;
            let Some(name) = target.name.clone() else {
                return Err(self.site.spanned(
                    raw,
                    format!("{key}.name"),
                    "every element of targets needs a name (it labels logs and metrics)",
                ));
            };
            if let Some(at) = seen.get(&name) {
                return Err(self.site.spanned(
                    raw,
                    format!("{key}.name"),
                    format!(
                        "\"{name}\" is already the name of another target ({})",
                        self.site.describe(*at, "targets")
                    ),
                ));
            }
            seen.insert(name, raw.referenced);
            out.push(target);
        }
        Ok(out)
    }

    /// Every name in an entry's `targets:` is a configured target's.
    pub(super) fn check_image_targets(
        &self,
        entries: &[Spanned<RawImage>],
        targets: &[TargetSettings],
    ) -> Result<(), ConfigError> {
        let names: Vec<&str> = targets.iter().filter_map(|t| t.name.as_deref()).collect();
        for (i, entry) in entries.iter().enumerate() {
            let RawImage::Full(spec) = &entry.value else {
                continue;
            };
            let Some(list) = &spec.targets else {
                continue;
            };
            let key = format!("images[{i}].targets");
            if names.is_empty() {
                return Err(self.site.spanned(
                    list,
                    key,
                    "names targets, but the config has a single `target:`; list them under `targets:` with names",
                ));
            }
            if list.value.is_empty() {
                return Err(self.site.spanned(
                    list,
                    key,
                    "lists no target; leave it out to send the entry to every target",
                ));
            }
            for (j, t) in list.value.iter().enumerate() {
                let name = t.value.trim();
                if !names.contains(&name) {
                    return Err(self.site.spanned(
                        t,
                        format!("{key}[{j}]"),
                        format!(
                            "\"{name}\" is not a target name (targets: {})",
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// One target: where it writes (a registry or a layout directory) and its settings.
    pub(super) fn target(
        &self,
        raw: &Spanned<RawTarget>,
        key: &str,
    ) -> Result<TargetSettings, ConfigError> {
        let t = &raw.value;
        let name = match &t.name {
            Some(n) => Some(self.target_name(n, &format!("{key}.name"))?),
            None => None,
        };
        let kind = self.target_kind(raw, key)?;
        let layout = match &kind {
            TargetKind::Path(dir) => self.layout_options(t, dir)?,
            TargetKind::Registry(_) => Default::default(),
        };
        let prefix = match &t.prefix {
            Some(p) => self.prefix(p, &format!("{key}.prefix"))?,
            None => String::new(),
        };
        let (requests_per_second, burst, bytes_per_second) =
            self.rate_knobs(&t.requests_per_second, &t.burst, &t.bytes_per_second, key)?;
        Ok(TargetSettings {
            name,
            kind,
            prefix,
            limits: LimitSettings {
                requests_per_second,
                burst,
                bytes_per_second,
            },
            concurrency: match &t.concurrency {
                Some(c) => self.in_range(c, &format!("{key}.concurrency"), 1, 64)?,
                None => DEFAULT_TARGET_CONCURRENCY,
            },
            chunk_size: self.chunk_size(t.chunk_size.as_ref(), key)?,
            layout,
        })
    }

    /// A target's `registry:` (with its endpoint settings) or `path:`, exactly one of them.
    fn target_kind(&self, raw: &Spanned<RawTarget>, key: &str) -> Result<TargetKind, ConfigError> {
        let t = &raw.value;
        match (&t.registry, &t.path) {
            (Some(_), Some(_)) => {
                Err(self
                    .site
                    .spanned(raw, key, "set exactly one of registry or path, not both"))
            }
            (None, None) => Err(self.site.spanned(
                raw,
                key,
                "set exactly one of registry (a registry host) or path (an OCI layout directory)",
            )),
            (Some(host), None) => {
                self.registry_target_layout_keys(t)?;
                let h = host.value.trim();
                if h.contains("://") {
                    return Err(self.site.spanned(
                        host,
                        format!("{key}.registry"),
                        format!("\"{h}\" must be host[:port] without a scheme; use insecure: true for plain HTTP"),
                    ));
                }
                validate_registry(h).map_err(|e| {
                    self.site
                        .spanned(host, format!("{key}.registry"), e.to_string())
                })?;
                Ok(TargetKind::Registry(self.endpoint(
                    h.to_string(),
                    t.insecure,
                    t.ca_file.as_ref(),
                    t.auth.as_ref(),
                    key,
                )?))
            }
            (None, Some(path)) => {
                let registry_only = [
                    ("insecure", t.insecure.is_some()),
                    ("ca_file", t.ca_file.is_some()),
                    ("auth", t.auth.is_some()),
                    ("chunk_size", t.chunk_size.is_some()),
                ];
                if let Some((knob, _)) = registry_only.iter().find(|(_, set)| *set) {
                    return Err(self.site.spanned(
                        raw,
                        format!("{key}.{knob}"),
                        "applies only to a registry target, not to a path (OCI layout) target",
                    ));
                }
                Ok(TargetKind::Path(self.path(path, &format!("{key}.path"))?))
            }
        }
    }

    /// A target's `chunk_size:`, within [`MIN_CHUNK_SIZE`, `MAX_CHUNK_SIZE`].
    fn chunk_size(&self, raw: Option<&Spanned<String>>, key: &str) -> Result<u64, ConfigError> {
        let Some(v) = raw else {
            return Ok(DEFAULT_CHUNK_SIZE);
        };
        let key = format!("{key}.chunk_size");
        let n = parse_byte_size(&v.value).map_err(|e| self.site.spanned(v, &key, e))?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&n) {
            return Err(self.site.spanned(
                v,
                key,
                "must be between 5MiB (the smallest part ECR accepts) and 1GiB",
            ));
        }
        Ok(n)
    }

    /// A target's `name`: a label value and a word in log lines.
    pub(super) fn target_name(
        &self,
        s: &Spanned<String>,
        key: &str,
    ) -> Result<String, ConfigError> {
        let name = s.value.trim();
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(self.site.spanned(
                s,
                key,
                format!(
                    "\"{name}\" is not a target name: use 1 to 63 letters, digits, '-', '_' or '.'"
                ),
            ));
        }
        Ok(name.to_string())
    }
}
