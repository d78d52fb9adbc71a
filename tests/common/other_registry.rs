//! A second registry implementation, not CNCF distribution: `container-registry` from
//! crates.io (the registry of the rockslide PaaS, written against the requests podman and
//! Docker make, on axum). `scripts/test` installs it into `target/tools/bin`;
//! `MIRRORSYNC_OTHER_REGISTRY` names another binary.
//!
//! None of our quirk modes was modelled on it: it is a witness we did not write. It demands
//! Basic auth (challenging only at `/v2/`), refuses a body on the closing upload `PUT` (500
//! "feature not supported") and a manifest pushed by digest (400), and has no access log;
//! results are read back with skopeo and the harness's own [`Client`].

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::client::Client;
use super::util::{dies_with_test, free_port};

/// The user and password it is started with (any user name is accepted).
pub const OTHER_USER: &str = "robot";
pub const OTHER_PASSWORD: &str = "other-registry-secret";

/// Where the binary is: `$MIRRORSYNC_OTHER_REGISTRY`, else `target/tools/bin/container-registry`.
pub fn other_registry_bin() -> PathBuf {
    match std::env::var_os("MIRRORSYNC_OTHER_REGISTRY") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin/container-registry")
        }
    }
}

/// A running `container-registry`; killed and reaped on drop.
pub struct OtherRegistry {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    client: Client,
}

impl OtherRegistry {
    /// Starts it on an ephemeral port with its own storage, requiring [`OTHER_PASSWORD`].
    pub async fn start() -> OtherRegistry {
        let bin = other_registry_bin();
        assert!(
            bin.exists(),
            "{} is missing: `scripts/test` installs it (cargo install container-registry --features bin)",
            bin.display()
        );
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("mirrorsync-other-")
                .tempdir()
                .expect("tempdir");
            std::fs::create_dir_all(dir.path().join("storage")).expect("storage dir");
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
            let mut cmd = Command::new(&bin);
            cmd.arg("--bind")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--storage")
                .arg(dir.path().join("storage"))
                .arg("--password")
                .arg(OTHER_PASSWORD)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log);
            dies_with_test(&mut cmd);
            let child = cmd.spawn().expect("spawn container-registry");
            let creds = Some((OTHER_USER.to_string(), OTHER_PASSWORD.to_string()));
            let mut reg = OtherRegistry {
                child: Some(child),
                client: Client::new(&format!("http://127.0.0.1:{port}"), None, creds),
                dir,
                port,
            };
            if reg.wait_ready().await {
                // It challenges only at `/v2/` (other paths answer a bare 401), as clients
                // ping first: so does the harness's client, to learn Basic.
                let ping = reg.client.get("/v2/").await.expect("GET /v2/");
                assert_eq!(
                    ping.status(),
                    reqwest::StatusCode::OK,
                    "GET /v2/ with credentials"
                );
                return reg;
            }
            reg.kill();
            last_log =
                std::fs::read_to_string(reg.dir.path().join("registry.log")).unwrap_or_default();
        }
        panic!("container-registry did not start after 5 attempts; last log:\n{last_log}");
    }

    /// Polls `GET /v2/` until it answers 401 (its Basic challenge), as long as the process lives.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        let url = format!("http://127.0.0.1:{}/v2/", self.port);
        let http = self.client.http().clone();
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_secs(2), http.get(&url).send()).await
                && r.status() == reqwest::StatusCode::UNAUTHORIZED
                && r.headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("ContainerRegistry"))
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

    /// `http://127.0.0.1:PORT` (for a fault proxy in front of it).
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// The harness's client, with the registry's credentials.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OtherRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}
