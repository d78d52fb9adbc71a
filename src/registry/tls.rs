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

/// What one host's TLS connections trust: the platform's roots, plus the certificates of its
/// `ca_file`, and a `ca_file` certificate served as the server's own (see the module doc). Made
/// once per host and shared by its clients.
#[derive(Debug, Clone)]
pub(super) struct HostTrust {
    roots: Arc<Roots>,
    /// The `ca_file`'s certificates (none without one).
    pinned: Arc<[CertificateDer<'static>]>,
}

impl HostTrust {
    /// The trust of `host`, whose `ca_file` (if any) is read now. For a TLS host without one,
    /// the platform's roots start loading on a thread of their own (once for the process), so
    /// that the load overlaps the TCP handshake instead of following it.
    pub(super) fn for_host(
        ca_file: Option<&Path>,
        host: &str,
        tls: bool,
    ) -> Result<HostTrust, RegistryError> {
        let Some(path) = ca_file else {
            if tls {
                load_platform_roots_soon();
            }
            return Ok(HostTrust {
                roots: shared_roots().clone(),
                pinned: Arc::from([]),
            });
        };
        let bad = |detail: String| {
            RegistryError::protocol(host, format!("CA file {}: {detail}", path.display()))
        };
        let pem = std::fs::read(path).map_err(|e| {
            RegistryError::protocol(host, format!("reading CA file {}: {e}", path.display()))
        })?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad("holds no certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Built now, so that a certificate the verifier cannot take is reported at start.
        let platform = rustls_platform_verifier::Verifier::new_with_extra_roots(
            certs.clone(),
            provider.clone(),
        )
        .map_err(|e| bad(e.to_string()))?;
        Ok(HostTrust {
            roots: Arc::new(Roots {
                provider,
                verifier: OnceLock::from(Ok(platform)),
            }),
            pinned: Arc::from(certs),
        })
    }

    /// The rustls configuration of one client of the host; `http1_only` offers no HTTP/2 over
    /// ALPN.
    pub(super) fn client_config(
        &self,
        host: &str,
        http1_only: bool,
    ) -> Result<rustls::ClientConfig, RegistryError> {
        let mut config = rustls::ClientConfig::builder_with_provider(self.roots.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| RegistryError::protocol(host, format!("TLS configuration: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(self.clone()))
            .with_no_client_auth();
        // A preconfigured TLS backend gets no ALPN from reqwest: offer HTTP/2 as its default does.
        config.alpn_protocols = if http1_only {
            vec![b"http/1.1".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        Ok(config)
    }
}

/// Starts loading the platform's roots on a thread of their own, once.
fn load_platform_roots_soon() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let roots = shared_roots().clone();
        let _ = std::thread::Builder::new()
            .name("tls-roots".into())
            .spawn(move || {
                let _ = roots.get();
            });
    });
}

fn shared_roots() -> &'static Arc<Roots> {
    static SHARED: OnceLock<Arc<Roots>> = OnceLock::new();
    SHARED.get_or_init(|| {
        Arc::new(Roots {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            verifier: OnceLock::new(),
        })
    })
}

/// The platform verifier: its roots, plus a host's `ca_file` ones. Without a `ca_file` it is
/// built at the first certificate it checks, once for the process: building it reads and parses
/// every certificate under /etc/ssl/certs, which reqwest's default did for every client it
/// built, before the first request of the run, even for a plain-HTTP host.
#[derive(Debug)]
struct Roots {
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: OnceLock<Result<rustls_platform_verifier::Verifier, Error>>,
}

impl Roots {
    fn get(&self) -> Result<&rustls_platform_verifier::Verifier, Error> {
        self.verifier
            .get_or_init(|| rustls_platform_verifier::Verifier::new(self.provider.clone()))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl HostTrust {
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

impl ServerCertVerifier for HostTrust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.roots.get()?.verify_server_cert(
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
        self.roots.get()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.roots.get()?.verify_tls13_signature(message, cert, dss)
    }

    /// Asked for the ClientHello, before any certificate: the provider's schemes, as the
    /// platform verifier answers, without loading the roots.
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.roots
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
