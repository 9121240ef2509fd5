//! TLS termination on the proxy listener (docs/protocol.md §10.1;
//! docs/configuration.md#listener `tls.cert` / `tls.key`).
//!
//! [`TlsCerts`] loads the PEM certificate chain and private key, builds one rustls
//! [`ServerConfig`] (ring provider only, ALPN `h2` then `http/1.1`) and serves the
//! certificate through a resolver that [`TlsCerts::reload`] swaps at runtime (SIGHUP):
//! new handshakes get the new certificate, established connections keep theirs, and a
//! bad new pair is refused with the old one still in place.
//!
//! Loading is split in pure steps over bytes ([`parse_chain`], [`parse_key`],
//! [`certified_key`]) and one bounded file read per file, so the error names the file
//! and says what is wrong with it. Key material never appears in an error or a log.

use std::{
    fmt,
    io::Read as _,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::config::TlsConfig;

/// Certificate and key files larger than this are refused (a chain is a few KiB).
pub const MAX_PEM_FILE: u64 = 1024 * 1024;

/// ALPN protocols offered, in the server's order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate or key could not be loaded. Every message names the file (and the
/// config key it came from) and ends with a hint.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{key} {path}: cannot read: {source} (hint: check the path — relative paths are relative \
         to the config file's directory — and the file's permissions)",
        path = path.display()
    )]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{key} {path}: larger than {max} bytes (hint: give the PEM file itself, not a bundle or \
         an archive)",
        path = path.display(),
        max = MAX_PEM_FILE
    )]
    TooLarge { key: &'static str, path: PathBuf },
    #[error(
        "{key} {path}: malformed PEM: {detail} (hint: the file must hold PEM blocks \
         `-----BEGIN ...-----` / `-----END ...-----`, not DER)",
        path = path.display()
    )]
    Pem {
        key: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "tls.cert {path}: no certificate in it (hint: the file must hold the certificate chain \
         as `-----BEGIN CERTIFICATE-----` blocks, leaf first)",
        path = path.display()
    )]
    NoCertificate { path: PathBuf },
    #[error(
        "tls.cert {path}: the first certificate cannot be used: {detail} (hint: the leaf \
         certificate must come first, followed by its intermediates)",
        path = path.display()
    )]
    BadCertificate { path: PathBuf, detail: String },
    #[error(
        "tls.key {path}: no private key in it (hint: expected a `BEGIN PRIVATE KEY` (PKCS#8), \
         `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY` block; encrypted keys are not \
         supported)",
        path = path.display()
    )]
    NoKey { path: PathBuf },
    #[error(
        "tls.key {path}: unsupported private key: {detail} (hint: use an RSA, ECDSA P-256/P-384 \
         or Ed25519 key)",
        path = path.display()
    )]
    UnsupportedKey { path: PathBuf, detail: String },
    #[error(
        "tls.key {key} does not match the certificate in tls.cert {cert} (hint: give the key \
         the certificate was issued for; `openssl x509 -noout -pubkey -in CERT` and \
         `openssl pkey -pubout -in KEY` must print the same key)",
        key = key.display(),
        cert = cert.display()
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificate the listener presents, swappable at runtime.
pub struct TlsCerts {
    provider: Arc<CryptoProvider>,
    resolver: Arc<SwappableCert>,
    config: Arc<ServerConfig>,
}

impl fmt::Debug for TlsCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCerts")
            .field("alpn", &ALPN)
            .finish_non_exhaustive()
    }
}

impl TlsCerts {
    /// Load `tls.cert` and `tls.key` and build the server configuration.
    pub fn load(cfg: &TlsConfig) -> Result<Arc<TlsCerts>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load_pair(cfg, &provider)?;
        let resolver = Arc::new(SwappableCert(RwLock::new(Arc::new(key))));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(TlsCerts {
            provider,
            resolver,
            config: Arc::new(config),
        }))
    }

    /// Re-read the files; new handshakes use the new pair. On error nothing changes.
    pub fn reload(&self, cfg: &TlsConfig) -> Result<(), TlsError> {
        let key = load_pair(cfg, &self.provider)?;
        self.resolver.set(Arc::new(key));
        Ok(())
    }

    /// An acceptor for the listener. The certificate it presents follows [`reload`].
    ///
    /// [`reload`]: TlsCerts::reload
    pub fn acceptor(self: &Arc<Self>) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// The certificate chain currently presented (DER, leaf first).
    pub fn current_chain(&self) -> Vec<CertificateDer<'static>> {
        self.resolver.get().cert.clone()
    }
}

/// Hands every handshake the current pair.
struct SwappableCert(RwLock<Arc<CertifiedKey>>);

impl SwappableCert {
    fn get(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = key;
    }
}

impl fmt::Debug for SwappableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SwappableCert")
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

fn load_pair(cfg: &TlsConfig, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read_bounded("tls.cert", &cfg.cert)?;
    let key_pem = read_bounded("tls.key", &cfg.key)?;
    let chain = parse_chain(&cert_pem, &cfg.cert)?;
    let key = parse_key(&key_pem, &cfg.key)?;
    certified_key(chain, key, provider, &cfg.cert, &cfg.key)
}

/// Read at most [`MAX_PEM_FILE`] bytes of `path`.
fn read_bounded(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(TlsError::TooLarge {
            key,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// Every `CERTIFICATE` block of `pem`, in order (other block types are skipped).
pub fn parse_chain(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            key: "tls.cert",
            path: path.to_owned(),
            detail: describe_pem_error(&e),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// The first private key block of `pem` (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn parse_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        other => TlsError::Pem {
            key: "tls.key",
            path: path.to_owned(),
            detail: describe_pem_error(&other),
        },
    })
}

/// Pair the chain with the key, checking that the key belongs to the leaf.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::UnsupportedKey {
                path: key_path.to_owned(),
                detail: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        // The key cannot tell its public half: rustls itself accepts it then.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            })
        }
        Err(e) => Err(TlsError::BadCertificate {
            path: cert_path.to_owned(),
            detail: e.to_string(),
        }),
    }
}

/// A PEM error in words that never quote the file's content (it may be a key).
fn describe_pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a PEM block has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a malformed BEGIN line".into(),
        pem::Error::Base64Decode(_) => "invalid base64 inside a PEM block".into(),
        pem::Error::Io(e) => e.to_string(),
        pem::Error::NoItemsFound => "no PEM block of the expected type".into(),
        _ => "unreadable PEM".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    struct Pair {
        dir: tempfile::TempDir,
        cfg: TlsConfig,
        cert_pem: String,
        key_pem: String,
    }

    fn pair(cn: &str) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        let cfg = TlsConfig {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        std::fs::write(&cfg.cert, &cert_pem).unwrap();
        std::fs::write(&cfg.key, &key_pem).unwrap();
        Pair {
            dir,
            cfg,
            cert_pem,
            key_pem,
        }
    }

    #[test]
    fn loads_a_pem_pair_and_offers_h2_then_http11() {
        let p = pair("one");
        let certs = TlsCerts::load(&p.cfg).unwrap();
        assert_eq!(
            certs.config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(certs.current_chain().len(), 1);
        let _ = certs.acceptor();
    }

    #[test]
    fn missing_files_are_named() {
        let p = pair("one");
        let cfg = TlsConfig {
            cert: p.dir.path().join("nope.pem"),
            key: p.cfg.key.clone(),
        };
        let e = TlsCerts::load(&cfg).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Read {
                    key: "tls.cert",
                    ..
                }
            ),
            "{e}"
        );
        let text = e.to_string();
        assert!(text.contains("nope.pem") && text.contains("hint"), "{text}");

        let cfg = TlsConfig {
            cert: p.cfg.cert.clone(),
            key: p.dir.path().join("gone.key"),
        };
        let text = TlsCerts::load(&cfg).unwrap_err().to_string();
        assert!(
            text.starts_with("tls.key ") && text.contains("gone.key"),
            "{text}"
        );
    }

    #[test]
    fn a_file_without_the_expected_block_is_refused() {
        let p = pair("one");
        // The key where the certificate should be, and the other way round.
        let e = parse_chain(p.key_pem.as_bytes(), &p.cfg.key).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        let e = parse_key(p.cert_pem.as_bytes(), &p.cfg.cert).unwrap_err();
        assert!(matches!(e, TlsError::NoKey { .. }), "{e}");
        let e = parse_chain(b"", &p.cfg.cert).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        let e =
            parse_chain(b"-----BEGIN CERTIFICATE-----\nAAAA\n", Path::new("x.pem")).unwrap_err();
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");
        // A certificate block that is not a certificate.
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(&p.cfg.cert, garbage).unwrap();
        let e = TlsCerts::load(&p.cfg).unwrap_err();
        assert!(matches!(e, TlsError::BadCertificate { .. }), "{e}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let a = pair("a");
        let b = pair("b");
        let cfg = TlsConfig {
            cert: a.cfg.cert.clone(),
            key: b.cfg.key.clone(),
        };
        let e = TlsCerts::load(&cfg).unwrap_err();
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("does not match"), "{text}");
        assert!(
            !text.contains(&b.key_pem[30..60]),
            "no key material in errors"
        );
    }

    #[test]
    fn reload_swaps_the_pair_and_keeps_the_old_one_on_error() {
        let a = pair("a");
        let certs = TlsCerts::load(&a.cfg).unwrap();
        let first = certs.current_chain();

        // A broken pair: refused, the old certificate stays.
        let b = pair("b");
        let broken = TlsConfig {
            cert: b.cfg.cert.clone(),
            key: a.cfg.key.clone(),
        };
        assert!(certs.reload(&broken).is_err());
        assert_eq!(certs.current_chain(), first);

        certs.reload(&b.cfg).unwrap();
        assert_ne!(certs.current_chain(), first);
        let b_chain = parse_chain(b.cert_pem.as_bytes(), &b.cfg.cert).unwrap();
        assert_eq!(certs.current_chain(), b_chain);
    }

    #[test]
    fn oversized_files_are_refused() {
        let p = pair("one");
        let big = vec![b'#'; (MAX_PEM_FILE + 1) as usize];
        std::fs::write(&p.cfg.cert, big).unwrap();
        let e = TlsCerts::load(&p.cfg).unwrap_err();
        assert!(matches!(e, TlsError::TooLarge { .. }), "{e}");
    }
}
