//! Settings: command-line flags and environment variables in, a validated [`ServerConfig`] out.
//!
//! clap reads every setting from a flag or its environment variable ([`Args`]); [`Args::resolve`]
//! then works out the worker ids (`--worker-ids A-B`; else `WORKER_ID`; else the ordinal after
//! the last `-` of `POD_NAME`, else of the hostname, times `--workers-per-pod`), the layout and
//! the state directory (a default one unless `--no-state-dir`), refusing anything the layout
//! cannot hold with a [`ConfigError`] naming the value and its source. Nothing here touches a
//! socket or writes a file.

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
/// Default cap on lease connections from one peer (source IP address). A client library holds
/// one connection per server, so 1,024 leaves room for a thousand client processes behind one
/// NAT address while keeping one peer from holding all 16,384 slots (SECURITY.md: what a peer
/// is behind a Service).
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 1024;
/// Default time a new connection has to send its first complete frame. Clients send HELLO at
/// once; 10 s covers a TLS handshake on a loaded node many times over, and is a twelfth of the
/// idle timeout a silent socket could otherwise hold a slot for.
pub const DEFAULT_FIRST_FRAME_TIMEOUT_MS: u64 = 10_000;
/// Default reserved window (`--reserve-ms`): with it the persister writes about once per
/// 1.5 s under load, and a restart skips at most 3 s of ticks.
pub const DEFAULT_RESERVE_MS: u64 = 3_000;
/// Largest `--reserve-ms`: a restart skips up to the window, so a minute bounds how far ahead
/// of the clock a crash can leave the next start.
pub const MAX_RESERVE_MS: u64 = 60_000;
/// Default for `--durable-timeout-ms`: how long a lease waits for the state directory before
/// it is answered UNAVAILABLE (503 on HTTP). A healthy fsync takes milliseconds; two seconds of
/// failing writes means the disk is gone, and the client should go to another worker.
pub const DEFAULT_DURABLE_TIMEOUT_MS: u64 = 2_000;

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

    /// Worker ids per pod: pod ordinal o holds worker ids o*K ..= o*K+K-1, so one process
    /// serves up to K x 4,096,000 IDs/s. Replicas x K must stay within the layout's workers.
    #[arg(long, env = "SNOWLEASE_WORKERS_PER_POD", default_value_t = 1)]
    pub workers_per_pod: u16,

    /// An explicit contiguous range of worker ids, `A-B` (or one id), for use outside
    /// Kubernetes; overrides WORKER_ID, POD_NAME and --workers-per-pod.
    #[arg(long, env = "SNOWLEASE_WORKER_IDS")]
    pub worker_ids: Option<String>,

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
    /// safe; locked by one process. Default: $XDG_STATE_HOME/snowlease/worker-N, else
    /// /var/lib/snowlease/worker-N when writable, else ~/.local/state/snowlease/worker-N.
    #[arg(long, env = "SNOWLEASE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Run without a state directory: a restart with the clock set back can then repeat IDs.
    #[arg(
        long,
        env = "SNOWLEASE_NO_STATE_DIR",
        default_value_t = false,
        conflicts_with = "state_dir"
    )]
    pub no_state_dir: bool,

    /// Milliseconds reserved ahead in the state file (2..=60000); extended when less than half
    /// is left while IDs are being issued.
    #[arg(long, env = "SNOWLEASE_RESERVE_MS", default_value_t = DEFAULT_RESERVE_MS)]
    pub reserve_ms: u64,

    /// How long a lease waits for the state directory before it is answered UNAVAILABLE (and
    /// /generate-id 503 with Retry-After).
    #[arg(long, env = "SNOWLEASE_DURABLE_TIMEOUT_MS", default_value_t = DEFAULT_DURABLE_TIMEOUT_MS)]
    pub durable_timeout_ms: u64,

    /// Forward steps of the wall clock up to this many ms are followed at once.
    #[arg(long, env = "SNOWLEASE_CLOCK_FOLLOW_MAX_MS", default_value_t = crate::clock::DEFAULT_FOLLOW_MAX_MS)]
    pub clock_follow_max_ms: u64,

    /// A larger forward step of the wall clock is followed only after it has held this long;
    /// a shorter glitch leaves no trace in IDs or the state file.
    #[arg(long, env = "SNOWLEASE_CLOCK_FOLLOW_AFTER_MS", default_value_t = crate::clock::DEFAULT_FOLLOW_AFTER_MS)]
    pub clock_follow_after_ms: u64,

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

    /// Cap on open lease connections from one source IP address (0 = none); past it that
    /// peer gets ERROR OVERLOADED. Behind SNAT every client of a node is one peer.
    #[arg(long, env = "SNOWLEASE_MAX_CONNECTIONS_PER_PEER", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_PEER)]
    pub max_connections_per_peer: usize,

    /// Close a new connection (GOAWAY IDLE_TIMEOUT) that has not sent a complete frame within
    /// this many ms (0 = only the idle timeout applies).
    #[arg(long, env = "SNOWLEASE_FIRST_FRAME_TIMEOUT_MS", default_value_t = DEFAULT_FIRST_FRAME_TIMEOUT_MS)]
    pub first_frame_timeout_ms: u64,

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
    /// This server's (first) worker id, checked against the layout.
    pub worker_id: u16,
    /// How many consecutive worker ids from `worker_id` this process holds (at least 1).
    pub worker_count: u16,
    /// `--workers-per-pod`, when the set came from a pod ordinal; recorded in the state file.
    pub workers_per_pod: Option<u16>,
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
    /// Whether `state_dir` is the default one (for the start line).
    pub state_dir_is_default: bool,
    /// Window reserved ahead in the state file, ms.
    pub reserve_ms: u64,
    /// Longest a lease waits for the state directory.
    pub durable_timeout: Duration,
    /// Forward clock steps up to this are followed at once, ms.
    pub clock_follow_max_ms: u64,
    /// Larger forward steps are followed after holding this long.
    pub clock_follow_after: Duration,
    /// Start past a corrupt state file.
    pub discard_corrupt_state: bool,
    /// Refuse to start with fewer years than this left in the layout.
    pub min_years_left: f64,
    /// Cap on open lease connections.
    pub max_connections: usize,
    /// Cap on open lease connections per source address; 0 = none.
    pub max_connections_per_peer: usize,
    /// Time a connection has for its first complete frame; `None` = the idle timeout.
    pub first_frame_timeout: Option<Duration>,
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

/// Why the server refuses to start: one variant per kind of bad setting, each naming the
/// value and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--epoch` cannot be read or lies in the future.
    #[error("{0}")]
    Epoch(String),
    /// The layout widths do not add up.
    #[error("layout refused: {0}")]
    Layout(#[from] snowlease_proto::layout::LayoutError),
    /// A worker id the layout cannot hold.
    #[error("worker id {id} (from {source_text}) does not fit the layout's {bits} worker bits: valid worker ids are 0..={max}")]
    WorkerOutOfRange {
        /// The id.
        id: u64,
        /// Where it came from, e.g. `POD_NAME=snowlease-1024`.
        source_text: String,
        /// Worker field width.
        bits: u8,
        /// Highest valid id.
        max: u16,
    },
    /// `WORKER_ID` is not a number.
    #[error("WORKER_ID {text:?} is not a whole number (valid worker ids are 0..={max})")]
    WorkerIdNotANumber {
        /// What was given.
        text: String,
        /// Highest valid id.
        max: u16,
    },
    /// `POD_NAME` has no ordinal.
    #[error("POD_NAME {pod:?} has no ordinal after its last '-' (expected a StatefulSet pod name like snowlease-7); set WORKER_ID instead")]
    NoOrdinal {
        /// The pod name.
        pod: String,
    },
    /// Inside Kubernetes with nothing that names a worker.
    #[error("running in Kubernetes but neither WORKER_ID nor a StatefulSet POD_NAME is set, and the hostname {hostname:?} has no ordinal: replicas would share a worker id and issue duplicate IDs. Run as a StatefulSet with POD_NAME from the downward API, or set WORKER_ID")]
    NoIdentity {
        /// The hostname seen.
        hostname: String,
    },
    /// A pod ordinal's worker set runs past the layout.
    #[error("pod ordinal {ordinal} (from {source_text}) with --workers-per-pod {per_pod} needs worker ids {first}..={last}, but the layout's {bits} worker bits hold 0..={max}: at most {pods} pods fit with K={per_pod} (replicas x K <= {workers})")]
    WorkerSetTooLarge {
        /// The ordinal.
        ordinal: u64,
        /// Where it came from.
        source_text: String,
        /// K.
        per_pod: u16,
        /// First id needed.
        first: u64,
        /// Last id needed.
        last: u64,
        /// Worker field width.
        bits: u8,
        /// Highest valid id.
        max: u16,
        /// How many pods fit.
        pods: u64,
        /// Workers in the layout.
        workers: u64,
    },
    /// `--worker-ids` cannot be read or does not fit.
    #[error("--worker-ids {text:?}: {reason} (valid worker ids are 0..={max})")]
    WorkerIds {
        /// What was given.
        text: String,
        /// What is wrong.
        reason: &'static str,
        /// Highest valid id.
        max: u16,
    },
    /// `WORKER_ID` together with a K above 1: which workers was meant is unclear.
    #[error("WORKER_ID names one worker, but --workers-per-pod is {per_pod}: use POD_NAME (the ordinal) with --workers-per-pod, or --worker-ids A-B")]
    WorkerIdWithWorkersPerPod {
        /// K.
        per_pod: u16,
    },
    /// A numeric flag below its minimum.
    #[error("{flag} must be at least {min}")]
    AtLeast {
        /// The flag.
        flag: &'static str,
        /// Its minimum.
        min: u64,
    },
    /// A numeric flag outside its range.
    #[error("{flag} {value} is outside {min}..={max}")]
    OutOfRange {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: u64,
        /// Lowest allowed.
        min: u64,
        /// Highest allowed.
        max: u64,
    },
    /// Half a TLS configuration.
    #[error("{0}")]
    Tls(String),
    /// No default state directory could be found.
    #[error("no usable default state directory ({tried}); pass --state-dir DIR (a persistent volume) or --no-state-dir")]
    NoDefaultStateDir {
        /// The candidates and why each failed.
        tried: String,
    },
    /// Too little of the layout's lifetime left.
    #[error("the layout's timestamp field runs out at {end_of_life}, {years:.2} years from now, under the minimum of {min_years} years (--min-years-left); choose a later epoch or more timestamp bits")]
    Lifetime {
        /// End of life, RFC 3339.
        end_of_life: String,
        /// Years left.
        years: f64,
        /// The minimum.
        min_years: f64,
    },
}

impl ServerConfig {
    /// Loopback on OS-assigned ports, two threads: what tests and the bench's `--spawn` use.
    pub fn for_tests(worker_id: u16) -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            worker_id,
            worker_count: 1,
            workers_per_pod: None,
            worker_source: WorkerSource::Explicit,
            layout: Layout::DEFAULT,
            threads: 2,
            max_lead_ms: DEFAULT_MAX_LEAD_MS,
            state_dir: None,
            state_dir_is_default: false,
            reserve_ms: DEFAULT_RESERVE_MS,
            durable_timeout: Duration::from_millis(DEFAULT_DURABLE_TIMEOUT_MS),
            clock_follow_max_ms: crate::clock::DEFAULT_FOLLOW_MAX_MS,
            clock_follow_after: Duration::from_millis(crate::clock::DEFAULT_FOLLOW_AFTER_MS),
            discard_corrupt_state: false,
            min_years_left: 1.0,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            // Loopback tests are one peer and take their time to send a first frame.
            max_connections_per_peer: 0,
            first_frame_timeout: None,
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

/// The environment facts worker-id and state-directory resolution depend on, gathered once so
/// tests can fake them.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// The hostname, if known.
    pub hostname: Option<String>,
    /// Whether `KUBERNETES_SERVICE_HOST` is set.
    pub in_kubernetes: bool,
    /// `$XDG_STATE_HOME`.
    pub xdg_state_home: Option<PathBuf>,
    /// `$HOME`.
    pub home: Option<PathBuf>,
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
            xdg_state_home: std::env::var_os("XDG_STATE_HOME").map(PathBuf::from),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }
}

impl Args {
    /// Validates the flags into a [`ServerConfig`].
    pub fn resolve(&self, env: &Environment) -> Result<ServerConfig, ConfigError> {
        let epoch = parse_epoch(&self.epoch).map_err(ConfigError::Epoch)?;
        let layout = Layout::new(
            epoch,
            self.timestamp_bits,
            self.worker_bits,
            self.sequence_bits,
        )?;
        let set = self.worker_set(env, &layout)?;
        let threads = match self.threads {
            Some(0) => {
                return Err(ConfigError::AtLeast {
                    flag: "--threads",
                    min: 1,
                })
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        at_least("--max-connections", self.max_connections as u64, 1)?;
        at_least("--max-queued-replies", self.max_queued_replies as u64, 1)?;
        at_least("--reserve-ms", self.reserve_ms, 2)?;
        in_range("--reserve-ms", self.reserve_ms, 2, MAX_RESERVE_MS)?;
        in_range("--durable-timeout-ms", self.durable_timeout_ms, 1, 60_000)?;
        let (state_dir, state_dir_is_default) = self.state_dir(env, &set)?;
        let tls = self.tls_paths()?;
        let ms = Duration::from_millis;
        Ok(ServerConfig {
            listen: self.listen,
            admin_listen: self.admin_listen,
            worker_id: set.first,
            worker_count: set.count,
            workers_per_pod: set.per_pod,
            worker_source: set.source,
            layout,
            threads,
            max_lead_ms: self.max_lead_ms,
            state_dir,
            state_dir_is_default,
            reserve_ms: self.reserve_ms,
            durable_timeout: ms(self.durable_timeout_ms),
            clock_follow_max_ms: self.clock_follow_max_ms,
            clock_follow_after: ms(self.clock_follow_after_ms),
            discard_corrupt_state: self.discard_corrupt_state,
            min_years_left: self.min_years_left,
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            first_frame_timeout: (self.first_frame_timeout_ms > 0)
                .then(|| ms(self.first_frame_timeout_ms)),
            idle_timeout: ms(self.idle_timeout_ms.max(1)),
            write_timeout: ms(self.write_timeout_ms.max(1)),
            drain_timeout: ms(self.drain_timeout_ms),
            max_queued_replies: self.max_queued_replies,
            backlog: DEFAULT_BACKLOG,
            token_file: self.token_file.clone(),
            tls,
        })
    }

    /// The worker ids this process holds: `--worker-ids`, else one id from WORKER_ID, else
    /// the pod ordinal times `--workers-per-pod`.
    fn worker_set(&self, env: &Environment, layout: &Layout) -> Result<WorkerSet, ConfigError> {
        at_least("--workers-per-pod", u64::from(self.workers_per_pod), 1)?;
        if let Some(text) = self
            .worker_ids
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            return parse_worker_ids(text, layout);
        }
        let k = self.workers_per_pod;
        let explicit = self
            .worker_id
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        if explicit.is_some() && k > 1 {
            return Err(ConfigError::WorkerIdWithWorkersPerPod { per_pod: k });
        }
        if k == 1 {
            let (id, source) = resolve_worker_id(
                self.worker_id.as_deref(),
                self.pod_name.as_deref(),
                env,
                layout,
            )?;
            let per_pod =
                matches!(source, WorkerSource::PodName(_) | WorkerSource::Hostname(_)).then_some(1);
            return Ok(WorkerSet {
                first: id,
                count: 1,
                per_pod,
                source,
            });
        }
        // The ordinal is resolved as a worker id would be, against a layout wide enough for
        // any ordinal, then scaled by K and checked against the real one.
        let wide = Layout::widths(layout.epoch_unix_ms(), 31, 16, 16).unwrap_or(*layout);
        let (ordinal, source) = resolve_worker_id(None, self.pod_name.as_deref(), env, &wide)?;
        let first = u64::from(ordinal) * u64::from(k);
        let last = first + u64::from(k) - 1;
        let max = layout.max_worker();
        if last > u64::from(max) {
            let workers = u64::from(max) + 1;
            return Err(ConfigError::WorkerSetTooLarge {
                ordinal: u64::from(ordinal),
                source_text: source.describe(),
                per_pod: k,
                first,
                last,
                bits: layout.worker_bits(),
                max,
                pods: workers / u64::from(k),
                workers,
            });
        }
        Ok(WorkerSet {
            first: first as u16,
            count: k,
            per_pod: Some(k),
            source,
        })
    }

    /// The state directory: `--state-dir`, none with `--no-state-dir`, else the default one
    /// for these worker ids (see [`default_state_dir`]).
    fn state_dir(
        &self,
        env: &Environment,
        set: &WorkerSet,
    ) -> Result<(Option<PathBuf>, bool), ConfigError> {
        if self.no_state_dir {
            return Ok((None, false));
        }
        if let Some(dir) = &self.state_dir {
            return Ok((Some(dir.clone()), false));
        }
        let leaf = if set.count == 1 {
            format!("worker-{}", set.first)
        } else {
            format!(
                "workers-{}-{}",
                set.first,
                u32::from(set.first) + u32::from(set.count) - 1
            )
        };
        default_state_dir(env).map(|base| (Some(base.join(leaf)), true))
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
            (Some(cert), None) => Err(ConfigError::Tls(format!(
                "--tls-cert {} is set but --tls-key (SNOWLEASE_TLS_KEY) is not: TLS needs both",
                cert.display()
            ))),
            (None, Some(key)) => Err(ConfigError::Tls(format!(
                "--tls-key {} is set but --tls-cert (SNOWLEASE_TLS_CERT) is not: TLS needs both",
                key.display()
            ))),
            (None, None) => match &self.tls_client_ca {
                Some(ca) => Err(ConfigError::Tls(format!(
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
            Err(ConfigError::WorkerOutOfRange {
                id,
                source_text: what,
                bits: layout.worker_bits(),
                max,
            })
        } else {
            Ok((id as u16, source))
        }
    };
    if let Some(text) = explicit.map(str::trim).filter(|t| !t.is_empty()) {
        let id = text
            .parse::<u64>()
            .map_err(|_| ConfigError::WorkerIdNotANumber {
                text: text.to_owned(),
                max,
            })?;
        return check(id, WorkerSource::Explicit, format!("WORKER_ID={text}"));
    }
    if let Some(pod) = pod_name.map(str::trim).filter(|t| !t.is_empty()) {
        let id = ordinal(pod).ok_or_else(|| ConfigError::NoOrdinal {
            pod: pod.to_owned(),
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
        return Err(ConfigError::NoIdentity {
            hostname: env.hostname.clone().unwrap_or_default(),
        });
    }
    Ok((0, WorkerSource::Default))
}

/// The worker ids a configuration resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WorkerSet {
    first: u16,
    count: u16,
    per_pod: Option<u16>,
    source: WorkerSource,
}

impl WorkerSource {
    /// The source as the refusal messages name it.
    fn describe(&self) -> String {
        match self {
            WorkerSource::Explicit => "WORKER_ID".into(),
            WorkerSource::PodName(p) => format!("POD_NAME={p}"),
            WorkerSource::Hostname(h) => format!("hostname {h}"),
            WorkerSource::Default => "the default".into(),
        }
    }
}

/// Parses `--worker-ids A-B` (or `A`).
fn parse_worker_ids(text: &str, layout: &Layout) -> Result<WorkerSet, ConfigError> {
    let max = layout.max_worker();
    let bad = |reason| ConfigError::WorkerIds {
        text: text.to_owned(),
        reason,
        max,
    };
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|_| bad("not a whole number or A-B range"))?;
    let b: u64 = b
        .trim()
        .parse()
        .map_err(|_| bad("not a whole number or A-B range"))?;
    if a > b {
        return Err(bad("the range is empty (A > B)"));
    }
    if b > u64::from(max) {
        return Err(bad("the range runs past the layout's worker field"));
    }
    Ok(WorkerSet {
        first: a as u16,
        count: (b - a + 1) as u16,
        per_pod: None,
        source: WorkerSource::Explicit,
    })
}

fn at_least(flag: &'static str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::AtLeast { flag, min });
    }
    Ok(())
}

fn in_range(flag: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if !(min..=max).contains(&value) {
        return Err(ConfigError::OutOfRange {
            flag,
            value,
            min,
            max,
        });
    }
    Ok(())
}

/// The base of the default state directory: `$XDG_STATE_HOME/snowlease`, else
/// `/var/lib/snowlease` if it can be created, else `$HOME/.local/state/snowlease`. Only
/// checks that a directory can be made; the lock and the state file come at start.
pub fn default_state_dir(env: &Environment) -> Result<PathBuf, ConfigError> {
    let mut candidates = Vec::new();
    if let Some(xdg) = env.xdg_state_home.as_ref().filter(|p| p.is_absolute()) {
        candidates.push(xdg.join("snowlease"));
    }
    candidates.push(PathBuf::from("/var/lib/snowlease"));
    if let Some(home) = env.home.as_ref().filter(|p| p.is_absolute()) {
        candidates.push(home.join(".local/state/snowlease"));
    }
    let mut tried = Vec::new();
    for dir in candidates {
        match std::fs::create_dir_all(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => tried.push(format!("{}: {e}", dir.display())),
        }
    }
    Err(ConfigError::NoDefaultStateDir {
        tried: tried.join("; "),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(host: Option<&str>, k8s: bool) -> Environment {
        Environment {
            hostname: host.map(str::to_owned),
            in_kubernetes: k8s,
            ..Environment::default()
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

    fn parse(args: &[&str], e: &Environment) -> Result<ServerConfig, ConfigError> {
        let mut all = vec!["snowlease-server", "--state-dir", "/tmp/x"];
        all.extend_from_slice(args);
        Args::parse_from(all).resolve(e)
    }

    #[test]
    fn a_pod_ordinal_times_k_names_the_worker_set() {
        let e = env(None, true);
        let c = parse(
            &["--pod-name", "snowlease-3", "--workers-per-pod", "32"],
            &e,
        )
        .unwrap();
        assert_eq!(
            (c.worker_id, c.worker_count, c.workers_per_pod),
            (96, 32, Some(32))
        );
        let c = parse(&["--worker-ids", "10-19"], &e).unwrap();
        assert_eq!(
            (c.worker_id, c.worker_count, c.workers_per_pod),
            (10, 10, None)
        );
        let c = parse(&["--worker-id", "7"], &env(None, false)).unwrap();
        assert_eq!(
            (c.worker_id, c.worker_count, c.workers_per_pod),
            (7, 1, None)
        );
    }

    #[test]
    fn a_worker_set_that_does_not_fit_names_the_ordinal_k_and_the_limit() {
        let e = env(None, true);
        let err = parse(
            &["--pod-name", "snowlease-32", "--workers-per-pod", "32"],
            &e,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "pod ordinal 32 (from POD_NAME=snowlease-32) with --workers-per-pod 32 needs worker ids 1024..=1055, but the layout's 10 worker bits hold 0..=1023: at most 32 pods fit with K=32 (replicas x K <= 1024)"
        );
        for (ids, reason) in [
            ("5-3", "empty"),
            ("1000-1024", "runs past"),
            ("a-b", "not a whole number"),
        ] {
            let err = parse(&["--worker-ids", ids], &e).unwrap_err().to_string();
            assert!(err.contains(reason), "{ids}: {err}");
        }
        let err = parse(&["--worker-id", "3", "--workers-per-pod", "2"], &e)
            .unwrap_err()
            .to_string();
        assert!(err.contains("WORKER_ID names one worker"), "{err}");
        let err = parse(&["--workers-per-pod", "0"], &e)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "--workers-per-pod must be at least 1");
    }

    #[test]
    fn reserve_ms_outside_its_range_is_refused_instead_of_wrapping() {
        let e = env(None, false);
        for bad in ["0", "1", "60001", "18446744073709551615"] {
            let err = parse(&["--reserve-ms", bad], &e).unwrap_err().to_string();
            assert!(err.contains("--reserve-ms"), "{bad}: {err}");
        }
        assert_eq!(
            parse(&["--reserve-ms", "60000"], &e).unwrap().reserve_ms,
            60_000
        );
    }

    #[test]
    fn the_default_state_directory_is_per_worker_set_and_no_state_dir_turns_it_off() {
        let base = std::env::temp_dir().join(format!("snowlease-xdg-{}", std::process::id()));
        let e = Environment {
            xdg_state_home: Some(base.clone()),
            ..Environment::default()
        };
        let c = Args::parse_from(["snowlease-server", "--worker-id", "5"])
            .resolve(&e)
            .unwrap();
        assert_eq!(c.state_dir, Some(base.join("snowlease/worker-5")));
        assert!(c.state_dir_is_default);
        let c = Args::parse_from(["snowlease-server", "--worker-ids", "2-3"])
            .resolve(&e)
            .unwrap();
        assert_eq!(c.state_dir, Some(base.join("snowlease/workers-2-3")));
        let c = Args::parse_from(["snowlease-server", "--no-state-dir"])
            .resolve(&e)
            .unwrap();
        assert_eq!(c.state_dir, None);
        let _ = std::fs::remove_dir_all(base);
    }
}
