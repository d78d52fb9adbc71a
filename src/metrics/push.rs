//! Pushing the rendered metrics to a Prometheus Pushgateway, for `sync --once` in a CronJob.
//!
//! Our own `PUT` over the reqwest client the rest of the crate uses: the `prometheus` crate's
//! `push` feature would pull in a second, blocking HTTP stack.

use std::time::Duration;

use super::CONTENT_TYPE;

/// Errors of [`push`]. Every message names the URL, without credentials.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The Pushgateway URL is not usable.
    #[error("invalid Pushgateway URL {url}: {reason}")]
    InvalidUrl {
        /// The URL as far as it could be read, credentials removed.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A grouping label name is not usable.
    #[error("invalid Pushgateway grouping label {name:?}: {reason}")]
    InvalidLabel {
        /// The label name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// No response (connection, TLS, timeout).
    #[error("PUT {url}: {detail}")]
    Request {
        /// The URL, credentials removed.
        url: String,
        /// The error and its causes.
        detail: String,
    },
    /// The Pushgateway answered with a non-success status.
    #[error("PUT {url}: HTTP {status}: {body}")]
    Status {
        /// The URL, credentials removed.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
}

/// How long one push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// User name and optional password taken out of a URL.
type BasicAuth = (String, Option<String>);

/// Builds the Pushgateway URL for `grouping` and returns it with the credentials found in
/// `base_url` (user, password).
fn push_url(
    base_url: &str,
    grouping: &[(&str, &str)],
) -> Result<(url::Url, Option<BasicAuth>), MetricsError> {
    let mut url = url::Url::parse(base_url.trim()).map_err(|e| MetricsError::InvalidUrl {
        url: redact_unparsed(base_url),
        reason: e.to_string(),
    })?;
    let creds = if url.username().is_empty() && url.password().is_none() {
        None
    } else {
        let user = percent_decode(url.username());
        let pass = url.password().map(percent_decode);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Some((user, pass))
    };
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(MetricsError::InvalidUrl {
            url: url.to_string(),
            reason: "the scheme must be http or https".to_string(),
        });
    }
    if url.cannot_be_a_base() {
        return Err(MetricsError::InvalidUrl {
            url: url.to_string(),
            reason: "not a base URL".to_string(),
        });
    }
    url.set_query(None);
    url.set_fragment(None);

    let mut path = url.path().trim_end_matches('/').to_string();
    path.push_str("/metrics/job/mirrorsync");
    for (name, value) in grouping {
        let valid_name = !name.is_empty()
            && name
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if !valid_name || name.starts_with("__") {
            return Err(MetricsError::InvalidLabel {
                name: name.to_string(),
                reason: "a label name is [a-zA-Z_][a-zA-Z0-9_]* and does not start with __"
                    .to_string(),
            });
        }
        if *name == "job" {
            return Err(MetricsError::InvalidLabel {
                name: name.to_string(),
                reason: "the job is always mirrorsync".to_string(),
            });
        }
        path.push('/');
        path.push_str(name);
        let plain = !value.is_empty()
            && value.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':')
            })
            && *value != "."
            && *value != "..";
        if plain {
            path.push('/');
            path.push_str(value);
        } else if value.is_empty() {
            // The Pushgateway API's form for an empty value.
            path.push_str("@base64/=");
        } else {
            use base64::Engine as _;
            path.push_str("@base64/");
            path.push_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value));
        }
    }
    url.set_path(&path);
    Ok((url, creds))
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a `user:pass@` part from a URL that did not parse, for error messages.
fn redact_unparsed(s: &str) -> String {
    let s = s.trim();
    let (scheme, rest) = match s.find("://") {
        Some(i) => (&s[..i + 3], &s[i + 3..]),
        None => ("", s),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}{}", &rest[at + 1..]),
        None => s.to_string(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn excerpt(body: &str, max: usize) -> String {
    let body = body.trim();
    if body.len() <= max {
        return body.to_string();
    }
    let mut end = max;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &body[..end])
}

/// Pushes `body` (text format 0.0.4, e.g. [`Metrics::render`]) to a Pushgateway, replacing the
/// group: `PUT <base>/metrics/job/mirrorsync/<k>/<v>...` for each `(k, v)` of `grouping`
/// (normally `[("instance", name)]`), with `Content-Type: text/plain; version=0.0.4`.
///
/// Values that are empty or hold anything but `[A-Za-z0-9._~:-]` (a `/` in particular) are sent
/// in the API's base64 form (`/instance@base64/...`, `@base64/=` for empty). Credentials in
/// `base_url` (`https://user:pass@host`) are sent as basic auth and never appear in errors.
/// Errors say the URL and the status with an excerpt of the body, or the transport error.
pub async fn push(
    http: &reqwest::Client,
    base_url: &str,
    grouping: &[(&str, &str)],
    body: String,
) -> Result<(), MetricsError> {
    let (url, creds) = push_url(base_url, grouping)?;
    let shown = url.to_string();
    let mut req = http
        .put(url)
        .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
        .timeout(PUSH_TIMEOUT)
        .body(body);
    if let Some((user, pass)) = creds {
        req = req.basic_auth(user, pass);
    }
    let resp = req.send().await.map_err(|e| MetricsError::Request {
        url: shown.clone(),
        detail: error_chain(&e.without_url()),
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = match tokio::time::timeout(Duration::from_secs(5), resp.text()).await {
        Ok(Ok(t)) => excerpt(&t, 512),
        _ => String::new(),
    };
    Err(MetricsError::Status {
        url: shown,
        status: status.as_u16(),
        body: text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_urls() {
        let (u, c) = push_url("http://127.0.0.1:9091", &[("instance", "host-1")]).unwrap();
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:9091/metrics/job/mirrorsync/instance/host-1"
        );
        assert!(c.is_none());
        let (u, c) = push_url(
            "https://robot:s%40cret@pg.example/prefix/",
            &[("instance", "ns/pod"), ("cluster", "")],
        )
        .unwrap();
        assert_eq!(
            u.as_str(),
            "https://pg.example/prefix/metrics/job/mirrorsync/instance@base64/bnMvcG9k/cluster@base64/="
        );
        assert_eq!(c, Some(("robot".to_string(), Some("s@cret".to_string()))));
        assert!(matches!(
            push_url("http://h", &[("job", "x")]),
            Err(MetricsError::InvalidLabel { .. })
        ));
        assert!(matches!(
            push_url("http://h", &[("1x", "x")]),
            Err(MetricsError::InvalidLabel { .. })
        ));
        let e = push_url("ftp://u:pw@h/", &[]).unwrap_err().to_string();
        assert!(e.contains("http or https") && !e.contains("pw"), "{e}");
        let e = push_url("http://u:pw@[bad/", &[]).unwrap_err().to_string();
        assert!(!e.contains("pw"), "{e}");
    }

    #[tokio::test]
    async fn push_errors_name_the_url_without_credentials() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // A port with nothing listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let http = reqwest::Client::new();
        let err = push(
            &http,
            &format!("http://user:hunter2@127.0.0.1:{port}"),
            &[("instance", "i")],
            "x 1\n".into(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!(
                "http://127.0.0.1:{port}/metrics/job/mirrorsync/instance/i"
            )),
            "{err}"
        );
        assert!(!err.contains("hunter2") && !err.contains("user"), "{err}");
    }
}
