//! Credentials that rotate while a pass runs: a Kubernetes Secret mounted as `password_file` is
//! updated, a sidecar refreshes an ECR token in a file or a Docker `config.json`. When the
//! registry refuses the credentials a client holds (a 401 it cannot get past, a token server
//! that refuses them), [`AuthSlot`] reads them again from where they came from, once, and when
//! they changed, goes on with an authenticator built on the new ones: the request is sent again
//! and the tag does not fail. A real denial costs one read at most every [`REREAD_EVERY`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;

use super::auth::{Authenticator, Challenge, Retry};
use super::{CredentialStore, RegistryClient, RegistryError};
use crate::config::{Credentials, read_password_file};

/// The least time between two reads of one client's credentials after refusals.
const REREAD_EVERY: Duration = Duration::from_secs(10);

/// Where a client's credentials were read from, to read them again.
#[derive(Clone, Debug)]
pub enum CredentialSource {
    /// `auth:` with `password_file`.
    PasswordFile { username: String, path: PathBuf },
    /// The Docker config (its `auths`, or a credential helper) for this registry.
    DockerConfig {
        store: CredentialStore,
        registry: String,
    },
}

impl CredentialSource {
    /// Reads the credentials now (a helper may run: call off the async threads).
    fn read(&self) -> Result<Option<Credentials>, String> {
        match self {
            CredentialSource::PasswordFile { username, path } => Ok(Some(Credentials {
                username: username.clone(),
                password: read_password_file(path)?,
            })),
            CredentialSource::DockerConfig { store, registry } => store
                .reloaded()
                .and_then(|s| s.get(registry))
                .map_err(|e| e.to_string()),
        }
    }
}

/// A host's authenticator, replaced by one with new credentials when the old ones are refused
/// and their source holds others.
pub struct AuthSlot {
    host: String,
    current: RwLock<(Arc<Authenticator>, Option<Credentials>)>,
    source: Option<CredentialSource>,
    last_read: Mutex<Option<Instant>>,
    /// When the credentials were last replaced with ones read again.
    replaced_at: Mutex<Option<Instant>>,
}

impl AuthSlot {
    pub fn new(
        host: &str,
        credentials: Option<Credentials>,
        source: Option<CredentialSource>,
    ) -> AuthSlot {
        AuthSlot {
            host: host.to_string(),
            current: RwLock::new((
                Arc::new(Authenticator::new(host, credentials.clone())),
                credentials,
            )),
            source,
            last_read: Mutex::new(None),
            replaced_at: Mutex::new(None),
        }
    }

    fn current(&self) -> Arc<Authenticator> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()).0)
    }

    /// See [`Authenticator::has_credentials`].
    pub fn has_credentials(&self) -> bool {
        self.current().has_credentials()
    }

    /// See [`Authenticator::set_challenge`].
    pub async fn set_challenge(&self, challenge: Challenge) {
        self.current().set_challenge(challenge).await;
    }

    /// See [`Authenticator::authorization`]; a token server that refuses the credentials makes
    /// them be read again, once.
    pub async fn authorization(
        &self,
        client: &RegistryClient,
        scopes: &[String],
    ) -> Result<Option<HeaderValue>, RegistryError> {
        match self.current().authorization(client, scopes).await {
            Err(RegistryError::Auth { .. }) if self.renewed().await => {
                self.current().authorization(client, scopes).await
            }
            other => other,
        }
    }

    /// See [`Authenticator::on_unauthorized`]; a denial makes the credentials be read again,
    /// once, and the request is sent again when they changed.
    pub async fn on_unauthorized(
        &self,
        www_authenticate: Option<&str>,
        scopes: &mut Vec<String>,
        tried: u32,
    ) -> Retry {
        match self
            .current()
            .on_unauthorized(www_authenticate, scopes, tried)
            .await
        {
            Retry::GiveUp(_) if self.renewed().await => Retry::Again,
            // Sent with the credentials another request has just found refused and replaced:
            // once more with the new ones.
            Retry::GiveUp(_) if tried < 2 && self.replaced_recently() => Retry::Again,
            other => other,
        }
    }

    fn replaced_recently(&self) -> bool {
        self.replaced_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < REREAD_EVERY)
    }

    /// Reads the credentials again (unless that was done within [`REREAD_EVERY`]); `true` when
    /// they changed, and the authenticator now holds the new ones.
    async fn renewed(&self) -> bool {
        let Some(source) = self.source.clone() else {
            return false;
        };
        {
            let mut last = self.last_read.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < REREAD_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let fresh = match tokio::task::spawn_blocking(move || source.read()).await {
            Ok(Ok(fresh)) => fresh,
            Ok(Err(e)) => {
                tracing::warn!(registry = %self.host, error = %e, "credentials refused, and reading them again failed");
                return false;
            }
            Err(_) => return false,
        };
        let old = {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            if current.1 == fresh {
                return false;
            }
            Arc::clone(&current.0)
        };
        let next = Authenticator::new(&self.host, fresh.clone());
        if let Some(challenge) = old.challenge().await {
            next.set_challenge(challenge).await;
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (Arc::new(next), fresh);
        *self.replaced_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        tracing::info!(registry = %self.host, "credentials were refused and have changed since they were read; using the new ones");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[tokio::test]
    async fn a_changed_password_file_is_taken_once_and_an_unchanged_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "old\n").unwrap();
        let credentials = Credentials {
            username: "robot".into(),
            password: Secret::new("old"),
        };
        let source = CredentialSource::PasswordFile {
            username: "robot".into(),
            path: path.clone(),
        };
        let slot = AuthSlot::new("r.example", Some(credentials), Some(source.clone()));
        assert!(!slot.renewed().await, "unchanged: nothing new to try");
        let slot = AuthSlot::new(
            "r.example",
            Some(Credentials {
                username: "robot".into(),
                password: Secret::new("old"),
            }),
            Some(source),
        );
        std::fs::write(&path, "new\n").unwrap();
        assert!(slot.renewed().await, "the new password is taken");
        let held = slot.current.read().unwrap().1.clone().unwrap();
        assert_eq!(held.password.expose(), "new");
        std::fs::write(&path, "newer\n").unwrap();
        assert!(
            !slot.renewed().await,
            "read at most once per {REREAD_EVERY:?}"
        );
    }
}
