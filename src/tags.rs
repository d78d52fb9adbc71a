//! Choosing tags from a repository's tag list: exact names, `regex:` (with `exclude:`),
//! `semver:` ranges, `newest: N`, `all: true`; and `immutable:` glob patterns.
//!
//! Docker tags are not strict semver: `1.25`, `v1.25.3` and `1.25.3-alpine` are read leniently
//! as versions 1.25.0, 1.25.3 and 1.25.3 with the pre-release `alpine`. Tags with a `-suffix`
//! count as pre-releases and are left out of `semver:` and `newest:` unless `prerelease: true`.

use semver::{Prerelease, Version, VersionReq};

/// One way of choosing tags.
#[derive(Debug, Clone)]
pub enum TagFilter {
    Regex {
        include: regex::Regex,
        exclude: Option<regex::Regex>,
    },
    Semver {
        req: VersionReq,
        prerelease: bool,
    },
    Newest {
        count: usize,
        req: Option<VersionReq>,
        prerelease: bool,
    },
    All,
}

/// Parses a range such as `>=1.24 <2` (spaces or commas between comparators).
pub fn parse_range(text: &str) -> Result<VersionReq, String> {
    let normalised: Vec<&str> = text
        .split([' ', ','])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    // `>= 1.2` written with a space: glue operators to their versions.
    let mut parts: Vec<String> = Vec::new();
    for p in normalised {
        match parts.last_mut() {
            Some(last) if last.chars().all(|c| "<>=~^".contains(c)) => last.push_str(p),
            _ => parts.push(p.to_string()),
        }
    }
    VersionReq::parse(&parts.join(", ")).map_err(|e| format!("invalid semver range {text:?}: {e}"))
}

/// Reads a tag as a version, leniently (see the module docs). `None` for non-version tags.
pub fn tag_version(tag: &str) -> Option<Version> {
    let body = tag.strip_prefix('v').unwrap_or(tag);
    let (numbers, pre) = match body.split_once('-') {
        Some((n, p)) => (n, Some(p)),
        None => (body, None),
    };
    let mut parts = numbers.split('.');
    let mut next = |required: bool| -> Option<u64> {
        match parts.next() {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 18 => {
                p.parse().ok()
            }
            Some(_) => None,
            None if required => None,
            None => Some(0),
        }
    };
    let major = next(true)?;
    let minor = next(false)?;
    let patch = next(false)?;
    if parts.next().is_some() {
        return None;
    }
    let mut version = Version::new(major, minor, patch);
    if let Some(pre) = pre {
        version.pre = Prerelease::new(pre).ok()?;
    }
    Some(version)
}

fn in_range(req: &VersionReq, version: &Version, prerelease: bool) -> bool {
    if !version.pre.is_empty() && !prerelease {
        return false;
    }
    let mut plain = version.clone();
    plain.pre = Prerelease::EMPTY;
    req.matches(&plain)
}

/// The tags the filters choose (their union), in the repository's order.
pub fn select(tags: &[String], filters: &[TagFilter]) -> Vec<String> {
    let mut chosen = vec![false; tags.len()];
    for filter in filters {
        match filter {
            TagFilter::All => chosen.iter_mut().for_each(|c| *c = true),
            TagFilter::Regex { include, exclude } => {
                for (i, tag) in tags.iter().enumerate() {
                    if include.is_match(tag) && !exclude.as_ref().is_some_and(|x| x.is_match(tag)) {
                        chosen[i] = true;
                    }
                }
            }
            TagFilter::Semver { req, prerelease } => {
                for (i, tag) in tags.iter().enumerate() {
                    if tag_version(tag).is_some_and(|v| in_range(req, &v, *prerelease)) {
                        chosen[i] = true;
                    }
                }
            }
            TagFilter::Newest {
                count,
                req,
                prerelease,
            } => {
                let any = VersionReq::STAR;
                let req = req.as_ref().unwrap_or(&any);
                let mut versions: Vec<(Version, usize)> = tags
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| tag_version(t).map(|v| (v, i)))
                    .filter(|(v, _)| in_range(req, v, *prerelease))
                    .collect();
                // Newest first; between equal versions (`1.25` and `1.25.0`) the longer name.
                versions.sort_by(|a, b| b.0.cmp(&a.0).then(tags[b.1].len().cmp(&tags[a.1].len())));
                for (_, i) in versions.into_iter().take(*count) {
                    chosen[i] = true;
                }
            }
        }
    }
    tags.iter()
        .zip(chosen)
        .filter(|(_, c)| *c)
        .map(|(t, _)| t.clone())
        .collect()
}

/// Glob match with `*` (any run) and `?` (one character): `v*.*.*` matches `v1.2.3`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_docker_tags_as_versions() {
        assert_eq!(tag_version("1.25"), Some(Version::new(1, 25, 0)));
        assert_eq!(tag_version("v1.25.3"), Some(Version::new(1, 25, 3)));
        assert!(!tag_version("1.25.3-alpine").unwrap().pre.is_empty());
        assert_eq!(tag_version("latest"), None);
        assert_eq!(tag_version("1.2.3.4"), None);
        assert_eq!(tag_version("20240101"), Some(Version::new(20240101, 0, 0)));
    }

    #[test]
    fn semver_range_and_newest() {
        let list = tags(&[
            "1.23.0",
            "1.24.1",
            "1.25",
            "1.26.0-rc1",
            "2.0.0",
            "latest",
            "1.25-alpine",
        ]);
        let req = parse_range(">=1.24 <2").unwrap();
        assert_eq!(
            select(
                &list,
                &[TagFilter::Semver {
                    req: req.clone(),
                    prerelease: false
                }]
            ),
            tags(&["1.24.1", "1.25"])
        );
        assert_eq!(
            select(
                &list,
                &[TagFilter::Semver {
                    req,
                    prerelease: true
                }]
            ),
            tags(&["1.24.1", "1.25", "1.26.0-rc1", "1.25-alpine"])
        );
        let newest = TagFilter::Newest {
            count: 2,
            req: None,
            prerelease: false,
        };
        assert_eq!(select(&list, &[newest]), tags(&["1.25", "2.0.0"]));
        assert!(parse_range(">= 1.2, < 2").is_ok());
        assert!(parse_range("banana").is_err());
    }

    #[test]
    fn regex_with_exclude_and_all() {
        let list = tags(&["1.25-alpine", "1.25-alpine-slim", "1.25", "latest"]);
        let f = TagFilter::Regex {
            include: regex::Regex::new(r"^\d+\.\d+-alpine").unwrap(),
            exclude: Some(regex::Regex::new("slim").unwrap()),
        };
        assert_eq!(select(&list, &[f]), tags(&["1.25-alpine"]));
        assert_eq!(select(&list, &[TagFilter::All]).len(), 4);
    }

    #[test]
    fn globs() {
        assert!(glob_match("v*.*.*", "v1.2.3"));
        assert!(!glob_match("v*.*.*", "v1.2"));
        assert!(glob_match("1.2?", "1.25"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("latest", "latest2"));
    }
}
