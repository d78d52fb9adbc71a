//! Errors from talking to a registry: what failed, where, and whether a retry can help.

use std::fmt;
use std::time::Duration;

/// One entry of a registry's `{"errors":[...]}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Registry error code, e.g. `MANIFEST_UNKNOWN`, `DENIED`, `TOOMANYREQUESTS`.
    pub code: String,
    /// Human-readable message the registry sent.
    pub message: String,
}

/// A failure of one registry operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The request never got an HTTP answer (connect, TLS, reset, timeout, body cut short).
    #[error("{method} {url}: {detail}")]
    Transport {
        method: String,
        url: String,
        detail: String,
    },
    /// TLS failed (an untrusted or invalid certificate): retrying cannot help.
    #[error("{method} {url}: TLS: {detail}")]
    Tls {
        method: String,
        url: String,
        detail: String,
    },
    /// The registry answered with an unexpected status.
    #[error("{method} {url}: HTTP {status}{}", describe_api_errors(.errors, .body_excerpt))]
    Status {
        method: String,
        url: String,
        status: u16,
        errors: Vec<ApiError>,
        /// A short, printable excerpt of a body that was not a registry error document.
        body_excerpt: Option<String>,
        retry_after: Option<Duration>,
    },
    /// Authentication failed or was refused.
    #[error("authentication to {host} failed: {reason}")]
    Auth { host: String, reason: String },
    /// The registry answered, but with something we cannot accept (bad header, digest mismatch,
    /// oversized or invalid manifest, redirect loop, ...).
    #[error("{url}: {reason}")]
    Protocol { url: String, reason: String },
}

impl RegistryError {
    /// Whether repeating the same request later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Transport { .. } => true,
            RegistryError::Status { status, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
            }
            RegistryError::Auth { .. }
            | RegistryError::Protocol { .. }
            | RegistryError::Tls { .. } => false,
        }
    }

    /// How long the registry asked us to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status, when the registry answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn protocol(url: impl fmt::Display, reason: impl Into<String>) -> Self {
        // A URL that came from a registry (a Location, a Link) may carry user information or
        // upload state: messages get it redacted.
        let url = url.to_string();
        let url = match url::Url::parse(&url) {
            Ok(parsed) if parsed.has_host() => super::redact(&parsed),
            _ => url,
        };
        RegistryError::Protocol {
            url,
            reason: reason.into(),
        }
    }
}

fn describe_api_errors(errors: &[ApiError], excerpt: &Option<String>) -> String {
    if errors.is_empty() {
        return match excerpt {
            Some(text) if !text.is_empty() => format!(": {text}"),
            _ => String::new(),
        };
    }
    let parts: Vec<String> = errors
        .iter()
        .map(|e| {
            if e.message.is_empty() {
                e.code.clone()
            } else {
                format!("{}: {}", e.code, e.message)
            }
        })
        .collect();
    format!(" ({})", parts.join("; "))
}

/// Parses a registry error body leniently: a JSON `errors` array when there is one, otherwise a
/// short printable excerpt (the abuse limiter's 429 may be HTML or plain text).
pub(crate) fn parse_error_body(body: &[u8]) -> (Vec<ApiError>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(default)]
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: serde_json::Value,
        #[serde(default)]
        message: serde_json::Value,
    }
    fn text(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::String(s) => printable(s, 300),
            serde_json::Value::Null => String::new(),
            other => printable(&other.to_string(), 300),
        }
    }
    if let Ok(doc) = serde_json::from_slice::<Doc>(body)
        && !doc.errors.is_empty()
    {
        let errors = doc
            .errors
            .iter()
            .map(|e| ApiError {
                code: text(&e.code),
                message: text(&e.message),
            })
            .collect();
        return (errors, None);
    }
    let excerpt = printable(&String::from_utf8_lossy(body), 200);
    (Vec::new(), (!excerpt.is_empty()).then_some(excerpt))
}

/// Collapses whitespace and drops control characters so a hostile body cannot forge log lines.
pub(crate) fn printable(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut last_space = true;
    for ch in s.chars() {
        if out.chars().count() >= max_chars {
            out.push('…');
            break;
        }
        if ch.is_whitespace() || ch.is_control() {
            if !last_space {
                out.push(' ');
                last_space = true;
            }
        } else {
            out.push(ch);
            last_space = false;
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_error_documents_and_plain_text() {
        let (errors, excerpt) = parse_error_body(
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#,
        );
        assert_eq!(errors[0].code, "MANIFEST_UNKNOWN");
        assert_eq!(errors[0].message, "manifest unknown");
        assert!(excerpt.is_none());

        let (errors, excerpt) = parse_error_body(b"<html>\n<b>Too Many\r\nRequests</b></html>");
        assert!(errors.is_empty());
        assert_eq!(
            excerpt.as_deref(),
            Some("<html> <b>Too Many Requests</b></html>")
        );
    }

    #[test]
    fn retryable_statuses() {
        let err = |status| RegistryError::Status {
            method: "GET".into(),
            url: "u".into(),
            status,
            errors: vec![],
            body_excerpt: None,
            retry_after: None,
        };
        assert!(err(503).is_retryable());
        assert!(err(429).is_retryable());
        assert!(!err(404).is_retryable());
        assert!(!err(401).is_retryable());
    }
}
