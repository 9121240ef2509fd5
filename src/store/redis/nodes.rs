//! How a connection to one Redis node is made: address, credentials, TLS, and the
//! timeouts of `store.timeout` (docs/configuration.md#redis). Pure set-up, no I/O
//! besides reading the TLS files once, when the store is built.

use std::{fs, path::Path, time::Duration};

use redis::{
    ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo,
    TlsCertificates, aio::ConnectionManagerConfig, io::tcp::TcpSettings,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::config::{RedisOptions, RedisTls};

/// What every connection to a data node (or a sentinel) shares.
#[derive(Clone)]
pub(super) struct NodeTemplate {
    /// Credentials; the db is always 0 (the scripts `SELECT` what they need).
    pub(super) redis: RedisConnectionInfo,
    /// `Some` with TLS on; the PEMs were read and parsed when the store was built.
    pub(super) tls: Option<TlsCertificates>,
    pub(super) timeout: Duration,
}

impl NodeTemplate {
    /// The data-node template of `options` (credentials of the URL when there is one
    /// are applied by the caller). Reads and checks the TLS files.
    pub(super) fn new(options: &RedisOptions, timeout: Duration) -> Result<Self, String> {
        let mut redis = RedisConnectionInfo::default().set_db(0);
        if let Some(u) = &options.username {
            redis = redis.set_username(u);
        }
        if let Some(p) = &options.password {
            redis = redis.set_password(&p.0);
        }
        let tls = options.tls.as_ref().map(read_tls).transpose()?;
        Ok(NodeTemplate {
            redis,
            tls,
            timeout,
        })
    }

    /// The same template with other credentials (the sentinels have their own).
    pub(super) fn with_credentials(&self, username: Option<&str>, password: Option<&str>) -> Self {
        let mut redis = RedisConnectionInfo::default().set_db(0);
        if let Some(u) = username {
            redis = redis.set_username(u);
        }
        if let Some(p) = password {
            redis = redis.set_password(p);
        }
        NodeTemplate {
            redis,
            ..self.clone()
        }
    }

    /// Connection info for `host:port` with this template's credentials and TLS mode.
    pub(super) fn info(&self, host: &str, port: u16) -> Result<ConnectionInfo, redis::RedisError> {
        let addr = if self.tls.is_some() {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        };
        finish(addr, self.redis.clone())
    }

    /// A client for `info` (its TLS parameters attached when TLS is on).
    pub(super) fn client(&self, info: ConnectionInfo) -> Result<redis::Client, redis::RedisError> {
        match &self.tls {
            Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
            None => redis::Client::open(info),
        }
    }

    /// Reconnection policy of one multiplexed connection: a dead Redis costs at most
    /// `store.timeout` per call; the background reconnection gives up quickly (each
    /// later call starts a new attempt anyway).
    pub(super) fn manager_config(&self) -> ConnectionManagerConfig {
        let timeout = self.timeout;
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10).min(timeout))
            .set_max_delay((timeout / 2).max(Duration::from_millis(1)))
    }
}

/// `info` with nodelay on (redis 1.x leaves Nagle on; every call is one small
/// request/response) and the given credentials.
pub(super) fn finish(
    info: impl IntoConnectionInfo,
    redis: RedisConnectionInfo,
) -> Result<ConnectionInfo, redis::RedisError> {
    Ok(info
        .into_connection_info()?
        .set_redis_settings(redis)
        .set_tcp_settings(TcpSettings::default().set_nodelay(true)))
}

/// `host:port` split (validated by the configuration: docs/configuration.md#redis).
pub(super) fn host_port(node: &str) -> Result<(String, u16), String> {
    let (host, port) = node
        .rsplit_once(':')
        .ok_or_else(|| format!("{node:?} is not host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{node:?} is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_owned(), port))
}

fn read_pem(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| format!("store.storage.{key}: cannot read {}: {e}", path.display()))
}

/// Read and check the TLS files: a CA bundle with at least one certificate, a client
/// chain and key that parse. Messages name the setting and the file, never contents.
fn read_tls(tls: &RedisTls) -> Result<TlsCertificates, String> {
    let root_cert = match &tls.ca {
        Some(path) => {
            let pem = read_pem(path, "tls_ca")?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("store.storage.tls_ca: {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "store.storage.tls_ca: {}: no PEM certificate in the file",
                    path.display()
                ));
            }
            Some(pem)
        }
        None => None,
    };
    let client_tls = match (&tls.cert, &tls.key) {
        (Some(cert_path), Some(key_path)) => {
            let client_cert = read_pem(cert_path, "tls_cert")?;
            let chain = CertificateDer::pem_slice_iter(&client_cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("store.storage.tls_cert: {}: {e}", cert_path.display()))?;
            if chain.is_empty() {
                return Err(format!(
                    "store.storage.tls_cert: {}: no PEM certificate in the file",
                    cert_path.display()
                ));
            }
            let client_key = read_pem(key_path, "tls_key")?;
            PrivateKeyDer::from_pem_slice(&client_key).map_err(|e| {
                format!(
                    "store.storage.tls_key: {}: no private key ({e})",
                    key_path.display()
                )
            })?;
            Some(ClientTlsConfig {
                client_cert,
                client_key,
            })
        }
        (None, None) => None,
        _ => {
            return Err(
                "store.storage.tls_cert and tls_key go together (both or neither)".to_owned(),
            );
        }
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_splits() {
        assert_eq!(
            host_port("10.0.0.1:26379").unwrap(),
            ("10.0.0.1".into(), 26379)
        );
        assert_eq!(host_port("[::1]:7000").unwrap(), ("::1".into(), 7000));
        assert!(host_port("nohost").is_err());
        assert!(host_port("h:99999").is_err());
    }

    #[test]
    fn tls_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let tls = |ca: Option<&Path>| RedisTls {
            ca: ca.map(Path::to_path_buf),
            ..RedisTls::default()
        };
        let err = read_tls(&tls(Some(&garbage))).err().unwrap();
        assert!(
            err.contains("tls_ca") && err.contains("no PEM certificate"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        let err = read_tls(&tls(Some(&missing))).err().unwrap();
        assert!(err.contains("cannot read"), "{err}");
        assert!(read_tls(&tls(None)).unwrap().root_cert.is_none());
    }
}
