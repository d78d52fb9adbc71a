//! A fault-injecting HTTP/1.1 reverse proxy, put between the code under test and a real registry.
//!
//! [`Proxy::start`] listens on `127.0.0.1:0` and forwards every request to the registry (plain
//! HTTP both sides, request headers passed through, `Range` included, redirects not followed),
//! unless a [`Rule`] says otherwise. Rules can be added and cleared while a test runs; each one
//! matches `"METHOD /path/glob"` (`*` matches anything, `/` included; the method may be `*`),
//! applies to some of its matches ([`Times`]) and does one [`Action`]: drop the connection
//! mid-body, answer a status of its own, stall, truncate, flip a byte, rewrite headers, replace
//! the body, redirect, throttle. The first rule whose pattern matches and whose count applies
//! wins; everything else passes through.
//!
//! Every request is recorded ([`Seen`]: method, path, query, headers, arrival time, status and
//! body bytes sent), so a test can count retries, check for `Range` or `Authorization`, and
//! measure requests per second ([`SeenExt`]).
//!
//! [`Proxy::set_quota`] imitates Docker Hub's pull limit: manifest responses carry
//! `ratelimit-limit` / `ratelimit-remaining: N;w=21600`, each manifest GET spends one pull, and
//! a GET with nothing left gets 429 `TOOMANYREQUESTS`.
//!
//! [`Proxy::standalone`] has no registry behind it: a small server that answers from its rules
//! (404 otherwise) and records what it was sent (e.g. the other host of a redirect).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::registry::Registry;
use super::util::parse_v2_path;

/// Which of a rule's matches it applies to (counted from 1, per rule).
#[derive(Clone, Copy, Debug)]
pub enum Times {
    /// Every match.
    All,
    /// The first N matches.
    First(usize),
}

impl Times {
    fn applies(self, n: usize) -> bool {
        match self {
            Times::All => true,
            Times::First(k) => n <= k,
        }
    }
}

/// What to do with a matched request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Forward as is.
    Pass,
    /// Forward, send the response head and K body bytes, then reset the connection (RST).
    DropAfter(u64),
    /// Forward, promise the full `Content-Length` but send only K body bytes, then close (FIN).
    Truncate(u64),
    /// Answer without asking the registry.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// Wait, then forward.
    Stall(Duration),
    /// Forward; after K body bytes, pause for the duration, then send the rest.
    StallBody { after: u64, delay: Duration },
    /// Forward with the body byte at this offset XOR 0xff.
    FlipByte(u64),
    /// Forward with response headers set (replaced) and removed (names case-insensitive).
    Headers {
        set: Vec<(String, String)>,
        remove: Vec<String>,
    },
    /// Forward with the body sent at no more than this many bytes per second.
    Throttle(u64),
    /// Forward, then send the registry's answer with this status instead of its own.
    ForwardAs(u16),
    /// Upload limits: a request body larger than `max_body` bytes is answered `413` with
    /// nginx's HTML page (`client_max_body_size`); `PATCH` bodies are recorded per upload
    /// session and the final `PUT` is refused (400) when any part but the last was smaller than
    /// `min_part` bytes (ECR). Everything else is forwarded.
    UploadLimits { max_body: u64, min_part: u64 },
    /// Forward without the query string (a mount request becomes a plain upload POST).
    StripQuery,
    /// Forward; rewrite the answer's `Location` header.
    RewriteLocation(LocationStyle),
    /// Forward, then send the body this function makes of the registry's body.
    MapBody(fn(&[u8]) -> Vec<u8>),
    /// When the request meets the condition, do the inner action; otherwise forward as is.
    When(Condition, Box<Action>),
}

/// What [`Action::When`] looks at in a request.
#[derive(Clone, Debug)]
pub enum Condition {
    /// The request carries a body (at least one byte).
    HasBody,
    /// The request carries this header (name case-insensitive).
    HasHeader(String),
}

/// How [`Action::RewriteLocation`] rewrites `Location`.
#[derive(Clone, Debug)]
pub enum LocationStyle {
    /// Path and query only (`/v2/a/blobs/uploads/<id>?_state=...`).
    Relative,
    /// The same path and query on another `host:port` (plain HTTP).
    Host(String),
}

impl Action {
    /// A status of our own with a short JSON error body.
    pub fn status(status: u16) -> Action {
        let body = format!(
            r#"{{"errors":[{{"code":"UNAVAILABLE","message":"fault proxy says {status}"}}]}}"#
        );
        Action::Respond {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Bytes::from(body),
        }
    }

    /// A status with these headers and body.
    pub fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Action {
        Action::Respond {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }

    /// 429 with `Retry-After: <retry_after>` (seconds or an HTTP date) and a non-JSON body, like
    /// an abuse limiter's.
    pub fn too_many(retry_after: &str) -> Action {
        Action::respond(
            429,
            &[("Retry-After", retry_after), ("Content-Type", "text/html")],
            "<html><body><h1>429 Too Many Requests</h1>slow down</body></html>\n",
        )
    }

    /// A redirect (301/302/307/308) to `location`.
    pub fn redirect(status: u16, location: &str) -> Action {
        Action::respond(status, &[("Location", location)], Bytes::new())
    }

    /// Set one response header on a forwarded response.
    pub fn set_header(name: &str, value: &str) -> Action {
        Action::Headers {
            set: vec![(name.to_string(), value.to_string())],
            remove: Vec::new(),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::DropAfter(_) => "drop",
            Action::Truncate(_) => "truncate",
            Action::Respond { .. } => "respond",
            Action::Stall(_) => "stall",
            Action::StallBody { .. } => "stall-body",
            Action::FlipByte(_) => "flip",
            Action::Headers { .. } => "headers",
            Action::Throttle(_) => "throttle",
            Action::ForwardAs(_) => "forward-as",
            Action::UploadLimits { .. } => "upload-limits",
            Action::StripQuery => "strip-query",
            Action::RewriteLocation(_) => "location",
            Action::MapBody(_) => "map-body",
            Action::When(_, _) => "when",
        }
    }
}

/// A rule: which requests, how many of them, what to do.
#[derive(Clone, Debug)]
pub struct Rule {
    method: String,
    path: String,
    times: Times,
    action: Action,
}

impl Rule {
    /// `pattern` is `"METHOD /path/glob"` (e.g. `"GET /v2/*/blobs/*"`, `"* /v2/app/*"`); a
    /// pattern containing `?` is matched against path and query, otherwise the path alone.
    /// Applies to every match until [`Rule::times`] says otherwise.
    pub fn new(pattern: &str, action: Action) -> Rule {
        let (method, path) = pattern.split_once(' ').unwrap_or(("*", pattern));
        Rule {
            method: method.to_string(),
            path: path.to_string(),
            times: Times::All,
            action,
        }
    }

    /// Which of its matches the rule applies to.
    pub fn times(mut self, times: Times) -> Rule {
        self.times = times;
        self
    }

    /// The first `n` matches only.
    pub fn first(self, n: usize) -> Rule {
        self.times(Times::First(n))
    }

    fn matches(&self, method: &str, path: &str, query: &str) -> bool {
        if self.method != "*" && !self.method.eq_ignore_ascii_case(method) {
            return false;
        }
        if self.path.contains('?') {
            let full = if query.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{query}")
            };
            glob(self.path.as_bytes(), full.as_bytes())
        } else {
            glob(self.path.as_bytes(), path.as_bytes())
        }
    }
}

/// `*` matches any run of bytes (including `/`); everything else literally.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

/// Handle of a rule, to ask how often it fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleId(u64);

struct LiveRule {
    id: u64,
    rule: Rule,
    seen: usize,
    applied: usize,
}

/// One request as the proxy saw it, and what it sent back.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Query string without `?` (empty if none).
    pub query: String,
    /// Request headers, names lower case, in order.
    pub headers: Vec<(String, String)>,
    /// Arrival time since the proxy started.
    pub at: Duration,
    /// Status sent to the client (0: none, the connection was lost before an answer).
    pub status: u16,
    /// Body bytes actually sent to the client.
    pub body_bytes: u64,
    /// What the proxy did (`pass`, `drop`, `respond`, ... or `quota`).
    pub action: &'static str,
}

impl Seen {
    /// First value of a request header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    /// Whether the request carried an `Authorization` header.
    pub fn has_authorization(&self) -> bool {
        self.header("authorization").is_some()
    }
    /// The `Range` header, if any.
    pub fn range(&self) -> Option<&str> {
        self.header("range")
    }
    /// Repository named in the path.
    pub fn repo(&self) -> Option<String> {
        parse_v2_path(&self.path).map(|(r, _, _)| r)
    }
    /// `manifests`, `blobs`, `uploads` or `tags`.
    pub fn kind(&self) -> Option<&'static str> {
        parse_v2_path(&self.path).map(|(_, k, _)| k)
    }
    /// Tag, digest or upload id in the path.
    pub fn reference(&self) -> Option<String> {
        parse_v2_path(&self.path).map(|(_, _, r)| r)
    }
    /// Whether this is `method` of `kind` (`manifests`, `blobs`) in `repo` (any when None).
    pub fn is(&self, method: &str, kind: &str, repo: Option<&str>) -> bool {
        self.method == method
            && self.kind() == Some(kind)
            && repo.is_none_or(|r| self.repo().as_deref() == Some(r))
    }
}

/// Counting over recorded requests.
pub trait SeenExt {
    /// Requests that are `method` of `kind` in `repo` (any repository when None).
    fn count(&self, method: &str, kind: &str, repo: Option<&str>) -> usize;
    /// Blob GETs for one digest.
    fn blob_gets_of(&self, digest: &str) -> Vec<Seen>;
    /// The most requests that arrived within any window of `window` length.
    fn max_in_window(&self, window: Duration) -> usize;
    /// One line per request, for assertion messages.
    fn dump(&self) -> String;
}

impl SeenExt for [Seen] {
    fn count(&self, method: &str, kind: &str, repo: Option<&str>) -> usize {
        self.iter().filter(|s| s.is(method, kind, repo)).count()
    }
    fn blob_gets_of(&self, digest: &str) -> Vec<Seen> {
        self.iter()
            .filter(|s| s.is("GET", "blobs", None) && s.reference().as_deref() == Some(digest))
            .cloned()
            .collect()
    }
    fn max_in_window(&self, window: Duration) -> usize {
        let mut times: Vec<Duration> = self.iter().map(|s| s.at).collect();
        times.sort();
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..times.len() {
            while times[hi] - times[lo] >= window {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }
    fn dump(&self) -> String {
        self.iter()
            .map(|s| {
                let q = if s.query.is_empty() {
                    String::new()
                } else {
                    format!("?{}", s.query)
                };
                let range = s.range().map(|r| format!(" [{r}]")).unwrap_or_default();
                format!(
                    "{:>8.3}s {} {}{}{} -> {} {}B ({}{})\n",
                    s.at.as_secs_f64(),
                    s.method,
                    s.path,
                    q,
                    range,
                    s.status,
                    s.body_bytes,
                    s.action,
                    if s.has_authorization() { ", auth" } else { "" },
                )
            })
            .collect()
    }
}

struct Shared {
    upstream: Option<String>,
    http: reqwest::Client,
    rules: Mutex<Vec<LiveRule>>,
    next_rule: AtomicU64,
    log: Mutex<Vec<Seen>>,
    /// Docker Hub style pull quota: remaining pulls, when enabled.
    quota: Mutex<Option<u64>>,
    started: Instant,
    /// `http://127.0.0.1:PORT` of this proxy: `Location` headers naming the registry are
    /// rewritten to it, as a reverse proxy passing `Host` through would make them.
    own: String,
    /// Part sizes per upload session path ([`Action::UploadLimits`]).
    parts: Mutex<std::collections::HashMap<String, Vec<u64>>>,
    /// A request-rate cap ([`Proxy::set_rate_cap`]), when enabled.
    rate_cap: Mutex<Option<RateCap>>,
}

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// A proxy in front of `registry` (plain HTTP).
    pub async fn start(registry: &Registry) -> Proxy {
        assert!(!registry.is_tls(), "the fault proxy speaks plain HTTP only");
        Self::start_to(Some(registry.url())).await
    }

    /// A server with no registry behind it: answers from its rules, 404 otherwise.
    pub async fn standalone() -> Proxy {
        Self::start_to(None).await
    }

    /// A proxy forwarding to `upstream` (`http://127.0.0.1:PORT`), or standalone.
    pub async fn start_to(upstream: Option<String>) -> Proxy {
        super::client::init_crypto();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("proxy http client");
        let shared = Arc::new(Shared {
            upstream: upstream.map(|u| u.trim_end_matches('/').to_string()),
            http,
            rules: Mutex::new(Vec::new()),
            next_rule: AtomicU64::new(1),
            log: Mutex::new(Vec::new()),
            quota: Mutex::new(None),
            started: Instant::now(),
            own: format!("http://127.0.0.1:{port}"),
            parts: Mutex::new(std::collections::HashMap::new()),
            rate_cap: Mutex::new(None),
        });
        let accept_shared = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(Arc::clone(&accept_shared), stream));
            }
        });
        Proxy { port, shared, task }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT/<repo>:<tag>`: an image reference through the proxy.
    pub fn image_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host())
    }

    /// Adds a rule after the existing ones.
    pub fn add(&self, rule: Rule) -> RuleId {
        let id = self.shared.next_rule.fetch_add(1, Ordering::Relaxed);
        self.shared.rules.lock().expect("rules").push(LiveRule {
            id,
            rule,
            seen: 0,
            applied: 0,
        });
        RuleId(id)
    }

    /// How many times a rule's action was applied.
    pub fn applied(&self, id: RuleId) -> usize {
        self.shared
            .rules
            .lock()
            .expect("rules")
            .iter()
            .find(|r| r.id == id.0)
            .map(|r| r.applied)
            .unwrap_or(0)
    }

    /// Docker Hub pull quota: `Some(n)` pulls left (manifest GETs spend one each), `None` off.
    pub fn set_quota(&self, remaining: Option<u64>) {
        *self.shared.quota.lock().expect("quota") = remaining;
    }

    /// A cap on the request rate (a token bucket over every request), `None` off: a request
    /// over it is answered 429 without reaching the registry, recorded with the action
    /// `rate-cap`.
    pub fn set_rate_cap(&self, cap: Option<RateCap>) {
        *self.shared.rate_cap.lock().expect("rate cap") = cap;
    }

    /// Pulls left in the imitated quota.
    pub fn quota(&self) -> Option<u64> {
        *self.shared.quota.lock().expect("quota")
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.log.lock().expect("log").clone()
    }

    /// A mark for [`Proxy::since`].
    pub fn mark(&self) -> usize {
        self.shared.log.lock().expect("log").len()
    }

    /// Requests that arrived after `mark`.
    pub fn since(&self, mark: usize) -> Vec<Seen> {
        self.shared.log.lock().expect("log")[mark..].to_vec()
    }

    /// Forgets the recorded requests.
    pub fn reset_log(&self) {
        self.shared.log.lock().expect("log").clear();
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    close: bool,
}

/// Reads one request; `None` at EOF or on garbage.
async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let version = parts.next().unwrap_or("HTTP/1.1").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await.ok()? == 0 {
            return None;
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let close =
        get("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")) || version == "HTTP/1.0";
    let body =
        if get("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let mut size_line = String::new();
                reader.read_line(&mut size_line).await.ok()?;
                let size =
                    usize::from_str_radix(size_line.trim().split(';').next()?.trim(), 16).ok()?;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        let mut t = String::new();
                        if reader.read_line(&mut t).await.ok()? == 0 || t.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                reader.read_exact(&mut body[start..]).await.ok()?;
                let mut crlf = [0u8; 2];
                reader.read_exact(&mut crlf).await.ok()?;
            }
            Bytes::from(body)
        } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let mut body = vec![0u8; n];
            reader.read_exact(&mut body).await.ok()?;
            Bytes::from(body)
        } else {
            Bytes::new()
        };
    Some(Request {
        method,
        target,
        headers,
        body,
        close,
    })
}

/// How a response ended for the connection.
enum Ended {
    KeepAlive,
    Close,
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader).await {
        let close = request.close;
        match handle(&shared, &mut reader, request).await {
            Ended::KeepAlive if !close => {}
            _ => break,
        }
    }
}

fn record(shared: &Shared, index: usize, status: u16, body_bytes: u64) {
    if let Some(s) = shared.log.lock().expect("log").get_mut(index) {
        s.status = status;
        s.body_bytes = body_bytes;
    }
}

async fn handle(shared: &Arc<Shared>, conn: &mut BufReader<TcpStream>, req: Request) -> Ended {
    let at = shared.started.elapsed();
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (req.target.clone(), String::new()),
    };
    let action = {
        let mut rules = shared.rules.lock().expect("rules");
        let mut chosen = Action::Pass;
        for r in rules.iter_mut() {
            if r.rule.matches(&req.method, &path, &query) {
                r.seen += 1;
                if r.rule.times.applies(r.seen) {
                    r.applied += 1;
                    chosen = r.rule.action.clone();
                    break;
                }
            }
        }
        chosen
    };
    let is_manifest = path.starts_with("/v2/") && path.contains("/manifests/");
    // The imitated pull quota: a GET spends one, none left is a 429.
    let mut quota_headers = Vec::new();
    let mut label = action.label();
    let mut action = action;
    if is_manifest && let Some(left) = shared.quota.lock().expect("quota").as_mut() {
        if req.method == "GET" && matches!(action, Action::Pass) {
            if *left == 0 {
                label = "quota";
                action = Action::respond(
                    429,
                    &[
                        ("Content-Type", "application/json"),
                        ("ratelimit-limit", "100;w=21600"),
                        ("ratelimit-remaining", "0;w=21600"),
                    ],
                    r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}"#,
                );
            } else {
                *left -= 1;
            }
        }
        quota_headers.push(("ratelimit-limit".to_string(), "100;w=21600".to_string()));
        quota_headers.push(("ratelimit-remaining".to_string(), format!("{left};w=21600")));
    }
    if matches!(action, Action::Pass)
        && let Some(refusal) = shared
            .rate_cap
            .lock()
            .expect("rate cap")
            .as_mut()
            .and_then(RateCap::refuse)
    {
        label = "rate-cap";
        action = refusal;
    }
    let index = {
        let mut log = shared.log.lock().expect("log");
        log.push(Seen {
            method: req.method.clone(),
            path: path.clone(),
            query,
            headers: req.headers.clone(),
            at,
            status: 0,
            body_bytes: 0,
            action: label,
        });
        log.len() - 1
    };
    let head_only = req.method == "HEAD";
    let action = match action {
        Action::When(condition, then) => {
            let holds = match &condition {
                Condition::HasBody => !req.body.is_empty(),
                Condition::HasHeader(name) => req
                    .headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case(name)),
            };
            if holds { *then } else { Action::Pass }
        }
        other => other,
    };
    let action = match action {
        Action::UploadLimits { max_body, .. } if req.body.len() as u64 > max_body => {
            Action::respond(
                413,
                &[("Content-Type", "text/html")],
                "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
            )
        }
        Action::UploadLimits { min_part: min, .. } => min_part(shared, &req, &path, min),
        other => other,
    };

    if let Action::Respond {
        status,
        headers,
        body,
    } = &action
    {
        let mut all = headers.clone();
        all.extend(quota_headers);
        let ok = write_head(conn, *status, &all, body.len() as u64)
            .await
            .is_ok()
            && (head_only || conn.get_mut().write_all(body).await.is_ok());
        let _ = conn.get_mut().flush().await;
        record(
            shared,
            index,
            *status,
            if head_only { 0 } else { body.len() as u64 },
        );
        return if ok { Ended::KeepAlive } else { Ended::Close };
    }

    let Some(base) = &shared.upstream else {
        let body = Bytes::from_static(b"not found\n");
        let ok = write_head(conn, 404, &[], body.len() as u64).await.is_ok()
            && (head_only || conn.get_mut().write_all(&body).await.is_ok());
        record(shared, index, 404, 0);
        return if ok { Ended::KeepAlive } else { Ended::Close };
    };

    if let Action::Stall(d) = &action {
        tokio::time::sleep(*d).await;
    }

    let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let forward_target = match action {
        Action::StripQuery => path.clone(),
        _ => req.target.clone(),
    };
    let mut rb = shared
        .http
        .request(method, format!("{base}{forward_target}"));
    for (k, v) in &req.headers {
        if matches!(
            k.as_str(),
            "host"
                | "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "content-length"
                | "te"
                | "upgrade"
                | "proxy-connection"
        ) {
            continue;
        }
        rb = rb.header(k.as_str(), v.as_str());
    }
    if !req.body.is_empty() {
        rb = rb.body(req.body.clone());
    }
    let resp = match rb.send().await {
        Ok(r) => r,
        Err(e) => {
            let body = Bytes::from(format!("fault proxy: upstream error: {e}\n"));
            let _ = write_head(conn, 502, &[], body.len() as u64).await;
            let _ = conn.get_mut().write_all(&body).await;
            record(shared, index, 502, body.len() as u64);
            return Ended::Close;
        }
    };
    let status = match action {
        Action::ForwardAs(status) => status,
        _ => resp.status().as_u16(),
    };
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "connection" | "keep-alive" | "transfer-encoding" | "content-length"
            )
        })
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let declared: Option<u64> = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let set_headers = |headers: &mut Vec<(String, String)>, set: &[(String, String)]| {
        for (k, v) in set {
            headers.retain(|(h, _)| !h.eq_ignore_ascii_case(k));
            headers.push((k.clone(), v.clone()));
        }
    };
    set_headers(&mut headers, &quota_headers);
    for (k, v) in headers.iter_mut() {
        if k.eq_ignore_ascii_case("location") {
            *v = rewrite_location(v, base, &shared.own, &action);
        }
    }
    if let Action::Headers { set, remove } = &action {
        for r in remove {
            headers.retain(|(h, _)| !h.eq_ignore_ascii_case(r));
        }
        set_headers(&mut headers, set);
    }
    let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);

    if let Action::MapBody(map) = action
        && !head_only
    {
        let original = resp.bytes().await.unwrap_or_default();
        let body = map(&original);
        let ok = write_head(conn, status, &headers, body.len() as u64)
            .await
            .is_ok()
            && conn.get_mut().write_all(&body).await.is_ok();
        let _ = conn.get_mut().flush().await;
        record(shared, index, status, body.len() as u64);
        return if ok { Ended::KeepAlive } else { Ended::Close };
    }

    if no_body {
        let len = if head_only { declared.unwrap_or(0) } else { 0 };
        let ok = write_head(conn, status, &headers, len).await.is_ok();
        let _ = conn.get_mut().flush().await;
        record(shared, index, status, 0);
        return if ok { Ended::KeepAlive } else { Ended::Close };
    }

    // A body of unknown length is read whole first (error documents); blobs have a length.
    let (length, mut body): (
        u64,
        futures_util::stream::BoxStream<'static, Result<Bytes, reqwest::Error>>,
    ) = match declared {
        Some(n) => (n, resp.bytes_stream().boxed()),
        None => match resp.bytes().await {
            Ok(b) => (
                b.len() as u64,
                futures_util::stream::once(async move { Ok(b) }).boxed(),
            ),
            Err(_) => {
                record(shared, index, 0, 0);
                return Ended::Close;
            }
        },
    };
    if write_head(conn, status, &headers, length).await.is_err() {
        record(shared, index, status, 0);
        return Ended::Close;
    }
    let cut = match action {
        Action::DropAfter(k) | Action::Truncate(k) => Some(k),
        _ => None,
    };
    let started = Instant::now();
    let mut sent = 0u64;
    let mut stalled = false;
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            record(shared, index, status, sent);
            return Ended::Close;
        };
        let mut chunk = chunk;
        if let Action::FlipByte(x) = action
            && x >= sent
            && x < sent + chunk.len() as u64
        {
            let mut v = chunk.to_vec();
            v[(x - sent) as usize] ^= 0xff;
            chunk = Bytes::from(v);
        }
        if let Some(k) = cut
            && sent + chunk.len() as u64 >= k
        {
            let n = (k - sent) as usize;
            let _ = conn.get_mut().write_all(&chunk[..n]).await;
            let _ = conn.get_mut().flush().await;
            sent += n as u64;
            record(shared, index, status, sent);
            if matches!(action, Action::DropAfter(_)) {
                let _ = conn.get_mut().set_zero_linger();
            } else {
                let _ = conn.get_mut().shutdown().await;
            }
            return Ended::Close;
        }
        if let Action::StallBody { after, delay } = action
            && !stalled
            && sent + chunk.len() as u64 > after
        {
            let n = (after.saturating_sub(sent)) as usize;
            if conn.get_mut().write_all(&chunk[..n]).await.is_err() {
                record(shared, index, status, sent);
                return Ended::Close;
            }
            let _ = conn.get_mut().flush().await;
            sent += n as u64;
            tokio::time::sleep(delay).await;
            stalled = true;
            chunk = chunk.slice(n..);
        }
        if let Action::Throttle(rate) = action {
            for piece in chunk.chunks(16 * 1024) {
                if conn.get_mut().write_all(piece).await.is_err() {
                    record(shared, index, status, sent);
                    return Ended::Close;
                }
                sent += piece.len() as u64;
                let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
                let elapsed = started.elapsed();
                if due > elapsed {
                    let _ = conn.get_mut().flush().await;
                    tokio::time::sleep(due - elapsed).await;
                }
            }
            continue;
        }
        if conn.get_mut().write_all(&chunk).await.is_err() {
            record(shared, index, status, sent);
            return Ended::Close;
        }
        sent += chunk.len() as u64;
    }
    let _ = conn.get_mut().flush().await;
    record(shared, index, status, sent);
    if sent != length {
        return Ended::Close;
    }
    Ended::KeepAlive
}

async fn write_head(
    conn: &mut BufReader<TcpStream>,
    status: u16,
    headers: &[(String, String)],
    length: u64,
) -> std::io::Result<()> {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Status");
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {length}\r\n\r\n"));
    conn.get_mut().write_all(head.as_bytes()).await
}

/// A `Location` naming the registry is made to name this proxy; then [`Action::RewriteLocation`]
/// applies.
fn rewrite_location(value: &str, base: &str, own: &str, action: &Action) -> String {
    let value = match value.strip_prefix(base) {
        Some(rest) => format!("{own}{rest}"),
        None => value.to_string(),
    };
    let path_and_query = value.strip_prefix(own).map(str::to_string);
    match (action, path_and_query) {
        (Action::RewriteLocation(LocationStyle::Relative), Some(rest)) => rest,
        (Action::RewriteLocation(LocationStyle::Host(host)), Some(rest)) => {
            format!("http://{host}{rest}")
        }
        _ => value,
    }
}

/// ECR's part rule: every part of an upload but the last must be at least `min` bytes.
fn min_part(shared: &Shared, req: &Request, path: &str, min: u64) -> Action {
    let mut parts = shared.parts.lock().expect("parts");
    match req.method.as_str() {
        "PATCH" => {
            parts
                .entry(path.to_string())
                .or_default()
                .push(req.body.len() as u64);
            Action::Pass
        }
        "PUT" => {
            let mut sizes = parts.remove(path).unwrap_or_default();
            if !req.body.is_empty() {
                sizes.push(req.body.len() as u64);
            }
            let small = sizes.len() > 1 && sizes[..sizes.len() - 1].iter().any(|n| *n < min);
            if small {
                Action::respond(
                    400,
                    &[("Content-Type", "application/json")],
                    format!(
                        r#"{{"errors":[{{"code":"PART_TOO_SMALL","message":"upload parts must be at least {min} bytes except the last: {sizes:?}"}}]}}"#
                    ),
                )
            } else {
                Action::Pass
            }
        }
        _ => Action::Pass,
    }
}

/// A registry's cap on requests per second: a token bucket of `burst` requests refilled at
/// `per_second`; a request that finds it empty is answered `429` (with `Retry-After` when set:
/// the seconds until a token is back, rounded up, as GHCR and ECR hint how long to wait), and
/// does not spend a token.
#[derive(Clone, Debug)]
pub struct RateCap {
    per_second: f64,
    burst: f64,
    retry_after: bool,
    tokens: f64,
    last: Option<Instant>,
}

impl RateCap {
    /// `per_second` requests a second, `burst` at once (the bucket starts full).
    pub fn new(per_second: f64, burst: u32) -> RateCap {
        RateCap {
            per_second,
            burst: burst.max(1) as f64,
            retry_after: false,
            tokens: burst.max(1) as f64,
            last: None,
        }
    }

    /// Refusals carry `Retry-After`.
    pub fn with_retry_after(mut self) -> RateCap {
        self.retry_after = true;
        self
    }

    /// `None` when a token was taken (the request passes), else the 429 to answer.
    fn refuse(&mut self) -> Option<Action> {
        let now = Instant::now();
        if let Some(last) = self.last {
            let refill = now.duration_since(last).as_secs_f64() * self.per_second;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return None;
        }
        let body = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"rate exceeded"}]}"#;
        let wait = ((1.0 - self.tokens) / self.per_second).ceil().max(1.0) as u64;
        let wait = wait.to_string();
        let mut headers = vec![("Content-Type", "application/json")];
        if self.retry_after {
            headers.push(("Retry-After", wait.as_str()));
        }
        Some(Action::respond(429, &headers, body))
    }
}
