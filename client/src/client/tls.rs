//! TLS to the lease port (cargo feature `tls`, on by default).
//!
//! The caller describes trust in a [`TlsOptions`]: a CA bundle file (plus, for mutual TLS, a
//! client certificate and key) or a ready `rustls::ClientConfig`. [`Client::connect`] turns
//! the files into a config once ([`TlsOptions::load`]), so a bad file is a configuration
//! error at connect, not a failure per reconnect. Each connection task then wraps its TCP
//! stream in a `TlsConnector` handshake, inside the connect timeout, naming the server by the
//! endpoint's host (or IP, or the override), and speaks the unchanged protocol inside.
//! [`handshake_error`] sorts failures: anything rustls itself reports while connecting (an
//! untrusted or misnamed certificate, a refused client certificate, a peer that does not
//! speak TLS) becomes [`Error::Tls`], which waiting cannot fix; socket errors stay retryable.
//!
//! [`Client::connect`]: super::Client::connect

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::TlsConnector;

use super::Error;

/// How to reach a TLS-enabled server: whom to trust, and what name its certificate must have.
///
/// ```no_run
/// use snowlease::client::TlsOptions;
/// let config = snowlease::ClientConfig::new(["snowlease-headless.snowlease.svc:7609"])
///     .tls(TlsOptions::ca_file("/etc/snowlease/ca.crt"));
/// ```
#[derive(Debug, Clone)]
pub struct TlsOptions {
    trust: Trust,
    identity: Option<(PathBuf, PathBuf)>,
    server_name: Option<String>,
}

#[derive(Debug, Clone)]
enum Trust {
    CaFile(PathBuf),
    Config(Arc<rustls::ClientConfig>),
}

impl TlsOptions {
    /// Trust the CA certificates in this PEM file (one or more), and nothing else: a service
    /// like this one usually has a private CA, and the system store would trust any public
    /// certificate for the name.
    pub fn ca_file(path: impl Into<PathBuf>) -> Self {
        TlsOptions {
            trust: Trust::CaFile(path.into()),
            identity: None,
            server_name: None,
        }
    }

    /// Use this rustls configuration as it is (custom verifiers, client certificates from a
    /// hardware key, session settings). [`TlsOptions::client_identity`] does not apply.
    pub fn config(config: Arc<rustls::ClientConfig>) -> Self {
        TlsOptions {
            trust: Trust::Config(config),
            identity: None,
            server_name: None,
        }
    }

    /// Present this certificate (PEM chain) and key to servers that require client
    /// certificates (`--tls-client-ca`). Only with [`TlsOptions::ca_file`].
    pub fn client_identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// The name the server's certificate must carry, instead of each endpoint's host (or IP):
    /// for endpoints given as IPs, or a certificate issued for a Service name while the
    /// client dials pod addresses.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Reads the files into a rustls configuration; refuses with the path of a bad file.
    pub fn load(&self) -> Result<TlsOptions, Error> {
        let config = match &self.trust {
            Trust::Config(config) => {
                if self.identity.is_some() {
                    return Err(Error::Config(
                        "TLS: client_identity applies to ca_file only; put the client certificate into the rustls config".into(),
                    ));
                }
                config.clone()
            }
            Trust::CaFile(ca) => {
                let identity = self
                    .identity
                    .as_ref()
                    .map(|(c, k)| (c.as_path(), k.as_path()));
                client_config(ca, identity)?
            }
        };
        Ok(TlsOptions {
            trust: Trust::Config(config),
            identity: None,
            server_name: self.server_name.clone(),
        })
    }

    /// The rustls configuration (reads the files if [`TlsOptions::load`] was not called).
    pub fn rustls_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        match (&self.trust, &self.identity) {
            (Trust::Config(config), None) => Ok(config.clone()),
            _ => self.load()?.rustls_config(),
        }
    }

    /// A connector on [`TlsOptions::rustls_config`].
    pub fn connector(&self) -> Result<TlsConnector, Error> {
        self.rustls_config().map(TlsConnector::from)
    }

    /// The name to verify for a server reached as `host` (a DNS name or an IP, no port): the
    /// override if one is set, else `host` itself.
    pub fn name_for(&self, host: &str) -> Result<ServerName<'static>, Error> {
        let name = self.server_name.as_deref().unwrap_or(host);
        let bare = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        ServerName::try_from(bare.to_owned()).map_err(|_| {
            Error::Config(format!(
                "TLS: {name:?} is neither a DNS name nor an IP address, so no certificate can match it; set TlsOptions::server_name"
            ))
        })
    }
}

/// A rustls client configuration trusting the CA certificates in `ca` (PEM), optionally
/// presenting a client certificate, on the ring provider (passed explicitly, so nothing
/// depends on a process-wide default).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("CA", ca)? {
        roots.add(cert).map_err(|e| {
            Error::Config(format!(
                "TLS CA file {}: unusable certificate: {e}",
                ca.display()
            ))
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Config(format!("TLS: {e}")))?
    .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates("client certificate", cert)?;
            let key_der = read_pem("client key", key).and_then(|pem| {
                PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    Error::Config(format!(
                        "TLS client key {}: no usable PRIVATE KEY block: {e}",
                        key.display()
                    ))
                })
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                Error::Config(format!(
                    "TLS client certificate {} with key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
    };
    Ok(Arc::new(config))
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::Config(format!("TLS {what} file {}: {e}", path.display())))
}

fn certificates(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read_pem(what, path)?;
    let bad = |why: String| Error::Config(format!("TLS {what} file {}: {why}", path.display()));
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Sorts a failure while connecting: an error rustls raised (certificate, name, version, a
/// peer that is not TLS) is [`Error::Tls`], not retryable; anything else is returned as is.
pub(crate) fn handshake_error(error: Error) -> Error {
    let (Error::Io { addr, source } | Error::Connect { addr, source }) = &error else {
        return error;
    };
    match source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => {
            let hint = match tls {
                rustls::Error::InvalidMessage(_) => " (is the server serving TLS?)",
                _ => "",
            };
            Error::Tls {
                addr: *addr,
                reason: format!("{tls}{hint}"),
            }
        }
        None => error,
    }
}
