//! The one way a client is built from the configuration: a configured [`Endpoint`] (host,
//! plain HTTP or not, extra CA, `auth:` credentials), the Docker config's credentials when the
//! endpoint has none, and how this client is used (label, limits, retries, observer). `check
//! --connect`, the engine's target and every upstream (origin and mirrors) go through it.

use std::sync::Arc;

use super::{
    ClientOptions, CredentialError, CredentialSource, CredentialStore, RegistryClient,
    RegistryError,
};
use super::{RequestObserver, RetryPolicy};
use crate::config::{Endpoint, LimitSettings};

/// How a client is used, beyond where it connects.
#[derive(Clone)]
pub struct Usage {
    /// The name used in metrics and messages ("docker.io", "target").
    pub label: String,
    pub limits: LimitSettings,
    pub retry: RetryPolicy,
    pub observer: Option<Arc<dyn RequestObserver>>,
    /// The most requests in flight to the host (its adaptive window's ceiling).
    pub max_in_flight: usize,
}

impl Usage {
    /// No limits, default retries, no observer.
    #[cfg(test)]
    pub fn new(label: impl Into<String>) -> Usage {
        Usage {
            label: label.into(),
            limits: LimitSettings::default(),
            retry: RetryPolicy::default(),
            observer: None,
            max_in_flight: super::DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The Docker config's credentials (or its credential helper) failed.
    #[error("{0}")]
    Credentials(#[from] CredentialError),
    /// The credential lookup task itself failed (it panicked).
    #[error("credential lookup: {0}")]
    Lookup(String),
    #[error("{0}")]
    Client(#[from] RegistryError),
}

impl RegistryClient {
    /// A client for `endpoint`. Credentials: the endpoint's own (`auth:`); else, with `docker`
    /// = (store, registry name), what the Docker config holds for that registry (a credential
    /// helper runs off the async threads); else anonymous. No request is made.
    pub async fn for_endpoint(
        endpoint: &Endpoint,
        docker: Option<(&CredentialStore, &str)>,
        usage: Usage,
    ) -> Result<RegistryClient, EndpointError> {
        let (credentials, reread) = match (&endpoint.credentials, docker) {
            (Some(own), _) => (
                Some(own.clone()),
                endpoint
                    .password_file
                    .clone()
                    .map(|path| CredentialSource::PasswordFile {
                        username: own.username.clone(),
                        path,
                    }),
            ),
            (None, Some((store, registry))) => {
                let source = CredentialSource::DockerConfig {
                    store: store.clone(),
                    registry: registry.to_string(),
                };
                let (store, registry) = (store.clone(), registry.to_string());
                let found = tokio::task::spawn_blocking(move || store.get(&registry))
                    .await
                    .map_err(|e| EndpointError::Lookup(e.to_string()))??;
                (found, Some(source))
            }
            (None, None) => (None, None),
        };
        let mut options = ClientOptions::new(
            &endpoint.host,
            endpoint.insecure,
            endpoint.ca_file.clone(),
            credentials,
        );
        options.label = usage.label;
        options.limits = usage.limits;
        options.retry = usage.retry;
        options.observer = usage.observer;
        options.max_in_flight = usage.max_in_flight;
        options.reread = reread;
        Ok(RegistryClient::new(options)?)
    }
}

/// The endpoint of a pull-through mirror URL (`http://host:port` is plain HTTP); `None` when the
/// URL has no host. Mirrors are asked anonymously, with the system's CAs.
pub fn mirror_endpoint(url: &str) -> Option<Endpoint> {
    let u = url::Url::parse(url).ok()?;
    let host = match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => return None,
    };
    Some(Endpoint {
        host,
        insecure: u.scheme() == "http",
        ca_file: None,
        credentials: None,
        password_file: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Credentials, Secret};

    #[test]
    fn mirror_urls() {
        let m = mirror_endpoint("http://127.0.0.1:5000").unwrap();
        assert_eq!((m.host.as_str(), m.insecure), ("127.0.0.1:5000", true));
        let m = mirror_endpoint("https://mirror.example.com/").unwrap();
        assert_eq!((m.host.as_str(), m.insecure), ("mirror.example.com", false));
        assert!(m.credentials.is_none() && m.ca_file.is_none());
        assert!(mirror_endpoint("not a url").is_none());
    }

    #[tokio::test]
    async fn own_credentials_win_and_a_broken_helper_is_an_error() {
        let store = CredentialStore::from_json(
            r#"{"credsStore":"absent-helper-for-this-test"}"#,
            std::path::Path::new("/tmp/config.json"),
        )
        .unwrap()
        .with_helper_dir("/nonexistent");
        let mut endpoint = Endpoint {
            host: "registry.example.com".into(),
            insecure: false,
            ca_file: None,
            credentials: Some(Credentials {
                username: "me".into(),
                password: Secret::new("pw"),
            }),
            password_file: None,
        };
        // `auth:` credentials: the Docker config is not consulted at all.
        let client = RegistryClient::for_endpoint(
            &endpoint,
            Some((&store, "registry.example.com")),
            Usage::new("x"),
        )
        .await;
        assert!(client.is_ok());
        // Without them the helper is run, and its failure names it.
        endpoint.credentials = None;
        let err = RegistryClient::for_endpoint(
            &endpoint,
            Some((&store, "registry.example.com")),
            Usage::new("x"),
        )
        .await
        .err()
        .expect("the helper cannot run");
        assert!(matches!(err, EndpointError::Credentials(_)), "{err}");
        assert!(
            err.to_string().contains("absent-helper-for-this-test"),
            "{err}"
        );
        // No store: anonymous.
        assert!(
            RegistryClient::for_endpoint(&endpoint, None, Usage::new("x"))
                .await
                .is_ok()
        );
    }
}
