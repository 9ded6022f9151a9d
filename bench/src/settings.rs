//! What a run is asked to do, as the command line validated it: the load's [`Mode`], the
//! [`Settings`] that shape it, and the [`Timeline`] (warmup, measuring, stop) that `run`
//! fixes before the load starts. `main` builds a `Settings`; `run` and every driver module
//! (`raw`, `client_mode`, `probe`) read it; `report` names the mode in the table.

use std::net::IpAddr;
use std::time::Duration;

use snowlease::client::TlsOptions;
use tokio::time::Instant;

/// What to drive the server with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Pipelined LEASEs over the bare protocol (BULK_LEASEs with `--bulk`).
    Raw,
    /// `Client::next_id()` from many tasks.
    Client,
    /// `Client::lease(batch)` from many tasks.
    ClientLease,
    /// Connection setup: each of `--connections` tasks connects (TLS too with `--tls`),
    /// sends HELLO, leases `--batch` once and closes, over and over.
    Reconnect,
    /// Fairness at the ceiling: `--connections` (500) connections keep `--depth` (1)
    /// whole-tick LEASEs (or, with `--bulk`, BULK_LEASEs) in flight while an idle
    /// connection's count=1 LEASEs are timed.
    Fairness,
    /// One peer over its connection cap: `--hog-source` holds `--connections` (1,100) idle
    /// connections while `--probe-source` times fresh connections leasing count=1.
    PeerCap,
}

impl Mode {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::Client => "client",
            Mode::ClientLease => "client-lease",
            Mode::Reconnect => "reconnect",
            Mode::Fairness => "fairness",
            Mode::PeerCap => "peer-cap",
        }
    }

    /// `--connections` when not given.
    pub fn default_connections(self) -> u32 {
        match self {
            Mode::Fairness => 500,
            Mode::PeerCap => 1_100,
            _ => 4,
        }
    }

    /// `--depth` when not given: one whole-tick LEASE per connection for fairness, so 500
    /// connections queue 500 ticks (about 500 ms) and no reply outlives the timeout.
    pub fn default_depth(self) -> u32 {
        match self {
            Mode::Fairness => 1,
            _ => 8,
        }
    }

    /// `--warmup` when not given: the probe modes let the load settle first (the held
    /// connections accepted, the fairness queue filled).
    pub fn default_warmup(self) -> f64 {
        match self {
            Mode::Fairness | Mode::PeerCap => 1.0,
            _ => 0.0,
        }
    }
}

/// Everything a run needs, already validated by the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Load shape.
    pub mode: Mode,
    /// Server address.
    pub addr: String,
    /// Raw mode: connections.
    pub connections: usize,
    /// Raw mode: requests in flight per connection.
    pub depth: usize,
    /// IDs per LEASE (raw) or per `lease()` call (client-lease).
    pub batch: u32,
    /// Raw and fairness modes: BULK_LEASEs of this many IDs (protocol version 2) instead of
    /// LEASEs of `batch`. The fairness probe stays a version-1 LEASE count=1.
    pub bulk: Option<u32>,
    /// Client modes: tasks sharing the client.
    pub tasks: usize,
    /// Runtime worker threads.
    pub threads: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
    /// Bound on connecting, on each reply and on the drain.
    pub timeout: Duration,
    /// Check every block for overlaps.
    pub verify: bool,
    /// Client mode: time one `next_id()` call in this many.
    pub sample_every: u64,
    /// HELLO token.
    pub token: Option<String>,
    /// Speak TLS with these options; `None` = plaintext.
    pub tls: Option<TlsOptions>,
    /// No progress lines.
    pub quiet: bool,
    /// Probe modes: between probes.
    pub probe_interval: Duration,
    /// `peer-cap`: source address of the held connections.
    pub hog_source: IpAddr,
    /// `peer-cap`: whether the held connections send HELLO.
    pub hog_hello: bool,
    /// `peer-cap`: source address of the probes.
    pub probe_source: IpAddr,
}

/// When load starts, when measuring starts, and when sending stops.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// Results from before this are not counted (warmup).
    pub measure_from: Instant,
    /// No requests are sent from this moment; replies still in flight are drained.
    pub stop_at: Instant,
}

impl Timeline {
    /// A timeline starting now.
    pub fn starting_now(warmup: Duration, duration: Duration) -> Timeline {
        let measure_from = Instant::now() + warmup;
        Timeline {
            measure_from,
            stop_at: measure_from + duration,
        }
    }
}
