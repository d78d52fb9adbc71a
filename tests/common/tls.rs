//! A throw-away certificate authority for TLS registries.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// A CA certificate and a server certificate (for `127.0.0.1` and `localhost`) signed by it,
/// written to a private temp dir.
pub struct TestCa {
    dir: TempDir,
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    self_signed: bool,
}

impl TestCa {
    /// Generates a fresh CA and server certificate (ECDSA P-256).
    pub fn new() -> TestCa {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mirrorsync test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut sp = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
        sp.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = sp.signed_by(&server_key, &issuer).expect("server cert");

        Self::written(
            ca_cert.pem(),
            server_cert.pem(),
            server_key.serialize_pem(),
            false,
        )
    }

    /// A homelab certificate: one self-signed certificate for `127.0.0.1` and `localhost` that
    /// is also marked as a CA (`basicConstraints=CA:TRUE`, what `openssl req -x509` makes by
    /// default). It is both the server's certificate and the "CA" given in `ca_file`.
    pub fn self_signed() -> TestCa {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-signed cert");
        Self::written(cert.pem(), cert.pem(), key.serialize_pem(), true)
    }

    /// The PEMs, with the CA written into a fresh temp dir (`ca.pem`, `certs.d/ca.crt`).
    fn written(
        ca_pem: String,
        server_cert_pem: String,
        server_key_pem: String,
        self_signed: bool,
    ) -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("mirrorsync-ca-")
            .tempdir()
            .expect("tempdir");
        let ca = TestCa {
            dir,
            ca_pem,
            server_cert_pem,
            server_key_pem,
            self_signed,
        };
        std::fs::write(ca.ca_pem_path(), &ca.ca_pem).expect("write ca.pem");
        std::fs::create_dir_all(ca.cert_dir()).expect("mkdir certs.d");
        std::fs::write(ca.cert_dir().join("ca.crt"), &ca.ca_pem).expect("write ca.crt");
        ca
    }

    /// Whether this is a [`TestCa::self_signed`] certificate.
    pub fn is_self_signed(&self) -> bool {
        self.self_signed
    }

    /// PEM file holding only the CA certificate: what the code under test gets as `ca_file`.
    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A directory holding `ca.crt`, for `skopeo --cert-dir` / `--src-cert-dir`.
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the server certificate and key into `dir`; returns (cert path, key path).
    pub fn write_server_files(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("server.crt");
        let key = dir.join("server.key");
        std::fs::write(&cert, &self.server_cert_pem).expect("write server.crt");
        std::fs::write(&key, &self.server_key_pem).expect("write server.key");
        (cert, key)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
