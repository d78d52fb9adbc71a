//! Credentials that rotate while a pass runs: a Kubernetes Secret mounted as `password_file` is
//! updated, a sidecar refreshes an ECR token in a file or a Docker `config.json`. When the
//! registry refuses the credentials a client holds (a 401 it cannot get past, a token server
//! that refuses them), [`AuthSlot`] reads them again from where they came from, once, and when
//! they changed, goes on with an authenticator built on the new ones: the request is sent again
//! and the tag does not fail. A real denial costs one read at most every [`REREAD_EVERY`].

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
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
/// and their source holds others. Each replacement is a new generation: a request refused with
/// an older generation than the current one is sent again without reading anything.
pub struct AuthSlot {
    host: String,
    current: RwLock<Held>,
    source: Option<CredentialSource>,
    /// When the credentials were last read again; held across the read, so that requests
    /// refused together wait for one read and then see its outcome.
    last_read: tokio::sync::Mutex<Option<Instant>>,
}

/// The authenticator in use, the credentials it was built on and its generation.
struct Held {
    authenticator: Arc<Authenticator>,
    credentials: Option<Credentials>,
    generation: u64,
}

impl AuthSlot {
    pub fn new(
        host: &str,
        credentials: Option<Credentials>,
        source: Option<CredentialSource>,
    ) -> AuthSlot {
        AuthSlot {
            host: host.to_string(),
            current: RwLock::new(Held {
                authenticator: Arc::new(Authenticator::new(host, credentials.clone())),
                credentials,
                generation: 0,
            }),
            source,
            last_read: tokio::sync::Mutex::new(None),
        }
    }

    fn held(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> (Arc<Authenticator>, u64) {
        let held = self.held();
        (Arc::clone(&held.authenticator), held.generation)
    }

    /// See [`Authenticator::has_credentials`].
    pub fn has_credentials(&self) -> bool {
        self.current().0.has_credentials()
    }

    /// Whether the host was found to ask for nothing (`GET /v2/` answered 200).
    pub async fn asks_nothing(&self) -> bool {
        matches!(
            self.current().0.challenge().await,
            Some(super::auth::Challenge::Anonymous)
        )
    }

    /// See [`Authenticator::set_challenge`].
    pub async fn set_challenge(&self, challenge: Challenge) {
        self.current().0.set_challenge(challenge).await;
    }

    /// See [`Authenticator::authorization`], with the generation of the credentials it came
    /// from (for [`AuthSlot::on_unauthorized`]); a token server that refuses the credentials
    /// makes them be read again, once.
    pub async fn authorization(
        &self,
        client: &RegistryClient,
        scopes: &[String],
    ) -> Result<(Option<HeaderValue>, u64), RegistryError> {
        let (authenticator, generation) = self.current();
        match authenticator.authorization(client, scopes).await {
            Err(RegistryError::Auth { .. }) if self.renewed(generation).await => {
                let (authenticator, generation) = self.current();
                Ok((
                    authenticator.authorization(client, scopes).await?,
                    generation,
                ))
            }
            other => other.map(|value| (value, generation)),
        }
    }

    /// See [`Authenticator::on_unauthorized`], for a request sent with the credentials of
    /// `generation`. When those have been replaced since, the request is sent again with the
    /// new ones; otherwise a denial makes them be read again, once, and the request is sent
    /// again when they changed.
    pub async fn on_unauthorized(
        &self,
        www_authenticate: Option<&str>,
        scopes: &mut Vec<String>,
        tried: u32,
        generation: u64,
    ) -> Retry {
        let (authenticator, current) = self.current();
        match authenticator
            .on_unauthorized(www_authenticate, scopes, tried)
            .await
        {
            Retry::GiveUp(_) if current != generation => Retry::Again,
            Retry::GiveUp(_) if self.renewed(generation).await => Retry::Again,
            other => other,
        }
    }

    /// Reads the credentials again, unless that was done within [`REREAD_EVERY`]; `true` when
    /// the credentials in use are no longer those of `generation`: they changed, and the
    /// authenticator now holds the new ones (from this read, or one that ran meanwhile).
    async fn renewed(&self, generation: u64) -> bool {
        let Some(source) = self.source.clone() else {
            return false;
        };
        let mut last = self.last_read.lock().await;
        if self.held().generation != generation {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < REREAD_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        let fresh = match tokio::task::spawn_blocking(move || source.read()).await {
            Ok(Ok(fresh)) => fresh,
            Ok(Err(e)) => {
                tracing::warn!(registry = %self.host, error = %e, "credentials refused, and reading them again failed");
                return false;
            }
            Err(_) => return false,
        };
        let old = {
            let held = self.held();
            if held.credentials == fresh {
                return false;
            }
            Arc::clone(&held.authenticator)
        };
        let next = Authenticator::new(&self.host, fresh.clone());
        if let Some(challenge) = old.challenge().await {
            next.set_challenge(challenge).await;
        }
        {
            let mut held = self.current.write().unwrap_or_else(|p| p.into_inner());
            *held = Held {
                authenticator: Arc::new(next),
                credentials: fresh,
                generation: held.generation + 1,
            };
        }
        drop(last);
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
        assert!(
            !slot.renewed(slot.current().1).await,
            "unchanged: nothing new to try"
        );
        let slot = AuthSlot::new(
            "r.example",
            Some(Credentials {
                username: "robot".into(),
                password: Secret::new("old"),
            }),
            Some(source),
        );
        std::fs::write(&path, "new\n").unwrap();
        assert!(
            slot.renewed(slot.current().1).await,
            "the new password is taken"
        );
        let held = slot.held().credentials.clone().unwrap();
        assert_eq!(held.password.expose(), "new");
        std::fs::write(&path, "newer\n").unwrap();
        assert!(
            !slot.renewed(slot.current().1).await,
            "read at most once per {REREAD_EVERY:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_refused_together_share_one_read_and_all_go_on_with_the_new_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "new\n").unwrap();
        let slot = Arc::new(AuthSlot::new(
            "r.example",
            Some(Credentials {
                username: "robot".into(),
                password: Secret::new("old"),
            }),
            Some(CredentialSource::PasswordFile {
                username: "robot".into(),
                path,
            }),
        ));
        let sent_with = slot.current().1;
        let refused: Vec<_> = (0..8)
            .map(|_| {
                let slot = Arc::clone(&slot);
                tokio::spawn(async move { slot.renewed(sent_with).await })
            })
            .collect();
        for one in refused {
            assert!(
                one.await.unwrap(),
                "a request refused with the old password gave up while another read the new one"
            );
        }
        assert_eq!(slot.current().1, sent_with + 1, "read and replaced once");
        assert_eq!(
            slot.held().credentials.clone().unwrap().password.expose(),
            "new"
        );
    }
}
