//! The background task: a thin tokio shell around the decision [`Engine`].
//!
//! Callers never talk to the network. They pop IDs from the shared buffer; when a take
//! leaves the buffer below the trigger the engine armed, or a caller finds it empty, they
//! poke `Shared::wake`. The task wakes on that, on frames and closures reported by
//! connection tasks (`conn`), on name resolutions, on direct `lease` commands, and at the
//! engine's next deadline. Each pass it
//!
//! 1. feeds what arrived to the engine (at most [`EVENT_BATCH`] events, so one refill
//!    decision covers a burst of replies);
//! 2. drops expired ranges from the buffer and hands the engine the buffer's level;
//! 3. performs the engine's actions: spawns connection and resolver tasks, writes requests
//!    (HELLO offers [`ClientConfig::protocol_version`]), closes connections, pushes verified
//!    ranges into the buffer (a bulk reply's blocks under one lock), answers direct leases, and
//!    publishes the layout, errors and the buffer's trigger in [`Shared`].
//!
//! Every decision (what to send where, when to reconnect or re-resolve, what to verify) is
//! the engine's; this file only moves bytes, tasks and wake-ups. The buffer's lock is taken
//! once per pass to read its level and once per range pushed, each for a few instructions.

mod engine;
mod latency;
mod recheck;
mod refill;
mod replies;
mod slots;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use super::config::{ClientConfig, Target};
use super::conn::{self, ConnEvent, ConnHandle, ConnParams};
use super::shared::{lock, Command, DirectLease, Shared};
use super::{Error, IdRange};
use crate::wire::Request;
pub(crate) use engine::ConnId;
use engine::{Action, CallerId, Engine, Level};

/// Events handled per pass before refilling: 256. Measured by the ignored test
/// `measure_the_engine_cost_of_a_reply_and_a_pass` (release, pinned to one CPU), the
/// engine spends 123-152 ns on a LEASED reply including its buffer push, and 9-12 µs on a
/// refill pass with four servers at full draw. A batch of 256 replies thus costs about
/// 40 µs, so even under a flood of frames refills and expiry are decided every ~40 µs (25
/// times finer than a server's 1 ms tick), while one pass is shared by up to 256 replies
/// instead of costing 60 times a reply each. The exact value is a choice within that wide
/// harmless range, not a measured optimum.
const EVENT_BATCH: usize = 256;

/// Capacity of the channel from connection tasks to the driver: 1,024 events, the replies
/// of 64 connections with 16 LEASEs in flight each, so it fills only if a server floods
/// frames, and then that server's socket is read no faster than the driver can check. At
/// the measured ~150 ns per event a full queue is drained in about 150 µs.
const EVENT_QUEUE: usize = 1024;

/// Everything the driver reacts to besides commands and wakes.
#[derive(Debug)]
pub(crate) enum Event {
    Conn(ConnId, ConnEvent),
    Resolved(usize, Result<Vec<SocketAddr>, Error>),
}

impl From<(ConnId, ConnEvent)> for Event {
    fn from((id, event): (ConnId, ConnEvent)) -> Event {
        Event::Conn(id, event)
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Driver {
    engine: Engine,
    config: ClientConfig,
    targets: Vec<Target>,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    conns: HashMap<ConnId, ConnHandle>,
    callers: HashMap<CallerId, oneshot::Sender<Result<IdRange, Error>>>,
    next_caller: CallerId,
    /// IDs were pushed since waiters were last woken.
    delivered: bool,
    hello: Request,
}

/// The engine's clock, taken from tokio's so a paused test runtime pauses the driver too.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Driver {
    pub fn new(
        config: ClientConfig,
        targets: Vec<Target>,
        shared: Arc<Shared>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Driver {
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        Driver {
            engine: Engine::new(config.clone(), targets.clone(), now(), fastrand::u64(..)),
            hello: Request::Hello {
                version: config.protocol_version,
                token: config.token.clone(),
            },
            config,
            targets,
            shared,
            commands,
            events_tx,
            events,
            conns: HashMap::new(),
            callers: HashMap::new(),
            next_caller: 1,
            delivered: false,
        }
    }

    /// Runs until every client handle is gone or `close` is called.
    pub async fn run(mut self) {
        self.maintain();
        loop {
            let deadline = Instant::from_std(self.engine.next_deadline());
            tokio::select! {
                biased;
                command = self.commands.recv() => {
                    if !self.on_command(command) {
                        return;
                    }
                }
                Some(event) = self.events.recv() => self.on_event(event),
                () = self.shared.wake.notified() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
            for _ in 0..EVENT_BATCH {
                match self.events.try_recv() {
                    Ok(event) => self.on_event(event),
                    Err(_) => break,
                }
            }
            while let Ok(command) = self.commands.try_recv() {
                if !self.on_command(Some(command)) {
                    return;
                }
            }
            self.maintain();
        }
    }

    /// Returns false when the driver must stop.
    fn on_command(&mut self, command: Option<Command>) -> bool {
        match command {
            Some(Command::Lease(DirectLease { count, reply })) => {
                let caller = self.next_caller;
                self.next_caller += 1;
                self.callers.insert(caller, reply);
                self.engine.on_lease(caller, count);
                true
            }
            Some(Command::Close(ack)) => {
                self.shutdown();
                let _ = ack.send(());
                false
            }
            None => {
                self.shutdown();
                false
            }
        }
    }

    fn shutdown(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.conns.clear();
        self.callers.clear();
        self.shared.buffer().clear();
        self.shared.refilled.notify_waiters();
        debug!("snowlease client closed");
    }

    fn on_event(&mut self, event: Event) {
        let now = now();
        match event {
            Event::Resolved(index, result) => self.engine.on_resolved(index, result, now),
            Event::Conn(id, ConnEvent::Frame(frame)) => self.engine.on_frame(id, frame, now),
            Event::Conn(id, ConnEvent::Closed(why)) => self.engine.on_closed(id, why, now),
        }
        self.perform_all();
    }

    fn maintain(&mut self) {
        let now = now();
        let gone: Vec<CallerId> = self
            .callers
            .iter()
            .filter(|(_, reply)| reply.is_closed())
            .map(|(&caller, _)| caller)
            .collect();
        for caller in gone {
            self.callers.remove(&caller);
            self.engine.on_caller_gone(caller);
        }
        let level = {
            let mut buffer = self.shared.buffer();
            if let Some(cutoff) = self.engine.expiry_cutoff(now) {
                buffer.expire(cutoff);
            }
            Level {
                available: buffer.available(),
                drawn: buffer.drawn(),
            }
        };
        self.engine.maintain(now, level);
        self.perform_all();
        if std::mem::take(&mut self.delivered) {
            self.shared.refilled.notify_waiters();
        }
    }

    fn perform_all(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            self.perform(action);
        }
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Connect {
                conn,
                addr,
                endpoint,
            } => self.connect(conn, addr, endpoint),
            Action::Send { conn, request } => {
                // A send error means the task ended; its Closed event is on the way.
                if let Some(handle) = self.conns.get(&conn) {
                    let _ = handle.requests.send(request);
                }
            }
            Action::Close { conn } => {
                self.conns.remove(&conn);
            }
            Action::Resolve { endpoint, name } => self.resolve(endpoint, name),
            Action::Buffer(block) => {
                self.shared.buffer().push(block);
                self.delivered = true;
            }
            Action::BufferAll(blocks) => {
                let mut buffer = self.shared.buffer();
                for block in blocks {
                    buffer.push(block);
                }
                self.delivered = true;
            }
            Action::Answer {
                caller,
                range,
                block,
            } => {
                let taken = self
                    .callers
                    .remove(&caller)
                    .is_some_and(|reply| reply.send(Ok(range)).is_ok());
                if !taken {
                    // The caller gave up; the IDs are still good.
                    self.shared.buffer().push(block);
                    self.delivered = true;
                }
            }
            Action::Layout(layout) => {
                let _ = self.shared.layout.set(layout);
            }
            Action::LastError(why) => *lock(&self.shared.last_error) = Some(why),
            Action::Fatal(fatal) => *lock(&self.shared.fatal) = fatal,
            Action::Arm(wake_below) => self.shared.buffer().arm(wake_below),
            Action::WakeWaiters => self.shared.refilled.notify_waiters(),
        }
    }

    fn connect(&mut self, id: ConnId, addr: SocketAddr, endpoint: usize) {
        let params = ConnParams {
            addr,
            hello: self.hello.clone(),
            connect_timeout: self.config.connect_timeout,
            #[cfg(feature = "tls")]
            tls: self.config.tls.as_ref().map(|tls| {
                // The name the endpoint was configured with, so a certificate for a Service
                // name matches every pod address it resolves to.
                let host = match &self.targets[endpoint] {
                    target @ Target::Name(_) => target.host(),
                    Target::Addr(_) => addr.ip().to_string(),
                };
                Ok((tls.rustls_config()?, tls.name_for(&host)?))
            }),
        };
        #[cfg(not(feature = "tls"))]
        let _ = endpoint;
        let handle = conn::spawn(id, params, self.events_tx.clone());
        self.conns.insert(id, handle);
    }

    fn resolve(&mut self, index: usize, name: String) {
        let events = self.events_tx.clone();
        let limit = self.config.connect_timeout;
        tokio::spawn(async move {
            let lookup = tokio::time::timeout(limit, tokio::net::lookup_host(name.clone())).await;
            let result = match lookup {
                Ok(Ok(addrs)) => {
                    let mut seen = HashSet::new();
                    let addrs: Vec<_> = addrs.filter(|a| seen.insert(*a)).collect();
                    if addrs.is_empty() {
                        Err(Error::NoAddresses { endpoint: name })
                    } else {
                        Ok(addrs)
                    }
                }
                Ok(Err(e)) => Err(Error::Resolve {
                    endpoint: name,
                    source: e.into(),
                }),
                Err(_) => Err(Error::Resolve {
                    endpoint: name,
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {limit:?}"),
                    )
                    .into(),
                }),
            };
            let _ = events.send(Event::Resolved(index, result)).await;
        });
    }
}
