//! Expands `images:` entries into [`SyncItem`]s: one per tag, each with its target
//! repository (`<prefix>/<source repository>` or the entry's `target:`), and rejects two
//! items that would write the same target `repo:tag`.

use std::collections::{BTreeMap, HashMap};

use serde_saphyr::{Location, Spanned};

use super::raw::{RawImage, RawImageSpec};
use super::validate::Validator;
use super::values::parse_platform;
use super::{ConfigError, Platform, RegistrySettings, SyncItem, Target};
use crate::reference::{Reference, ReferenceError, validate_repository, validate_tag};

/// One tag of an entry, before its target repository is worked out.
struct Expanded {
    source: Reference,
    /// Where the reference or tag is written.
    at: Location,
    /// `images[3]` or `images[3].tags[1]`.
    key: String,
    platforms: Option<Vec<Platform>>,
    /// The entry's `target:`, if any.
    target: Option<String>,
}

impl Validator<'_> {
    pub(super) fn images(
        &self,
        entries: &[Spanned<RawImage>],
        target: &Target,
        registries: &BTreeMap<String, RegistrySettings>,
    ) -> Result<Vec<SyncItem>, ConfigError> {
        let mut items = Vec::new();
        // Target "repo:tag" (or "repo@digest") -> the item already mapped there.
        let mut targets: HashMap<String, usize> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let key = format!("images[{i}]");
            let expanded = match &entry.value {
                RawImage::Short(text) => {
                    let source = self.reference(text, entry.referenced, &key)?;
                    vec![Expanded {
                        source,
                        at: entry.referenced,
                        key: key.clone(),
                        platforms: None,
                        target: None,
                    }]
                }
                RawImage::Full(spec) => self.full_entry(spec, &key)?,
            };
            for Expanded {
                source,
                at,
                key: item_key,
                platforms,
                target: explicit_target,
            } in expanded
            {
                let target_repository = match explicit_target {
                    Some(repo) => repo,
                    None => {
                        let prefix = registries
                            .get(source.registry())
                            .and_then(|r| r.prefix.as_deref())
                            .unwrap_or(&target.prefix);
                        let repo = if prefix.is_empty() {
                            source.repository().to_string()
                        } else {
                            format!("{prefix}/{}", source.repository())
                        };
                        validate_repository(&repo).map_err(|e| {
                            self.site
                                .at(at, &item_key, format!("target repository: {e}"))
                        })?;
                        repo
                    }
                };
                let item = SyncItem {
                    target_tag: source.tag().map(str::to_string),
                    target_repository,
                    platforms,
                    location: self.site.describe(at, &item_key),
                    source,
                };
                let target_key = match (&item.target_tag, item.source.digest()) {
                    (Some(tag), _) => format!("{}:{tag}", item.target_repository),
                    (None, Some(d)) => format!("{}@{d}", item.target_repository),
                    (None, None) => item.target_repository.clone(),
                };
                if let Some(&j) = targets.get(&target_key) {
                    let first: &SyncItem = &items[j];
                    let message = if first.source == item.source {
                        format!(
                            "duplicate entry: {} is already listed at {}",
                            item.source, first.location
                        )
                    } else {
                        format!(
                            "{} and {} ({}) both map to target {target_key}; set `target:` on one of them",
                            item.source, first.source, first.location
                        )
                    };
                    return Err(self.site.at(at, item_key, message));
                }
                targets.insert(target_key, items.len());
                items.push(item);
            }
        }
        Ok(items)
    }

    /// Expands a mapping entry: one [`Expanded`] per tag, or one for the source's own tag.
    fn full_entry(&self, spec: &RawImageSpec, key: &str) -> Result<Vec<Expanded>, ConfigError> {
        let source_key = format!("{key}.source");
        let source = self.reference(&spec.source.value, spec.source.referenced, &source_key)?;
        let platforms = match &spec.platforms {
            Some(list) if list.value.is_empty() => {
                return Err(self.site.spanned(
                    list,
                    format!("{key}.platforms"),
                    "must list at least one platform, or be left out to copy all",
                ));
            }
            Some(list) => Some(
                list.value
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        parse_platform(p.value.trim())
                            .map_err(|e| self.site.spanned(p, format!("{key}.platforms[{j}]"), e))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let target = match &spec.target {
            Some(t) => {
                let repo = t.value.trim();
                validate_repository(repo)
                    .map_err(|e| self.site.spanned(t, format!("{key}.target"), e.to_string()))?;
                Some(repo.to_string())
            }
            None => None,
        };
        let Some(tags) = &spec.tags else {
            return Ok(vec![Expanded {
                source,
                at: spec.source.referenced,
                key: key.to_string(),
                platforms,
                target,
            }]);
        };
        if has_explicit_tag_or_digest(&spec.source.value) {
            return Err(self.site.spanned(
                &spec.source,
                source_key,
                format!(
                    "\"{}\" has a tag or digest; with `tags:` give the repository only",
                    spec.source.value.trim()
                ),
            ));
        }
        if tags.value.is_empty() {
            return Err(self.site.spanned(
                tags,
                format!("{key}.tags"),
                "must list at least one tag, or be left out for latest",
            ));
        }
        let mut out = Vec::new();
        for (j, tag) in tags.value.iter().enumerate() {
            let tag_key = format!("{key}.tags[{j}]");
            let t = tag.value.trim();
            validate_tag(t).map_err(|e| self.site.spanned(tag, &tag_key, e.to_string()))?;
            out.push(Expanded {
                source: source.with_tag(t),
                at: tag.referenced,
                key: tag_key,
                platforms: platforms.clone(),
                target: target.clone(),
            });
        }
        Ok(out)
    }

    fn reference(&self, text: &str, at: Location, key: &str) -> Result<Reference, ConfigError> {
        let text = text.trim();
        Reference::parse(text).map_err(|e| {
            let message = match e {
                ReferenceError::Empty | ReferenceError::InvalidReference { .. } => e.to_string(),
                _ => format!("invalid image reference \"{text}\": {e}"),
            };
            self.site.at(at, key, message)
        })
    }
}

/// Whether a reference names a tag or digest itself (`parse` fills `latest` otherwise).
fn has_explicit_tag_or_digest(text: &str) -> bool {
    let text = text.trim();
    text.contains('@')
        || text
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
}
