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
use std::sync::Arc;

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
    config.alpn_protocols = if http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Ok(config)
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
