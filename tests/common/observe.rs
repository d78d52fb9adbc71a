//! Observability tools and processes: promtool, plain HTTP GETs, polling, a real Pushgateway
//! and a running `mirrorsync sync` daemon with `--metrics-addr`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::bin::bin_path;
use super::exposition::Exposition;
use super::util::free_port;

pub const PUSHGATEWAY_BIN: &str = "/usr/bin/prometheus-pushgateway";
pub const PROMTOOL_BIN: &str = "/usr/bin/promtool";

/// `promtool check metrics` with `text` on stdin: (exit code, stdout + stderr).
pub fn promtool_check(text: &str) -> (Option<i32>, String) {
    use std::io::Write as _;
    let mut child = Command::new(PROMTOOL_BIN)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    let mut stdin = child.stdin.take().expect("promtool stdin");
    let body = text.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(body.as_bytes());
    });
    let out = child.wait_with_output().expect("promtool output");
    writer.join().expect("promtool writer");
    let mut report = String::from_utf8_lossy(&out.stdout).into_owned();
    report.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code(), report)
}

pub fn assert_promtool_clean(text: &str, what: &str) {
    let (code, report) = promtool_check(text);
    assert_eq!(
        (code, report.trim()),
        (Some(0), ""),
        "promtool check metrics on {what}:\n{report}\n--- input ---\n{text}"
    );
}

/// A plain HTTP client for 127.0.0.1 (no proxy from the environment).
pub fn http() -> reqwest::Client {
    // The first client of a test run alone (a filtered run) needs the provider too.
    super::client::init_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// GET `url`: (status, content type, body); `None` when nothing answered.
pub async fn get(url: &str) -> Option<(u16, String, String)> {
    let resp = http().get(url).send().await.ok()?;
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.text().await.ok()?;
    Some((status, ct, body))
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what()` after `limit`.
pub async fn poll<T, F, Fut>(limit: Duration, what: impl Fn() -> String, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?}: {}", what());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Spawns `program` with stdout and stderr to files in `dir`, killed if the test process dies.
pub fn spawn_logged(program: &Path, args: &[String], dir: &Path) -> Child {
    let out = std::fs::File::create(dir.join("stdout.log")).expect("stdout.log");
    let err = std::fs::File::create(dir.join("stderr.log")).expect("stderr.log");
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    super::util::dies_with_test(&mut cmd);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()))
}

/// A real Pushgateway on 127.0.0.1 (in-memory persistence in its own temp dir); killed on drop.
pub struct Pushgateway {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Pushgateway {
    pub async fn start() -> Pushgateway {
        Self::start_with(None).await
    }

    /// A Pushgateway that answers only requests with Basic auth `user`/`password` (its
    /// `--web.config.file` with a bcrypt hash; `/-/ready` is checked with the credentials).
    pub async fn start_with_basic_auth(user: &str, password: &str) -> Pushgateway {
        Self::start_with(Some((user, password))).await
    }

    async fn start_with(basic_auth: Option<(&str, &str)>) -> Pushgateway {
        let mut last = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let mut args = vec![
                format!("--web.listen-address=127.0.0.1:{port}"),
                // Debian's default persistence file is shared by every instance: use our own.
                format!(
                    "--persistence.file={}",
                    dir.path().join("pg.data").display()
                ),
            ];
            let mut ready = format!("http://127.0.0.1:{port}/-/ready");
            if let Some((user, password)) = basic_auth {
                let hash = bcrypt::hash(password, 5).expect("bcrypt");
                let web = dir.path().join("web.yml");
                std::fs::write(&web, format!("basic_auth_users:\n  {user}: '{hash}'\n"))
                    .expect("write web.yml");
                args.push(format!("--web.config.file={}", web.display()));
                ready = format!("http://{user}:{password}@127.0.0.1:{port}/-/ready");
            }
            let child = spawn_logged(Path::new(PUSHGATEWAY_BIN), &args, dir.path());
            let mut pg = Pushgateway { child, port, dir };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = pg.child.try_wait() {
                    break; // lost the port race
                }
                let log = pg.log();
                if log.contains("Listening on")
                    && log.contains(&format!("127.0.0.1:{port}"))
                    && matches!(get(&ready).await, Some((200, _, _)))
                {
                    return pg;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            last = pg.log();
        }
        panic!("the Pushgateway did not start; last log:\n{last}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The `instance` group's samples as Prometheus text lines, from the Pushgateway's API.
    pub async fn group_text(&self, instance: &str) -> String {
        let body: serde_json::Value = http()
            .get(self.url("/api/v1/metrics"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut out = String::new();
        for g in body["data"].as_array().unwrap() {
            if g["labels"]["instance"].as_str() != Some(instance) {
                continue;
            }
            for (name, family) in g.as_object().unwrap() {
                for m in family["metrics"].as_array().into_iter().flatten() {
                    let labels: std::collections::BTreeMap<String, String> = m["labels"]
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .filter(|(k, _)| *k != "job" && *k != "instance")
                                .map(|(k, v)| {
                                    (k.clone(), v.as_str().unwrap_or_default().to_string())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let labels: Vec<String> =
                        labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                    let value = m["value"].as_str().unwrap_or("NaN");
                    if labels.is_empty() {
                        out.push_str(&format!("{name} {value}\n"));
                    } else {
                        out.push_str(&format!("{name}{{{}}} {value}\n", labels.join(",")));
                    }
                }
            }
        }
        out
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `mirrorsync sync` daemon with `--metrics-addr` on a free port; SIGKILLed and
/// reaped on drop, whatever the test did.
pub struct Daemon {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub started: Instant,
}

impl Daemon {
    /// Starts `mirrorsync sync --config <config> --metrics-addr 127.0.0.1:<port> <extra...>`
    /// and waits until it logs that it serves on that port and `/healthz` answers.
    pub async fn start(config: &Path, extra: &[&str]) -> Daemon {
        let mut last = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let mut args = vec![
                "sync".to_string(),
                "--config".to_string(),
                config.display().to_string(),
                "--metrics-addr".to_string(),
                format!("127.0.0.1:{port}"),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let started = Instant::now();
            let child = spawn_logged(&bin_path(), &args, dir.path());
            let mut d = Daemon {
                child: Some(child),
                port,
                dir,
                started,
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut exited = false;
            while Instant::now() < deadline {
                if d.try_exit().is_some() {
                    exited = true;
                    break;
                }
                let log = d.stderr();
                if log.contains("serving /metrics and /healthz")
                    && log.contains(&format!("127.0.0.1:{port}"))
                    && get(&d.url("/healthz")).await.is_some()
                {
                    return d;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            last = format!("stdout:\n{}\nstderr:\n{}", d.stdout(), d.stderr());
            if !(exited && last.contains("cannot serve metrics")) {
                break; // not a lost port race
            }
        }
        panic!("the daemon did not come up:\n{last}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.as_ref().expect("daemon running").id() as libc::pid_t
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain syscall on our own unreaped child.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// The exit code once the process has exited (-1 when killed by a signal).
    pub fn try_exit(&mut self) -> Option<i32> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        Some(status.code().unwrap_or(-1))
    }

    /// Waits up to `limit` for the process to exit; its exit code, or `None` if still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(code) = self.try_exit() {
                return Some(code);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        format!(
            "--- daemon stdout ---\n{}\n--- daemon stderr ---\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// `/metrics`, parsed; `None` when it does not answer 200.
    pub async fn metrics(&self) -> Option<Exposition> {
        match get(&self.url("/metrics")).await {
            Some((200, _, body)) => Some(Exposition::parse(&body)),
            _ => None,
        }
    }

    /// The `/healthz` status code (0 when nothing answered).
    pub async fn healthz(&self) -> u16 {
        get(&self.url("/healthz")).await.map_or(0, |(s, _, _)| s)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
