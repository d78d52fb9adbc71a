//! The [`CredentialStore`] that reads a Docker `config.json` (`auths`, `credHelpers`,
//! `credsStore`) for registries that have no `auth:` in `sync.yaml`.
//!
//! Helpers are run synchronously (`docker-credential-<name> get`); async callers wrap
//! [`CredentialStore::get`] in `spawn_blocking`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

use crate::config::{Credentials, Secret};
use crate::reference::{DOCKER_HUB, normalize_registry};

/// The server URL Docker uses for Docker Hub in `config.json` and with credential helpers.
const DOCKER_HUB_SERVER_URL: &str = "https://index.docker.io/v1/";

/// Why credentials could not be read from a Docker config or a credential helper.
/// Messages name the file and the helper, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The docker config file could not be read.
    #[error("cannot read docker config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The docker config is not the JSON we expect (only the position is given: the text
    /// around it may be a secret).
    #[error("invalid docker config {}:{line}:{column}: {kind}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        kind: &'static str,
    },
    /// An `auths` entry is malformed.
    #[error("invalid docker config {}: auths.\"{registry}\": {reason}", path.display())]
    InvalidAuth {
        path: PathBuf,
        registry: String,
        reason: String,
    },
    /// A credential helper could not be run or failed.
    #[error("credential helper docker-credential-{helper} (from {}) failed for {server}: {reason}", config.display())]
    Helper {
        helper: String,
        config: PathBuf,
        server: String,
        reason: String,
    },
}

/// Credentials from a Docker `config.json`, looked up by registry host.
#[derive(Debug, Clone, Default)]
pub struct CredentialStore {
    /// The file they came from, for error messages.
    config_path: Option<PathBuf>,
    /// `auths`, keyed by normalised host.
    auths: BTreeMap<String, Credentials>,
    /// `credHelpers`, keyed by normalised host.
    helpers: BTreeMap<String, String>,
    /// `credsStore`: the helper for every host without its own.
    default_helper: Option<String>,
    /// Where to find `docker-credential-*`; `None` searches `PATH`.
    helper_dir: Option<PathBuf>,
}

/// The parts of `config.json` we read; everything else is ignored.
#[derive(Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// What `docker-credential-<name> get` prints.
#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

impl CredentialStore {
    /// Reads a Docker config file; `None` gives an empty store.
    pub fn load(docker_config: Option<&Path>) -> Result<CredentialStore, CredentialError> {
        let Some(path) = docker_config else {
            return Ok(CredentialStore::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Parses the text of a Docker config file read from `path`.
    pub fn from_json(text: &str, path: &Path) -> Result<CredentialStore, CredentialError> {
        let file: DockerConfigFile =
            serde_json::from_str(text).map_err(|e| CredentialError::Parse {
                path: path.to_path_buf(),
                line: e.line(),
                column: e.column(),
                kind: match e.classify() {
                    serde_json::error::Category::Io => "I/O error",
                    serde_json::error::Category::Syntax => "JSON syntax error",
                    serde_json::error::Category::Data => "unexpected value type",
                    serde_json::error::Category::Eof => "unexpected end of file",
                },
            })?;
        let mut auths = BTreeMap::new();
        for (key, entry) in file.auths {
            if let Some(credentials) =
                decode_auth(&entry).map_err(|reason| CredentialError::InvalidAuth {
                    path: path.to_path_buf(),
                    registry: key.clone(),
                    reason,
                })?
            {
                auths.insert(server_host(&key), credentials);
            }
        }
        let helpers = file
            .cred_helpers
            .into_iter()
            .map(|(key, helper)| (server_host(&key), helper))
            .collect();
        Ok(CredentialStore {
            config_path: Some(path.to_path_buf()),
            auths,
            helpers,
            default_helper: file.creds_store.filter(|s| !s.is_empty()),
            helper_dir: None,
        })
    }

    /// The same Docker config read again from its file (helpers looked for where they were).
    pub fn reloaded(&self) -> Result<CredentialStore, CredentialError> {
        let mut store = CredentialStore::load(self.config_path.as_deref())?;
        store.helper_dir = self.helper_dir.clone();
        Ok(store)
    }

    /// Looks for `docker-credential-*` helpers in `dir` instead of on `PATH` (tests).
    #[cfg(test)]
    pub fn with_helper_dir(mut self, dir: impl Into<PathBuf>) -> CredentialStore {
        self.helper_dir = Some(dir.into());
        self
    }

    /// Credentials for a registry host (`docker.io`, `index.docker.io`, `quay.io:443`, ...).
    ///
    /// A helper from `credHelpers` (or else `credsStore`) is asked first; when it has nothing,
    /// `auths` is used, as the Docker CLI does. `Ok(None)`: no credentials for this host.
    pub fn get(&self, host: &str) -> Result<Option<Credentials>, CredentialError> {
        let host = normalize_registry(host);
        let helper = self.helpers.get(&host).or(self.default_helper.as_ref());
        if let Some(helper) = helper {
            if let Some(credentials) = self.run_helper(helper, &host)? {
                return Ok(Some(credentials));
            }
        }
        Ok(self.auths.get(&host).cloned())
    }

    /// Runs `docker-credential-<helper> get` with the server URL on stdin (at most
    /// [`HELPER_TIMEOUT`]: a helper waiting for a desktop prompt must not hang a CronJob).
    fn run_helper(&self, helper: &str, host: &str) -> Result<Option<Credentials>, CredentialError> {
        let server = if host == DOCKER_HUB {
            DOCKER_HUB_SERVER_URL.to_string()
        } else {
            host.to_string()
        };
        let fail = |reason: String| CredentialError::Helper {
            helper: helper.to_string(),
            config: self.config_path.clone().unwrap_or_default(),
            server: server.clone(),
            reason,
        };
        if helper.is_empty() || helper.contains(['/', '\\']) {
            return Err(fail("helper names may not contain path separators".into()));
        }
        let program = format!("docker-credential-{helper}");
        let program = match &self.helper_dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        let mut child = Command::new(&program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", program.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading stdin closes the pipe: not our error.
            match stdin.write_all(server.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(fail(format!("cannot write to the helper: {e}")));
                }
                _ => {}
            }
        }
        let output = wait_with_timeout(child, HELPER_TIMEOUT).map_err(&fail)?;
        if !output.status.success() {
            let said = format!(
                "{} {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            if said.to_ascii_lowercase().contains("not found") {
                return Ok(None);
            }
            let first_line: String = said
                .trim()
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            return Err(fail(format!("{} ({first_line})", output.status)));
        }
        // Never echo stdout in errors: it holds the secret.
        let parsed: HelperOutput = serde_json::from_slice(&output.stdout)
            .map_err(|_| fail("output is not {\"Username\":..,\"Secret\":..} JSON".into()))?;
        Ok(Some(Credentials {
            username: parsed.username,
            password: Secret::new(parsed.secret),
        }))
    }
}

/// `https://index.docker.io/v1/`, `registry.example:5000`, `http://host/v2/` -> normalised host.
fn server_host(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    normalize_registry(host)
}

/// Decodes an `auths` entry; `Ok(None)` for entries that hold nothing (left by `credsStore`).
fn decode_auth(entry: &AuthEntry) -> Result<Option<Credentials>, String> {
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| "`auth` is not valid base64".to_string())?;
        let text = String::from_utf8(bytes).map_err(|_| "`auth` is not UTF-8".to_string())?;
        let Some((username, password)) = text.split_once(':') else {
            return Err("`auth` does not decode to user:password".to_string());
        };
        return Ok(Some(Credentials {
            username: username.to_string(),
            password: Secret::new(password),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(username), Some(password)) if !username.is_empty() => Ok(Some(Credentials {
            username: username.clone(),
            password: Secret::new(password.clone()),
        })),
        _ => Ok(None),
    }
}

/// How long a credential helper may take.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Collects a child's output, killing it when it runs longer than `limit`.
fn wait_with_timeout(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> Result<std::process::Output, String> {
    use std::io::Read;
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no answer within {:.1}s; killed",
                    limit.as_secs_f64()
                ));
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(e) => return Err(format!("cannot wait for the helper: {e}")),
        }
    };
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(json: &str) -> CredentialStore {
        CredentialStore::from_json(json, Path::new("/home/me/.docker/config.json"))
            .expect("valid config")
    }

    #[test]
    fn auths_by_any_server_spelling() {
        // "me:pw1" and "bot:pw:2" in base64.
        let s = store(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "bWU6cHcx"},
                "registry.example:5000": {"auth": "Ym90OnB3OjI="},
                "http://plain.example/v2/": {"username": "u", "password": "p"},
                "empty.example": {}
            }, "HttpHeaders": {"User-Agent": "x"}}"#,
        );
        let hub = s.get("docker.io").unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.expose()),
            ("me", "pw1")
        );
        assert_eq!(s.get("index.docker.io").unwrap(), Some(hub.clone()));
        assert_eq!(s.get("registry-1.docker.io").unwrap(), Some(hub));
        let bot = s.get("registry.example:5000").unwrap().unwrap();
        assert_eq!(bot.password.expose(), "pw:2");
        assert_eq!(s.get("plain.example").unwrap().unwrap().username, "u");
        assert_eq!(s.get("empty.example").unwrap(), None);
        assert_eq!(s.get("quay.io").unwrap(), None);
    }

    #[test]
    fn bad_configs_name_the_file_not_the_secret() {
        let path = Path::new("/cfg/config.json");
        let e = CredentialStore::from_json(r#"{"auths": {"x": {"auth": "!!secret!!"}}}"#, path)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/cfg/config.json") && !e.contains("secret!!"),
            "{e}"
        );
        let e = CredentialStore::from_json(r#"{"auths": {"x": {"auth": 5}}}"#, path)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid docker config /cfg/config.json:1:"),
            "{e}"
        );
        let e = CredentialStore::load(Some(Path::new("/nonexistent/config.json")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/config.json"), "{e}");
        assert!(
            CredentialStore::load(None)
                .unwrap()
                .get("docker.io")
                .unwrap()
                .is_none()
        );
    }

    #[cfg(unix)]
    #[test]
    fn credential_helpers() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let write_helper = |name: &str, body: &str| {
            let path = dir.path().join(format!("docker-credential-{name}"));
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        // Answers for Docker Hub's server URL and quay.io; "not found" otherwise.
        write_helper(
            "fake",
            r#"[ "$1" = get ] || exit 3
read -r url
case "$url" in
  https://index.docker.io/v1/) echo '{"ServerURL":"x","Username":"hubuser","Secret":"hubpw"}' ;;
  quay.io) echo '{"ServerURL":"quay.io","Username":"quser","Secret":"qpw"}' ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac"#,
        );
        write_helper("broken", "echo 'boom: keychain locked' >&2; exit 2");
        write_helper("garbage", "echo 'password=hunter2'");
        let s = store(
            r#"{"credsStore": "fake",
                "credHelpers": {"broken.example": "broken", "garbage.example": "garbage",
                                "missing.example": "nosuchhelper"},
                "auths": {"other.example": {"auth": "bWU6cHcx"}}}"#,
        )
        .with_helper_dir(dir.path());
        let hub = s.get("index.docker.io").unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.expose()),
            ("hubuser", "hubpw")
        );
        assert_eq!(s.get("quay.io").unwrap().unwrap().username, "quser");
        // Helper says not found: fall back to auths, then to nothing.
        assert_eq!(s.get("other.example").unwrap().unwrap().username, "me");
        assert_eq!(s.get("nothing.example").unwrap(), None);
        let e = s.get("broken.example").unwrap_err().to_string();
        assert!(
            e.contains("docker-credential-broken")
                && e.contains("config.json")
                && e.contains("keychain locked"),
            "{e}"
        );
        let e = s.get("garbage.example").unwrap_err().to_string();
        assert!(
            e.contains("docker-credential-garbage") && !e.contains("hunter2"),
            "{e}"
        );
        let e = s.get("missing.example").unwrap_err().to_string();
        assert!(e.contains("docker-credential-nosuchhelper"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_helper_that_hangs_is_killed() {
        let child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let e = wait_with_timeout(child, std::time::Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("no answer within 0.3s"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
