//! Transport failures (no HTTP answer) turned into [`RegistryError`]s that say what to fix, and
//! URLs made fit for messages.

use url::Url;

use super::RegistryError;
use super::error::printable;

pub(super) fn transport(method: &str, url: &Url, error: &reqwest::Error) -> RegistryError {
    let detail = describe_reqwest_error(error);
    if error.is_redirect() {
        // A redirect loop (or more than 10 hops) is bad input: trying again loops again.
        return RegistryError::protocol(redact(url), format!("{method}: {detail}"));
    }
    let lower = detail.to_ascii_lowercase();
    if url.scheme() == "https" && speaks_plain_http(&lower) {
        // Retrying cannot help, and the fix is a setting: say which.
        let host = url.host_str().unwrap_or_default();
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        return RegistryError::Tls {
            method: method.to_string(),
            url: redact(url),
            detail: format!(
                "{host} answered in plain HTTP, not HTTPS; if it is a plain-HTTP registry, set `insecure: true` for it (under `target:` or `registries: \"{host}\":`)"
            ),
        };
    }
    if lower.contains("certificate") || lower.contains("handshake") {
        return RegistryError::Tls {
            method: method.to_string(),
            url: redact(url),
            detail,
        };
    }
    RegistryError::Transport {
        method: method.to_string(),
        url: redact(url),
        detail,
    }
}

/// What rustls reports when the server's first bytes are not a TLS record (a plain-HTTP
/// server answering a ClientHello with `HTTP/1.x 400`).
fn speaks_plain_http(lower_detail: &str) -> bool {
    lower_detail.contains("invalidcontenttype")
        || lower_detail.contains("corrupt message")
        || lower_detail.contains("wrong version number")
}

/// A request URL for messages: upload session state in the query is noise, so it is dropped.
pub(crate) fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    let keep: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| matches!(k.as_ref(), "digest" | "mount" | "from" | "n" | "last"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if keep.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(keep);
    }
    u.to_string()
}

/// reqwest's Display hides the cause ("error sending request"); walk the chain for the reason.
pub(crate) fn describe_reqwest_error(error: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    let text = parts.join(": ");
    let text = match error.url() {
        Some(u) => text.replace(u.as_str(), &redact(u)),
        None => text,
    };
    printable(&text, 400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_upload_state() {
        let url =
            Url::parse("https://u:p@r.example/v2/a/blobs/uploads/x?_state=abc&digest=sha256:1")
                .unwrap();
        assert_eq!(
            redact(&url),
            "https://r.example/v2/a/blobs/uploads/x?digest=sha256%3A1"
        );
    }
}
