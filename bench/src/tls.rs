//! `--tls`: what the load needs to speak TLS, and a throwaway certificate for `--spawn`.
//!
//! The command line gives a CA file and an optional server name ([`options`]); the raw modes
//! turn them into one [`TlsTarget`] (a connector on a rustls config read once, and the name
//! to verify) that every connection's handshake uses, and the client modes pass the same
//! options to [`snowlease::ClientConfig::tls`]. With `--spawn --tls` and no `--tls-ca`,
//! [`throwaway`] makes a CA and a certificate for 127.0.0.1 with the harness in a temporary
//! directory, hands the certificate and key to the spawned server and trusts the CA.

use std::path::{Path, PathBuf};

use snowlease::client::TlsOptions;
use snowlease::rustls::pki_types::ServerName;
use snowlease::tokio_rustls::client::TlsStream;
use snowlease::tokio_rustls::TlsConnector;
use snowlease_testkit::pki::Ca;
use tokio::net::TcpStream;

/// A connector and the name every handshake verifies.
#[derive(Clone)]
pub struct TlsTarget {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsTarget {
    /// Reads the CA file once; the name is the override, else the host of `addr`.
    pub fn new(options: &TlsOptions, addr: &str) -> Result<TlsTarget, String> {
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        Ok(TlsTarget {
            connector: options.connector().map_err(|e| e.to_string())?,
            name: options.name_for(host).map_err(|e| e.to_string())?,
        })
    }

    /// The client side of a handshake on `tcp`.
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.name.clone(), tcp).await
    }
}

/// The TLS options from the command line.
pub fn options(ca: &Path, server_name: Option<&str>) -> TlsOptions {
    let options = TlsOptions::ca_file(ca);
    match server_name {
        Some(name) => options.server_name(name),
        None => options,
    }
}

/// Files of a throwaway CA and server certificate; the directory goes when this is dropped.
#[derive(Debug)]
pub struct Throwaway {
    dir: PathBuf,
    /// The CA certificate, PEM: what the load trusts.
    pub ca: PathBuf,
    /// The server certificate (127.0.0.1 and localhost), PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
}

/// A fresh CA and a server certificate it signed, for 127.0.0.1 and localhost, written to a
/// new temporary directory (the harness's [`Ca`]: ECDSA P-256, as cert-manager issues when
/// asked for ECDSA).
pub fn throwaway() -> Result<Throwaway, String> {
    let fail =
        |e: snowlease_testkit::pki::Error| format!("cannot generate a throwaway certificate: {e}");
    let dir = std::env::temp_dir().join(format!("snowlease-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ca = Ca::new("bench").map_err(fail)?;
    let leaf = ca.leaf(&["127.0.0.1", "localhost"]).map_err(fail)?;
    let files = Throwaway {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        dir,
    };
    for (path, text) in [
        (&files.ca, ca.pem().to_owned()),
        (&files.cert, leaf.cert),
        (&files.key, leaf.key),
    ] {
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(files)
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
