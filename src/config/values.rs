//! Small value parsers for config scalars: byte sizes, platforms, URLs and
//! file paths. Each returns a one-line reason on failure; `validate` adds the location.

use std::path::{Path, PathBuf};

use super::Platform;
use crate::reference::validate_registry;

/// Parses `100MiB`, `10MB`, `500KiB`, `1GiB`, `2 GB` or a plain number of bytes.
/// `KB`/`MB`/`GB`/`TB` are powers of 1000, `KiB`/`MiB`/`GiB`/`TiB` powers of 1024.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "invalid byte size \"{text}\": expected a number with an optional unit such as 100MiB or 10MB"
        ));
    }
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "invalid byte size \"{text}\": unknown unit \"{other}\" (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("invalid byte size \"{text}\": too large"))
}

/// Parses `os/architecture[/variant]`, each part `[a-z0-9._-]+`.
pub(crate) fn parse_platform(text: &str) -> Result<Platform, String> {
    let parts: Vec<&str> = text.split('/').collect();
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
    };
    if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| valid(p)) {
        return Err(format!(
            "invalid platform \"{text}\": expected os/architecture[/variant] in lower case, e.g. linux/arm64 or linux/arm/v7"
        ));
    }
    Ok(Platform {
        os: parts[0].to_string(),
        architecture: parts[1].to_string(),
        variant: parts.get(2).map(|v| v.to_string()),
    })
}

/// Checks that `pem` holds at least one PEM certificate and no malformed PEM section; returns
/// how many certificates it holds. A file of something else (a key, DER, an empty file) would
/// otherwise be trusted as "no extra CA" and fail only at the first TLS handshake.
pub(crate) fn check_ca_pem(pem: &[u8]) -> Result<usize, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("is not valid PEM: {e}"))?;
        // Every X.509 certificate is a DER SEQUENCE.
        if cert.first() != Some(&0x30) {
            return Err("holds a CERTIFICATE section that is not an X.509 certificate".into());
        }
        count += 1;
    }
    if count == 0 {
        return Err(
            "holds no PEM certificate (expected a -----BEGIN CERTIFICATE----- section)".into(),
        );
    }
    Ok(count)
}

/// Checks a mirror URL: `http://` or `https://`, a valid `host[:port]`, optional path.
pub(crate) fn check_mirror_url(url: &str) -> Result<String, String> {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err(format!(
            "invalid mirror URL \"{url}\": must start with https:// or http://"
        ));
    };
    let host = rest.split('/').next().unwrap_or(rest);
    if let Some((_, after)) = host.rsplit_once('@') {
        // Never echo what may be a password.
        let scheme = &url[..url.len() - rest.len()];
        let shown = format!("{scheme}***@{after}{}", &rest[host.len()..]);
        return Err(format!(
            "invalid mirror URL {shown:?}: user information (user:password@) is not accepted; mirrors are read anonymously"
        ));
    }
    validate_registry(host).map_err(|e| format!("invalid mirror URL \"{url}\": {e}"))?;
    if rest.contains(['?', '#']) || url.chars().any(char::is_whitespace) {
        return Err(format!(
            "invalid mirror URL \"{url}\": no query, fragment or spaces allowed"
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Expands a leading `~` with `$HOME`, then anchors a relative path at `base_dir`.
pub(crate) fn resolve_path(
    text: &str,
    base_dir: &Path,
    home: Option<&str>,
) -> Result<PathBuf, String> {
    let expanded = if text == "~" || text.starts_with("~/") {
        let Some(home) = home.filter(|h| !h.is_empty()) else {
            return Err(format!("cannot expand \"{text}\": $HOME is not set"));
        };
        PathBuf::from(home).join(text.trim_start_matches('~').trim_start_matches('/'))
    } else {
        PathBuf::from(text)
    };
    if text.is_empty() {
        return Err("empty path".to_string());
    }
    Ok(if expanded.is_relative() {
        base_dir.join(expanded)
    } else {
        expanded
    })
}

/// Strips leading and trailing `/` from a prefix.
pub(crate) fn trim_prefix(prefix: &str) -> &str {
    prefix.trim_matches('/')
}

/// The default upload chunk (`target.chunk_size`): large enough that request overhead is small,
/// small enough that a failed chunk is cheap to redo.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 * 1024 * 1024;

/// The smallest chunk: ECR refuses parts below 5 MiB (except the last), as S3 does.
pub const MIN_CHUNK_SIZE: u64 = 5 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        let cases = [
            ("100MiB", 100 << 20),
            ("10MB", 10_000_000),
            ("500KiB", 500 << 10),
            ("1GiB", 1 << 30),
            ("2 GB", 2_000_000_000),
            ("1234", 1234),
            ("7B", 7),
            ("3kB", 3000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_byte_size(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "MiB",
            "10 mb",
            "1.5GiB",
            "-1",
            "10XB",
            "99999999999999999999",
        ] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn platforms() {
        let p = parse_platform("linux/arm/v7").unwrap();
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()),
            ("linux", "arm", Some("v7"))
        );
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert_eq!(
            parse_platform("linux/amd64").unwrap().to_string(),
            "linux/amd64"
        );
        for bad in ["linux", "linux/", "Linux/amd64", "a/b/c/d", "/amd64"] {
            assert!(parse_platform(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ca_bundles_must_hold_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ca.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        assert_eq!(check_ca_pem(cert.as_bytes()), Ok(1));
        assert_eq!(check_ca_pem(format!("{cert}{cert}").as_bytes()), Ok(2));
        for bad in [
            String::new(),
            "not a certificate\n".to_string(),
            key.serialize_pem(),
            "-----BEGIN CERTIFICATE-----\n".to_string(),
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_string(),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_string(),
        ] {
            assert!(check_ca_pem(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mirror_urls_and_paths() {
        assert_eq!(
            check_mirror_url("https://mirror.gcr.io/").as_deref(),
            Ok("https://mirror.gcr.io")
        );
        assert!(check_mirror_url("http://localhost:5000/prefix").is_ok());
        assert!(check_mirror_url("mirror.gcr.io").is_err());
        assert!(check_mirror_url("https://").is_err());
        let e = check_mirror_url("https://me:s3cret@mirror.example/x").unwrap_err();
        assert!(
            e.contains("https://***@mirror.example/x") && !e.contains("s3cret"),
            "{e}"
        );
        let base = Path::new("/etc/ms");
        assert_eq!(
            resolve_path("~/.docker/config.json", base, Some("/home/me")),
            Ok(PathBuf::from("/home/me/.docker/config.json"))
        );
        assert_eq!(
            resolve_path("ca.pem", base, None),
            Ok(PathBuf::from("/etc/ms/ca.pem"))
        );
        assert!(resolve_path("~/x", base, None).is_err());
        assert_eq!(trim_prefix("/mirror/"), "mirror");
    }
}
