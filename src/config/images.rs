//! Expands `images:` entries into [`SyncItem`]s: one per tag, each with its target
//! repository (`<prefix>/<source repository>` or the entry's `target:`), and rejects two
//! items that would write the same target `repo:tag`.

use std::collections::{BTreeMap, HashMap};

use serde_saphyr::{Location, Spanned};

use super::raw::{RawImage, RawImageSpec, RawTag, RawTagFilter};
use super::validate::Validator;
use super::values::parse_platform;
use super::{
    ConfigError, ItemOptions, Platform, RegistrySettings, SyncItem, TagSelection, TargetSettings,
};
use crate::reference::{Reference, ReferenceError, validate_repository, validate_tag};
use crate::tags::{TagFilter, glob_match, parse_range};

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
    options: ItemOptions,
}

/// What a mapping entry expands to: fixed tags, and filters resolved at run time.
struct EntryParts {
    fixed: Vec<Expanded>,
    /// Filters, the entry's settings, and where the first filter is.
    selection: Option<(Vec<TagFilter>, Expanded, Vec<String>)>,
}

/// The items so far, with where each target `repo:tag` (or `repo@digest`) is written from.
#[derive(Default)]
struct Placed {
    items: Vec<SyncItem>,
    targets: HashMap<String, usize>,
}

impl Validator<'_> {
    pub(super) fn images(
        &self,
        entries: &[Spanned<RawImage>],
        target: &TargetSettings,
        registries: &BTreeMap<String, RegistrySettings>,
    ) -> Result<(Vec<SyncItem>, Vec<TagSelection>), ConfigError> {
        let mut placed = Placed::default();
        let mut selections = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let key = format!("images[{i}]");
            if !goes_to(&entry.value, target.name.as_deref()) {
                continue;
            }
            let expanded = match &entry.value {
                RawImage::Short(text) => {
                    let source = self.reference(text, entry.referenced, &key)?;
                    vec![Expanded {
                        source,
                        at: entry.referenced,
                        key: key.clone(),
                        platforms: None,
                        target: None,
                        options: ItemOptions::default(),
                    }]
                }
                RawImage::Full(spec) => {
                    let parts = self.full_entry(spec, &key)?;
                    if let Some((filters, e, immutable)) = parts.selection {
                        let target_repository = self.target_repository(&e, target, registries)?;
                        selections.push(TagSelection {
                            source: e.source,
                            target_repository,
                            filters,
                            platforms: e.platforms,
                            immutable,
                            options: e.options,
                            location: self.site.describe(e.at, &e.key),
                        });
                    }
                    parts.fixed
                }
            };
            for e in expanded {
                self.place(e, target, registries, &mut placed)?;
            }
        }
        Ok((placed.items, selections))
    }

    /// Makes `e` an item, unless another item already writes its target `repo:tag`.
    fn place(
        &self,
        e: Expanded,
        target: &TargetSettings,
        registries: &BTreeMap<String, RegistrySettings>,
        placed: &mut Placed,
    ) -> Result<(), ConfigError> {
        let target_repository = self.target_repository(&e, target, registries)?;
        let Expanded {
            source,
            at,
            key: item_key,
            platforms,
            options,
            ..
        } = e;
        let item = SyncItem {
            target_tag: source.tag().map(str::to_string),
            target_repository,
            platforms,
            location: self.site.describe(at, &item_key),
            source,
            options,
        };
        let target_key = match (&item.target_tag, item.source.digest()) {
            (Some(tag), _) => format!("{}:{tag}", item.target_repository),
            (None, Some(d)) => format!("{}@{d}", item.target_repository),
            (None, None) => item.target_repository.clone(),
        };
        if let Some(&j) = placed.targets.get(&target_key) {
            let first: &SyncItem = &placed.items[j];
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
        placed.targets.insert(target_key, placed.items.len());
        placed.items.push(item);
        Ok(())
    }

    /// `<prefix>/<source repository>`, or the entry's own `target:`.
    fn target_repository(
        &self,
        e: &Expanded,
        target: &TargetSettings,
        registries: &BTreeMap<String, RegistrySettings>,
    ) -> Result<String, ConfigError> {
        if let Some(repo) = &e.target {
            return Ok(repo.clone());
        }
        let prefix = registries
            .get(e.source.registry())
            .and_then(|r| r.prefix.as_deref())
            .unwrap_or(&target.prefix);
        let repo = if prefix.is_empty() {
            e.source.repository().to_string()
        } else {
            format!("{prefix}/{}", e.source.repository())
        };
        validate_repository(&repo).map_err(|err| {
            self.site
                .at(e.at, &e.key, format!("target repository: {err}"))
        })?;
        Ok(repo)
    }

    /// The per-entry options, and the `immutable:` patterns.
    fn entry_options(
        &self,
        spec: &RawImageSpec,
        key: &str,
    ) -> Result<(ItemOptions, Vec<String>), ConfigError> {
        let (sparse, single) = match &spec.platforms_mode {
            None => (false, false),
            Some(m) => match m.value.trim() {
                "rewrite" => (false, false),
                "sparse" => (true, false),
                "single" => (false, true),
                other => {
                    return Err(self.site.spanned(
                        m,
                        format!("{key}.platforms_mode"),
                        format!(
                            "\"{other}\" is not a platforms mode (use rewrite, sparse or single)"
                        ),
                    ));
                }
            },
        };
        if (sparse || single) && spec.platforms.is_none() {
            let m = spec.platforms_mode.as_ref().expect("checked above");
            return Err(self.site.spanned(
                m,
                format!("{key}.platforms_mode"),
                "applies only with platforms:",
            ));
        }
        if single && spec.platforms.as_ref().is_some_and(|p| p.value.len() != 1) {
            let m = spec.platforms_mode.as_ref().expect("checked above");
            return Err(self.site.spanned(
                m,
                format!("{key}.platforms_mode"),
                "single stores one platform's manifest under the tag: list exactly one platform in platforms:",
            ));
        }
        let backup_tag = match &spec.backup_tag {
            None => None,
            Some(b) => {
                let template = b.value.trim();
                let sample = expand_backup_tag(template, "1.25", "20260101");
                if !template.contains("{tag}") {
                    return Err(self.site.spanned(
                        b,
                        format!("{key}.backup_tag"),
                        "must contain {tag} so each tag keeps its own backup",
                    ));
                }
                validate_tag(&sample).map_err(|e| {
                    self.site
                        .spanned(b, format!("{key}.backup_tag"), e.to_string())
                })?;
                Some(template.to_string())
            }
        };
        let immutable = match &spec.immutable {
            None => Vec::new(),
            Some(list) => list
                .value
                .iter()
                .map(|p| p.value.trim().to_string())
                .collect(),
        };
        Ok((
            ItemOptions {
                immutable: false,
                referrers: spec.referrers.unwrap_or(false),
                backup_tag,
                sparse,
                single,
                prune: spec.prune.unwrap_or(false),
            },
            immutable,
        ))
    }

    /// One `tags:` filter mapping, checked.
    fn tag_filter(
        &self,
        f: &RawTagFilter,
        at: &Spanned<RawTag>,
        key: &str,
    ) -> Result<TagFilter, ConfigError> {
        let fail = |m: String| self.site.spanned(at, key, m);
        let regex = |text: &str| {
            regex::Regex::new(text).map_err(|e| fail(format!("invalid regex {text:?}: {e}")))
        };
        let range = |text: &str| parse_range(text).map_err(&fail);
        let prerelease = f.prerelease.unwrap_or(false);
        match (&f.regex, &f.semver, f.newest, f.all) {
            (Some(r), None, None, None) => Ok(TagFilter::Regex {
                include: regex(r)?,
                exclude: f.exclude.as_deref().map(regex).transpose()?,
            }),
            (None, Some(s), None, None) if f.exclude.is_none() => Ok(TagFilter::Semver {
                req: range(s)?,
                prerelease,
            }),
            (None, s, Some(n), None) if f.exclude.is_none() => {
                if n == 0 || n > 10_000 {
                    return Err(fail(format!("newest: {n} must be between 1 and 10000")));
                }
                Ok(TagFilter::Newest {
                    count: n as usize,
                    req: s.as_deref().map(range).transpose()?,
                    prerelease,
                })
            }
            (None, None, None, Some(true)) if f.exclude.is_none() => Ok(TagFilter::All),
            (None, None, None, Some(false)) => Err(fail("all: false selects nothing; leave the entry out".into())),
            _ => Err(fail(
                "a tag filter is one of: regex (with optional exclude), semver, newest (with optional semver), all: true"
                    .into(),
            )),
        }
    }

    /// Expands a mapping entry: one [`Expanded`] per tag, or one for the source's own tag.
    fn full_entry(&self, spec: &RawImageSpec, key: &str) -> Result<EntryParts, ConfigError> {
        let (options, immutable) = self.entry_options(spec, key)?;
        let source_key = format!("{key}.source");
        let source = self.reference(&spec.source.value, spec.source.referenced, &source_key)?;
        let mut entry = Expanded {
            source,
            at: spec.source.referenced,
            key: key.to_string(),
            platforms: self.entry_platforms(spec, key)?,
            target: self.entry_target(spec, key)?,
            options,
        };
        let Some(tags) = &spec.tags else {
            entry.options.immutable = entry
                .source
                .tag()
                .is_some_and(|tag| is_immutable(&immutable, tag));
            return Ok(EntryParts {
                fixed: vec![entry],
                selection: None,
            });
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
        self.entry_tags(entry, &tags.value, immutable)
    }

    /// An entry's `platforms:`, parsed; `None` to copy all.
    fn entry_platforms(
        &self,
        spec: &RawImageSpec,
        key: &str,
    ) -> Result<Option<Vec<Platform>>, ConfigError> {
        match &spec.platforms {
            Some(list) if list.value.is_empty() => Err(self.site.spanned(
                list,
                format!("{key}.platforms"),
                "must list at least one platform, or be left out to copy all",
            )),
            Some(list) => list
                .value
                .iter()
                .enumerate()
                .map(|(j, p)| {
                    parse_platform(p.value.trim())
                        .map_err(|e| self.site.spanned(p, format!("{key}.platforms[{j}]"), e))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            None => Ok(None),
        }
    }

    /// An entry's own `target:` repository, checked.
    fn entry_target(&self, spec: &RawImageSpec, key: &str) -> Result<Option<String>, ConfigError> {
        let Some(t) = &spec.target else {
            return Ok(None);
        };
        let repo = t.value.trim();
        validate_repository(repo)
            .map_err(|e| self.site.spanned(t, format!("{key}.target"), e.to_string()))?;
        Ok(Some(repo.to_string()))
    }

    /// An entry's `tags:`: one [`Expanded`] per exact tag, and the filters with the entry's
    /// settings at the first filter.
    fn entry_tags(
        &self,
        entry: Expanded,
        tags: &[Spanned<RawTag>],
        immutable: Vec<String>,
    ) -> Result<EntryParts, ConfigError> {
        let mut fixed = Vec::new();
        let mut filters = Vec::new();
        let mut first_filter: Option<(Location, String)> = None;
        for (j, tag) in tags.iter().enumerate() {
            let tag_key = format!("{}.tags[{j}]", entry.key);
            let t = match &tag.value {
                RawTag::Exact(t) => t.trim(),
                RawTag::Filter(f) => {
                    filters.push(self.tag_filter(f, tag, &tag_key)?);
                    first_filter.get_or_insert((tag.referenced, tag_key));
                    continue;
                }
            };
            let tagged = entry
                .source
                .with_tag(t)
                .map_err(|e| self.site.spanned(tag, &tag_key, e.to_string()))?;
            let mut options = entry.options.clone();
            options.immutable = is_immutable(&immutable, t);
            fixed.push(Expanded {
                source: tagged,
                at: tag.referenced,
                key: tag_key,
                platforms: entry.platforms.clone(),
                target: entry.target.clone(),
                options,
            });
        }
        let selection =
            first_filter.map(|(at, key)| (filters, Expanded { at, key, ..entry }, immutable));
        Ok(EntryParts { fixed, selection })
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

/// A backup tag name from its template: `{tag}` and `{date}` (YYYYMMDD, UTC) replaced.
pub fn expand_backup_tag(template: &str, tag: &str, date: &str) -> String {
    template.replace("{tag}", tag).replace("{date}", date)
}

/// Whether `tag` matches one of the entry's `immutable:` patterns.
fn is_immutable(patterns: &[String], tag: &str) -> bool {
    patterns.iter().any(|p| glob_match(p, tag))
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

/// Whether an entry goes to the target named `name`: every entry goes to an unnamed target
/// (`target:`), and an entry without `targets:` goes to every target.
fn goes_to(entry: &RawImage, name: Option<&str>) -> bool {
    match (entry, name) {
        (RawImage::Full(spec), Some(name)) => spec
            .targets
            .as_ref()
            .is_none_or(|list| list.value.iter().any(|t| t.value.trim() == name)),
        _ => true,
    }
}
