//! TLS on the lease port: PEM files in, a reloadable rustls configuration, TLS streams out.
//!
//! At start [`TlsStore::load`] reads `--tls-cert`, `--tls-key` and optionally
//! `--tls-client-ca` into an `Arc<rustls::ServerConfig>` (ring provider, installed here rather
//! than process-wide) and refuses anything unusable with the flag and the path. Each accepted
//! connection clones the current `Arc` and runs [`handshake`] inside its own task, bounded by
//! [`HANDSHAKE_TIMEOUT`] and by shutdown; the resulting stream is an ordinary
//! `AsyncRead + AsyncWrite` that `conn::serve` drives exactly as it drives a TCP stream (it
//! flushes after each write, which TLS needs and TCP ignores): the protocol bytes inside TLS
//! are the same. The admin thread calls
//! [`TlsStore::reload_if_changed`] once a second and on SIGHUP; a reload swaps the `Arc`, so
//! new connections get the new certificate while open ones keep the session they have.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsPaths;
use crate::metrics::CoreMetrics;

pub use tokio_rustls::rustls;

/// Longest a TLS handshake may take before the connection is dropped (the idle timeout, if
/// shorter, wins). A handshake is two round trips and well under a millisecond of CPU; 10 s
/// covers a client on a congested link, while a peer that opens a socket and says nothing
/// holds its connection slot no longer than this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshake bound for a connection turned away at the cap, which gets its OVERLOADED frame
/// inside TLS: 1 s, since at most `TURNING_AWAY_MAX` of them per core hold a descriptor.
pub const TURN_AWAY_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the TLS files are unusable. Messages name the flag and the path, never file contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// One file cannot be read or holds nothing usable.
    #[error("{flag} {}: {reason}", path.display())]
    File {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The files are fine one by one but rustls refuses them together (e.g. the key is not
    /// the certificate's).
    #[error("--tls-cert {} with --tls-key {}: {reason}", cert.display(), key.display())]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
}

/// Modification times of the cert, key and client CA files, to notice a change.
type Stamps = [Option<SystemTime>; 3];

/// The current TLS configuration and the files it comes from.
#[derive(Debug)]
pub struct TlsStore {
    paths: TlsPaths,
    current: RwLock<Arc<ServerConfig>>,
    /// Stamps of the last look, loaded or not, so a bad file is reported once per change
    /// instead of once a second.
    seen: Mutex<Stamps>,
}

impl TlsStore {
    /// Reads and checks every file; refuses with the flag and path of the first bad one.
    pub fn load(paths: &TlsPaths) -> Result<TlsStore, TlsError> {
        let stamps = stamps(paths);
        Ok(TlsStore {
            current: RwLock::new(build(paths)?),
            paths: paths.clone(),
            seen: Mutex::new(stamps),
        })
    }

    /// The files this store reads.
    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// An acceptor for one connection, on the configuration current now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    /// Re-reads the files if any modification time changed since the last look (or `force`).
    /// Returns whether a new configuration is in place. Files that became unusable keep the
    /// current configuration and are reported as the error.
    pub fn reload_if_changed(&self, force: bool) -> Result<bool, TlsError> {
        let now = stamps(&self.paths);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if !force && *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let fresh = build(&self.paths)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(true)
    }
}

fn stamps(paths: &TlsPaths) -> Stamps {
    let modified =
        |p: Option<&Path>| p.and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    [
        modified(Some(&paths.cert)),
        modified(Some(&paths.key)),
        modified(paths.client_ca.as_deref()),
    ]
}

fn file_error(flag: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::File {
        flag,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(flag, path, e.to_string()))
}

/// Every CERTIFICATE block in the file, in order; at least one.
fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(flag, path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(flag, path, "holds no CERTIFICATE block"));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let flag = "--tls-key";
    let pem = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => file_error(
            flag,
            path,
            "holds no PRIVATE KEY block (PKCS#8, PKCS#1 or SEC1)",
        ),
        e => file_error(flag, path, format!("not valid PEM: {e}")),
    })
}

/// Builds a server configuration from the files, with the ring provider passed explicitly
/// so nothing depends on a process-wide default.
fn build(paths: &TlsPaths) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates("--tls-cert", &paths.cert)?;
    let key = private_key(&paths.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair = |e: rustls::Error| TlsError::Pair {
        cert: paths.cert.clone(),
        key: paths.key.clone(),
        reason: e.to_string(),
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(pair)?;
    let builder = match &paths.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let flag = "--tls-client-ca";
            let mut roots = RootCertStore::empty();
            for cert in certificates(flag, ca)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error(flag, ca, format!("unusable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error(flag, ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(pair)?;
    Ok(Arc::new(config))
}

/// Runs the server side of a handshake within `limit`, giving up at shutdown. A failure is
/// counted and logged at debug only: port scanners and plaintext clients fail here all day.
/// The socket is closed only after the count, so a peer that sees the close can rely on it.
pub async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    limit: Duration,
    metrics: &CoreMetrics,
    shutdown: &CancellationToken,
) -> Option<TlsStream<TcpStream>> {
    let peer = stream.peer_addr().ok();
    // Kept alive across the failure paths: dropping it closes the socket.
    let mut accept = acceptor.accept(stream).into_fallible();
    let outcome = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return None,
        outcome = tokio::time::timeout(limit, &mut accept) => outcome,
    };
    let (error, _socket) = match outcome {
        Ok(Ok(tls)) => return Some(tls),
        Ok(Err((e, socket))) => (e.to_string(), Some(socket)),
        Err(_) => (format!("no handshake within {limit:?}"), None),
    };
    metrics.tls_handshake_failed();
    tracing::debug!(?peer, %error, "TLS handshake failed");
    drop(accept);
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A CA and a leaf for 127.0.0.1 and localhost, as PEM.
    fn ca_and_leaf() -> (String, String, String) {
        let ca = snowlease_testkit::pki::Ca::new("unit").expect("ca");
        let leaf = ca.leaf(&["localhost", "127.0.0.1"]).expect("leaf");
        (ca.pem().to_owned(), leaf.cert, leaf.key)
    }

    /// A scratch directory, removed on drop.
    struct Dir(snowlease_testkit::TempDir);

    impl Dir {
        fn new(name: &str) -> Dir {
            Dir(snowlease_testkit::temp_dir(&format!("tls-{name}")))
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        }
    }

    fn paths(cert: PathBuf, key: PathBuf) -> TlsPaths {
        TlsPaths {
            cert,
            key,
            client_ca: None,
        }
    }

    fn refusal(p: &TlsPaths) -> String {
        TlsStore::load(p).expect_err("refused").to_string()
    }

    #[test]
    fn a_matching_certificate_and_key_load() {
        let dir = Dir::new("ok");
        let (ca, cert, key) = ca_and_leaf();
        let mut p = paths(dir.write("cert.pem", &cert), dir.write("key.pem", &key));
        assert!(TlsStore::load(&p).is_ok());
        p.client_ca = Some(dir.write("ca.pem", &ca));
        assert!(TlsStore::load(&p).is_ok());
    }

    #[test]
    fn unusable_files_are_refused_naming_the_flag_and_the_path() {
        let dir = Dir::new("bad");
        let (_, cert, key) = ca_and_leaf();
        let (_, _, other_key) = ca_and_leaf();
        let cert = dir.write("cert.pem", &cert);
        let key = dir.write("key.pem", &key);
        let garbage = dir.write("garbage.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n");
        let text = dir.write("text.pem", "hello\n");
        let missing = dir.0.path().join("missing.pem");

        let err = refusal(&paths(missing.clone(), key.clone()));
        assert!(
            err.starts_with(&format!("--tls-cert {}: ", missing.display())),
            "{err}"
        );
        let err = refusal(&paths(cert.clone(), missing.clone()));
        assert!(
            err.starts_with(&format!("--tls-key {}: ", missing.display())),
            "{err}"
        );
        let err = refusal(&paths(garbage.clone(), key.clone()));
        assert!(
            err.contains("--tls-cert") && err.contains("not valid PEM"),
            "{err}"
        );
        let err = refusal(&paths(text.clone(), key.clone()));
        assert!(err.contains("holds no CERTIFICATE block"), "{err}");
        let err = refusal(&paths(cert.clone(), text));
        assert!(
            err.contains("--tls-key") && err.contains("holds no PRIVATE KEY"),
            "{err}"
        );
        let err = refusal(&paths(cert.clone(), dir.write("other.pem", &other_key)));
        assert!(
            err.starts_with("--tls-cert ") && err.contains("--tls-key"),
            "{err}"
        );
        let mut p = paths(cert, key);
        p.client_ca = Some(garbage);
        let err = refusal(&p);
        assert!(err.starts_with("--tls-client-ca "), "{err}");
    }

    #[test]
    fn a_changed_file_is_picked_up_by_its_mtime_and_a_bad_one_keeps_the_old_config() {
        let dir = Dir::new("reload");
        let (_, cert, key) = ca_and_leaf();
        let p = paths(dir.write("cert.pem", &cert), dir.write("key.pem", &key));
        let store = TlsStore::load(&p).expect("load");
        let before = store.acceptor().config().clone();
        assert!(!store.reload_if_changed(false).expect("unchanged"));

        let set_mtime = |path: &Path, secs: u64| {
            let when = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            std::fs::File::options()
                .write(true)
                .open(path)
                .and_then(|f| f.set_modified(when))
                .expect("set mtime");
        };
        let (_, cert2, key2) = ca_and_leaf();
        std::fs::write(&p.cert, &cert2).expect("write");
        std::fs::write(&p.key, &key2).expect("write");
        set_mtime(&p.cert, 1_000_000);
        assert!(store.reload_if_changed(false).expect("reloaded"));
        let after = store.acceptor().config().clone();
        assert!(!Arc::ptr_eq(&before, &after));

        std::fs::write(&p.key, "not a key").expect("write");
        set_mtime(&p.key, 2_000_000);
        assert!(store.reload_if_changed(false).is_err());
        assert!(Arc::ptr_eq(&after, store.acceptor().config()));
        assert!(
            !store.reload_if_changed(false).expect("seen"),
            "a bad file is reported once per change"
        );
    }
}
