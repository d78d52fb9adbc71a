//! The keys that carry a mirror across an air gap: `target.digests` and `target.since` of a
//! layout target, and `registries.<host>.path` (an upstream served from a layout directory).

use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use super::Validator;
use crate::config::raw::{RawRegistry, RawTarget};
use crate::config::{ConfigError, LayoutDigests, LayoutOptions};

impl Validator<'_> {
    /// `digests:` and `since:` of a `target.path` layout written to `dir`.
    pub(super) fn layout_options(
        &self,
        t: &RawTarget,
        dir: &Path,
    ) -> Result<LayoutOptions, ConfigError> {
        let digests = match &t.digests {
            None => LayoutDigests::default(),
            Some(d) => match d.value.trim() {
                "oci" => LayoutDigests::Oci,
                "preserve" => LayoutDigests::Preserve,
                other => {
                    return Err(self.site.spanned(
                        d,
                        "target.digests",
                        format!("\"{other}\" is not a digests mode (use preserve or oci)"),
                    ));
                }
            },
        };
        let since = match &t.since {
            None => None,
            Some(s) => {
                let earlier = self.existing_dir(s, "target.since")?;
                if same_dir(&earlier, dir) {
                    return Err(self.site.spanned(
                        s,
                        "target.since",
                        "names target.path itself; a delta goes to a new directory",
                    ));
                }
                Some(earlier)
            }
        };
        Ok(LayoutOptions { digests, since })
    }

    /// `digests:` and `since:` set on a registry target.
    pub(super) fn registry_target_layout_keys(&self, t: &RawTarget) -> Result<(), ConfigError> {
        for (key, value) in [("digests", &t.digests), ("since", &t.since)] {
            if let Some(v) = value {
                return Err(self.site.spanned(
                    v,
                    format!("target.{key}"),
                    "applies only to target.path (an OCI layout), not to target.registry",
                ));
            }
        }
        Ok(())
    }

    /// `registries.<host>.path`: the layout directory the host is served from, after checking
    /// that no network-only key is set beside it.
    pub(super) fn layout_source(
        &self,
        raw: &Spanned<RawRegistry>,
        key: &str,
    ) -> Result<Option<PathBuf>, ConfigError> {
        let r = &raw.value;
        let Some(path) = &r.path else {
            return Ok(None);
        };
        let network_only = [
            ("mirrors", r.mirrors.is_some()),
            ("auth", r.auth.is_some()),
            ("insecure", r.insecure.is_some()),
            ("ca_file", r.ca_file.is_some()),
            ("rate_limit_reserve", r.rate_limit_reserve.is_some()),
        ];
        if let Some((name, _)) = network_only.iter().find(|(_, set)| *set) {
            return Err(self.site.spanned(
                raw,
                format!("{key}.{name}"),
                format!("does not apply to a host served from a layout ({key}.path)"),
            ));
        }
        Ok(Some(self.existing_dir(path, &format!("{key}.path"))?))
    }

    fn existing_dir(&self, s: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let dir = self.path(s, key)?;
        match std::fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => Ok(dir),
            Ok(_) => {
                Err(self
                    .site
                    .spanned(s, key, format!("{} is not a directory", dir.display())))
            }
            Err(e) => Err(self
                .site
                .spanned(s, key, format!("cannot read {}: {e}", dir.display()))),
        }
    }
}

/// Whether two paths name the same directory (the second may not exist yet).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
