//! The state every thread of a running server shares, built once by `start` (or by
//! [`Shared::for_tests`]) and handed out as an `Arc`.
//!
//! Data flows through it one way: the configuration and the secrets go in at start; the
//! connection handlers (`conn`), the admin port (`admin`) and the housekeeping threads read
//! their collaborators from it (the [`Leaser`] with its generators, the per-core
//! [`Metrics`], [`Health`], the state store and its health, the token and TLS stores, the peer
//! table) and report back only through those collaborators' own atomics.

use std::sync::Arc;

use crate::clock::{MonotonicClock, StepPolicy};
use crate::config::ServerConfig;
use crate::error::StartError;
use crate::generator::Generator;
use crate::health::{Health, Reason};
use crate::lease::{Durability, Leaser};
use crate::metrics::Metrics;
use crate::peers::PeerTable;
use crate::persist::StateHealth;
use crate::state::StateStore;
use crate::{auth, tls};

/// Ticks beyond `max_lead` a small waiting lease may claim, to be released when its time
/// comes. Each waiting connection holds at most one claim (it answers in order), so 1,000
/// covers a thousand connections queueing for time; past it leases fall back to retrying.
/// Measured: 4 connections x depth 8 x 4096 IDs had a p99 of 319 ms when waiters raced for
/// each new tick (see bench/BENCHMARKS.md for the figure with claims).
pub const CLAIM_HORIZON_MS: u64 = 1_000;

/// Leases of at most 1/64 of a tick (64 IDs with the default layout) may claim beyond the
/// lead; larger ones wait in their worker's first-come queue. Claims of whole ticks queued
/// 500 ms deep in front of a count=1 lease with 500 connections draining whole ticks (the
/// audit's figure); 500 connections of 64-ID claims hold at most 8 ticks.
pub const SMALL_LEASE_SHARE: u32 = 64;

/// State every thread shares. See the module docs.
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: ServerConfig,
    /// The clock every generator reads.
    pub clock: Arc<MonotonicClock>,
    /// The generators (one per worker id) and the waits in front of them.
    pub leaser: Leaser<Arc<MonotonicClock>>,
    /// Per-core counters.
    pub metrics: Metrics,
    /// Starting, serving, draining.
    pub health: Health,
    /// The state file, when there is a state directory.
    pub state: Option<StateStore>,
    /// What the persister last saw of the state directory.
    pub state_health: StateHealth,
    /// The shared token, when `--token-file` is set.
    pub token: Option<auth::TokenStore>,
    /// The lease port's TLS configuration, when `--tls-cert` is set; swapped on reload.
    pub tls: Option<tls::TlsStore>,
    /// Open lease connections per peer address.
    pub peers: Arc<PeerTable>,
}

/// The token and the TLS configuration, each when configured.
pub type Secrets = (Option<auth::TokenStore>, Option<tls::TlsStore>);

impl Shared {
    /// Everything a connection handler needs, without sockets, threads or a state file: for
    /// the connection fuzz target and unit tests that drive [`crate::conn::serve`] over a
    /// duplex pipe.
    pub fn for_tests(config: ServerConfig) -> Result<Arc<Shared>, StartError> {
        let clock = Arc::new(MonotonicClock::new());
        let starts = vec![0; usize::from(config.worker_count.max(1))];
        let leaser = build_leaser(&config, &clock, &starts)?;
        let secrets = load_secrets(&config)?;
        let shared = Shared::new(config, clock, leaser, None, secrets);
        shared.health.serving();
        Ok(Arc::new(shared))
    }

    /// Not ready until the caller says so.
    pub(crate) fn new(
        config: ServerConfig,
        clock: Arc<MonotonicClock>,
        leaser: Leaser<Arc<MonotonicClock>>,
        state: Option<StateStore>,
        (token, tls): Secrets,
    ) -> Shared {
        Shared {
            metrics: Metrics::with_workers(config.threads, leaser.workers().len()),
            peers: Arc::new(PeerTable::new(config.max_connections_per_peer)),
            config,
            clock,
            leaser,
            health: Health::default(),
            state,
            state_health: StateHealth::default(),
            token,
            tls,
        }
    }

    /// The first worker's generator (the only one unless several worker ids are held).
    pub fn generator(&self) -> &Generator<Arc<MonotonicClock>> {
        self.leaser.first()
    }

    /// Asks the persistence thread to extend the reservation now.
    pub fn wake_persister(&self) {
        self.leaser.durability().wake_persister();
    }

    /// Why a lease could not be granted now (empty when ready).
    pub fn readiness(&self) -> Vec<(Reason, String)> {
        let state = self.state.as_ref().map(|_| &self.state_health);
        self.health.check(&self.leaser, state)
    }
}

/// The clock's step policy from the configuration: never past the layout's end of life.
pub fn step_policy(config: &ServerConfig) -> StepPolicy {
    StepPolicy {
        follow_max_ms: config.clock_follow_max_ms,
        follow_after: config.clock_follow_after,
        ceiling_unix_ms: config.layout.end_of_life_unix_ms(),
    }
}

/// One generator per worker id, starting at `starts[i]` (ticks), with the claim policy and
/// the durable timeout of the configuration.
pub fn build_leaser(
    config: &ServerConfig,
    clock: &Arc<MonotonicClock>,
    starts: &[u64],
) -> Result<Leaser<Arc<MonotonicClock>>, StartError> {
    let layout = config.layout;
    let small = (layout.max_lease() / SMALL_LEASE_SHARE).max(1);
    let mut workers = Vec::with_capacity(starts.len());
    for (i, start) in starts.iter().enumerate() {
        let worker = u64::from(config.worker_id) + i as u64;
        let g = Generator::new(layout, worker, config.max_lead_ms, *start, clock.clone())?
            .with_horizon(CLAIM_HORIZON_MS)
            .with_claim_limit(small);
        workers.push(g);
    }
    Ok(Leaser::new(
        workers,
        clock.clone(),
        Arc::new(Durability::default()),
        config.durable_timeout,
    ))
}

/// The token and the TLS configuration, each when configured.
pub fn load_secrets(config: &ServerConfig) -> Result<Secrets, StartError> {
    let token = config
        .token_file
        .as_deref()
        .map(auth::TokenStore::load)
        .transpose()?;
    let tls = config.tls.as_ref().map(tls::TlsStore::load).transpose()?;
    Ok((token, tls))
}
