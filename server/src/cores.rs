//! The serving cores: one thread per core, each running a `current_thread` runtime that
//! accepts on its own SO_REUSEPORT listener and serves the connections it accepted.
//!
//! A connection flows in through `accept_loop`, which admits it against two caps (the
//! server's `--max-connections`, a semaphore shared by all cores, and the per-peer
//! `--max-connections-per-peer`, a [`PeerTable`](crate::peers::PeerTable) keyed by source address) and spawns its task
//! on the same core: `conn::serve`, inside TLS when configured. A connection over either cap
//! gets ERROR OVERLOADED and a brief linger (`conn::turn_away`), bounded per core. Shutdown
//! cancels the accept loops and waits for the connection tasks to drain within the drain
//! timeout; abort drops the runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn;
use crate::error::{io_err, StartError};
use crate::metrics::{CoreMetrics, Rejection};
use crate::peers::PeerPermit;
use crate::shared::Shared;
use crate::tls;
use snowlease_proto::wire::ErrorCode;

/// Connections turned away at the cap that may linger (200 ms each, so OVERLOADED survives a
/// client that already sent data) at once, per core. A flood past it gets a hard close: the
/// descriptors a flood can pin stay within the cap plus this, well under the default
/// RLIMIT_NOFILE of the StatefulSet (1,048,576) and the 20,000 the hostile suite allows.
pub const TURNING_AWAY_MAX: usize = 512;

/// Accepts between yields to the connection tasks on the same core. The accept loop is the
/// runtime's main future: with a deep backlog `accept` is always ready and would starve the
/// connection tasks, so connections their clients already closed kept holding the cap
/// (hostile suite: a churn of 5,000 connections closed at once). 16 accepts cost a few
/// microseconds, so the yield costs nothing measurable at 10,000 connects/s.
const ACCEPTS_PER_YIELD: u32 = 16;

/// How long the accept loop backs off after an accept error (EMFILE and friends) instead of
/// spinning on it. A guess, and harmless: the error persists until a descriptor frees up, and
/// 10 ms is short against the 200 ms a turned-away connection lingers.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// The tokens the cores stop on.
#[derive(Debug, Clone, Default)]
pub struct Stops {
    /// Graceful: stop accepting, answer what was read, GOAWAY.
    pub shutdown: CancellationToken,
    /// Abrupt: drop everything.
    pub abort: CancellationToken,
}

/// Starts one serving thread per listener.
pub fn spawn(
    listeners: Vec<std::net::TcpListener>,
    shared: &Arc<Shared>,
    stops: &Stops,
) -> Result<Vec<JoinHandle<()>>, StartError> {
    let limiter = Arc::new(Semaphore::new(
        shared.config.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let mut cores = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let (shared, stops, limiter) = (shared.clone(), stops.clone(), limiter.clone());
        let handle = thread::Builder::new()
            .name(format!("snowlease-core-{i}"))
            .spawn(move || run_core(i, listener, shared, stops, limiter))
            .map_err(io_err("starting a core thread"))?;
        cores.push(handle);
    }
    Ok(cores)
}

/// A `current_thread` runtime with timers and I/O.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn run_core(
    core: usize,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    stops: Stops,
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
        let core = Core {
            index: core,
            shared: &shared,
            tracker: &tracker,
            shutdown: &stops.shutdown,
            limiter: &limiter,
            turning_away: Arc::new(Semaphore::new(TURNING_AWAY_MAX)),
            overloaded: conn::overloaded_frame(shared.config.max_connections),
        };
        tokio::select! {
            _ = stops.abort.cancelled() => {}
            _ = async {
                accept_loop(&core, listener).await;
                tracker.close();
                let drain = shared.config.drain_timeout;
                if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
                    tracing::warn!(core = core.index, open = tracker.len(), "drain timeout passed; closing the remaining connections");
                }
            } => {}
        }
    });
}

/// What one core's accept loop works with.
struct Core<'a> {
    index: usize,
    shared: &'a Arc<Shared>,
    tracker: &'a TaskTracker,
    shutdown: &'a CancellationToken,
    limiter: &'a Arc<Semaphore>,
    turning_away: Arc<Semaphore>,
    overloaded: BytesMut,
}

async fn accept_loop(core: &Core<'_>, listener: TcpListener) {
    let mut accepted: u32 = 0;
    loop {
        accepted = accepted.wrapping_add(1);
        if accepted.is_multiple_of(ACCEPTS_PER_YIELD) {
            tokio::task::yield_now().await;
        }
        let (stream, peer) = tokio::select! {
            biased;
            _ = core.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(core = core.index, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        match admit(core, Some(peer)) {
            Ok(permits) => serve(core, stream, permits),
            Err(why) => turn_away(core, stream, why, peer),
        }
    }
}

/// Counts a new connection against both caps.
fn admit(
    core: &Core<'_>,
    peer: Option<SocketAddr>,
) -> Result<(OwnedSemaphorePermit, PeerPermit), Rejection> {
    let permit = core
        .limiter
        .clone()
        .try_acquire_owned()
        .map_err(|_| Rejection::Cap)?;
    let peer = core.shared.peers.admit(peer).ok_or(Rejection::PeerCap)?;
    Ok((permit, peer))
}

/// Spawns an admitted connection's task on this core.
fn serve(core: &Core<'_>, stream: TcpStream, permits: (OwnedSemaphorePermit, PeerPermit)) {
    let index = core.index;
    let metrics = core.shared.metrics.core(index);
    metrics.accepted();
    let (shared, shutdown) = (core.shared.clone(), core.shutdown.clone());
    core.tracker.spawn(async move {
        let metrics = shared.metrics.core(index);
        // The handshake runs here, in the connection's own task, never in the accept loop:
        // a slow or silent peer must not hold up accepts. The TLS path is boxed: its state (a
        // rustls session inline) would otherwise size every connection's task, TLS or not.
        // Measured with 10,000 idle plaintext connections: 5,648 B each unboxed, 2,061 B boxed.
        match &shared.tls {
            None => conn::serve(stream, &shared, metrics, &shutdown).await,
            Some(store) => Box::pin(serve_tls(store, stream, &shared, metrics, &shutdown)).await,
        }
        metrics.closed();
        drop(permits);
    });
}

/// Sends OVERLOADED to a connection over a cap. Not tracked: shutdown need not wait for it,
/// and it ends by itself within its linger. Past [`TURNING_AWAY_MAX`] at once (a flood), the
/// frame is written if it fits and the socket closed at once.
fn turn_away(core: &Core<'_>, stream: TcpStream, why: Rejection, peer: SocketAddr) {
    let metrics = core.shared.metrics.core(core.index);
    metrics.rejected_for(why);
    metrics.frame_error(ErrorCode::OVERLOADED);
    let frame = match why {
        Rejection::Cap => core.overloaded.clone(),
        Rejection::PeerCap => {
            conn::peer_overloaded_frame(peer.ip(), core.shared.config.max_connections_per_peer)
        }
    };
    let Ok(permit) = core.turning_away.clone().try_acquire_owned() else {
        if core.shared.tls.is_none() {
            let _ = stream.try_write(&frame);
        }
        return;
    };
    let (shared, shutdown, index) = (core.shared.clone(), core.shutdown.clone(), core.index);
    tokio::spawn(async move {
        match shared.tls.as_ref().map(tls::TlsStore::acceptor) {
            None => conn::turn_away(stream, &frame).await,
            // Under TLS the frame must be inside TLS: a plaintext one would read as a broken
            // handshake, not as OVERLOADED.
            Some(acceptor) => {
                let limit = tls::TURN_AWAY_HANDSHAKE_TIMEOUT;
                let metrics = shared.metrics.core(index);
                if let Some(s) = tls::handshake(acceptor, stream, limit, metrics, &shutdown).await {
                    conn::turn_away(s, &frame).await;
                }
            }
        }
        drop(permit);
    });
}

/// A lease connection under TLS: the handshake (bounded by [`tls::HANDSHAKE_TIMEOUT`] or the
/// idle timeout, whichever is shorter), then the same protocol as over TCP.
async fn serve_tls(
    store: &tls::TlsStore,
    stream: TcpStream,
    shared: &Shared,
    metrics: &CoreMetrics,
    shutdown: &CancellationToken,
) {
    let limit = tls::HANDSHAKE_TIMEOUT.min(shared.config.idle_timeout);
    if let Some(stream) = tls::handshake(store.acceptor(), stream, limit, metrics, shutdown).await {
        conn::serve(stream, shared, metrics, shutdown).await;
    }
}
