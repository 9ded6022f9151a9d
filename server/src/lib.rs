//! snowlease-server: unique, time-sortable 64-bit IDs leased in blocks over TCP.
//!
//! # Layout
//! - [`config`]: flags and environment in, a validated [`ServerConfig`] out.
//! - [`generator`]: the lock-free lease generator all cores share.
//! - [`state`]: the persisted high-water mark that makes restarts safe.
//! - [`conn`]: one lease connection, frames in, replies out.
//! - [`admin`]: the admin HTTP port. [`metrics`]: per-core counters and their exposition.
//! - [`tls`]: optional TLS on the lease port, reloaded when its files change.
//!
//! [`start`] wires them together: it reads the state file and reserves a window ahead, binds
//! one SO_REUSEPORT listener per core, and starts one thread per core running a
//! `current_thread` runtime that accepts on its own listener and serves its connections, plus
//! an admin thread (HTTP, clock resync) and a persistence thread. [`RunningServer::shutdown`]
//! drains: readiness off, listeners closed, GOAWAY on every connection after the requests it
//! already sent are answered.

pub mod admin;
pub mod auth;
pub mod config;
pub mod conn;
pub mod generator;
pub mod metrics;
pub mod state;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::ServerConfig;
use generator::{Generator, GeneratorError, MonotonicClock};
use metrics::Metrics;
use state::{StateError, StateStore};

/// Milliseconds in an average Gregorian year, for the lifetime checks.
const YEAR_MS: f64 = 365.2425 * 86_400_000.0;
/// Warn at start when fewer years than this remain in the layout.
const WARN_YEARS_LEFT: f64 = 5.0;
/// How often the admin thread compares the monotonic clock with the wall clock. A step is
/// noticed within a second; each check is two clock reads.
const RESYNC_EVERY: Duration = Duration::from_secs(1);
/// Ticks beyond `max_lead` a waiting lease may claim, to be released when its time comes.
/// Each waiting connection holds at most one claim (it answers in order), so 1,000 covers a
/// thousand connections queueing for time; past it leases fall back to retrying. Measured:
/// 4 connections x depth 8 x 4096 IDs had a p99 of 319 ms when waiters raced for each new
/// tick (see bench/BENCHMARKS.md for the figure with claims).
pub const CLAIM_HORIZON_MS: u64 = 1_000;
/// Connections turned away at the cap that may linger (200 ms each, so OVERLOADED survives a
/// client that already sent data) at once, per core. A flood past it gets a hard close: the
/// descriptors a flood can pin stay within the cap plus this, well under the default
/// RLIMIT_NOFILE of the StatefulSet (1,048,576) and the 20,000 the hostile suite allows.
pub const TURNING_AWAY_MAX: usize = 512;

/// Accepts between yields to the connection tasks on the same core (see `accept_loop`).
const ACCEPTS_PER_YIELD: u32 = 16;

/// State every thread shares.
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: ServerConfig,
    /// The clock the generator reads.
    pub clock: Arc<MonotonicClock>,
    /// The one generator.
    pub generator: Generator<Arc<MonotonicClock>>,
    /// Per-core counters.
    pub metrics: Metrics,
    /// True while serving: `/readyz` answers 200.
    pub ready: AtomicBool,
    /// Woken each time the durable limit is raised, for leases waiting on it.
    pub durable_raised: Notify,
    /// The state file, when `--state-dir` is set.
    pub state: Option<StateStore>,
    /// The shared token, when `--token-file` is set.
    pub token: Option<auth::TokenStore>,
    /// The lease port's TLS configuration, when `--tls-cert` is set; swapped on reload.
    pub tls: Option<tls::TlsStore>,
    persister: OnceLock<thread::Thread>,
    stopping: AtomicBool,
}

impl Shared {
    /// Everything a connection handler needs, without sockets, threads or a state file: for
    /// the connection fuzz target and unit tests that drive [`conn::serve`] over a duplex pipe.
    pub fn for_tests(config: ServerConfig) -> Result<Arc<Shared>, StartError> {
        let clock = Arc::new(MonotonicClock::new());
        let generator = Generator::new(
            config.layout,
            u64::from(config.worker_id),
            config.max_lead_ms,
            0,
            clock.clone(),
        )?
        .with_horizon(CLAIM_HORIZON_MS);
        let (token, tls) = load_secrets(&config)?;
        let shared = Shared::new(config, clock, generator, None, token, tls);
        shared.ready.store(true, Ordering::Release);
        Ok(Arc::new(shared))
    }

    /// Not ready until the caller says so.
    fn new(
        config: ServerConfig,
        clock: Arc<MonotonicClock>,
        generator: Generator<Arc<MonotonicClock>>,
        state: Option<StateStore>,
        token: Option<auth::TokenStore>,
        tls: Option<tls::TlsStore>,
    ) -> Shared {
        Shared {
            metrics: Metrics::new(config.threads),
            config,
            clock,
            generator,
            ready: AtomicBool::new(false),
            durable_raised: Notify::new(),
            state,
            token,
            tls,
            persister: OnceLock::new(),
            stopping: AtomicBool::new(false),
        }
    }

    /// Asks the persistence thread to extend the reservation now.
    pub fn wake_persister(&self) {
        if let Some(t) = self.persister.get() {
            t.unpark();
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Worker id outside the layout.
    #[error(transparent)]
    Generator(#[from] GeneratorError),
    /// The state file refuses.
    #[error(transparent)]
    State(#[from] StateError),
    /// The token file is unusable.
    #[error(transparent)]
    Token(#[from] auth::TokenError),
    /// A TLS file is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Binding a port or starting a thread failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// A server running on its own threads.
#[derive(Debug)]
pub struct RunningServer {
    lease_addr: SocketAddr,
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    abort: CancellationToken,
    admin_stop: CancellationToken,
    cores: Vec<JoinHandle<()>>,
    helpers: Vec<JoinHandle<()>>,
}

/// Builds the generator and state, binds every socket, starts every thread, and returns once
/// the server accepts connections.
pub fn start(config: ServerConfig) -> Result<RunningServer, StartError> {
    let layout = config.layout;
    check_lifetime(&config)?;
    // Before the state file: a bad token or certificate refuses to start without touching it.
    let (token, tls) = load_secrets(&config)?;
    let (state, previous) = match &config.state_dir {
        Some(dir) => {
            let (store, prev) =
                StateStore::open(dir, config.worker_id, layout, config.discard_corrupt_state)?;
            (Some(store), prev)
        }
        None => {
            tracing::warn!("no --state-dir: a restart with the clock set back could repeat IDs; set SNOWLEASE_STATE_DIR to a persistent volume");
            (None, None)
        }
    };
    let mark_unix_ms = previous.map(|tick| layout.epoch_unix_ms().saturating_add(tick));
    let clock = Arc::new(MonotonicClock::at_least(mark_unix_ms.unwrap_or(0)));
    let wall_ms = snowlease_proto::layout::unix_ms_now();
    if let Some(mark) = mark_unix_ms.filter(|m| *m > wall_ms) {
        tracing::warn!(
            lead_ms = mark - wall_ms,
            "the clock is behind the persisted high-water mark: serving from the mark, ahead of the wall clock"
        );
    }
    let start_tick = layout
        .tick_at(generator::Clock::now_unix_ms(&clock))
        .unwrap_or(0)
        .max(previous.unwrap_or(0));
    let generator = Generator::new(
        layout,
        u64::from(config.worker_id),
        config.max_lead_ms,
        start_tick,
        clock.clone(),
    )?
    .with_horizon(CLAIM_HORIZON_MS);
    if let Some(store) = &state {
        let until = start_tick + config.reserve_ms;
        store.persist(until)?;
        generator.init_durable_limit(until);
    }

    let listeners = bind_listeners(config.listen, config.threads, config.backlog)?;
    let lease_addr = listeners[0]
        .local_addr()
        .map_err(io_err("reading the lease address"))?;
    let admin = std::net::TcpListener::bind(config.admin_listen).map_err(io_err(format!(
        "binding the admin port {}",
        config.admin_listen
    )))?;
    admin
        .set_nonblocking(true)
        .map_err(io_err("configuring the admin port"))?;
    let admin_addr = admin
        .local_addr()
        .map_err(io_err("reading the admin address"))?;

    let shared = Arc::new(Shared::new(config, clock, generator, state, token, tls));
    let shutdown = CancellationToken::new();
    let abort = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let limiter = Arc::new(Semaphore::new(
        shared.config.max_connections.min(Semaphore::MAX_PERMITS),
    ));

    let mut cores = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (shared, shutdown, abort, limiter) = (
            shared.clone(),
            shutdown.clone(),
            abort.clone(),
            limiter.clone(),
        );
        let handle = thread::Builder::new()
            .name(format!("snowlease-core-{i}"))
            .spawn(move || run_core(i, listener, shared, shutdown, abort, limiter))
            .map_err(io_err("starting a core thread"))?;
        cores.push(handle);
    }
    let mut helpers = Vec::new();
    {
        let (shared, stop, abort) = (shared.clone(), admin_stop.clone(), abort.clone());
        helpers.push(
            thread::Builder::new()
                .name("snowlease-admin".into())
                .spawn(move || run_admin(admin, shared, stop, abort))
                .map_err(io_err("starting the admin thread"))?,
        );
    }
    if shared.state.is_some() {
        let s = shared.clone();
        let handle = thread::Builder::new()
            .name("snowlease-persist".into())
            .spawn(move || run_persister(&s))
            .map_err(io_err("starting the persistence thread"))?;
        let _ = shared.persister.set(handle.thread().clone());
        helpers.push(handle);
    }

    shared.ready.store(true, Ordering::Release);
    log_start(&shared, lease_addr, admin_addr);
    Ok(RunningServer {
        lease_addr,
        admin_addr,
        shared,
        shutdown,
        abort,
        admin_stop,
        cores,
        helpers,
    })
}

/// The token and the TLS configuration, each when configured.
fn load_secrets(
    config: &ServerConfig,
) -> Result<(Option<auth::TokenStore>, Option<tls::TlsStore>), StartError> {
    let token = config
        .token_file
        .as_deref()
        .map(auth::TokenStore::load)
        .transpose()?;
    let tls = config.tls.as_ref().map(tls::TlsStore::load).transpose()?;
    Ok((token, tls))
}

fn check_lifetime(config: &ServerConfig) -> Result<(), StartError> {
    let layout = config.layout;
    let left_ms = layout
        .end_of_life_unix_ms()
        .saturating_sub(snowlease_proto::layout::unix_ms_now()) as f64;
    let years = left_ms / YEAR_MS;
    let eol = snowlease_proto::layout::format_unix_ms(layout.end_of_life_unix_ms());
    if years < config.min_years_left {
        return Err(config::ConfigError::Invalid(format!(
            "the layout's timestamp field runs out at {eol}, {years:.2} years from now, under the minimum of {} years (--min-years-left); choose a later epoch or more timestamp bits",
            config.min_years_left
        ))
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
    tracing::info!(
        worker_id = c.worker_id,
        worker_source = ?c.worker_source,
        layout = format!("{}/{}/{}", l.timestamp_bits(), l.worker_bits(), l.sequence_bits()),
        epoch = %snowlease_proto::layout::format_unix_ms(l.epoch_unix_ms()),
        end_of_life = %snowlease_proto::layout::format_unix_ms(l.end_of_life_unix_ms()),
        %lease_addr,
        %admin_addr,
        threads = c.threads,
        max_lead_ms = c.max_lead_ms,
        state_dir = ?c.state_dir,
        tls = c.tls.is_some(),
        mutual_tls = c.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "serving"
    );
}

/// One SO_REUSEPORT listener per core on the same address. With port 0 the first socket picks
/// a free port and the others join it.
fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
) -> Result<Vec<std::net::TcpListener>, StartError> {
    let mut addr = addr;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let l = reuseport_listener(addr, backlog)
            .map_err(io_err(format!("binding the lease port {addr}")))?;
        if addr.port() == 0 {
            addr = l
                .local_addr()
                .map_err(io_err("reading the lease address"))?;
        }
        out.push(l);
    }
    Ok(out)
}

/// A listening socket with SO_REUSEPORT set before bind, so the kernel spreads incoming
/// connections across the cores' accept queues.
pub fn reuseport_listener(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn run_core(
    core: usize,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    abort: CancellationToken,
    limiter: Arc<Semaphore>,
) {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(core, error = %e, "could not build a runtime; this core serves nothing");
            return;
        }
    };
    rt.block_on(async {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(core, error = %e, "could not register the listener");
                return;
            }
        };
        let tracker = TaskTracker::new();
        tokio::select! {
            _ = abort.cancelled() => {}
            _ = async {
                accept_loop(core, listener, &shared, &tracker, &shutdown, &limiter).await;
                tracker.close();
                let drain = shared.config.drain_timeout;
                if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
                    tracing::warn!(core, open = tracker.len(), "drain timeout passed; closing the remaining connections");
                }
            } => {}
        }
    });
}

async fn accept_loop(
    core: usize,
    listener: TcpListener,
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    limiter: &Arc<Semaphore>,
) {
    let metrics = shared.metrics.core(core);
    let overloaded = conn::overloaded_frame(shared.config.max_connections);
    let turning_away = Arc::new(Semaphore::new(TURNING_AWAY_MAX));
    let mut accepted: u32 = 0;
    loop {
        // The accept loop is this runtime's main future: with a deep backlog `accept` is
        // always ready and the loop would starve the connection tasks, so connections their
        // clients already closed would keep holding the cap. Yielding every few accepts lets
        // them run and release their permits.
        accepted = accepted.wrapping_add(1);
        if accepted % ACCEPTS_PER_YIELD == 0 {
            tokio::task::yield_now().await;
        }
        let stream = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning on the error.
                    tracing::warn!(core, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        match limiter.clone().try_acquire_owned() {
            Ok(permit) => {
                metrics.accepted();
                let (shared, shutdown) = (shared.clone(), shutdown.clone());
                tracker.spawn(async move {
                    let metrics = shared.metrics.core(core);
                    // The handshake runs here, in the connection's own task, never in the
                    // accept loop: a slow or silent peer must not hold up accepts.
                    // The TLS path is boxed: its state (a rustls session inline) would
                    // otherwise size every connection's task, TLS or not. Measured with
                    // 10,000 idle plaintext connections: 5,648 B each unboxed, 2,061 B boxed.
                    match &shared.tls {
                        None => conn::serve(stream, &shared, metrics, &shutdown).await,
                        Some(store) => {
                            Box::pin(serve_tls(store, stream, &shared, metrics, &shutdown)).await
                        }
                    }
                    metrics.closed();
                    drop(permit);
                });
            }
            Err(_) => {
                metrics.rejected();
                metrics.frame_error(snowlease_proto::wire::ErrorCode::OVERLOADED);
                // Not tracked: shutdown need not wait for a connection being turned away,
                // and the task ends by itself within its linger. Past TURNING_AWAY_MAX at once
                // (a flood), the frame is written if it fits and the socket closed at once,
                // so a flood cannot pin more descriptors than the cap plus this bound.
                match turning_away.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (frame, shared) = (overloaded.clone(), shared.clone());
                        let shutdown = shutdown.clone();
                        tokio::spawn(async move {
                            match shared.tls.as_ref().map(tls::TlsStore::acceptor) {
                                None => conn::turn_away(stream, &frame).await,
                                // Under TLS the frame must be inside TLS: a plaintext one
                                // would read as a broken handshake, not as OVERLOADED.
                                Some(acceptor) => {
                                    let limit = tls::TURN_AWAY_HANDSHAKE_TIMEOUT;
                                    let metrics = shared.metrics.core(core);
                                    if let Some(stream) =
                                        tls::handshake(acceptor, stream, limit, metrics, &shutdown)
                                            .await
                                    {
                                        conn::turn_away(stream, &frame).await;
                                    }
                                }
                            }
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        if shared.tls.is_none() {
                            let _ = stream.try_write(&overloaded);
                        }
                    }
                }
            }
        }
    }
}

/// A lease connection under TLS: the handshake (bounded by [`tls::HANDSHAKE_TIMEOUT`] or the
/// idle timeout, whichever is shorter), then the same protocol as over TCP.
async fn serve_tls(
    store: &tls::TlsStore,
    stream: tokio::net::TcpStream,
    shared: &Shared,
    metrics: &metrics::CoreMetrics,
    shutdown: &CancellationToken,
) {
    let limit = tls::HANDSHAKE_TIMEOUT.min(shared.config.idle_timeout);
    if let Some(stream) = tls::handshake(store.acceptor(), stream, limit, metrics, shutdown).await {
        conn::serve(stream, shared, metrics, shutdown).await;
    }
}

fn run_admin(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    abort: CancellationToken,
) {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "could not build the admin runtime");
            return;
        }
    };
    rt.block_on(async {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "could not register the admin listener");
                return;
            }
        };
        let resync = async {
            let mut every = tokio::time::interval(RESYNC_EVERY);
            let mut last = shared.clock.steps();
            loop {
                every.tick().await;
                let diff = shared.clock.resync();
                let steps = shared.clock.steps();
                if steps != last {
                    tracing::warn!(wall_minus_server_ms = diff, back = steps.0, forward = steps.1, "wall clock stepped; IDs keep following the monotonic clock and never go back");
                    last = steps;
                }
            }
        };
        tokio::select! {
            _ = abort.cancelled() => {}
            _ = admin::serve(listener, shared.clone(), stop.clone()) => {}
            _ = resync => {}
            _ = watch_files(&shared) => {}
        }
    });
}

/// Re-reads the token file and the TLS files once a second (those that changed) and all of
/// them at once on SIGHUP. A file that became unusable is logged and the previous token or
/// certificate kept; open connections are never dropped. Returns only if nothing is watched.
async fn watch_files(shared: &Shared) {
    if shared.token.is_none() && shared.tls.is_none() {
        return std::future::pending().await;
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut every = tokio::time::interval(RESYNC_EVERY);
    loop {
        let force = tokio::select! {
            _ = every.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        if let Some(store) = &shared.token {
            match store.reload_if_changed(force) {
                Ok(true) => tracing::info!("token reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "token file unusable; keeping the previous token")
                }
            }
        }
        if let Some(store) = &shared.tls {
            match store.reload_if_changed(force) {
                Ok(true) => tracing::info!("TLS certificate and key reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "TLS files unusable; keeping the previous certificate")
                }
            }
        }
    }
}

/// Keeps the durable reservation ahead of the generator: when less than half the window is
/// left, writes a new mark one window ahead and raises the generator's limit.
fn run_persister(shared: &Shared) {
    let Some(store) = &shared.state else { return };
    let g = &shared.generator;
    let window = shared.config.reserve_ms;
    // Polling at an eighth of the window notices the half-way point with plenty of margin;
    // leases that hit the limit wake this thread at once.
    let poll = Duration::from_millis((window / 8).clamp(1, 100));
    while !shared.stopping.load(Ordering::Acquire) {
        let next = g.next_tick().max(g.now_tick());
        if g.durable_limit().saturating_sub(next) < window / 2 {
            let until = next + window;
            match store.persist(until) {
                Ok(()) => {
                    g.set_durable_limit(until);
                    shared.durable_raised.notify_waiters();
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not extend the reservation; leases wait until it succeeds");
                    thread::sleep(poll);
                }
            }
        }
        thread::park_timeout(poll);
    }
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
    /// read and gets GOAWAY, then the threads end (within the drain timeout).
    pub fn shutdown(self) {
        self.shared.ready.store(false, Ordering::Release);
        self.shutdown.cancel();
        self.join()
    }

    /// Abrupt stop, as close to `kill -9` as a library can get: runtimes are dropped,
    /// connections reset, no GOAWAY.
    pub fn abort(self) {
        self.shared.ready.store(false, Ordering::Release);
        self.abort.cancel();
        self.join()
    }

    fn join(mut self) {
        for core in self.cores.drain(..) {
            let _ = core.join();
        }
        self.lower_mark_after_drain();
        self.admin_stop.cancel();
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.wake_persister();
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

impl RunningServer {
    /// After a graceful drain nothing more will be issued, so the state file can hold the
    /// first unused tick instead of the window reserved ahead: a quick restart then does not
    /// start seconds ahead of the clock. Skipped after an abort (kill -9 keeps the window).
    fn lower_mark_after_drain(&self) {
        let Some(store) = &self.shared.state else {
            return;
        };
        if self.abort.is_cancelled() {
            return;
        }
        let unused = self.shared.generator.first_unused_tick();
        if unused < self.shared.generator.durable_limit() {
            if let Err(e) = store.persist(unused) {
                tracing::warn!(error = %e, "could not lower the reservation after the drain; the next start begins at the reserved mark");
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if !self.cores.is_empty() || !self.helpers.is_empty() {
            self.abort.cancel();
            self.admin_stop.cancel();
            self.shared.stopping.store(true, Ordering::Release);
            self.shared.wake_persister();
        }
    }
}
