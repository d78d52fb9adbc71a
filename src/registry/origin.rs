//! Where a registry's credentials may go: its own scheme, host and port, and nowhere else.
//!
//! [`RegistryClient::send`] attaches credentials only to URLs of
//! the registry's origin and follows a 401 challenge only from a response whose final URL is
//! there; a 401 from anywhere else (a CDN a blob download was redirected to, an upload
//! `Location` on another host) becomes the error made here.

use url::Url;

use super::{RegistryClient, RegistryError, redact};

/// Same scheme, host and port (the port a scheme implies counts as given).
pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// An http(s) URL without user information: what a `Location`, a `Link` or a token realm
/// from a registry must be.
pub(crate) fn is_web_url(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https")
        && url.username().is_empty()
        && url.password().is_none()
}

impl RegistryClient {
    /// Whether `url` is the registry's own (scheme, host, port).
    pub(super) fn is_own(&self, url: &Url) -> bool {
        same_origin(url, &self.base)
    }
}

/// `scheme://host:port` of a URL, for messages.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// A 401 from somewhere that is not the registry `host` at `base`: its challenge is not
/// followed, so neither the registry's credentials nor a token from its realm go there.
pub(crate) fn foreign_challenge(
    host: &str,
    base: &Url,
    method: &str,
    url: &Url,
    answered: &Url,
) -> RegistryError {
    let via = if url == answered {
        String::new()
    } else {
        format!(" (redirected from {})", redact(url))
    };
    let own = origin(base);
    RegistryError::Auth {
        host: host.to_string(),
        reason: format!(
            "{method} {}{via} answered 401, and it is not {own}: its challenge is not followed (credentials for {host} are only sent to {own})",
            redact(answered),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let base = Url::parse("https://registry.example/").unwrap();
        let same = |u: &str| same_origin(&Url::parse(u).unwrap(), &base);
        assert!(same(
            "https://registry.example:443/v2/a/blobs/uploads/x?_state=1"
        ));
        assert!(same("https://REGISTRY.example/v2/"));
        assert!(!same("http://registry.example/v2/"));
        assert!(!same("https://registry.example:8443/v2/"));
        assert!(!same("https://cdn.example/v2/"));
        assert!(!same("https://registry.example.evil/v2/"));
    }
}
