//! Test certificates generated in the test (rcgen): a CA and a leaf for `localhost`
//! and `127.0.0.1`, written as PEM files into a temporary directory, and client
//! certificates the same CA signs (mTLS). `backing` compiles this file too (its TLS
//! `redis-server`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// A CA, one leaf certificate it signed, and the PEM files on disk.
pub struct TestPki {
    dir: tempfile::TempDir,
    /// The CA with its key, for signing more certificates later.
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM), for clients that must trust the leaf.
    pub ca_pem: String,
    /// The CA certificate's file.
    pub ca_file: PathBuf,
    /// The leaf certificate chain (leaf only) and its private key, as PEM files.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestPki {
    /// A fresh CA and a leaf for `localhost` / `127.0.0.1` / `::1` whose common name is
    /// `cn` (so tests can tell two leaves apart after a reload).
    pub fn new(cn: &str) -> TestPki {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{cn} test CA"));
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");

        let mut leaf_params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .expect("leaf params");
        leaf_params.distinguished_name.push(DnType::CommonName, cn);
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca)
            .expect("leaf certificate");

        let ca_pem = ca.pem();
        let ca_file = write(dir.path(), "ca.pem", &ca_pem);
        let cert_file = write(dir.path(), "cert.pem", &leaf.pem());
        let key_file = write(dir.path(), "key.pem", &leaf_key.serialize_pem());
        TestPki {
            dir,
            ca,
            ca_pem,
            ca_file,
            cert_file,
            key_file,
        }
    }

    /// A client certificate (extended key usage clientAuth) with common name `cn`,
    /// signed by this CA, written next to the other files as `client-<cn>.pem` and
    /// `client-<cn>-key.pem`: (certificate file, key file).
    pub fn client_cert(&self, cn: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("client key");
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("client certificate");
        (
            write(self.dir.path(), &format!("client-{cn}.pem"), &cert.pem()),
            write(
                self.dir.path(),
                &format!("client-{cn}-key.pem"),
                &key.serialize_pem(),
            ),
        )
    }

    /// The directory holding the files (for writing replacements next to them).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A rustls root store that trusts this CA only.
    pub fn root_store(&self) -> rustls::RootCertStore {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA accepted");
        }
        roots
    }

    /// A rustls client config (ring provider) trusting this CA, with `alpn` offered.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.root_store())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write PEM");
    path
}
