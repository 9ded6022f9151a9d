//! The threads beside the serving cores: the admin thread and the persistence thread.
//!
//! The admin thread runs one `current_thread` runtime with three jobs: the admin HTTP port
//! (`admin::serve`), the clock resync (once a second: [`MonotonicClock::check`] applies the
//! step policy and steps are logged here), and the file watcher that reloads the token and
//! TLS files when they change or on SIGHUP. It reports to `start` once its SIGHUP handler is
//! registered, so a SIGHUP sent as soon as the server says `serving` is never lost.
//!
//! The persistence thread runs `persist::Persister` on a plain OS thread, since it blocks in
//! fsync; leases waiting for the disk unpark it.

use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::clock::{MonotonicClock, Resync};
use crate::cores::runtime;
use crate::error::{io_err, StartError};
use crate::persist::Persister;
use crate::shared::Shared;

/// How often the clock is compared with the wall clock, and the token and TLS files with
/// their last modification time. A step is noticed within a second; each check is two clock
/// reads and two `stat`s.
pub const RESYNC_EVERY: Duration = Duration::from_secs(1);

/// Starts the admin thread on `listener` and waits until it serves (its SIGHUP handler is in
/// place). `stop` ends it gracefully (in-flight requests finish), `abort` at once.
pub fn spawn_admin(
    listener: std::net::TcpListener,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    abort: &CancellationToken,
) -> Result<JoinHandle<()>, StartError> {
    let (shared, stop, abort) = (shared.clone(), stop.clone(), abort.clone());
    let (ready_tx, ready) = mpsc::channel();
    let handle = thread::Builder::new()
        .name("snowlease-admin".into())
        .spawn(move || run_admin(listener, shared, stop, abort, ready_tx))
        .map_err(io_err("starting the admin thread"))?;
    // A closed channel means the thread gave up (and logged why): start anyway; the lease
    // port works without it.
    let _ = ready.recv();
    Ok(handle)
}

fn run_admin(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    abort: CancellationToken,
    ready: mpsc::Sender<()>,
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
        let hangup = signal(SignalKind::hangup())
            .map_err(|e| tracing::warn!(error = %e, "no SIGHUP handler; files are still reloaded when they change"))
            .ok();
        let _ = ready.send(());
        tokio::select! {
            _ = abort.cancelled() => {}
            _ = admin::serve(listener, shared.clone(), stop.clone()) => {}
            _ = resync_clock(&shared.clock) => {}
            _ = watch_files(&shared, hangup) => {}
        }
    });
}

/// Compares the server clock with the wall clock once a second and logs what changed.
async fn resync_clock(clock: &MonotonicClock) {
    let mut every = tokio::time::interval(RESYNC_EVERY);
    let mut holding = false;
    loop {
        every.tick().await;
        let (diff, outcome) = clock.check();
        match outcome {
            Resync::SteppedBack { diff_ms } => tracing::warn!(wall_minus_server_ms = diff_ms, "wall clock stepped back; IDs keep following the monotonic clock and never go back"),
            Resync::Followed { by_ms } => tracing::warn!(by_ms, wall_minus_server_ms = diff, "wall clock stepped forward; the server clock follows"),
            Resync::Held { ahead_ms, for_ms } if !holding => tracing::warn!(ahead_ms, held_ms = for_ms, "wall clock jumped forward by more than --clock-follow-max-ms; not followed unless it holds for --clock-follow-after-ms"),
            Resync::Held { .. } | Resync::Level => {}
        }
        holding = matches!(outcome, Resync::Held { .. });
    }
}

/// Re-reads the token file and the TLS files once a second (those that changed) and all of
/// them at once on SIGHUP. A file that became unusable is logged and the previous token or
/// certificate kept; open connections are never dropped. Returns only if nothing is watched.
async fn watch_files(shared: &Shared, mut hup: Option<Signal>) {
    if shared.token.is_none() && shared.tls.is_none() {
        return std::future::pending().await;
    }
    let mut every = tokio::time::interval(RESYNC_EVERY);
    loop {
        let force = tokio::select! {
            _ = every.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        if let Some(store) = &shared.token {
            log_reload(
                store.reload_if_changed(force),
                "token reloaded",
                "token file unusable; keeping the previous token",
            );
        }
        if let Some(store) = &shared.tls {
            log_reload(
                store.reload_if_changed(force),
                "TLS certificate and key reloaded",
                "TLS files unusable; keeping the previous certificate",
            );
        }
    }
}

fn log_reload<E: std::fmt::Display>(result: Result<bool, E>, done: &str, failed: &str) {
    match result {
        Ok(true) => tracing::info!("{done}"),
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "{failed}"),
    }
}

/// Starts the persistence thread when there is a state directory.
pub fn spawn_persister(
    shared: &Arc<Shared>,
    stopping: &Arc<AtomicBool>,
) -> Result<Option<JoinHandle<()>>, StartError> {
    if shared.state.is_none() {
        return Ok(None);
    }
    let (s, stopping) = (shared.clone(), stopping.clone());
    let handle = thread::Builder::new()
        .name("snowlease-persist".into())
        .spawn(move || {
            if let Some(store) = &s.state {
                Persister {
                    store,
                    leaser: &s.leaser,
                    health: &s.state_health,
                    window: s.config.reserve_ms,
                    stopping: &stopping,
                }
                .run();
            }
        })
        .map_err(io_err("starting the persistence thread"))?;
    shared
        .leaser
        .durability()
        .set_persister(handle.thread().clone());
    Ok(Some(handle))
}
