//! `target:` or `targets:` (named targets), and the `targets:` of an `images:` entry.

use std::collections::HashMap;

use serde_saphyr::{Location, Spanned};

use super::Validator;
use crate::config::raw::{RawImage, RawTarget};
use crate::config::{ConfigError, TargetSettings};

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
