//! The one way a request leaves a [`RegistryClient`]: [`RegistryClient::send`] (with the
//! registry's credentials and a bounded retry on 401) or [`RegistryClient::send_unauthenticated`]
//! (as built: the ping, a token request), both through `exchange`, which keeps the request
//! within the host's rate and its learned window and pace ([`super::throttle`]), counts it in
//! the metrics and notes the pull quota its answer reports.
//!
//! The reqwest clients live in [`Connections`], whose fields only this module can reach, so no
//! other code can build a request that skips `exchange`.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};
use url::Url;

use super::auth::Retry;
use super::transport::transport;
use super::{RegistryClient, RegistryError, origin, redact, throttle, tls};

/// HTTP/2 flow-control window of a connection (all streams together).
const H2_CONNECTION_WINDOW: u32 = 16 << 20;
/// HTTP/2 flow-control window of one stream (one blob).
const H2_STREAM_WINDOW: u32 = 4 << 20;

/// The longest an idle read may wait before the request counts as stalled.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A body we may send more than once (so a 401 can be retried) or a one-shot stream.
pub enum RequestBody {
    Empty,
    Bytes(Bytes, &'static str),
    Stream {
        body: reqwest::Body,
        length: u64,
        range: Option<(u64, u64)>,
    },
}

/// The HTTP clients of one host. Over HTTP/2 every request to the host shares one connection,
/// and a server sends what it has queued on it in order: a small answer (a manifest, a config
/// blob) waits behind the megabytes of layers already in the pipe, a few round trips on a long
/// link; and the one connection is one flow, whose part of a link shared with other flows is
/// small. A `bulk` request (a layer download) therefore goes on an HTTP/1.1 connection of its
/// own, as a browser's downloads do, and the shared one stays quick for the small requests.
pub(super) struct Connections {
    http: reqwest::Client,
    /// For layer downloads over TLS: HTTP/1.1, a connection per transfer (for plain HTTP, the
    /// same client as `http`).
    bulk: reqwest::Client,
}

impl Connections {
    pub(super) fn new(
        trust: &tls::HostTrust,
        host: &str,
        insecure: bool,
    ) -> Result<Connections, RegistryError> {
        let http = build_http_client(trust, host, false)?;
        // Plain HTTP is HTTP/1.1 anyway (a connection per request in flight): one pool.
        let bulk = if insecure {
            http.clone()
        } else {
            build_http_client(trust, host, true)?
        };
        Ok(Connections { http, bulk })
    }

    fn request(&self, method: Method, url: Url, bulk: bool) -> reqwest::RequestBuilder {
        let client = if bulk { &self.bulk } else { &self.http };
        client.request(method, url)
    }
}

impl RegistryClient {
    /// Sends one request within the host's request rate and its learned window and pace
    /// ([`throttle`]), counts it in the metrics, and notes the pull quota its answer reports.
    /// No retry, no authentication: callers add those.
    async fn exchange(
        &self,
        method: &str,
        request: reqwest::RequestBuilder,
        bulk: bool,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let (http, request) = request.build_split();
        let request = request?;
        let small = !bulk && !throttle::streams(&request);
        let ticket = self.throttle.admit(small).await;
        self.limits.request().await;
        let out = small.then(|| self.small.sent());
        let sent = http.execute(request).await;
        if let (Some(out), Ok(_)) = (out, &sent) {
            out.answered();
        }
        self.throttle_answered(ticket, &sent);
        self.observe(method, &sent);
        if let Ok(response) = &sent {
            self.note_ratelimit(response.headers());
        }
        sent
    }

    /// Sends a request as given, without the registry's credentials and without a retry (the
    /// ping, a manifest `HEAD` in place of it, a token request to the auth realm), through
    /// `exchange` like every other.
    pub(super) async fn send_unauthenticated(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        bulk: bool,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let name = method.as_str().to_string();
        let request = self
            .connections
            .request(method, url.clone(), bulk)
            .headers(headers);
        self.exchange(&name, request, bulk).await
    }

    /// The one place endpoint requests are built and sent: authentication, and a bounded retry
    /// on 401. A `bulk` request goes on a connection of its own (see [`Connections`]).
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        mut scopes: Vec<String>,
        headers: HeaderMap,
        body: RequestBody,
        bulk: bool,
    ) -> Result<reqwest::Response, RegistryError> {
        self.ping_cached().await?;
        let mut body = Some(body);
        let mut tried = 0;
        loop {
            let mut request = self
                .connections
                .request(method.clone(), url.clone(), bulk)
                .headers(headers.clone());
            let own = self.is_own(&url);
            let mut generation = 0;
            if own {
                let (value, held) = self.auth.authorization(self, &scopes).await?;
                generation = held;
                if let Some(value) = value {
                    request = request.header(header::AUTHORIZATION, value);
                }
            }
            let replayable = !matches!(body, Some(RequestBody::Stream { .. }));
            let request = attach(request, &mut body);
            let response = self
                .exchange(method.as_str(), request, bulk)
                .await
                .map_err(|e| transport(method.as_str(), &url, &e))?;
            tracing::debug!(method = %method, url = %redact(&url), status = response.status().as_u16(), "registry request");
            if response.status() == StatusCode::UNAUTHORIZED
                && !(own && self.is_own(response.url()))
            {
                return Err(origin::foreign_challenge(
                    &self.host,
                    &self.base,
                    method.as_str(),
                    &url,
                    response.url(),
                ));
            }
            if response.status() != StatusCode::UNAUTHORIZED || !replayable {
                return Ok(response);
            }
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match self
                .auth
                .on_unauthorized(challenge.as_deref(), &mut scopes, tried, generation)
                .await
            {
                Retry::Again => tried += 1,
                Retry::GiveUp(err) => return Err(err),
            }
        }
    }

    fn observe(&self, method: &str, sent: &Result<reqwest::Response, reqwest::Error>) {
        if let Some(observer) = &self.observer {
            let code = match sent {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            observer.request(&self.label, method, &code);
        }
    }
}

/// Puts `body` on `request`. A body that can be sent again stays in `body` for a retry on 401;
/// a stream is taken (and `body` left empty).
fn attach(
    request: reqwest::RequestBuilder,
    body: &mut Option<RequestBody>,
) -> reqwest::RequestBuilder {
    let request = match body.take() {
        None | Some(RequestBody::Empty) => request,
        Some(RequestBody::Bytes(bytes, content_type)) => {
            *body = Some(RequestBody::Bytes(bytes.clone(), content_type));
            request
                .header(header::CONTENT_TYPE, content_type)
                .body(bytes)
        }
        Some(RequestBody::Stream {
            body: stream,
            length,
            range,
        }) => {
            let mut r = request
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_LENGTH, length);
            if let Some((start, end)) = range {
                r = r.header("Content-Range", format!("{start}-{end}"));
            }
            r.body(stream)
        }
    };
    if body.is_none() {
        *body = Some(RequestBody::Empty);
    }
    request
}

/// The HTTP client of one host: HTTP/2 when the server offers it over ALPN, or, for `bulk`
/// transfers, HTTP/1.1 only.
fn build_http_client(
    trust: &tls::HostTrust,
    host: &str,
    bulk: bool,
) -> Result<reqwest::Client, RegistryError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("mirrorsync/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(10))
        // HTTP/2 when the server offers it over ALPN: every request to a host shares one
        // connection (one TCP and TLS handshake). Its flow-control windows must cover the
        // link's bandwidth x RTT from the first byte (an adaptive window starts at 64 KiB and
        // takes many round trips to grow): 16 MiB fills 1 Gbit/s at 130 ms.
        .http2_initial_connection_window_size(H2_CONNECTION_WINDOW)
        .http2_initial_stream_window_size(H2_STREAM_WINDOW);
    if bulk {
        builder = builder.http1_only();
    }
    builder
        .tls_backend_preconfigured(trust.client_config(host, bulk)?)
        .build()
        .map_err(|e| RegistryError::protocol(host, format!("building HTTP client: {e}")))
}
