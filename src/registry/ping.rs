//! `GET /v2/`: the first request to a host checks it speaks the API and learns what it asks for
//! (nothing, or the challenge of its 401), once per client; and download connections opened
//! ahead of need.

use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};

use super::auth::{Challenge, parse_challenge};
use super::transport::transport;
use super::{MAX_ERROR_BODY, RegistryClient, RegistryError, read_limited, status_error};

impl RegistryClient {
    /// What a host asks for, learned from its answer to a request sent without credentials:
    /// nothing (200) or the challenge of its 401. `false` for any other answer, and for a 401
    /// without a usable challenge.
    pub(super) async fn learn_challenge(&self, response: &reqwest::Response) -> bool {
        // A challenge counts only from the registry itself, not from where it redirected us.
        if !self.is_own(response.url()) {
            return false;
        }
        let challenge = match response.status() {
            StatusCode::OK => Some(Challenge::Anonymous),
            StatusCode::UNAUTHORIZED => response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge),
            _ => None,
        };
        match challenge {
            Some(challenge) => {
                self.auth.set_challenge(challenge).await;
                true
            }
            None => false,
        }
    }

    /// Opens one more connection for big blob downloads ahead of need, with a `GET /v2/` on it
    /// (answered 200 or 401: cheap either way), so the download that takes it does not wait for
    /// the TCP and TLS handshakes. Failures are left to the download itself.
    pub async fn open_bulk_connection(&self) {
        let Ok(url) = self.url("v2/") else {
            return;
        };
        if let Ok(response) = self
            .send_unauthenticated(Method::GET, &url, HeaderMap::new(), true)
            .await
        {
            // Read to the end, or the connection is not handed back to the pool.
            let _ = read_limited(response, MAX_ERROR_BODY).await;
        }
    }

    /// `GET /v2/`: checks the registry speaks the API and learns its auth challenge.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.retrying("GET /v2/", || self.ping_cached()).await
    }

    /// The first successful ping is remembered, and so is a failure no retry can mend (an
    /// untrusted certificate, refused credentials), so one run does not knock again and again.
    pub(super) async fn ping_cached(&self) -> Result<(), RegistryError> {
        if let Some(fatal) = self.fatal.lock().ok().and_then(|f| f.clone()) {
            return Err(fatal);
        }
        let result = self
            .pinged
            .get_or_try_init(|| self.ping_once())
            .await
            .map(|_| ());
        if let Err(e) = &result
            && !e.is_retryable()
            && let Ok(mut fatal) = self.fatal.lock()
        {
            *fatal = Some(e.clone());
        }
        result
    }

    async fn ping_once(&self) -> Result<(), RegistryError> {
        let url = self.url("v2/")?;
        let response = self
            .send_unauthenticated(Method::GET, &url, HeaderMap::new(), false)
            .await
            .map_err(|e| transport("GET", &url, &e))?;
        if self.learn_challenge(&response).await {
            return Ok(());
        }
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(RegistryError::Auth {
                host: self.host.clone(),
                reason: "GET /v2/ answered 401 without a usable challenge".into(),
            });
        }
        Err(status_error("GET", &url, response).await)
    }
}
