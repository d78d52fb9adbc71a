//! A real registry: `/usr/bin/docker-registry serve` (CNCF distribution 2.8) on 127.0.0.1.
//!
//! Each [`Registry`] has its own temp dir (config, storage, logs), an ephemeral port, and is
//! killed and reaped on drop. Its stdout (the access log, one line per request) goes to
//! `access.log`, its stderr (application log) to `registry.log`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::access::{Access, parse_access_log};
use super::client::Client;
use super::tls::TestCa;
use super::token::TokenServer;
use super::util::free_port;

/// Path of the registry binary.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How to start a registry. `Default` is plain HTTP without auth.
#[derive(Default, Clone)]
pub struct RegistryOptions<'a> {
    /// Serve HTTPS with this CA's server certificate.
    pub tls: Option<&'a TestCa>,
    /// Require Basic auth (htpasswd, bcrypt) for this user and password.
    pub htpasswd: Option<(String, String)>,
    /// Require Bearer tokens from this token server.
    pub token: Option<&'a TokenServer>,
}

/// A running registry; killed and reaped on drop.
pub struct Registry {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    tls: bool,
    ca_pem: Option<String>,
    credentials: Option<(String, String)>,
    client: Client,
}

impl Registry {
    /// A plain-HTTP registry without auth.
    pub async fn start() -> Registry {
        Self::start_with(RegistryOptions::default()).await
    }

    /// A registry configured by `opts`. Panics (with the registry's log) if it does not come up.
    pub async fn start_with(opts: RegistryOptions<'_>) -> Registry {
        Self::start_with_realm(opts, None).await
    }

    /// A registry behind a fresh token server (no anonymous pulls) that knows one user.
    pub async fn start_with_token_user(user: &str, password: &str) -> (TokenServer, Registry) {
        let ts = TokenServer::start(vec![(user.into(), password.into())], false);
        let reg = Registry::start_with(RegistryOptions {
            token: Some(&ts),
            ..Default::default()
        })
        .await;
        (ts, reg)
    }

    /// Like [`Registry::start_with`], announcing `token_realm` instead of the token server's
    /// own URL (a proxy in front of it, on another host name).
    pub async fn start_with_realm(
        opts: RegistryOptions<'_>,
        token_realm: Option<String>,
    ) -> Registry {
        let mut dir = tempfile::Builder::new()
            .prefix("mirrorsync-reg-")
            .tempdir()
            .expect("tempdir");
        let mut extra_http = String::new();
        if let Some(ca) = opts.tls {
            let (cert, key) = ca.write_server_files(dir.path());
            extra_http = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        let mut auth = String::new();
        let mut credentials = None;
        if let Some((user, pass)) = &opts.htpasswd {
            let hash = bcrypt::hash(pass, 5).expect("bcrypt");
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, format!("{user}:{hash}\n")).expect("write htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: mirrorsync-test\n    path: {}\n",
                path.display()
            );
            credentials = Some((user.clone(), pass.clone()));
        }
        if let Some(ts) = opts.token {
            assert!(
                opts.htpasswd.is_none(),
                "htpasswd and token auth are exclusive"
            );
            auth = format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                token_realm.clone().unwrap_or_else(|| ts.realm()),
                ts.service(),
                ts.issuer(),
                ts.root_cert_bundle().display()
            );
            credentials = ts.first_user();
        }
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let ca_pem = opts.tls.map(|c| c.ca_pem().to_string());
        let any_cert = opts.tls.is_some_and(|c| c.is_self_signed());

        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let config = registry_config(dir.path(), port, &extra_http, &auth);
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).expect("write config.yml");
            let child = spawn_registry(dir.path(), &config_path);
            let base = format!("{scheme}://127.0.0.1:{port}");
            let client = if any_cert {
                // The harness's own rustls refuses a CA:TRUE leaf too; content is checked by
                // digest, so the harness does not need the certificate check.
                Client::accepting_any_certificate(&base, credentials.clone())
            } else {
                Client::new(&base, ca_pem.as_deref(), credentials.clone())
            };
            let mut reg = Registry {
                child: Some(child),
                dir,
                port,
                tls: opts.tls.is_some(),
                ca_pem: ca_pem.clone(),
                credentials: credentials.clone(),
                client,
            };
            if reg.wait_ready().await {
                return reg;
            }
            last_log = reg.registry_log();
            reg.kill();
            // Take the dir back for the next attempt (Registry implements Drop).
            dir = std::mem::replace(&mut reg.dir, tempfile::tempdir().expect("tempdir"));
        }
        panic!("docker-registry did not start after 5 attempts; last log:\n{last_log}");
    }

    /// Waits for the "listening on" log line, then polls `GET /v2/` until any HTTP answer
    /// (200 or 401); false if the process exits or 15 s pass.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        let probe = self.client.http().clone();
        let url = format!("{}/v2/", self.url());
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false; // exited: most likely lost the port race
            }
            // Only our process writes our log, and distribution logs this line only after a
            // successful bind: a probe answered by someone else's server on a recycled port
            // does not count.
            let listening = self
                .registry_log()
                .contains(&format!("listening on 127.0.0.1:{}", self.port));
            if listening
                && matches!(
                    tokio::time::timeout(Duration::from_secs(2), probe.get(&url).send()).await,
                    Ok(Ok(_))
                )
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        false
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!(
            "{}://127.0.0.1:{}",
            if self.tls { "https" } else { "http" },
            self.port
        )
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// `127.0.0.1:PORT/<repo>:<tag>` (the reference the product's config would use).
    pub fn image_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host())
    }

    /// The credentials the harness uses (htpasswd user, or the token server's first user).
    pub fn credentials(&self) -> Option<(String, String)> {
        self.credentials.clone()
    }

    /// The harness client (authenticated when the registry needs it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A client with no credentials (same TLS trust).
    pub fn anonymous_client(&self) -> Client {
        self.client.anonymous()
    }

    /// The registry's temp dir (config.yml, logs, htpasswd, server cert).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The filesystem storage root (`docker/registry/v2/...` lives below it).
    pub fn storage_root(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's application log (stderr) so far, for failure messages.
    pub fn registry_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// Access-log entries written so far, without waiting for the log to settle.
    pub fn access_log_now(&self) -> Vec<Access> {
        parse_access_log(&std::fs::read_to_string(self.access_log_path()).unwrap_or_default())
    }

    /// Waits until the access log has not grown for 200 ms (the line is written just after the
    /// response is sent, so a client can see the answer before the line exists). Max 5 s.
    pub async fn settle_log(&self) {
        let path = self.access_log_path();
        let len = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = len();
        let mut stable_since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let now = len();
            if now != last {
                last = now;
                stable_since = Instant::now();
            } else if stable_since.elapsed() >= Duration::from_millis(200) {
                return;
            }
        }
    }

    /// Every access-log entry since start (after settling).
    pub async fn access_log(&self) -> Vec<Access> {
        self.settle_log().await;
        self.access_log_now()
    }

    /// Settles the log and returns a mark: pass it to [`Registry::access_log_since`].
    pub async fn log_mark(&self) -> usize {
        self.access_log().await.len()
    }

    /// Entries logged after `mark` (after settling).
    pub async fn access_log_since(&self, mark: usize) -> Vec<Access> {
        self.access_log().await.into_iter().skip(mark).collect()
    }

    /// Gives the htpasswd user a new password (the file replaced whole, as a Secret update
    /// does; distribution reads it again when its modification time changes); the harness's
    /// own client uses the new one from now on.
    pub fn rotate_htpasswd(&mut self, password: &str) {
        let (user, _) = self.credentials.clone().expect("an htpasswd registry");
        let hash = bcrypt::hash(password, 5).expect("bcrypt");
        let path = self.dir.path().join("htpasswd");
        let fresh = self.dir.path().join("htpasswd.new");
        std::fs::write(&fresh, format!("{user}:{hash}\n")).expect("write htpasswd");
        std::fs::rename(&fresh, &path).expect("replace htpasswd");
        self.credentials = Some((user, password.to_string()));
        self.client = Client::new(
            &self.url(),
            self.ca_pem.as_deref(),
            self.credentials.clone(),
        );
    }

    /// Kills and reaps the registry now (e.g. to simulate an outage). Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Process id (None after [`Registry::kill`]).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

fn registry_config(dir: &Path, port: u16, extra_http: &str, auth: &str) -> String {
    // No `storage.cache` (the in-memory blob descriptor cache can hide on-disk state); health
    // checks are off unless configured; access log on (gorilla, to stdout).
    format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
         \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: mirrorsync-test-secret-{port}\n{extra_http}\
         {auth}",
        storage = dir.join("storage").display(),
    )
}

fn spawn_registry(dir: &Path, config: &Path) -> Child {
    let out = std::fs::File::create(dir.join("access.log")).expect("create access.log");
    let err = std::fs::File::create(dir.join("registry.log")).expect("create registry.log");
    let mut cmd = Command::new(REGISTRY_BIN);
    cmd.arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    super::util::dies_with_test(&mut cmd);
    cmd.spawn().expect("spawn /usr/bin/docker-registry")
}
