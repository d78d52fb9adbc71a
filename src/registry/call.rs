//! One endpoint call: build the request, send it (through [`RegistryClient::send`]), retry it
//! when it is idempotent and the failure is worth another try, and sort the answer into the
//! statuses the endpoint accepts and everything else (an error carrying the registry's message).
//!
//! Every endpoint in `blobs.rs`, `manifests.rs` and `tags.rs` is one [`Call`] plus what it
//! reads from the answer, so the retry, the status check and the error text live here once.

use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};
use url::Url;

use super::error::parse_error_body;
use super::{
    MAX_ERROR_BODY, RegistryClient, RegistryError, RequestBody, parse_retry_after, read_limited,
    redact,
};

/// Which statuses an endpoint accepts as its answer (anything else is an error).
#[derive(Clone, Copy)]
pub(super) enum Statuses {
    /// Exactly this status.
    Only(StatusCode),
    /// Any 2xx: where the spec says 202 or 201, some registries answer another success (ECR
    /// answers a `PATCH` with 201), and the body or headers say what happened.
    AnySuccess,
}

impl Statuses {
    fn contain(self, status: StatusCode) -> bool {
        match self {
            Statuses::Only(s) => status == s,
            Statuses::AnySuccess => status.is_success(),
        }
    }
}

/// A request to one endpoint.
pub(super) struct Call {
    /// For log lines about retries ("HEAD manifest").
    pub what: &'static str,
    pub method: Method,
    pub url: Url,
    pub scopes: Vec<String>,
    pub headers: HeaderMap,
    pub accepted: Statuses,
    /// `404` is an answer ("absent"), not an error.
    pub missing_ok: bool,
    /// Sent on a connection of its own (see [`RegistryClient::send`]).
    pub bulk: bool,
}

impl Call {
    pub fn new(what: &'static str, method: Method, url: Url, scopes: Vec<String>) -> Call {
        Call {
            what,
            method,
            url,
            scopes,
            headers: HeaderMap::new(),
            accepted: Statuses::Only(StatusCode::OK),
            missing_ok: false,
            bulk: false,
        }
    }

    /// A big body: on a connection of its own, not multiplexed with the small requests.
    pub fn bulk(mut self, bulk: bool) -> Call {
        self.bulk = bulk;
        self
    }

    pub fn headers(mut self, headers: HeaderMap) -> Call {
        self.headers = headers;
        self
    }

    /// The statuses this endpoint answers with (200 unless set).
    pub fn accepting(mut self, statuses: Statuses) -> Call {
        self.accepted = statuses;
        self
    }

    pub fn missing_ok(mut self) -> Call {
        self.missing_ok = true;
        self
    }
}

/// A body that can be sent again on a retry.
#[derive(Clone)]
pub(super) enum Replayable {
    Empty,
    Bytes(Bytes, &'static str),
}

impl From<Replayable> for RequestBody {
    fn from(body: Replayable) -> RequestBody {
        match body {
            Replayable::Empty => RequestBody::Empty,
            Replayable::Bytes(bytes, content_type) => RequestBody::Bytes(bytes, content_type),
        }
    }
}

impl RegistryClient {
    /// Sends `call` with a body that can be repeated, retrying retryable failures with backoff.
    /// `Ok(None)` is a 404 when the call allows it; `Ok(Some(response))` an accepted status.
    pub(super) async fn call(
        &self,
        call: &Call,
        body: Replayable,
    ) -> Result<Option<reqwest::Response>, RegistryError> {
        self.retrying(call.what, || self.call_once(call, body.clone().into()))
            .await
    }

    /// Sends `call` once: for one-shot (streamed) bodies, or where the caller retries a larger
    /// unit of work itself.
    pub(super) async fn call_once(
        &self,
        call: &Call,
        body: RequestBody,
    ) -> Result<Option<reqwest::Response>, RegistryError> {
        let response = self
            .send(
                call.method.clone(),
                call.url.clone(),
                call.scopes.clone(),
                call.headers.clone(),
                body,
                call.bulk,
            )
            .await?;
        let status = response.status();
        if call.accepted.contain(status) {
            Ok(Some(response))
        } else if call.missing_ok && status == StatusCode::NOT_FOUND {
            Ok(None)
        } else {
            Err(status_error(call.method.as_str(), &call.url, response).await)
        }
    }

    /// Like [`RegistryClient::call`], then reads the answer with `read` inside the same retry,
    /// so a body cut short is fetched again.
    pub(super) async fn call_and_read<T, F, Fut>(
        &self,
        call: &Call,
        read: F,
    ) -> Result<Option<T>, RegistryError>
    where
        F: Fn(reqwest::Response) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        self.retrying(call.what, || async {
            match self.call_once(call, RequestBody::Empty).await? {
                Some(response) => read(response).await.map(Some),
                None => Ok(None),
            }
        })
        .await
    }
}

/// Turns an unexpected response into an error carrying the registry's code and message.
pub(super) async fn status_error(
    method: &str,
    url: &Url,
    response: reqwest::Response,
) -> RegistryError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = if method == "HEAD" {
        Bytes::new()
    } else {
        read_limited(response, MAX_ERROR_BODY)
            .await
            .unwrap_or_default()
    };
    let (errors, body_excerpt) = parse_error_body(&body);
    RegistryError::Status {
        method: method.to_string(),
        url: redact(url),
        status,
        errors,
        body_excerpt,
        retry_after,
    }
}
