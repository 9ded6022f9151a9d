//! Start-up and shutdown: [`start`] turns a [`ServerConfig`] into a [`RunningServer`], and
//! [`RunningServer::shutdown`] drains it.
//!
//! Start-up runs in an order that makes a failed start harmless: check the layout's lifetime
//! and the secrets; lock the state directory and read the marks (nothing written); anchor the
//! clock at the highest mark and build one generator per worker id; bind every socket; only
//! then write the first state file (on a first start); then start the threads. So a second
//! process on the same state directory, a taken port or a bad certificate refuses before a
//! mark is written or a lease connection accepted.
//!
//! Shutdown runs the other way round: readiness off; the cores stop accepting and drain their
//! connections; the admin port stops after its in-flight requests; the persister stops; and
//! only then, when nothing can issue an ID any more, the marks are lowered to the first
//! unused ticks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use snowlease_proto::layout::{format_unix_ms, unix_ms_now};
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, MonotonicClock};
use crate::config::{ConfigError, ServerConfig};
use crate::cores::{self, Stops};
use crate::error::{io_err, StartError};
use crate::housekeeping;
use crate::listen::{bind_admin, bind_lease};
use crate::lockfile::DirLock;
use crate::persist;
use crate::shared::{build_leaser, load_secrets, step_policy, Shared};
use crate::state::{Identity, StateError, StateStore};

/// Milliseconds in an average Gregorian year, for the lifetime checks.
const YEAR_MS: f64 = 365.2425 * 86_400_000.0;
/// Warn at start when fewer years than this remain in the layout.
const WARN_YEARS_LEFT: f64 = 5.0;

/// A server running on its own threads.
#[derive(Debug)]
pub struct RunningServer {
    lease_addr: SocketAddr,
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    stops: Stops,
    admin_stop: CancellationToken,
    stopping: Arc<AtomicBool>,
    cores: Vec<JoinHandle<()>>,
    helpers: Vec<JoinHandle<()>>,
    persister: Option<JoinHandle<()>>,
    _lock: Option<DirLock>,
}

/// The state directory as start-up found it.
struct StateSetup {
    lock: Option<DirLock>,
    store: Option<StateStore>,
    marks: Option<Vec<u64>>,
}

/// Builds the generators and state, binds every socket, starts every thread, and returns once
/// the server accepts connections. See the module docs for the order.
pub fn start(config: ServerConfig) -> Result<RunningServer, StartError> {
    check_lifetime(&config)?;
    // Before the state directory: a bad token or certificate refuses without touching it.
    let secrets = load_secrets(&config)?;
    let mut state = open_state(&config)?;
    let highest_mark = state.marks.iter().flatten().copied().max();
    let mark_unix_ms = highest_mark.map(|t| config.layout.epoch_unix_ms().saturating_add(t));
    let clock = Arc::new(MonotonicClock::with_policy(
        mark_unix_ms.unwrap_or(0),
        step_policy(&config),
    ));
    warn_if_behind(mark_unix_ms);
    let starts = start_ticks(&config, &clock, state.marks.as_deref());
    let leaser = build_leaser(&config, &clock, &starts)?;

    let listeners = bind_lease(config.listen, config.threads, config.backlog)?;
    let admin = bind_admin(config.admin_listen)?;
    let lease_addr = listeners[0]
        .local_addr()
        .map_err(io_err("reading the lease address"))?;
    let admin_addr = admin
        .local_addr()
        .map_err(io_err("reading the admin address"))?;

    if let Some(store) = &state.store {
        let marks = state.marks.clone().unwrap_or_else(|| starts.clone());
        if state.marks.is_none() {
            store.persist_all(&starts)?;
            if let Some(lock) = &mut state.lock {
                lock.note_state_written()
                    .map_err(io_err("recording the first state file in the lock file"))?;
            }
        }
        for (g, mark) in leaser.workers().iter().zip(marks) {
            g.init_durable_limit(mark);
        }
    }
    let shared = Arc::new(Shared::new(config, clock, leaser, state.store, secrets));
    let mut server = RunningServer {
        lease_addr,
        admin_addr,
        shared: shared.clone(),
        stops: Stops::default(),
        admin_stop: CancellationToken::new(),
        stopping: Arc::new(AtomicBool::new(false)),
        cores: Vec::new(),
        helpers: Vec::new(),
        persister: None,
        _lock: state.lock,
    };
    server.cores = cores::spawn(listeners, &shared, &server.stops)?;
    let admin = housekeeping::spawn_admin(admin, &shared, &server.admin_stop, &server.stops.abort)?;
    server.helpers.push(admin);
    server.persister = housekeeping::spawn_persister(&shared, &server.stopping)?;
    shared.health.serving();
    log_start(&shared, lease_addr, admin_addr);
    Ok(server)
}

/// Locks the state directory and reads the marks; writes nothing.
fn open_state(config: &ServerConfig) -> Result<StateSetup, StartError> {
    let Some(dir) = &config.state_dir else {
        tracing::warn!("no state directory (--no-state-dir): a restart with the clock set back could repeat IDs");
        return Ok(StateSetup {
            lock: None,
            store: None,
            marks: None,
        });
    };
    let lock = DirLock::acquire(dir)?;
    let identity = Identity {
        first_worker: config.worker_id,
        worker_count: config.worker_count,
        workers_per_pod: config.workers_per_pod,
        layout: config.layout,
    };
    let (store, marks) = StateStore::open_set(dir, identity, config.discard_corrupt_state)?;
    if marks.is_none() && lock.had_state() {
        if !config.discard_corrupt_state {
            return Err(StateError::Lost {
                path: dir.join(crate::state::STATE_FILE),
            }
            .into());
        }
        tracing::warn!(dir = %dir.display(), "the state file is missing although this directory held one; starting afresh as --discard-corrupt-state asks");
    } else if marks.is_none() {
        tracing::info!(dir = %dir.display(), "first start in this state directory");
    }
    Ok(StateSetup {
        lock: Some(lock),
        store: Some(store),
        marks,
    })
}

fn warn_if_behind(mark_unix_ms: Option<u64>) {
    let wall_ms = unix_ms_now();
    if let Some(mark) = mark_unix_ms.filter(|m| *m > wall_ms) {
        tracing::warn!(
            lead_ms = mark - wall_ms,
            "the clock is behind the persisted high-water mark: serving from the mark, ahead of the wall clock"
        );
    }
}

/// Each worker starts at the clock's tick or its mark, whichever is later.
fn start_ticks(config: &ServerConfig, clock: &MonotonicClock, marks: Option<&[u64]>) -> Vec<u64> {
    let now = config.layout.tick_at(clock.now_unix_ms()).unwrap_or(0);
    (0..usize::from(config.worker_count.max(1)))
        .map(|i| now.max(marks.and_then(|m| m.get(i)).copied().unwrap_or(0)))
        .collect()
}

fn check_lifetime(config: &ServerConfig) -> Result<(), StartError> {
    let layout = config.layout;
    let left_ms = layout.end_of_life_unix_ms().saturating_sub(unix_ms_now()) as f64;
    let years = left_ms / YEAR_MS;
    let eol = format_unix_ms(layout.end_of_life_unix_ms());
    if years < config.min_years_left {
        return Err(ConfigError::Lifetime {
            end_of_life: eol,
            years,
            min_years: config.min_years_left,
        }
        .into());
    }
    if years < WARN_YEARS_LEFT {
        tracing::warn!(end_of_life = %eol, years_left = format!("{years:.2}"), "the layout's timestamp field runs out in under 5 years");
    }
    Ok(())
}

fn log_start(shared: &Shared, lease_addr: SocketAddr, admin_addr: SocketAddr) {
    let c = &shared.config;
    let l = c.layout;
    let last_worker = u32::from(c.worker_id) + u32::from(c.worker_count.max(1)) - 1;
    tracing::info!(
        worker_id = c.worker_id,
        workers = format!("{}-{last_worker}", c.worker_id),
        worker_source = ?c.worker_source,
        layout = format!("{}/{}/{}", l.timestamp_bits(), l.worker_bits(), l.sequence_bits()),
        epoch = %format_unix_ms(l.epoch_unix_ms()),
        end_of_life = %format_unix_ms(l.end_of_life_unix_ms()),
        %lease_addr,
        %admin_addr,
        threads = c.threads,
        max_lead_ms = c.max_lead_ms,
        state_dir = ?c.state_dir,
        state_dir_is_default = c.state_dir_is_default,
        tls = c.tls.is_some(),
        mutual_tls = c.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "serving"
    );
}

impl RunningServer {
    /// Where the lease port listens.
    pub fn lease_addr(&self) -> SocketAddr {
        self.lease_addr
    }

    /// Where the admin port listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The shared state, for metrics in tests.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Graceful stop: readiness off, listeners closed, every connection answers what it has
    /// read and gets GOAWAY, the admin port finishes its requests, then the marks are lowered
    /// and the threads end (within the drain timeout).
    pub fn shutdown(self) {
        self.shared.health.draining();
        self.stops.shutdown.cancel();
        self.join()
    }

    /// Abrupt stop, as close to `kill -9` as a library can get: runtimes are dropped,
    /// connections reset, no GOAWAY, the reserved window kept.
    pub fn abort(self) {
        self.shared.health.draining();
        self.stops.abort.cancel();
        self.join()
    }

    fn join(mut self) {
        for core in self.cores.drain(..) {
            let _ = core.join();
        }
        self.admin_stop.cancel();
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
        self.stopping.store(true, Ordering::Release);
        self.shared.wake_persister();
        if let Some(p) = self.persister.take() {
            let _ = p.join();
        }
        // Nothing can issue an ID now; after an abort (kill -9) the window stays reserved.
        if let (Some(store), false) = (&self.shared.state, self.stops.abort.is_cancelled()) {
            persist::lower_marks_after_drain(store, &self.shared.leaser);
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if !self.cores.is_empty() || !self.helpers.is_empty() || self.persister.is_some() {
            self.stops.abort.cancel();
            self.admin_stop.cancel();
            self.stopping.store(true, Ordering::Release);
            self.shared.wake_persister();
        }
    }
}
