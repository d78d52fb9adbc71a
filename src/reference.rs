//! Image references and digests, normalised as the Docker CLI does.
//!
//! Every image named in `sync.yaml` goes through [`Reference::parse`] once, when the config is
//! validated; later code (planning, copying, metrics) only reads the normalised parts:
//! `ubuntu` becomes `docker.io/library/ubuntu:latest`, `index.docker.io/x/y` becomes
//! `docker.io/x/y:latest`, and the HTTP API of `docker.io` lives at `registry-1.docker.io`
//! ([`Reference::api_host`]).
//!
//! The grammar is the one of the distribution project's `reference` package and of the OCI
//! image spec's digests, checked by hand (no regex):
//!
//! ```text
//! reference      := name [ ":" tag ] [ "@" digest ]
//! name           := [ domain "/" ] path-component ( "/" path-component )*
//! domain         := host [ ":" port ]      host := domain-name | IPv4 | "[" IPv6 "]"
//! path-component := [a-z0-9]+ ( ( [._] | "__" | "-"+ ) [a-z0-9]+ )*
//! tag            := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest         := algorithm ":" encoded
//! ```

use std::fmt;
use std::str::FromStr;

/// The registry that references without a registry host belong to.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry HTTP API is served.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The tag a reference gets when it names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest repository name the distribution grammar allows.
pub const NAME_MAX_LEN: usize = 255;
/// Longest tag the distribution grammar allows.
pub const TAG_MAX_LEN: usize = 128;

/// What was wrong with which input. Each variant carries the offending text.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReferenceError {
    /// The reference was the empty string.
    #[error("empty image reference")]
    Empty,
    /// The reference as a whole is malformed (whitespace, missing name, ...).
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },
    /// The repository path has upper-case letters, which registries do not accept.
    #[error("invalid repository {0:?}: repository names must be lower case")]
    UpperCaseRepository(String),
    /// The repository path breaks the distribution grammar.
    #[error("invalid repository {input:?}: {reason}")]
    InvalidRepository { input: String, reason: String },
    /// The tag breaks `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("invalid tag {input:?}: {reason}")]
    InvalidTag { input: String, reason: String },
    /// The digest is not `algorithm:encoded`, or a known algorithm has a wrong encoding.
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: String },
    /// The registry host (or its port) is malformed.
    #[error("invalid registry {input:?}: {reason}")]
    InvalidRegistry { input: String, reason: String },
}

fn err_reference(input: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError::InvalidReference {
        input: input.to_string(),
        reason: reason.into(),
    }
}

fn err_repository(input: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError::InvalidRepository {
        input: input.to_string(),
        reason: reason.into(),
    }
}

fn err_digest(input: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError::InvalidDigest {
        input: input.to_string(),
        reason: reason.into(),
    }
}

fn err_registry(input: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError::InvalidRegistry {
        input: input.to_string(),
        reason: reason.into(),
    }
}

/// A content digest such as `sha256:<64 hex>`.
///
/// Any algorithm matching the OCI grammar parses (so that callers can report "unsupported
/// algorithm" with the digest in hand); `sha256` and `sha512` must have exactly 64 and 128
/// lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: String,
    encoded: String,
}

impl Digest {
    /// Parses `algorithm ":" encoded`.
    pub fn parse(s: &str) -> Result<Digest, ReferenceError> {
        let Some((algorithm, encoded)) = s.split_once(':') else {
            return Err(err_digest(
                s,
                "expected algorithm:hex, e.g. sha256:<64 hex digits>",
            ));
        };
        validate_algorithm(algorithm).map_err(|reason| err_digest(s, reason))?;
        if encoded.is_empty() {
            return Err(err_digest(s, "nothing after the algorithm"));
        }
        if let Some(c) = encoded
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '=' | '_' | '-')))
        {
            return Err(err_digest(s, format!("character {c:?} is not allowed")));
        }
        let hex_len = match algorithm {
            "sha256" => Some(64),
            "sha512" => Some(128),
            _ => None,
        };
        if let Some(len) = hex_len {
            if encoded.len() != len || !is_lower_hex(encoded) {
                return Err(err_digest(
                    s,
                    format!("{algorithm} needs exactly {len} lower-case hex digits"),
                ));
            }
        }
        Ok(Digest {
            algorithm: algorithm.to_string(),
            encoded: encoded.to_string(),
        })
    }

    /// A sha256 digest from an already computed lower-case hex string of 64 digits.
    ///
    /// The input is trusted (it comes from our own hasher); it is not re-validated.
    pub fn sha256_hex(hex_lowercase_64: &str) -> Digest {
        debug_assert!(hex_lowercase_64.len() == 64 && is_lower_hex(hex_lowercase_64));
        Digest {
            algorithm: "sha256".to_string(),
            encoded: hex_lowercase_64.to_string(),
        }
    }

    /// A sha256 digest from the 32 bytes of a computed hash.
    pub fn from_sha256_bytes(bytes: &[u8; 32]) -> Digest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut encoded = String::with_capacity(64);
        for b in bytes {
            encoded.push(char::from(HEX[usize::from(b >> 4)]));
            encoded.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        Digest {
            algorithm: "sha256".to_string(),
            encoded,
        }
    }

    /// The algorithm, e.g. `sha256`.
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }

    /// The encoded part after the colon (hex for sha256 and sha512).
    pub fn encoded(&self) -> &str {
        &self.encoded
    }

    /// Whether this is a sha256 digest, the only algorithm registries must support.
    pub fn is_sha256(&self) -> bool {
        self.algorithm == "sha256"
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.encoded)
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// OCI: `algorithm-component (algorithm-separator algorithm-component)*`,
/// component `[a-z0-9]+`, separator `[+._-]`.
fn validate_algorithm(algorithm: &str) -> Result<(), String> {
    if algorithm.is_empty() {
        return Err("missing algorithm before ':'".to_string());
    }
    for component in algorithm.split(['+', '.', '_', '-']) {
        if component.is_empty() {
            return Err(format!("malformed algorithm \"{algorithm}\""));
        }
        if !component
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(format!(
                "algorithm \"{algorithm}\" may only have lower-case letters and digits"
            ));
        }
    }
    Ok(())
}

/// A normalised image reference: registry, repository path, and a tag and/or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference as the Docker CLI does.
    ///
    /// `nginx` is `docker.io/library/nginx:latest`; the first path component is a registry host
    /// only if it contains `.` or `:` or is `localhost`; with only a digest the tag stays `None`.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err_reference(
                s,
                "contains whitespace or control characters",
            ));
        }
        let (name_and_tag, digest) = match s.split_once('@') {
            Some((rest, digest)) => (rest, Some(Digest::parse(digest)?)),
            None => (s, None),
        };
        // The tag colon is the last ':' after the last '/'; an earlier one is a registry port.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_and_tag[..at], Some(&name_and_tag[at + 1..]))
            }
            None => (name_and_tag, None),
        };
        if name.is_empty() {
            return Err(err_reference(s, "missing repository name"));
        }
        if name.len() > NAME_MAX_LEN {
            return Err(err_reference(
                s,
                format!("name is longer than {NAME_MAX_LEN} characters"),
            ));
        }
        if let Some(tag) = tag {
            validate_tag(tag)?;
        }
        let (registry, path) = split_registry(name);
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag),
            (None, None) => Some(DEFAULT_TAG),
            (None, Some(_)) => None,
        };
        Reference::new(registry, path, tag, digest)
    }

    /// Builds a reference from its parts, validating each.
    ///
    /// The registry is normalised with [`normalize_registry`], and a one-component Docker Hub
    /// repository gets `library/` as with [`Reference::parse`]. No default tag is added.
    pub fn new(
        registry: &str,
        repository: &str,
        tag: Option<&str>,
        digest: Option<Digest>,
    ) -> Result<Reference, ReferenceError> {
        validate_registry(registry)?;
        let registry = normalize_registry(registry);
        validate_repository(repository)?;
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        if let Some(tag) = tag {
            validate_tag(tag)?;
        }
        Ok(Reference {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The normalised registry host: `docker.io`, `quay.io`, `localhost:5000`, ...
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Where the registry's HTTP API lives: `registry-1.docker.io` for `docker.io`, otherwise
    /// the same as [`Reference::registry`].
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The repository path inside the registry, e.g. `library/nginx`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag; [`Reference::parse`] fills `latest` unless a digest alone was given.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The pinned digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository with `tag` and no digest. The tag is checked against the tag
    /// grammar in every build: tags also come from registries' tag lists, and one such as
    /// `1.0/../../other/manifests/latest` must never reach a URL or a file name.
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        validate_tag(tag)?;
        Ok(Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        })
    }

    /// Registry and repository without tag or digest: `docker.io/library/nginx`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// Splits `name` into registry and path the way the Docker CLI does.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

/// Where one configured image lands at the target: a repository and a tag, or a digest for a
/// digest-only pin. Carried whole through outcomes, state and prune, so that nothing has to split
/// `repo:tag` or `repo@sha256:...` back out of a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetImage {
    pub repository: String,
    pub reference: TargetReference,
}

/// The part of a [`TargetImage`] after the repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetReference {
    Tag(String),
    /// A digest-only pin, pushed by digest.
    Digest(Digest),
    /// Every tag a `tags:` filter selects, when the selection could not be made (the upstream
    /// tag list was unreadable): which tags it stands for is unknown.
    Selection,
}

impl TargetImage {
    pub fn tag(repository: &str, tag: &str) -> TargetImage {
        TargetImage {
            repository: repository.to_string(),
            reference: TargetReference::Tag(tag.to_string()),
        }
    }

    /// The tag, unless this is a digest pin or a selection.
    pub fn tag_name(&self) -> Option<&str> {
        match &self.reference {
            TargetReference::Tag(t) => Some(t),
            _ => None,
        }
    }
}

impl fmt::Display for TargetImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            TargetReference::Tag(t) => write!(f, "{}:{t}", self.repository),
            TargetReference::Digest(d) => write!(f, "{}@{d}", self.repository),
            TargetReference::Selection => write!(f, "{}", self.repository),
        }
    }
}

/// Normalises a registry host: Docker Hub's aliases (`index.docker.io`, `registry-1.docker.io`)
/// become `docker.io`, and the host part is lower-cased (the port is kept).
pub fn normalize_registry(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    match lower.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_string(),
        _ => lower,
    }
}

/// Checks a registry `host[:port]`, where host is a domain name, an IPv4 address or `[IPv6]`.
pub fn validate_registry(registry: &str) -> Result<(), ReferenceError> {
    if registry.is_empty() {
        return Err(err_registry(registry, "empty host"));
    }
    let (host, port) = if let Some(inner) = registry.strip_prefix('[') {
        let Some((addr, after)) = inner.split_once(']') else {
            return Err(err_registry(registry, "missing ']' after IPv6 address"));
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(err_registry(registry, "invalid IPv6 address"));
        }
        match after {
            "" => (None, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(err_registry(registry, "expected ':port' after ']'")),
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        for component in host.split('.') {
            let ok = !component.is_empty()
                && component
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !component.starts_with('-')
                && !component.ends_with('-');
            if !ok {
                return Err(err_registry(
                    registry,
                    "host must be dot-separated letters, digits and inner hyphens",
                ));
            }
        }
    }
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
            return Err(err_registry(registry, "port must be a number"));
        }
    }
    Ok(())
}

/// Checks a repository path against the distribution grammar: components
/// `[a-z0-9]+((?:[._]|__|[-]+)[a-z0-9]+)*` joined by `/`, at most 255 characters in total.
pub fn validate_repository(path: &str) -> Result<(), ReferenceError> {
    if path.is_empty() {
        return Err(err_repository(path, "empty repository name"));
    }
    if path.len() > NAME_MAX_LEN {
        return Err(err_repository(
            path,
            format!("longer than {NAME_MAX_LEN} characters"),
        ));
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::UpperCaseRepository(path.to_string()));
    }
    for component in path.split('/') {
        if component.is_empty() {
            let reason = if path.starts_with('/') {
                "must not start with '/'"
            } else if path.ends_with('/') {
                "must not end with '/'"
            } else {
                "empty path component ('//')"
            };
            return Err(err_repository(path, reason));
        }
        validate_path_component(component).map_err(|reason| err_repository(path, reason))?;
    }
    Ok(())
}

/// One component: alphanumeric runs separated by exactly one of `.`, `_`, `__` or `-`+.
fn validate_path_component(component: &str) -> Result<(), String> {
    let bytes = component.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut expect_alnum = true;
    while i < bytes.len() {
        let b = bytes[i];
        if is_alnum(b) {
            expect_alnum = false;
            i += 1;
            continue;
        }
        if expect_alnum {
            return Err(format!(
                "component \"{component}\" must start with a letter or digit and have one separator between them"
            ));
        }
        // A separator: '.', '_', '__' or one or more '-'.
        let start = i;
        match b {
            b'.' => i += 1,
            b'_' => {
                i += if bytes.get(i + 1) == Some(&b'_') {
                    2
                } else {
                    1
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => {
                return Err(format!(
                    "character {:?} is not allowed in \"{component}\"",
                    char::from(b)
                ));
            }
        }
        debug_assert!(i > start);
        expect_alnum = true;
    }
    if expect_alnum {
        return Err(format!(
            "component \"{component}\" must end with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    let fail = |reason: &str| ReferenceError::InvalidTag {
        input: tag.to_string(),
        reason: reason.to_string(),
    };
    let Some(first) = tag.bytes().next() else {
        return Err(fail("empty tag"));
    };
    if tag.len() > TAG_MAX_LEN {
        return Err(fail("longer than 128 characters"));
    }
    if !(first.is_ascii_alphanumeric() || first == b'_') {
        return Err(fail("must start with a letter, digit or '_'"));
    }
    if !tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(fail("only letters, digits, '_', '.' and '-' are allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D256: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// (input, registry, repository, tag, digest, Display)
    type Valid = (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
    );

    /// `@D` in a table entry stands for `@` + [`D256`].
    fn expand(s: &str) -> String {
        s.replace("@D", &format!("@{D256}"))
    }

    #[rustfmt::skip]
    const VALID: &[Valid] = &[
        ("ubuntu", "docker.io", "library/ubuntu", Some("latest"), None, "docker.io/library/ubuntu:latest"),
        ("ubuntu:22.04", "docker.io", "library/ubuntu", Some("22.04"), None, "docker.io/library/ubuntu:22.04"),
        ("bob/ubuntu:22.04", "docker.io", "bob/ubuntu", Some("22.04"), None, "docker.io/bob/ubuntu:22.04"),
        ("docker.io/ubuntu", "docker.io", "library/ubuntu", Some("latest"), None, "docker.io/library/ubuntu:latest"),
        ("docker.io/library/ubuntu:20.04", "docker.io", "library/ubuntu", Some("20.04"), None, "docker.io/library/ubuntu:20.04"),
        ("index.docker.io/ubuntu", "docker.io", "library/ubuntu", Some("latest"), None, "docker.io/library/ubuntu:latest"),
        ("registry-1.docker.io/bob/app:v1", "docker.io", "bob/app", Some("v1"), None, "docker.io/bob/app:v1"),
        ("Docker.IO/bob/app", "docker.io", "bob/app", Some("latest"), None, "docker.io/bob/app:latest"),
        ("localhost/app", "localhost", "app", Some("latest"), None, "localhost/app:latest"),
        ("localhost:5000/ubuntu", "localhost:5000", "ubuntu", Some("latest"), None, "localhost:5000/ubuntu:latest"),
        ("localhost:5000/a/b:t", "localhost:5000", "a/b", Some("t"), None, "localhost:5000/a/b:t"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", Some("latest"), None, "127.0.0.1:5000/x:latest"),
        ("[::1]:5000/x:1", "[::1]:5000", "x", Some("1"), None, "[::1]:5000/x:1"),
        ("quay.io/coreos/flannel:v0.11.0-s390x", "quay.io", "coreos/flannel", Some("v0.11.0-s390x"), None, "quay.io/coreos/flannel:v0.11.0-s390x"),
        ("registry.cn-hangzhou.aliyuncs.com/zxhk1/httpd:v2.0", "registry.cn-hangzhou.aliyuncs.com", "zxhk1/httpd", Some("v2.0"), None, "registry.cn-hangzhou.aliyuncs.com/zxhk1/httpd:v2.0"),
        ("gcr.io/a/b/c/d:x", "gcr.io", "a/b/c/d", Some("x"), None, "gcr.io/a/b/c/d:x"),
        ("a.b:1/c", "a.b:1", "c", Some("latest"), None, "a.b:1/c:latest"),
        ("my_org/my__app-x--y.z", "docker.io", "my_org/my__app-x--y.z", Some("latest"), None, "docker.io/my_org/my__app-x--y.z:latest"),
        ("localhost:5000", "docker.io", "library/localhost", Some("5000"), None, "docker.io/library/localhost:5000"),
        ("nginx:_x", "docker.io", "library/nginx", Some("_x"), None, "docker.io/library/nginx:_x"),
        ("nginx:Latest-1.2_3", "docker.io", "library/nginx", Some("Latest-1.2_3"), None, "docker.io/library/nginx:Latest-1.2_3"),
        ("nginx@D", "docker.io", "library/nginx", None, Some(D256), "docker.io/library/nginx@D"),
        ("nginx:1.25@D", "docker.io", "library/nginx", Some("1.25"), Some(D256), "docker.io/library/nginx:1.25@D"),
        ("quay.io/a/b@D", "quay.io", "a/b", None, Some(D256), "quay.io/a/b@D"),
        ("localhost:5000/a:t@D", "localhost:5000", "a", Some("t"), Some(D256), "localhost:5000/a:t@D"),
        ("Quay.io/a/b:T", "quay.io", "a/b", Some("T"), None, "quay.io/a/b:T"),
        ("0/1", "docker.io", "0/1", Some("latest"), None, "docker.io/0/1:latest"),
        ("x", "docker.io", "library/x", Some("latest"), None, "docker.io/library/x:latest"),
    ];

    #[test]
    fn valid_references_normalise_like_docker() {
        for &(input, registry, repository, tag, digest, shown) in VALID {
            let (input, shown) = (expand(input), expand(shown));
            let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry(), registry, "{input}");
            assert_eq!(r.repository(), repository, "{input}");
            assert_eq!(r.tag(), tag, "{input}");
            assert_eq!(
                r.digest().map(|d| d.to_string()).as_deref(),
                digest,
                "{input}"
            );
            assert_eq!(r.to_string(), shown, "{input}");
            // Display output parses back to the same reference.
            assert_eq!(Reference::parse(&r.to_string()), Ok(r.clone()), "{input}");
        }
    }

    #[test]
    fn invalid_references_are_rejected_with_the_right_kind() {
        use ReferenceError as E;
        let kind = |e: &E| match e {
            E::Empty => "empty",
            E::InvalidReference { .. } => "reference",
            E::UpperCaseRepository(_) => "upper",
            E::InvalidRepository { .. } => "repository",
            E::InvalidTag { .. } => "tag",
            E::InvalidDigest { .. } => "digest",
            E::InvalidRegistry { .. } => "registry",
        };
        let long_name = "a".repeat(256);
        let long_tag = format!("nginx:{}", "t".repeat(129));
        let cases: Vec<(&str, &str)> = vec![
            ("", "empty"),
            (" nginx", "reference"),
            ("nginx ", "reference"),
            ("ngi nx", "reference"),
            ("nginx\t", "reference"),
            (":tag", "reference"),
            ("@sha256:abc", "digest"),
            ("Ubuntu", "upper"),
            ("bob/Ubuntu:1", "upper"),
            ("quay.io/Coreos/flannel", "upper"),
            ("a//b", "repository"),
            ("a/b/", "repository"),
            ("/a", "repository"),
            ("quay.io/", "repository"),
            ("-a", "repository"),
            ("a-", "repository"),
            ("a..b", "repository"),
            ("a___b", "repository"),
            ("a_.b", "repository"),
            ("a+b", "repository"),
            ("nginx:", "tag"),
            ("nginx:-x", "tag"),
            ("nginx:.x", "tag"),
            ("nginx:a+b", "tag"),
            ("nginx:1:2", "repository"),
            (&long_tag, "tag"),
            (&long_name, "reference"),
            ("nginx@sha256:abc", "digest"),
            (
                "nginx@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
                "digest",
            ),
            ("nginx@sha512:0123", "digest"),
            ("nginx@:abc", "digest"),
            ("nginx@sha256", "digest"),
            ("nginx@SHA256:abc", "digest"),
            ("nginx@sha256:", "digest"),
            ("nginx@sha256:0123@x", "digest"),
            ("localhost:abc/x", "registry"),
            ("localhost:/x", "registry"),
            ("-bad.io/x", "registry"),
            ("bad..io/x", "registry"),
            ("[::1/x", "registry"),
            ("[zz]:5000/x", "registry"),
            ("a_b.io/x", "registry"),
        ];
        for (input, expected) in cases {
            match Reference::parse(input) {
                Ok(r) => panic!("{input:?} parsed as {r}"),
                Err(e) => assert_eq!(kind(&e), expected, "{input:?}: {e}"),
            }
        }
    }

    #[test]
    fn errors_name_the_input() {
        let e = Reference::parse("nginx:Bad Tag").unwrap_err();
        assert!(e.to_string().contains("\"nginx:Bad Tag\""), "{e}");
        let e = Reference::parse("nginx:-x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid tag \"-x\": must start with a letter, digit or '_'"
        );
        let e = Reference::parse("Bob/app").unwrap_err();
        assert!(e.to_string().contains("\"Bob/app\""), "{e}");
    }

    #[test]
    fn digests() {
        let d = Digest::parse(D256).unwrap();
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d.encoded().len(), 64);
        assert!(d.is_sha256());
        assert_eq!(d.to_string(), D256);
        assert_eq!(D256.parse::<Digest>(), Ok(d.clone()));
        assert_eq!(Digest::sha256_hex(d.encoded()), d);
        let sha512 = format!("sha512:{}", "ab".repeat(64));
        assert!(!Digest::parse(&sha512).unwrap().is_sha256());
        // Unknown algorithms parse so that callers can say "unsupported".
        let other =
            Digest::parse("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8")
                .unwrap();
        assert_eq!(other.algorithm(), "multihash+base58");
        let bytes: [u8; 32] = core::array::from_fn(|i| i as u8 * 8);
        let from_bytes = Digest::from_sha256_bytes(&bytes);
        assert_eq!(
            from_bytes.to_string(),
            "sha256:0008101820283038404850586068707880889098a0a8b0b8c0c8d0d8e0e8f0f8"
        );
        assert_eq!(Digest::parse(&from_bytes.to_string()), Ok(from_bytes));
    }

    #[test]
    fn new_with_tag_name_and_api_host() {
        let r = Reference::new("index.docker.io", "nginx", Some("1.25"), None).unwrap();
        assert_eq!(r.to_string(), "docker.io/library/nginx:1.25");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.name(), "docker.io/library/nginx");
        let pinned = Reference::parse(&format!("quay.io/a/b:1@{D256}")).unwrap();
        assert_eq!(pinned.api_host(), "quay.io");
        let retagged = pinned.with_tag("2").unwrap();
        assert_eq!(retagged.to_string(), "quay.io/a/b:2");
        assert_eq!(retagged.digest(), None);
        assert!(Reference::new("quay.io", "A", None, None).is_err());
        assert!(Reference::new("quay.io", "a", Some("bad tag"), None).is_err());
        assert!(Reference::new("bad host", "a", None, None).is_err());
    }

    #[test]
    fn normalize_registry_aliases() {
        assert_eq!(normalize_registry("index.docker.io"), "docker.io");
        assert_eq!(normalize_registry("registry-1.docker.io"), "docker.io");
        assert_eq!(normalize_registry("DOCKER.io"), "docker.io");
        assert_eq!(normalize_registry("Quay.IO"), "quay.io");
        assert_eq!(normalize_registry("localhost:5000"), "localhost:5000");
    }
}
