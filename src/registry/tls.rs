//! TLS trust for one registry host: the platform's roots, plus the certificates of its
//! `ca_file`.
//!
//! A homelab registry often serves a self-signed certificate made by `openssl req -x509`, which
//! marks it as a CA (`basicConstraints=CA:TRUE`). Given in `ca_file`, curl and skopeo accept it,
//! but webpki refuses a CA certificate as a server's own (`CaUsedAsEndEntity`). The verifier
//! here accepts exactly that case and nothing more: the server presented, byte for byte, a
//! certificate from `ca_file`; it is within its validity period (checked before the CA flag);
//! and it names the host. Every other check, and every other certificate, goes to the platform
//! verifier unchanged.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::RegistryError;

/// The rustls configuration for a host whose `ca_file` is `pem` (read from `path`); `http1_only`
/// offers no HTTP/2 over ALPN.
pub(super) fn client_config(
    pem: &[u8],
    path: &Path,
    host: &str,
    http1_only: bool,
) -> Result<rustls::ClientConfig, RegistryError> {
    let bad = |detail: String| {
        RegistryError::protocol(host, format!("CA file {}: {detail}", path.display()))
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let platform =
        rustls_platform_verifier::Verifier::new_with_extra_roots(certs.clone(), provider.clone())
            .map_err(|e| bad(e.to_string()))?;
    let verifier = PinnedSelfSigned {
        platform,
        pinned: certs,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // A preconfigured TLS backend gets no ALPN from reqwest: offer HTTP/2 as the default one does.
    let mut config = config;
    config.alpn_protocols = alpn(http1_only);
    Ok(config)
}

/// The rustls configuration for a host with no `ca_file`: the platform's roots, through one
/// verifier for the whole process (see [`SharedPlatform`]); `http1_only` as in
/// [`client_config`].
pub(super) fn platform_config(
    host: &str,
    http1_only: bool,
) -> Result<rustls::ClientConfig, RegistryError> {
    let shared = shared_platform();
    let verifier: Arc<dyn ServerCertVerifier> = shared.clone();
    let mut config = rustls::ClientConfig::builder_with_provider(shared.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::protocol(host, format!("TLS configuration: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn(http1_only);
    Ok(config)
}

/// Starts loading the platform's roots on a thread of its own, once: called for a host that
/// speaks TLS, so that the load overlaps the TCP handshake instead of following it.
pub(super) fn load_platform_roots_soon() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let shared = shared_platform().clone();
        let _ = std::thread::Builder::new()
            .name("tls-roots".into())
            .spawn(move || {
                let _ = shared.get();
            });
    });
}

fn shared_platform() -> &'static Arc<SharedPlatform> {
    static SHARED: OnceLock<Arc<SharedPlatform>> = OnceLock::new();
    SHARED.get_or_init(|| {
        Arc::new(SharedPlatform {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            verifier: OnceLock::new(),
        })
    })
}

fn alpn(http1_only: bool) -> Vec<Vec<u8>> {
    if http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    }
}

/// The platform verifier, built at the first certificate it checks. Building it reads and
/// parses every certificate under /etc/ssl/certs (20-90 ms here): reqwest's default does that
/// for every client it builds, before the first request of the run, even for a plain-HTTP
/// host. Shared, it happens once per process and only when a TLS server is met.
#[derive(Debug)]
struct SharedPlatform {
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: OnceLock<Result<rustls_platform_verifier::Verifier, Error>>,
}

impl SharedPlatform {
    fn get(&self) -> Result<&rustls_platform_verifier::Verifier, Error> {
        self.verifier
            .get_or_init(|| rustls_platform_verifier::Verifier::new(self.provider.clone()))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl ServerCertVerifier for SharedPlatform {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.get()?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.get()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.get()?.verify_tls13_signature(message, cert, dss)
    }

    /// Asked for the ClientHello, before any certificate: from the provider, as the platform
    /// verifier itself answers it, without loading the roots.
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug)]
struct PinnedSelfSigned {
    platform: rustls_platform_verifier::Verifier,
    pinned: Vec<CertificateDer<'static>>,
}

impl PinnedSelfSigned {
    /// The platform refused only because a certificate from `ca_file` is marked CA, and that
    /// exact certificate is valid for `server_name`.
    fn accepts(
        &self,
        error: &Error,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName,
    ) -> bool {
        let Error::InvalidCertificate(CertificateError::Other(other)) = error else {
            return false;
        };
        let ca_as_end_entity = matches!(
            other.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        );
        ca_as_end_entity
            && self
                .pinned
                .iter()
                .any(|p| p.as_ref() == end_entity.as_ref())
            && webpki::EndEntityCert::try_from(end_entity)
                .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(server_name).is_ok())
    }
}

impl ServerCertVerifier for PinnedSelfSigned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.platform.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => Ok(verified),
            Err(e) if self.accepts(&e, end_entity, server_name) => {
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.platform.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.platform.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.platform.supported_verify_schemes()
    }
}
