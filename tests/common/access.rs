//! The registry's own access log: parsing and counting.
//!
//! distribution writes one gorilla "combined log format" line per request to its stdout:
//! `127.0.0.1 - - [24/Nov/2026:19:26:29 +0000] "HEAD /v2/foo/manifests/latest?x=1 HTTP/1.1" 404 96 "" "curl/7.88.1"`
//! The harness sends the registry's stdout to its own file, so every line there is one request.

use std::collections::BTreeMap;

use super::util::parse_v2_path;

/// One request as the registry logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// `GET`, `HEAD`, `PUT`, ...
    pub method: String,
    /// Request path without the query string (as sent, percent-encoding kept).
    pub path: String,
    /// Query string without the `?` (empty if none).
    pub query: String,
    /// Response status.
    pub status: u16,
    /// The client's User-Agent (the harness's own requests use [`HARNESS_USER_AGENT`]).
    pub user_agent: String,
}

/// User-Agent of every request the harness itself makes.
pub const HARNESS_USER_AGENT: &str = "mirrorsync-test-harness";

impl Access {
    /// Parses one combined-log-format line; `None` for anything else.
    pub fn parse(line: &str) -> Option<Access> {
        // The request is the first quoted field after the `[time]` field.
        let after_time = &line[line.find("] \"")? + 3..];
        let end_req = after_time.find('"')?;
        let request = &after_time[..end_req];
        let mut parts = request.split(' ');
        let method = parts.next()?.to_string();
        let uri = parts.next()?;
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (uri.to_string(), String::new()),
        };
        let mut rest = after_time[end_req + 1..].trim_start().split(' ');
        let status = rest.next()?.parse().ok()?;
        // Referer, then User-Agent, each quoted.
        let quoted: Vec<&str> = after_time[end_req + 1..].split('"').collect();
        let user_agent = quoted.get(3).map(|s| s.to_string()).unwrap_or_default();
        Some(Access {
            method,
            path,
            query,
            status,
            user_agent,
        })
    }

    /// Repository named in the path (`/v2/<name>/...`), if any.
    pub fn repo(&self) -> Option<String> {
        parse_v2_path(&self.path).map(|(r, _, _)| r)
    }

    /// Endpoint kind: `manifests`, `blobs`, `uploads` or `tags`.
    pub fn kind(&self) -> Option<&'static str> {
        parse_v2_path(&self.path).map(|(_, k, _)| k)
    }

    /// Tag, digest or upload id in the path.
    pub fn reference(&self) -> Option<String> {
        parse_v2_path(&self.path).map(|(_, _, r)| r)
    }

    /// Whether this is a write (POST, PATCH, PUT, DELETE).
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PATCH" | "PUT" | "DELETE")
    }

    /// Whether the request came from the harness itself.
    pub fn is_harness(&self) -> bool {
        self.user_agent == HARNESS_USER_AGENT
    }

    fn matches(&self, method: &str, kind: &str, repo: Option<&str>) -> bool {
        self.method == method
            && self.kind() == Some(kind)
            && repo.is_none_or(|r| self.repo().as_deref() == Some(r))
    }
}

/// Parses a whole access-log text.
pub fn parse_access_log(text: &str) -> Vec<Access> {
    text.lines().filter_map(Access::parse).collect()
}

/// Counting helpers over a slice of [`Access`]. `repo: None` means any repository.
pub trait AccessLogExt {
    /// GETs of `/v2/<repo>/manifests/<ref>`: the requests Docker Hub counts as pulls.
    fn manifest_gets(&self, repo: Option<&str>) -> usize;
    /// HEADs of manifests.
    fn manifest_heads(&self, repo: Option<&str>) -> usize;
    /// GETs of blobs.
    fn blob_gets(&self, repo: Option<&str>) -> usize;
    /// Writes (POST/PATCH/PUT/DELETE) to the repository.
    fn writes(&self, repo: Option<&str>) -> usize;
    /// Writes per repository.
    fn writes_by_repo(&self) -> BTreeMap<String, usize>;
    /// Writes to any repository but mirrorsync's own state (`mirrorsync/state`): the writes a
    /// no-op run must not make.
    fn mirrored_writes(&self) -> usize;
    /// Entries not made by the harness itself.
    fn not_harness(&self) -> Vec<Access>;
    /// One line per entry, for assertion messages.
    fn dump(&self) -> String;
}

impl AccessLogExt for [Access] {
    fn manifest_gets(&self, repo: Option<&str>) -> usize {
        self.iter()
            .filter(|a| a.matches("GET", "manifests", repo))
            .count()
    }
    fn manifest_heads(&self, repo: Option<&str>) -> usize {
        self.iter()
            .filter(|a| a.matches("HEAD", "manifests", repo))
            .count()
    }
    fn blob_gets(&self, repo: Option<&str>) -> usize {
        self.iter()
            .filter(|a| a.matches("GET", "blobs", repo))
            .count()
    }
    fn writes(&self, repo: Option<&str>) -> usize {
        self.iter()
            .filter(|a| a.is_write() && repo.is_none_or(|r| a.repo().as_deref() == Some(r)))
            .count()
    }
    fn mirrored_writes(&self) -> usize {
        self.iter()
            .filter(|a| a.is_write() && a.repo().as_deref() != Some("mirrorsync/state"))
            .count()
    }
    fn writes_by_repo(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for a in self.iter().filter(|a| a.is_write()) {
            *m.entry(a.repo().unwrap_or_default()).or_insert(0) += 1;
        }
        m
    }
    fn not_harness(&self) -> Vec<Access> {
        self.iter().filter(|a| !a.is_harness()).cloned().collect()
    }
    fn dump(&self) -> String {
        self.iter()
            .map(|a| {
                let q = if a.query.is_empty() {
                    String::new()
                } else {
                    format!("?{}", a.query)
                };
                format!(
                    "{} {}{} -> {} ({})\n",
                    a.method, a.path, q, a.status, a.user_agent
                )
            })
            .collect()
    }
}
