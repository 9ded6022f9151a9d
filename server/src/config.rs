//! Settings: command-line flags and environment variables in, a validated [`ServerConfig`] out.
//!
//! clap reads every setting from a flag or its environment variable ([`Args`]); [`Args::resolve`]
//! then works out the worker id (`WORKER_ID`, else the ordinal after the last `-` of `POD_NAME`,
//! else of the hostname) and the layout, refusing anything the layout cannot hold with a message
//! naming the value and its source. Nothing here touches a socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use snowlease_proto::layout::parse_epoch;
use snowlease_proto::Layout;

/// Default lease port.
pub const DEFAULT_PORT: u16 = 7609;
/// Default admin HTTP port.
pub const DEFAULT_ADMIN_PORT: u16 = 7610;
/// Default cap on open lease connections. Sized for 10,000 idle clients (the hardening target)
/// with headroom; each idle connection costs about 2.5 KiB of user memory (measured: 24.4 MiB for
/// 10,000).
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Default time a connection may go without a complete request before GOAWAY. Long enough for
/// a pooled client that leases once a minute, short enough that half-open sockets go away.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 120_000;
/// Default time a reply may wait on a client that does not read before the connection is
/// dropped: a healthy client drains a 1 KiB batch in microseconds.
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 10_000;
/// Default drain budget after SIGTERM; the StatefulSet's grace period (30 s) is above it.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 5_000;
/// Default number of ticks the generator may run ahead of the clock under a burst. 100 ms lets
/// a burst of 409,600 IDs go out at once and absorbs the 1 ms timer granularity at saturation,
/// while keeping timestamps within 0.1 s of the truth.
pub const DEFAULT_MAX_LEAD_MS: u64 = 100;
/// Default replies encoded per flush before the connection stops decoding (backpressure).
/// 1024 LEASED replies are 21 KiB, within a default socket send buffer.
pub const DEFAULT_MAX_QUEUED_REPLIES: usize = 1024;
/// Listen backlog per core listener: a burst of 10,000 connects spread over the cores'
/// accept queues without SYN drops.
pub const DEFAULT_BACKLOG: i32 = 4096;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// snowlease-server: unique, time-sortable 64-bit IDs leased in blocks over TCP.
#[derive(Debug, Clone, Parser)]
#[command(name = "snowlease-server", version, about, long_about = None)]
pub struct Args {
    /// Lease (binary protocol) listen address; port 0 picks one free port shared by all cores.
    #[arg(long, env = "SNOWLEASE_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    pub listen: SocketAddr,

    /// Admin HTTP listen address (health, readiness, metrics, /generate-id).
    #[arg(long, env = "SNOWLEASE_ADMIN_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_ADMIN_PORT)))]
    pub admin_listen: SocketAddr,

    /// Worker id (0..=max for the layout, 1023 by default). Default: the ordinal after the last
    /// '-' of POD_NAME, else of the hostname; worker 0 outside Kubernetes.
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,

    /// StatefulSet pod name; its ordinal is the worker id when WORKER_ID is not set.
    #[arg(long, env = "POD_NAME", hide = true)]
    pub pod_name: Option<String>,

    /// Serving threads, one current-thread runtime each. Default: the CPUs this process may use
    /// (cgroup quota honoured).
    #[arg(long, env = "SNOWLEASE_THREADS")]
    pub threads: Option<usize>,

    /// Epoch of the timestamp field: RFC 3339 or Unix milliseconds.
    #[arg(long, env = "SNOWLEASE_EPOCH", default_value = "2024-01-01T00:00:00Z")]
    pub epoch: String,

    /// Width of the timestamp field in bits.
    #[arg(long, env = "SNOWLEASE_TIMESTAMP_BITS", default_value_t = 41)]
    pub timestamp_bits: u8,

    /// Width of the worker field in bits.
    #[arg(long, env = "SNOWLEASE_WORKER_BITS", default_value_t = 10)]
    pub worker_bits: u8,

    /// Width of the sequence field in bits (IDs per millisecond = 2^bits).
    #[arg(long, env = "SNOWLEASE_SEQUENCE_BITS", default_value_t = 12)]
    pub sequence_bits: u8,

    /// How many milliseconds the generator may run ahead of the clock under load (0 = pure
    /// Snowflake: wait for the next millisecond).
    #[arg(long, env = "SNOWLEASE_MAX_LEAD_MS", default_value_t = DEFAULT_MAX_LEAD_MS)]
    pub max_lead_ms: u64,

    /// Directory for the persisted high-water mark that makes restarts with the clock set back
    /// safe. Without it restarts are not protected.
    #[arg(long, env = "SNOWLEASE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Milliseconds reserved ahead in the state file; extended when less than half is left.
    #[arg(long, env = "SNOWLEASE_RESERVE_MS", default_value_t = 3_000)]
    pub reserve_ms: u64,

    /// Start even if the state file is corrupt, discarding it. Only when you know no ID from
    /// this worker id was issued with a timestamp ahead of the clock.
    #[arg(long, env = "SNOWLEASE_DISCARD_CORRUPT_STATE", default_value_t = false)]
    pub discard_corrupt_state: bool,

    /// Refuse to start when fewer years than this remain before the timestamp field runs out.
    #[arg(long, env = "SNOWLEASE_MIN_YEARS_LEFT", default_value_t = 1.0)]
    pub min_years_left: f64,

    /// Cap on open lease connections; past it a client gets ERROR OVERLOADED and is closed.
    #[arg(long, env = "SNOWLEASE_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Close a connection (GOAWAY IDLE_TIMEOUT) after this long without a complete request.
    #[arg(long, env = "SNOWLEASE_IDLE_TIMEOUT_MS", default_value_t = DEFAULT_IDLE_TIMEOUT_MS)]
    pub idle_timeout_ms: u64,

    /// Drop a connection whose peer has not read its replies for this long.
    #[arg(long, env = "SNOWLEASE_WRITE_TIMEOUT_MS", default_value_t = DEFAULT_WRITE_TIMEOUT_MS)]
    pub write_timeout_ms: u64,

    /// After SIGTERM/SIGINT, how long open connections get to finish before exit.
    #[arg(long, env = "SNOWLEASE_DRAIN_TIMEOUT_MS", default_value_t = DEFAULT_DRAIN_TIMEOUT_MS)]
    pub drain_timeout_ms: u64,

    /// Replies encoded before a connection flushes and stops decoding (backpressure).
    #[arg(long, env = "SNOWLEASE_MAX_QUEUED_REPLIES", default_value_t = DEFAULT_MAX_QUEUED_REPLIES)]
    pub max_queued_replies: usize,

    /// File holding a shared token (1..=255 bytes). When set, a connection's first frame must
    /// be HELLO with this token, and /generate-id wants `Authorization: Bearer <token>`.
    /// Re-read on SIGHUP and when the file changes.
    #[arg(long, env = "SNOWLEASE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// PEM file with the lease port's certificate chain (leaf first). With --tls-key, the lease
    /// port speaks TLS only. Re-read on SIGHUP and when the file changes.
    #[arg(long, env = "SNOWLEASE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SNOWLEASE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM file with the CA certificates client certificates must chain to (mutual TLS):
    /// clients without such a certificate are refused during the handshake. Needs --tls-cert.
    #[arg(long, env = "SNOWLEASE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Log line format.
    #[arg(long, env = "SNOWLEASE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// The files TLS on the lease port is built from; read by [`crate::tls`], never here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// `--tls-cert`: the certificate chain, PEM.
    pub cert: PathBuf,
    /// `--tls-key`: its private key, PEM.
    pub key: PathBuf,
    /// `--tls-client-ca`: CA certificates for client certificates (mutual TLS), PEM.
    pub client_ca: Option<PathBuf>,
}

/// Where the worker id came from, for the start log line and error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerSource {
    /// `--worker-id` / `WORKER_ID`.
    Explicit,
    /// The ordinal of `POD_NAME`.
    PodName(String),
    /// The ordinal of the hostname.
    Hostname(String),
    /// Nothing said: worker 0, outside Kubernetes only.
    Default,
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Lease listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address.
    pub admin_listen: SocketAddr,
    /// This server's worker id, checked against the layout.
    pub worker_id: u16,
    /// Where the worker id came from.
    pub worker_source: WorkerSource,
    /// ID layout.
    pub layout: Layout,
    /// Serving threads.
    pub threads: usize,
    /// Ticks the generator may run ahead of the clock.
    pub max_lead_ms: u64,
    /// Directory of the state file; `None` = restarts unprotected.
    pub state_dir: Option<PathBuf>,
    /// Window reserved ahead in the state file, ms.
    pub reserve_ms: u64,
    /// Start past a corrupt state file.
    pub discard_corrupt_state: bool,
    /// Refuse to start with fewer years than this left in the layout.
    pub min_years_left: f64,
    /// Cap on open lease connections.
    pub max_connections: usize,
    /// Idle timeout per connection.
    pub idle_timeout: Duration,
    /// Write timeout per connection.
    pub write_timeout: Duration,
    /// Drain budget at shutdown.
    pub drain_timeout: Duration,
    /// Replies per flush.
    pub max_queued_replies: usize,
    /// Listen backlog per core.
    pub backlog: i32,
    /// Shared token file, if access is restricted.
    pub token_file: Option<PathBuf>,
    /// TLS on the lease port; `None` = plaintext.
    pub tls: Option<TlsPaths>,
}

/// Why the server refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a value the server cannot use.
    #[error("{0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Loopback on OS-assigned ports, two threads: what tests and the bench's `--spawn` use.
    pub fn for_tests(worker_id: u16) -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            worker_id,
            worker_source: WorkerSource::Explicit,
            layout: Layout::DEFAULT,
            threads: 2,
            max_lead_ms: DEFAULT_MAX_LEAD_MS,
            state_dir: None,
            reserve_ms: 3_000,
            discard_corrupt_state: false,
            min_years_left: 1.0,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            write_timeout: Duration::from_millis(DEFAULT_WRITE_TIMEOUT_MS),
            drain_timeout: Duration::from_millis(DEFAULT_DRAIN_TIMEOUT_MS),
            max_queued_replies: DEFAULT_MAX_QUEUED_REPLIES,
            backlog: DEFAULT_BACKLOG,
            token_file: None,
            tls: None,
        }
    }
}

/// The environment facts worker-id resolution depends on, gathered once so tests can fake them.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// The hostname, if known.
    pub hostname: Option<String>,
    /// Whether `KUBERNETES_SERVICE_HOST` is set.
    pub in_kubernetes: bool,
}

impl Environment {
    /// Reads the real process environment.
    pub fn detect() -> Environment {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok());
        Environment {
            hostname,
            in_kubernetes: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        }
    }
}

impl Args {
    /// Validates the flags into a [`ServerConfig`].
    pub fn resolve(&self, env: &Environment) -> Result<ServerConfig, ConfigError> {
        let epoch = parse_epoch(&self.epoch).map_err(ConfigError::Invalid)?;
        let layout = Layout::new(
            epoch,
            self.timestamp_bits,
            self.worker_bits,
            self.sequence_bits,
        )
        .map_err(|e| ConfigError::Invalid(format!("layout refused: {e}")))?;
        let (worker_id, worker_source) = resolve_worker_id(
            self.worker_id.as_deref(),
            self.pod_name.as_deref(),
            env,
            &layout,
        )?;
        let threads = match self.threads {
            Some(0) => return Err(ConfigError::Invalid("--threads must be at least 1".into())),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "--max-connections must be at least 1".into(),
            ));
        }
        if self.max_queued_replies == 0 {
            return Err(ConfigError::Invalid(
                "--max-queued-replies must be at least 1".into(),
            ));
        }
        if self.reserve_ms < 2 {
            return Err(ConfigError::Invalid(
                "--reserve-ms must be at least 2".into(),
            ));
        }
        let tls = self.tls_paths()?;
        Ok(ServerConfig {
            listen: self.listen,
            admin_listen: self.admin_listen,
            worker_id,
            worker_source,
            layout,
            threads,
            max_lead_ms: self.max_lead_ms,
            state_dir: self.state_dir.clone(),
            reserve_ms: self.reserve_ms,
            discard_corrupt_state: self.discard_corrupt_state,
            min_years_left: self.min_years_left,
            max_connections: self.max_connections,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.max(1)),
            write_timeout: Duration::from_millis(self.write_timeout_ms.max(1)),
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
            max_queued_replies: self.max_queued_replies,
            backlog: DEFAULT_BACKLOG,
            token_file: self.token_file.clone(),
            tls,
        })
    }

    /// Both of --tls-cert and --tls-key, or neither; --tls-client-ca only with them. A half
    /// configured TLS must not start as plaintext.
    fn tls_paths(&self) -> Result<Option<TlsPaths>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsPaths {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            })),
            (Some(cert), None) => Err(ConfigError::Invalid(format!(
                "--tls-cert {} is set but --tls-key (SNOWLEASE_TLS_KEY) is not: TLS needs both",
                cert.display()
            ))),
            (None, Some(key)) => Err(ConfigError::Invalid(format!(
                "--tls-key {} is set but --tls-cert (SNOWLEASE_TLS_CERT) is not: TLS needs both",
                key.display()
            ))),
            (None, None) => match &self.tls_client_ca {
                Some(ca) => Err(ConfigError::Invalid(format!(
                    "--tls-client-ca {} needs --tls-cert and --tls-key: client certificates are only checked over TLS",
                    ca.display()
                ))),
                None => Ok(None),
            },
        }
    }
}

/// The ordinal after the last `-` of a StatefulSet pod name (`id-gen2-5` is 5).
pub fn ordinal(name: &str) -> Option<u64> {
    let (_, tail) = name.rsplit_once('-')?;
    if tail.is_empty() || !tail.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    tail.parse().ok()
}

/// Works out the worker id. See the module docs for the order.
pub fn resolve_worker_id(
    explicit: Option<&str>,
    pod_name: Option<&str>,
    env: &Environment,
    layout: &Layout,
) -> Result<(u16, WorkerSource), ConfigError> {
    let max = layout.max_worker();
    let check = |id: u64, source: WorkerSource, what: String| {
        if id > u64::from(max) {
            Err(ConfigError::Invalid(format!(
                "worker id {id} (from {what}) does not fit the layout's {} worker bits: valid worker ids are 0..={max}",
                layout.worker_bits()
            )))
        } else {
            Ok((id as u16, source))
        }
    };
    if let Some(text) = explicit.map(str::trim).filter(|t| !t.is_empty()) {
        let id = text.parse::<u64>().map_err(|_| {
            ConfigError::Invalid(format!(
                "WORKER_ID {text:?} is not a whole number (valid worker ids are 0..={max})"
            ))
        })?;
        return check(id, WorkerSource::Explicit, format!("WORKER_ID={text}"));
    }
    if let Some(pod) = pod_name.map(str::trim).filter(|t| !t.is_empty()) {
        let id = ordinal(pod).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "POD_NAME {pod:?} has no ordinal after its last '-' (expected a StatefulSet pod name like snowlease-7); set WORKER_ID instead"
            ))
        })?;
        return check(
            id,
            WorkerSource::PodName(pod.to_owned()),
            format!("POD_NAME={pod}"),
        );
    }
    if let Some(host) = env.hostname.as_deref() {
        if let Some(id) = ordinal(host) {
            return check(
                id,
                WorkerSource::Hostname(host.to_owned()),
                format!("hostname {host}"),
            );
        }
    }
    if env.in_kubernetes {
        return Err(ConfigError::Invalid(format!(
            "running in Kubernetes but neither WORKER_ID nor a StatefulSet POD_NAME is set, and the hostname {:?} has no ordinal: replicas would share a worker id and issue duplicate IDs. Run as a StatefulSet with POD_NAME from the downward API, or set WORKER_ID",
            env.hostname.as_deref().unwrap_or("")
        )));
    }
    Ok((0, WorkerSource::Default))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(host: Option<&str>, k8s: bool) -> Environment {
        Environment {
            hostname: host.map(str::to_owned),
            in_kubernetes: k8s,
        }
    }

    fn resolve(explicit: Option<&str>, pod: Option<&str>, e: &Environment) -> Result<u16, String> {
        resolve_worker_id(explicit, pod, e, &Layout::DEFAULT)
            .map(|(id, _)| id)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_ordinal_is_taken_after_the_last_dash() {
        assert_eq!(ordinal("id-gen2-5"), Some(5));
        assert_eq!(ordinal("snowlease-0"), Some(0));
        assert_eq!(ordinal("snowlease-1023"), Some(1023));
        assert_eq!(ordinal("snowlease"), None);
        assert_eq!(ordinal("snowlease-"), None);
        assert_eq!(ordinal("web-7f9c8d-x2x9z"), None);
        assert_eq!(ordinal("snowlease-+5"), None);
    }

    #[test]
    fn worker_id_wins_over_pod_name_and_hostname() {
        let e = env(Some("node-3"), true);
        assert_eq!(resolve(Some("9"), Some("snowlease-7"), &e), Ok(9));
        assert_eq!(resolve(None, Some("snowlease-7"), &e), Ok(7));
        assert_eq!(resolve(None, None, &e), Ok(3));
    }

    #[test]
    fn outside_kubernetes_nothing_set_means_worker_zero() {
        let (id, source) =
            resolve_worker_id(None, None, &env(Some("laptop"), false), &Layout::DEFAULT).unwrap();
        assert_eq!((id, source), (0, WorkerSource::Default));
    }

    #[test]
    fn inside_kubernetes_a_random_pod_name_refuses_to_start() {
        let err = resolve(None, None, &env(Some("web-7f9c8d-x2x9z"), true)).unwrap_err();
        assert!(err.contains("would share a worker id"), "{err}");
        let err = resolve(None, Some("web-7f9c8d-x2x9z"), &env(None, true)).unwrap_err();
        assert!(err.contains("no ordinal"), "{err}");
    }

    #[test]
    fn worker_ids_outside_the_layout_are_refused_with_their_source() {
        let e = env(None, false);
        let err = resolve(None, Some("snowlease-1024"), &e).unwrap_err();
        assert_eq!(
            err,
            "worker id 1024 (from POD_NAME=snowlease-1024) does not fit the layout's 10 worker bits: valid worker ids are 0..=1023"
        );
        let err = resolve(Some("-1"), None, &e).unwrap_err();
        assert!(err.contains("not a whole number"), "{err}");
        let err = resolve(Some("99999999999999999999999"), None, &e).unwrap_err();
        assert!(err.contains("not a whole number"), "{err}");
    }

    #[test]
    fn every_flag_has_an_environment_variable_and_a_default_in_help() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        for var in [
            "SNOWLEASE_LISTEN",
            "SNOWLEASE_ADMIN_LISTEN",
            "WORKER_ID",
            "SNOWLEASE_THREADS",
            "SNOWLEASE_EPOCH",
            "SNOWLEASE_MAX_LEAD_MS",
            "SNOWLEASE_STATE_DIR",
            "SNOWLEASE_MAX_CONNECTIONS",
            "SNOWLEASE_DRAIN_TIMEOUT_MS",
            "SNOWLEASE_TLS_CERT",
            "SNOWLEASE_TLS_KEY",
            "SNOWLEASE_TLS_CLIENT_CA",
        ] {
            assert!(help.contains(var), "{var} missing from --help");
        }
        assert!(help.contains("[default: 0.0.0.0:7609]"));
    }

    #[test]
    fn half_a_tls_configuration_refuses_to_start_naming_the_missing_flag() {
        let resolve = |args: &[&str]| {
            let mut all = vec!["snowlease-server"];
            all.extend_from_slice(args);
            Args::parse_from(all).resolve(&env(None, false))
        };
        let err = resolve(&["--tls-cert", "/x/cert.pem"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--tls-cert /x/cert.pem is set but --tls-key"),
            "{err}"
        );
        let err = resolve(&["--tls-key", "/x/key.pem"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--tls-key /x/key.pem is set but --tls-cert"),
            "{err}"
        );
        let err = resolve(&["--tls-client-ca", "/x/ca.pem"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--tls-client-ca /x/ca.pem needs --tls-cert"),
            "{err}"
        );
        let both = resolve(&["--tls-cert", "c", "--tls-key", "k"]).unwrap();
        assert_eq!(
            both.tls,
            Some(TlsPaths {
                cert: "c".into(),
                key: "k".into(),
                client_ca: None
            })
        );
        assert_eq!(resolve(&[]).unwrap().tls, None);
    }

    #[test]
    fn an_epoch_in_the_future_refuses_to_start() {
        let args = Args::parse_from(["snowlease-server", "--epoch", "2999-01-01T00:00:00Z"]);
        let err = args.resolve(&env(None, false)).unwrap_err().to_string();
        assert!(err.contains("in the future"), "{err}");
    }
}
