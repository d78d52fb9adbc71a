//! The metrics Prometheus alerts on, and the three ways they leave the process.
//!
//! [`Metrics`] holds the series the README documents ("Observability"), plus
//! `mirrorsync_schedule_skipped_passes_total`, and renders them in the Prometheus text
//! exposition format 0.0.4 ([`Metrics::render`]): every family with `# HELP` and `# TYPE`,
//! counters named `*_total`, families in a fixed order and series sorted by label values, so two
//! renders of the same state are byte-identical. It is written by hand rather than with the
//! `prometheus` crates (see the README's Design section): the names are a contract, and a
//! Pushgateway reading our 0.0.4 text keeps counter and gauge types.
//!
//! The rendered text leaves the process through:
//! - [`serve`]: `GET /metrics` and `GET /healthz` for the long-running `mirrorsync sync`;
//! - [`push`]: a Prometheus Pushgateway, for `sync --once` in a CronJob;
//! - [`write_textfile`]: a node-exporter textfile, written atomically.
//!
//! Series that have not been recorded yet are absent (for example
//! `mirrorsync_run_last_success_timestamp_seconds` before the first successful run), except
//! `mirrorsync_run_tags` (all four results), `mirrorsync_blobs_total` (all three actions) and
//! `mirrorsync_schedule_skipped_passes_total`, which are always present so that `rate()` and
//! alerts see a 0 rather than nothing. Label values never carry secrets: callers pass image
//! references and registry host names only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `Content-Type` of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// What happened to one blob of a synced image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlobAction {
    /// Streamed from upstream to the target.
    Copied,
    /// Cross-repository mount at the target.
    Mounted,
    /// Already present in the target repository.
    Present,
}

impl BlobAction {
    /// Every action, in rendering order.
    pub const ALL: [BlobAction; 3] = [BlobAction::Copied, BlobAction::Mounted, BlobAction::Present];

    /// The `action` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobAction::Copied => "copied",
            BlobAction::Mounted => "mounted",
            BlobAction::Present => "present",
        }
    }
}

/// The result of one tag in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TagRunResult {
    /// The target already held the upstream digest.
    Unchanged,
    /// The tag was copied or updated.
    Synced,
    /// The tag could not be synced.
    Failed,
    /// Left for a later run (signal, `--max-duration`, rate-limit reserve reached).
    Deferred,
}

impl TagRunResult {
    /// Every result, in rendering order.
    pub const ALL: [TagRunResult; 4] = [
        TagRunResult::Unchanged,
        TagRunResult::Synced,
        TagRunResult::Failed,
        TagRunResult::Deferred,
    ];

    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TagRunResult::Unchanged => "unchanged",
            TagRunResult::Synced => "synced",
            TagRunResult::Failed => "failed",
            TagRunResult::Deferred => "deferred",
        }
    }

    fn index(self) -> usize {
        match self {
            TagRunResult::Unchanged => 0,
            TagRunResult::Synced => 1,
            TagRunResult::Failed => 2,
            TagRunResult::Deferred => 3,
        }
    }
}

impl BlobAction {
    fn index(self) -> usize {
        match self {
            BlobAction::Copied => 0,
            BlobAction::Mounted => 1,
            BlobAction::Present => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct TagSeries {
    in_sync: bool,
    last_synced: Option<f64>,
    lag: f64,
}

#[derive(Debug, Default)]
struct State {
    run_duration: Option<f64>,
    run_tags: [usize; 4],
    last_success: Option<f64>,
    tags: BTreeMap<(String, String), TagSeries>,
    blobs: [u64; 3],
    bytes_copied: BTreeMap<String, u64>,
    http_requests: BTreeMap<(String, String, String), u64>,
    ratelimit_remaining: BTreeMap<String, f64>,
    skipped_passes: u64,
}

/// The process's metrics. One mutex around small maps: every update is a few map operations,
/// cheap enough to call from every transfer task.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

const RUN_LAST_SUCCESS: &str = "mirrorsync_run_last_success_timestamp_seconds";
const RUN_DURATION: &str = "mirrorsync_run_duration_seconds";
const RUN_TAGS: &str = "mirrorsync_run_tags";
const TAG_IN_SYNC: &str = "mirrorsync_tag_in_sync";
const TAG_LAST_SYNCED: &str = "mirrorsync_tag_last_synced_timestamp_seconds";
const TAG_LAG: &str = "mirrorsync_tag_lag_seconds";
const BLOBS: &str = "mirrorsync_blobs_total";
const BYTES_COPIED: &str = "mirrorsync_bytes_copied_total";
const HTTP_REQUESTS: &str = "mirrorsync_http_requests_total";
const RATELIMIT_REMAINING: &str = "mirrorsync_ratelimit_remaining";
const SKIPPED_PASSES: &str = "mirrorsync_schedule_skipped_passes_total";

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

impl Metrics {
    /// An empty set of metrics, shared.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent plain data: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the end of a run: its duration, the number of tags per result (results not
    /// listed are 0; a result listed twice is summed), and, when every tag was in sync, the
    /// end time as the last success (otherwise the previous last success is kept).
    pub fn record_run(
        &self,
        duration_seconds: f64,
        tags: &[(TagRunResult, usize)],
        success_timestamp: Option<f64>,
    ) {
        let mut counts = [0usize; 4];
        for &(result, n) in tags {
            counts[result.index()] += n;
        }
        let mut s = self.lock();
        s.run_duration = Some(duration_seconds);
        s.run_tags = counts;
        if let Some(ts) = success_timestamp {
            s.last_success = Some(ts);
        }
    }

    /// Seeds `mirrorsync_run_last_success_timestamp_seconds`, e.g. from state persisted by an
    /// earlier run.
    pub fn set_last_success(&self, ts: f64) {
        self.lock().last_success = Some(ts);
    }

    /// Sets the three per-tag gauges of `source` -> `target`. `last_synced_timestamp` None
    /// leaves `mirrorsync_tag_last_synced_timestamp_seconds` out for this tag (never seen in
    /// sync).
    pub fn set_tag(
        &self,
        source: &str,
        target: &str,
        in_sync: bool,
        last_synced_timestamp: Option<f64>,
        lag_seconds: f64,
    ) {
        self.lock().tags.insert(
            (source.to_string(), target.to_string()),
            TagSeries {
                in_sync,
                last_synced: last_synced_timestamp,
                lag: lag_seconds,
            },
        );
    }

    /// Keeps only the tags for which `keep(source, target)` is true (after a config reload).
    pub fn retain_tags(&self, keep: &dyn Fn(&str, &str) -> bool) {
        self.lock().tags.retain(|(s, t), _| keep(s, t));
    }

    /// Adds `n` to `mirrorsync_blobs_total{action}`.
    pub fn add_blobs(&self, action: BlobAction, n: u64) {
        let mut s = self.lock();
        let c = &mut s.blobs[action.index()];
        *c = c.saturating_add(n);
    }

    /// Adds `n` blob bytes pulled from upstream `registry`.
    pub fn add_bytes_copied(&self, registry: &str, n: u64) {
        let mut s = self.lock();
        let c = s.bytes_copied.entry(registry.to_string()).or_insert(0);
        *c = c.saturating_add(n);
    }

    /// Counts one HTTP request to `registry`; `code` is the status ("200") or "error" for a
    /// transport failure.
    pub fn inc_http_request(&self, registry: &str, method: &str, code: &str) {
        let mut s = self.lock();
        let c = s
            .http_requests
            .entry((registry.to_string(), method.to_string(), code.to_string()))
            .or_insert(0);
        *c = c.saturating_add(1);
    }

    /// Sets the last `ratelimit-remaining` seen from `registry`.
    pub fn set_ratelimit_remaining(&self, registry: &str, remaining: f64) {
        self.lock()
            .ratelimit_remaining
            .insert(registry.to_string(), remaining);
    }

    /// Counts a due pass skipped because the previous one was still running.
    pub fn inc_skipped_passes(&self) {
        let mut s = self.lock();
        s.skipped_passes = s.skipped_passes.saturating_add(1);
    }

    /// The current `mirrorsync_tag_lag_seconds` of a tag, if set.
    pub fn tag_lag(&self, source: &str, target: &str) -> Option<f64> {
        self.lock()
            .tags
            .get(&(source.to_string(), target.to_string()))
            .map(|t| t.lag)
    }

    /// The current `mirrorsync_run_last_success_timestamp_seconds`, if any.
    pub fn last_success(&self) -> Option<f64> {
        self.lock().last_success
    }

    /// Renders every metric in the text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let s = self.lock();
        let mut out = String::with_capacity(2048 + 256 * s.tags.len());

        if let Some(ts) = s.last_success {
            family(
                &mut out,
                RUN_LAST_SUCCESS,
                Kind::Gauge,
                "Unix time at the end of the last run in which every tag was in sync.",
            );
            sample(&mut out, RUN_LAST_SUCCESS, &[], &fmt_f64(ts));
        }
        if let Some(d) = s.run_duration {
            family(
                &mut out,
                RUN_DURATION,
                Kind::Gauge,
                "Duration of the last run in seconds.",
            );
            sample(&mut out, RUN_DURATION, &[], &fmt_f64(d));
        }
        family(
            &mut out,
            RUN_TAGS,
            Kind::Gauge,
            "Tags per result of the last run: unchanged, synced, failed, deferred.",
        );
        for r in TagRunResult::ALL {
            sample(
                &mut out,
                RUN_TAGS,
                &[("result", r.as_str())],
                &s.run_tags[r.index()].to_string(),
            );
        }

        if !s.tags.is_empty() {
            family(
                &mut out,
                TAG_IN_SYNC,
                Kind::Gauge,
                "1 when the target held the upstream digest at the last check, 0 otherwise.",
            );
            for ((src, tgt), t) in &s.tags {
                let v = if t.in_sync { "1" } else { "0" };
                sample(
                    &mut out,
                    TAG_IN_SYNC,
                    &[("source", src), ("target", tgt)],
                    v,
                );
            }
        }
        if s.tags.values().any(|t| t.last_synced.is_some()) {
            family(
                &mut out,
                TAG_LAST_SYNCED,
                Kind::Gauge,
                "Unix time the target was last seen to match upstream.",
            );
            for ((src, tgt), t) in &s.tags {
                if let Some(ts) = t.last_synced {
                    let labels = [("source", src.as_str()), ("target", tgt.as_str())];
                    sample(&mut out, TAG_LAST_SYNCED, &labels, &fmt_f64(ts));
                }
            }
        }
        if !s.tags.is_empty() {
            family(
                &mut out,
                TAG_LAG,
                Kind::Gauge,
                "Seconds the target has been behind an upstream digest already seen; 0 when in sync.",
            );
            for ((src, tgt), t) in &s.tags {
                let labels = [("source", src.as_str()), ("target", tgt.as_str())];
                sample(&mut out, TAG_LAG, &labels, &fmt_f64(t.lag));
            }
        }

        family(
            &mut out,
            BLOBS,
            Kind::Counter,
            "Blobs handled, by action: copied from upstream, mounted from another repository of the target, or already present.",
        );
        for a in BlobAction::ALL {
            let v = s.blobs[a.index()].to_string();
            sample(&mut out, BLOBS, &[("action", a.as_str())], &v);
        }

        if !s.bytes_copied.is_empty() {
            family(
                &mut out,
                BYTES_COPIED,
                Kind::Counter,
                "Blob bytes pulled from each upstream registry.",
            );
            for (reg, n) in &s.bytes_copied {
                sample(&mut out, BYTES_COPIED, &[("registry", reg)], &n.to_string());
            }
        }
        if !s.http_requests.is_empty() {
            family(
                &mut out,
                HTTP_REQUESTS,
                Kind::Counter,
                "HTTP requests made, by registry, method and status code (\"error\" when no response was received).",
            );
            for ((reg, method, code), n) in &s.http_requests {
                let labels = [
                    ("registry", reg.as_str()),
                    ("method", method.as_str()),
                    ("code", code.as_str()),
                ];
                sample(&mut out, HTTP_REQUESTS, &labels, &n.to_string());
            }
        }
        if !s.ratelimit_remaining.is_empty() {
            family(
                &mut out,
                RATELIMIT_REMAINING,
                Kind::Gauge,
                "Last ratelimit-remaining value seen from the upstream registry.",
            );
            for (reg, v) in &s.ratelimit_remaining {
                sample(
                    &mut out,
                    RATELIMIT_REMAINING,
                    &[("registry", reg)],
                    &fmt_f64(*v),
                );
            }
        }

        family(
            &mut out,
            SKIPPED_PASSES,
            Kind::Counter,
            "Scheduled passes skipped because the previous pass was still running.",
        );
        sample(&mut out, SKIPPED_PASSES, &[], &s.skipped_passes.to_string());
        out
    }
}

fn family(out: &mut String, name: &str, kind: Kind, help: &str) {
    let kind = match kind {
        Kind::Gauge => "gauge",
        Kind::Counter => "counter",
    };
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: &str) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            out.push_str(&escape_label_value(v));
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// Escapes a label value for the text format: backslash, double quote and line feed.
pub fn escape_label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Escapes HELP text: backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Formats a sample value as Prometheus parses it (`NaN`, `+Inf`, `-Inf`, else decimal).
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        // Rust's shortest round-trip representation, never in exponent form.
        format!("{v}")
    }
}

/// Errors of [`push`]. Every message names the URL, without credentials.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The Pushgateway URL is not usable.
    #[error("invalid Pushgateway URL {url}: {reason}")]
    InvalidUrl {
        /// The URL as far as it could be read, credentials removed.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A grouping label name is not usable.
    #[error("invalid Pushgateway grouping label {name:?}: {reason}")]
    InvalidLabel {
        /// The label name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// No response (connection, TLS, timeout).
    #[error("PUT {url}: {detail}")]
    Request {
        /// The URL, credentials removed.
        url: String,
        /// The error and its causes.
        detail: String,
    },
    /// The Pushgateway answered with a non-success status.
    #[error("PUT {url}: HTTP {status}: {body}")]
    Status {
        /// The URL, credentials removed.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
}

/// How long one push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// User name and optional password taken out of a URL.
type BasicAuth = (String, Option<String>);

/// Builds the Pushgateway URL for `grouping` and returns it with the credentials found in
/// `base_url` (user, password).
fn push_url(
    base_url: &str,
    grouping: &[(&str, &str)],
) -> Result<(url::Url, Option<BasicAuth>), MetricsError> {
    let mut url = url::Url::parse(base_url.trim()).map_err(|e| MetricsError::InvalidUrl {
        url: redact_unparsed(base_url),
        reason: e.to_string(),
    })?;
    let creds = if url.username().is_empty() && url.password().is_none() {
        None
    } else {
        let user = percent_decode(url.username());
        let pass = url.password().map(percent_decode);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Some((user, pass))
    };
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(MetricsError::InvalidUrl {
            url: url.to_string(),
            reason: "the scheme must be http or https".to_string(),
        });
    }
    if url.cannot_be_a_base() {
        return Err(MetricsError::InvalidUrl {
            url: url.to_string(),
            reason: "not a base URL".to_string(),
        });
    }
    url.set_query(None);
    url.set_fragment(None);

    let mut path = url.path().trim_end_matches('/').to_string();
    path.push_str("/metrics/job/mirrorsync");
    for (name, value) in grouping {
        let valid_name = !name.is_empty()
            && name
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if !valid_name || name.starts_with("__") {
            return Err(MetricsError::InvalidLabel {
                name: name.to_string(),
                reason: "a label name is [a-zA-Z_][a-zA-Z0-9_]* and does not start with __"
                    .to_string(),
            });
        }
        if *name == "job" {
            return Err(MetricsError::InvalidLabel {
                name: name.to_string(),
                reason: "the job is always mirrorsync".to_string(),
            });
        }
        path.push('/');
        path.push_str(name);
        let plain = !value.is_empty()
            && value.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':')
            })
            && *value != "."
            && *value != "..";
        if plain {
            path.push('/');
            path.push_str(value);
        } else if value.is_empty() {
            // The Pushgateway API's form for an empty value.
            path.push_str("@base64/=");
        } else {
            use base64::Engine as _;
            path.push_str("@base64/");
            path.push_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value));
        }
    }
    url.set_path(&path);
    Ok((url, creds))
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a `user:pass@` part from a URL that did not parse, for error messages.
fn redact_unparsed(s: &str) -> String {
    let s = s.trim();
    let (scheme, rest) = match s.find("://") {
        Some(i) => (&s[..i + 3], &s[i + 3..]),
        None => ("", s),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}{}", &rest[at + 1..]),
        None => s.to_string(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn excerpt(body: &str, max: usize) -> String {
    let body = body.trim();
    if body.len() <= max {
        return body.to_string();
    }
    let mut end = max;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &body[..end])
}

/// Pushes `body` (text format 0.0.4, e.g. [`Metrics::render`]) to a Pushgateway, replacing the
/// group: `PUT <base>/metrics/job/mirrorsync/<k>/<v>...` for each `(k, v)` of `grouping`
/// (normally `[("instance", name)]`), with `Content-Type: text/plain; version=0.0.4`.
///
/// Values that are empty or hold anything but `[A-Za-z0-9._~:-]` (a `/` in particular) are sent
/// in the API's base64 form (`/instance@base64/...`, `@base64/=` for empty). Credentials in
/// `base_url` (`https://user:pass@host`) are sent as basic auth and never appear in errors.
/// Errors say the URL and the status with an excerpt of the body, or the transport error.
pub async fn push(
    http: &reqwest::Client,
    base_url: &str,
    grouping: &[(&str, &str)],
    body: String,
) -> Result<(), MetricsError> {
    let (url, creds) = push_url(base_url, grouping)?;
    let shown = url.to_string();
    let mut req = http
        .put(url)
        .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
        .timeout(PUSH_TIMEOUT)
        .body(body);
    if let Some((user, pass)) = creds {
        req = req.basic_auth(user, pass);
    }
    let resp = req.send().await.map_err(|e| MetricsError::Request {
        url: shown.clone(),
        detail: error_chain(&e.without_url()),
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = match tokio::time::timeout(Duration::from_secs(5), resp.text()).await {
        Ok(Ok(t)) => excerpt(&t, 512),
        _ => String::new(),
    };
    Err(MetricsError::Status {
        url: shown,
        status: status.as_u16(),
        body: text,
    })
}

/// Writes a node-exporter textfile atomically: a temporary file in the same directory (its
/// name starts with `.` and does not end in `.prom`, so the collector ignores it), fsync,
/// rename over `path`, then fsync of the directory. Readers see the old or the new content,
/// never a part.
pub fn write_textfile(path: &Path, body: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let file_name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("metrics file {} has no file name", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let with_path = |e: std::io::Error, what: &str, p: &Path| {
        std::io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
    };
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| with_path(e, "creating", &tmp))?;
        f.write_all(body.as_bytes())
            .map_err(|e| with_path(e, "writing", &tmp))?;
        f.sync_all().map_err(|e| with_path(e, "syncing", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| with_path(e, "renaming to", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // Make the rename durable; not every file system lets a directory be opened for this.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Largest request head (request line and headers) the server reads.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head, and to receive the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handled at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// A health check: `Ok(())` when healthy, else the reason.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Serves `GET /metrics` (text format 0.0.4) and `GET /healthz` (200 `ok` when `healthy()` is
/// Ok, else 503 with the reason) on `addr`. A minimal HTTP/1.1 server: one request per
/// connection (`Connection: close`), `HEAD` too, 404 for other paths, 405 for other methods,
/// 400 for malformed requests, 431 for a request head over 8 KiB, 408 for a client that does
/// not send its request within 10 s, and at most 64 connections at once.
///
/// Returns the bound address (bind `127.0.0.1:0` in tests) and the accept loop's task; abort
/// it to stop serving.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    healthy: HealthCheck,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "metrics server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            let healthy = healthy.clone();
            tokio::spawn(async move {
                handle(stream, &metrics, &healthy).await;
                drop(permit);
            });
        }
    });
    Ok((local, task))
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow: false,
        }
    }
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
    Closed,
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        let scan_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf[scan_from..]) {
            let end = scan_from + end;
            if end > MAX_HEAD {
                return Ok(Head::TooLarge);
            }
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// The length of the head including its terminating blank line (CRLF or bare LF).
fn find_head_end(b: &[u8]) -> Option<usize> {
    for i in 0..b.len() {
        if b[i..].starts_with(b"\r\n\r\n") {
            return Some(i + 4);
        }
        if b[i..].starts_with(b"\n\n") {
            return Some(i + 2);
        }
    }
    None
}

async fn handle(mut stream: TcpStream, metrics: &Metrics, healthy: &HealthCheck) {
    let (response, head_only) = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await
    {
        Err(_) => (
            Response::text(408, "Request Timeout", "request timeout\n"),
            false,
        ),
        Ok(Err(_)) | Ok(Ok(Head::Closed)) => return,
        Ok(Ok(Head::TooLarge)) => (
            Response::text(
                431,
                "Request Header Fields Too Large",
                "request header too large\n",
            ),
            false,
        ),
        Ok(Ok(Head::Complete(head))) => route(&head, metrics, healthy),
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.reason,
        response.content_type,
        response.body.len()
    );
    if response.allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&response.body);
    }
    let _ = tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(out.as_bytes()).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

/// Answers one request head; the bool says the method was HEAD (no body in the answer).
fn route(head: &[u8], metrics: &Metrics, healthy: &HealthCheck) -> (Response, bool) {
    let bad = || (Response::text(400, "Bad Request", "bad request\n"), false);
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return bad();
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad();
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(method) || !version.starts_with("HTTP/1.") {
        return bad();
    }
    // origin-form "/path?query", or absolute-form "http://host/path".
    let path = if target.starts_with('/') {
        target
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else {
        return bad();
    };
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let head_only = method == "HEAD";
    let known = matches!(path, "/metrics" | "/healthz");
    if !known {
        return (Response::text(404, "Not Found", "not found\n"), head_only);
    }
    if method != "GET" && !head_only {
        let mut r = Response::text(405, "Method Not Allowed", "method not allowed\n");
        r.allow = true;
        return (r, false);
    }
    let response = if path == "/metrics" {
        Response {
            status: 200,
            reason: "OK",
            content_type: CONTENT_TYPE,
            body: metrics.render(),
            allow: false,
        }
    } else {
        match healthy() {
            Ok(()) => Response::text(200, "OK", "ok\n"),
            Err(reason) => Response::text(
                503,
                "Service Unavailable",
                format!("unhealthy: {}\n", reason.replace(['\r', '\n'], " ")),
            ),
        }
    };
    (response, head_only)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = r#"# HELP mirrorsync_run_last_success_timestamp_seconds Unix time at the end of the last run in which every tag was in sync.
# TYPE mirrorsync_run_last_success_timestamp_seconds gauge
mirrorsync_run_last_success_timestamp_seconds 1700000000.5
# HELP mirrorsync_run_duration_seconds Duration of the last run in seconds.
# TYPE mirrorsync_run_duration_seconds gauge
mirrorsync_run_duration_seconds 12.25
# HELP mirrorsync_run_tags Tags per result of the last run: unchanged, synced, failed, deferred.
# TYPE mirrorsync_run_tags gauge
mirrorsync_run_tags{result="unchanged"} 3
mirrorsync_run_tags{result="synced"} 1
mirrorsync_run_tags{result="failed"} 1
mirrorsync_run_tags{result="deferred"} 0
# HELP mirrorsync_tag_in_sync 1 when the target held the upstream digest at the last check, 0 otherwise.
# TYPE mirrorsync_tag_in_sync gauge
mirrorsync_tag_in_sync{source="docker.io/library/nginx:1.25",target="mirror/library/nginx:1.25"} 1
mirrorsync_tag_in_sync{source="docker.io/library/redis:7.2",target="mirror/library/redis:7.2"} 0
mirrorsync_tag_in_sync{source="odd\\name \"quoted\"\nline",target="t"} 0
# HELP mirrorsync_tag_last_synced_timestamp_seconds Unix time the target was last seen to match upstream.
# TYPE mirrorsync_tag_last_synced_timestamp_seconds gauge
mirrorsync_tag_last_synced_timestamp_seconds{source="docker.io/library/nginx:1.25",target="mirror/library/nginx:1.25"} 1700000000
mirrorsync_tag_last_synced_timestamp_seconds{source="docker.io/library/redis:7.2",target="mirror/library/redis:7.2"} 1699990000
# HELP mirrorsync_tag_lag_seconds Seconds the target has been behind an upstream digest already seen; 0 when in sync.
# TYPE mirrorsync_tag_lag_seconds gauge
mirrorsync_tag_lag_seconds{source="docker.io/library/nginx:1.25",target="mirror/library/nginx:1.25"} 0
mirrorsync_tag_lag_seconds{source="docker.io/library/redis:7.2",target="mirror/library/redis:7.2"} 3600
mirrorsync_tag_lag_seconds{source="odd\\name \"quoted\"\nline",target="t"} 1.5
# HELP mirrorsync_blobs_total Blobs handled, by action: copied from upstream, mounted from another repository of the target, or already present.
# TYPE mirrorsync_blobs_total counter
mirrorsync_blobs_total{action="copied"} 3
mirrorsync_blobs_total{action="mounted"} 2
mirrorsync_blobs_total{action="present"} 0
# HELP mirrorsync_bytes_copied_total Blob bytes pulled from each upstream registry.
# TYPE mirrorsync_bytes_copied_total counter
mirrorsync_bytes_copied_total{registry="docker.io"} 61200000
mirrorsync_bytes_copied_total{registry="quay.io"} 10
# HELP mirrorsync_http_requests_total HTTP requests made, by registry, method and status code ("error" when no response was received).
# TYPE mirrorsync_http_requests_total counter
mirrorsync_http_requests_total{registry="docker.io",method="GET",code="200"} 2
mirrorsync_http_requests_total{registry="docker.io",method="HEAD",code="200"} 1
mirrorsync_http_requests_total{registry="quay.io",method="GET",code="error"} 1
# HELP mirrorsync_ratelimit_remaining Last ratelimit-remaining value seen from the upstream registry.
# TYPE mirrorsync_ratelimit_remaining gauge
mirrorsync_ratelimit_remaining{registry="docker.io"} 97
# HELP mirrorsync_schedule_skipped_passes_total Scheduled passes skipped because the previous pass was still running.
# TYPE mirrorsync_schedule_skipped_passes_total counter
mirrorsync_schedule_skipped_passes_total 1
"#;

    fn populated() -> Arc<Metrics> {
        let m = Metrics::new();
        // Inserted out of order on purpose: the output is sorted.
        m.set_tag(
            "docker.io/library/redis:7.2",
            "mirror/library/redis:7.2",
            false,
            Some(1_699_990_000.0),
            3600.0,
        );
        m.set_tag("odd\\name \"quoted\"\nline", "t", false, None, 1.5);
        m.set_tag(
            "docker.io/library/nginx:1.25",
            "mirror/library/nginx:1.25",
            true,
            Some(1_700_000_000.0),
            0.0,
        );
        m.record_run(
            12.25,
            &[
                (TagRunResult::Unchanged, 2),
                (TagRunResult::Synced, 1),
                (TagRunResult::Failed, 1),
                (TagRunResult::Unchanged, 1),
            ],
            Some(1_700_000_000.5),
        );
        m.add_blobs(BlobAction::Mounted, 2);
        m.add_blobs(BlobAction::Copied, 1);
        m.add_blobs(BlobAction::Copied, 2);
        m.add_bytes_copied("quay.io", 10);
        m.add_bytes_copied("docker.io", 61_200_000);
        m.inc_http_request("quay.io", "GET", "error");
        m.inc_http_request("docker.io", "HEAD", "200");
        m.inc_http_request("docker.io", "GET", "200");
        m.inc_http_request("docker.io", "GET", "200");
        m.set_ratelimit_remaining("docker.io", 99.0);
        m.set_ratelimit_remaining("docker.io", 97.0);
        m.inc_skipped_passes();
        m
    }

    #[test]
    fn renders_golden_text_with_escaping() {
        let m = populated();
        let text = m.render();
        if text != GOLDEN {
            for (i, (a, b)) in text.lines().zip(GOLDEN.lines()).enumerate() {
                assert_eq!(a, b, "line {}", i + 1);
            }
            assert_eq!(text, GOLDEN);
        }
        // Stable: rendering again gives the same bytes.
        assert_eq!(m.render(), text);
    }

    #[test]
    fn empty_metrics_render_the_always_present_families() {
        let text = Metrics::new().render();
        assert!(!text.contains(RUN_LAST_SUCCESS), "{text}");
        assert!(!text.contains(RUN_DURATION), "{text}");
        assert!(!text.contains(TAG_LAG), "{text}");
        for r in ["unchanged", "synced", "failed", "deferred"] {
            assert!(
                text.contains(&format!("mirrorsync_run_tags{{result=\"{r}\"}} 0\n")),
                "{text}"
            );
        }
        for a in ["copied", "mounted", "present"] {
            assert!(
                text.contains(&format!("mirrorsync_blobs_total{{action=\"{a}\"}} 0\n")),
                "{text}"
            );
        }
        assert!(text.contains("mirrorsync_schedule_skipped_passes_total 0\n"));
        // Every sample line belongs to a family announced with HELP and TYPE just before.
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&current), "{line}");
            }
        }
    }

    #[test]
    fn all_results_present_and_last_success_kept() {
        let m = Metrics::new();
        m.record_run(1.0, &[(TagRunResult::Failed, 2)], None);
        let text = m.render();
        assert!(text.contains("mirrorsync_run_tags{result=\"unchanged\"} 0\n"));
        assert!(text.contains("mirrorsync_run_tags{result=\"synced\"} 0\n"));
        assert!(text.contains("mirrorsync_run_tags{result=\"failed\"} 2\n"));
        assert!(text.contains("mirrorsync_run_tags{result=\"deferred\"} 0\n"));
        assert!(text.contains("mirrorsync_run_duration_seconds 1\n"));
        assert!(!text.contains(RUN_LAST_SUCCESS), "absent until a success");

        m.set_last_success(100.0);
        assert!(
            m.render()
                .contains("mirrorsync_run_last_success_timestamp_seconds 100\n")
        );
        m.record_run(2.0, &[(TagRunResult::Synced, 3)], Some(200.0));
        assert_eq!(m.last_success(), Some(200.0));
        m.record_run(3.0, &[(TagRunResult::Deferred, 1)], None);
        let text = m.render();
        assert!(text.contains("mirrorsync_run_last_success_timestamp_seconds 200\n"));
        assert!(
            text.contains("mirrorsync_run_tags{result=\"synced\"} 0\n"),
            "reset per run"
        );
        assert!(text.contains("mirrorsync_run_tags{result=\"deferred\"} 1\n"));
        assert!(text.contains("mirrorsync_run_duration_seconds 3\n"));
    }

    #[test]
    fn retain_tags_drops_unconfigured_series() {
        let m = Metrics::new();
        m.set_tag("a", "ma", true, Some(1.0), 0.0);
        m.set_tag("b", "mb", false, Some(2.0), 5.0);
        m.set_tag("c", "mc", false, None, 7.0);
        m.retain_tags(&|s, t| s == "b" && t == "mb");
        let text = m.render();
        assert!(text.contains("mirrorsync_tag_lag_seconds{source=\"b\",target=\"mb\"} 5\n"));
        assert!(!text.contains("source=\"a\""), "{text}");
        assert!(!text.contains("source=\"c\""), "{text}");
        assert_eq!(m.tag_lag("b", "mb"), Some(5.0));
        assert_eq!(m.tag_lag("a", "ma"), None);
        m.retain_tags(&|_, _| false);
        let text = m.render();
        assert!(
            !text.contains(TAG_IN_SYNC) && !text.contains(TAG_LAG),
            "{text}"
        );
    }

    #[test]
    fn special_values_and_label_escaping() {
        assert_eq!(fmt_f64(f64::NAN), "NaN");
        assert_eq!(fmt_f64(f64::INFINITY), "+Inf");
        assert_eq!(fmt_f64(f64::NEG_INFINITY), "-Inf");
        assert_eq!(fmt_f64(-0.25), "-0.25");
        assert_eq!(fmt_f64(1e21), "1000000000000000000000");
        assert_eq!(escape_label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
    }

    #[test]
    fn concurrent_updates_are_all_counted() {
        let m = Metrics::new();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.add_blobs(BlobAction::Present, 1);
                        m.inc_http_request("r", "GET", "200");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = m.render();
        assert!(text.contains("mirrorsync_blobs_total{action=\"present\"} 8000\n"));
        assert!(text.contains(
            "mirrorsync_http_requests_total{registry=\"r\",method=\"GET\",code=\"200\"} 8000\n"
        ));
    }

    #[test]
    fn textfile_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mirrorsync.prom");
        write_textfile(&path, "old 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old 1\n");

        // A reader that keeps reading while a writer replaces the file sees only whole files.
        let big_a = "a 1\n".repeat(50_000);
        let big_b = "b 2\n".repeat(60_000);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let path = path.clone();
            let stop = stop.clone();
            let (a, b) = (big_a.clone(), big_b.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let got = std::fs::read_to_string(&path).unwrap();
                    assert!(
                        got == "old 1\n" || got == a || got == b,
                        "partial file of {} bytes",
                        got.len()
                    );
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..20 {
            write_textfile(&path, if i % 2 == 0 { &big_a } else { &big_b }).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), big_b);

        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["mirrorsync.prom".to_string()]);

        // A missing directory is an error naming the path.
        let err = write_textfile(&dir.path().join("nope/x.prom"), "x 1\n").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn push_urls() {
        let (u, c) = push_url("http://127.0.0.1:9091", &[("instance", "host-1")]).unwrap();
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:9091/metrics/job/mirrorsync/instance/host-1"
        );
        assert!(c.is_none());
        let (u, c) = push_url(
            "https://robot:s%40cret@pg.example/prefix/",
            &[("instance", "ns/pod"), ("cluster", "")],
        )
        .unwrap();
        assert_eq!(
            u.as_str(),
            "https://pg.example/prefix/metrics/job/mirrorsync/instance@base64/bnMvcG9k/cluster@base64/="
        );
        assert_eq!(c, Some(("robot".to_string(), Some("s@cret".to_string()))));
        assert!(matches!(
            push_url("http://h", &[("job", "x")]),
            Err(MetricsError::InvalidLabel { .. })
        ));
        assert!(matches!(
            push_url("http://h", &[("1x", "x")]),
            Err(MetricsError::InvalidLabel { .. })
        ));
        let e = push_url("ftp://u:pw@h/", &[]).unwrap_err().to_string();
        assert!(e.contains("http or https") && !e.contains("pw"), "{e}");
        let e = push_url("http://u:pw@[bad/", &[]).unwrap_err().to_string();
        assert!(!e.contains("pw"), "{e}");
    }

    #[tokio::test]
    async fn push_errors_name_the_url_without_credentials() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // A port with nothing listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let http = reqwest::Client::new();
        let err = push(
            &http,
            &format!("http://user:hunter2@127.0.0.1:{port}"),
            &[("instance", "i")],
            "x 1\n".into(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!(
                "http://127.0.0.1:{port}/metrics/job/mirrorsync/instance/i"
            )),
            "{err}"
        );
        assert!(!err.contains("hunter2") && !err.contains("user"), "{err}");
    }

    async fn http_get(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn server_answers_metrics_healthz_and_errors() {
        let m = populated();
        let ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let health: HealthCheck = {
            let ok = ok.clone();
            Arc::new(move || {
                if ok.load(std::sync::atomic::Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("last pass 3h ago, older than twice the interval".to_string())
                }
            })
        };
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), m.clone(), health)
            .await
            .unwrap();
        assert_ne!(addr.port(), 0);

        let r = http_get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert_eq!(body, m.render());

        let r = http_get(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        let r = http_get(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 200 OK") && r.ends_with("\r\n\r\n"),
            "{r}"
        );

        let r = http_get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 200 OK") && r.ends_with("\r\n\r\nok\n"),
            "{r}"
        );
        ok.store(false, std::sync::atomic::Ordering::Relaxed);
        let r = http_get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable"), "{r}");
        assert!(r.contains("older than twice the interval"), "{r}");

        let r = http_get(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = http_get(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 405 ") && r.contains("Allow: GET, HEAD"),
            "{r}"
        );

        // Garbage, binary, oversized, and truncated requests.
        for raw in [
            &b"\x00\xff\xfe garbage\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
        ] {
            let r = http_get(addr, raw).await;
            assert!(r.starts_with("HTTP/1.1 400 "), "{raw:?}: {r}");
        }
        let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 20_000));
        let r = http_get(addr, &huge).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /met").await.unwrap();
            drop(s);
        }

        // Still serving after all that.
        let r = http_get(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(!task.is_finished());
        task.abort();
    }

    /// Kills the child process when dropped, so a failing assertion does not leave it running.
    struct KillOnDrop(std::process::Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn promtool_check(text: &str) {
        use std::io::Write as _;
        let mut child = std::process::Command::new("/usr/bin/promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run promtool");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{said}\n{text}"
        );
        assert!(said.trim().is_empty(), "promtool complained:\n{said}");
    }

    #[tokio::test]
    async fn promtool_and_real_pushgateway() {
        let promtool = Path::new("/usr/bin/promtool");
        let gateway = Path::new("/usr/bin/prometheus-pushgateway");
        if !promtool.exists() || !gateway.exists() {
            println!(
                "skipping: /usr/bin/promtool or /usr/bin/prometheus-pushgateway is absent \
                 (apt-get install prometheus prometheus-pushgateway)"
            );
            return;
        }
        let _ = rustls::crypto::ring::default_provider().install_default();

        let m = populated();
        let text = m.render();
        promtool_check(&text);
        promtool_check(&Metrics::new().render());

        // What /metrics serves and what a textfile holds pass too.
        let (addr, task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            m.clone(),
            Arc::new(|| Ok(())),
        )
        .await
        .unwrap();
        let served = http_get(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        task.abort();
        promtool_check(served.split_once("\r\n\r\n").unwrap().1);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mirrorsync.prom");
        write_textfile(&file, &text).unwrap();
        promtool_check(&std::fs::read_to_string(&file).unwrap());

        // A real Pushgateway on a free loopback port.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let _gw = KillOnDrop(
            std::process::Command::new(gateway)
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start prometheus-pushgateway"),
        );
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http.get(format!("{base}/-/ready")).send().await;
            if matches!(&ready, Ok(r) if r.status().is_success()) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pushgateway not ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Credentials in the URL are sent as basic auth (this gateway ignores them).
        let with_creds = format!("http://robot:pw@127.0.0.1:{port}/");
        push(
            &http,
            &with_creds,
            &[("instance", "ns/pod-1")],
            text.clone(),
        )
        .await
        .unwrap();

        let v: serde_json::Value = http
            .get(format!("{base}/api/v1/metrics"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "success", "{v}");
        let groups = v["data"].as_array().unwrap();
        let group = groups
            .iter()
            .find(|g| g["labels"]["instance"] == "ns/pod-1")
            .unwrap_or_else(|| panic!("group not found: {v}"));
        assert_eq!(group["labels"]["job"], "mirrorsync", "{group}");
        assert_eq!(group["last_push_successful"], true, "{group}");
        let expect = [
            (RUN_LAST_SUCCESS, "gauge"),
            (RUN_DURATION, "gauge"),
            (RUN_TAGS, "gauge"),
            (TAG_IN_SYNC, "gauge"),
            (TAG_LAST_SYNCED, "gauge"),
            (TAG_LAG, "gauge"),
            (BLOBS, "counter"),
            (BYTES_COPIED, "counter"),
            (HTTP_REQUESTS, "counter"),
            (RATELIMIT_REMAINING, "gauge"),
            (SKIPPED_PASSES, "counter"),
        ];
        for (name, kind) in expect {
            let fam = &group[name];
            assert!(fam.is_object(), "{name} missing from {group}");
            assert_eq!(
                fam["type"].as_str().unwrap_or("").to_ascii_lowercase(),
                kind,
                "{name}: {fam}"
            );
            let help = fam["help"].as_str().unwrap_or("");
            assert!(
                !help.is_empty() && text.contains(&format!("# HELP {name} {help}\n")),
                "{name} help: {fam}"
            );
        }
        let lag = group[TAG_LAG]["metrics"].as_array().unwrap();
        let odd = lag
            .iter()
            .find(|s| s["labels"]["target"] == "t")
            .unwrap_or_else(|| panic!("{lag:?}"));
        assert_eq!(odd["labels"]["source"], "odd\\name \"quoted\"\nline");
        assert_eq!(odd["value"], "1.5");
        let tags = &group[RUN_TAGS]["metrics"];
        assert_eq!(tags.as_array().unwrap().len(), 4, "{tags}");

        // An empty grouping value uses the base64 form.
        push(&http, &base, &[("instance", "")], Metrics::new().render())
            .await
            .unwrap();
        let v: serde_json::Value = http
            .get(format!("{base}/api/v1/metrics"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let empty = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["labels"]["instance"] == "")
            .unwrap_or_else(|| panic!("group with empty instance not found: {v}"));
        assert_eq!(empty[SKIPPED_PASSES]["type"], "COUNTER", "{empty}");

        // A body the gateway rejects: the error names the URL and status with the body.
        let err = push(
            &http,
            &with_creds,
            &[("instance", "bad")],
            "not a metric line {\n".to_string(),
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, MetricsError::Status { status: 400, .. }),
            "{msg}"
        );
        assert!(
            msg.contains(&format!(
                "http://127.0.0.1:{port}/metrics/job/mirrorsync/instance/bad"
            )),
            "{msg}"
        );
        assert!(!msg.contains("pw"), "{msg}");
        println!("pushgateway round trip checked on port {port}; rejected push said: {msg}");
    }
}
