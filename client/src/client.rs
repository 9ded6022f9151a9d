//! The buffered client: IDs come from a local buffer that a background task keeps full.
//!
//! # Data flow
//! ```text
//!  callers (any tasks/threads)            driver task (one per Client)        servers
//!  next_id / next_ids / lease  --pop-->  [ Buffer: leased ranges ]  <--push--  verified
//!  lease_bulk (whole ranges)                                                    LEASED and
//!        |  below low water / empty: wake ------------>  plans LEASEs  --->  BULK_LEASED
//!        |                                               and BULK_LEASEs       replies
//!        '--- lease(n) too big for the buffer: Command ----------------->  (one conn task
//!                                                                            per server)
//! ```
//! - [`Client::next_id`] takes an ID from the shared `buffer` under a short mutex: no I/O,
//!   no clock read, nothing held across an await. Only when the buffer is empty does it wait,
//!   up to [`ClientConfig::timeout`], for the driver to refill it.
//! - [`Client::lease_bulk`] takes whole ranges under the same lock, one step per range: the
//!   path for consumers of millions of IDs per second.
//! - The `driver` task owns every connection. It estimates the draw rate (`rate`), keeps about
//!   50 ms of IDs on hand by pipelining LEASEs to all connected servers (or, on version-2
//!   connections once that needs more than one LEASE per connection, one BULK_LEASE each),
//!   checks every reply against what was asked (`verify`) and expands bulk replies into
//!   per-tick ranges, drops ranges older than `max_age`, and fails over and reconnects with
//!   jittered backoff when a server goes away.
//! - `conn` tasks do the socket I/O for one server each, and nothing else; with
//!   [`ClientConfig::tls`] (feature `tls`) inside a TLS session set up by `tls`.
//! - [`BlockingClient`] wraps a `Client` and a one-thread runtime for code without one.
//!
//! The design follows tikv/client-rust's timestamp oracle (`src/pd/timestamp.rs`): many
//! callers, one task turning their demand into few large requests, bounded requests in flight,
//! counts in each reply verified against the request.

mod blocking;
mod buffer;
mod config;
mod conn;
mod driver;
mod error;
mod rate;
mod shared;
#[cfg(feature = "tls")]
mod tls;
mod verify;

use std::fmt;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use blocking::BlockingClient;
pub use config::{
    Backoff, ClientConfig, DEFAULT_ADMIN_PORT, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX,
    DEFAULT_BUFFER_CAPACITY, DEFAULT_CONNECT_TIMEOUT, DEFAULT_LOW_WATER, DEFAULT_MAX_AGE,
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_PORT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RESOLVE_INTERVAL,
    DEFAULT_TIMEOUT, MIN_MAX_AGE, MIN_RESOLVE_INTERVAL, MIN_SILENCE,
};
pub use error::Error;
#[cfg(feature = "tls")]
pub use tls::{client_config, TlsOptions};
pub use verify::Violation;

use buffer::Buffer;
use driver::Driver;
use shared::{Command, DirectLease, Shared};

use crate::layout::{Layout, Parts};

/// `count` consecutive IDs starting at `first`, all from one server, one worker and one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdRange {
    /// The first ID.
    pub first: u64,
    /// How many IDs; at least 1.
    pub count: u32,
}

impl IdRange {
    /// One past the last ID.
    pub fn end(&self) -> u64 {
        self.first + u64::from(self.count)
    }

    /// The IDs as a range.
    pub fn ids(&self) -> Range<u64> {
        self.first..self.end()
    }
}

impl IntoIterator for IdRange {
    type Item = u64;
    type IntoIter = Range<u64>;

    fn into_iter(self) -> Range<u64> {
        self.ids()
    }
}

/// A handle to the shared buffer and its driver. Cheap to clone; every clone draws from the
/// same buffer. The driver stops when the last clone is dropped or [`Client::close`] is
/// called.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    handle: Arc<Handle>,
}

/// Owned by the clones, not by the driver, so dropping the last clone closes `commands` and
/// thereby stops the driver.
struct Handle {
    commands: mpsc::UnboundedSender<Command>,
    timeout: Duration,
}

impl Client {
    /// Resolves the endpoints, starts the driver on the current tokio runtime (which needs
    /// its time driver enabled), and returns once a server has sent WELCOME. Fails at once,
    /// with the reason, if every server refuses this client for good (bad token, wrong
    /// protocol, an HTTP port: [`Error::Server`], [`Error::Protocol`], [`Error::Tls`]) or
    /// every address refuses the TCP connection ([`Error::Connect`]: nothing listens there);
    /// and with [`Error::Unavailable`] if none answers within the timeout.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let targets = config.validate()?;
        // Files are read once here: a bad CA file is a configuration error at connect.
        #[cfg(feature = "tls")]
        let config = match &config.tls {
            Some(tls) => ClientConfig {
                tls: Some(tls.load()?),
                ..config
            },
            None => config,
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let shared = Arc::new(Shared::new());
        let (commands, receiver) = mpsc::unbounded_channel();
        let timeout = config.timeout;
        runtime.spawn(Driver::new(config, targets, Arc::clone(&shared), receiver).run());
        let client = Client {
            shared,
            handle: Arc::new(Handle { commands, timeout }),
        };
        client.wait_for_welcome().await?;
        Ok(client)
    }

    async fn wait_for_welcome(&self) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let notified = self.shared.refilled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.layout.get().is_some() {
                return Ok(());
            }
            if let Some(fatal) = self.shared.fatal() {
                return Err(fatal);
            }
            if self.shared.is_closed() || self.handle.commands.is_closed() {
                return Err(Error::Closed);
            }
            let deadline = start + self.handle.timeout;
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.unavailable(start.elapsed()));
            }
        }
    }

    /// Takes one ID, waiting for a refill if the buffer is empty. Errors with
    /// [`Error::Unavailable`] when no IDs arrive for [`ClientConfig::timeout`].
    pub async fn next_id(&self) -> Result<u64, Error> {
        match self.try_next_id() {
            Some(id) => Ok(id),
            None => self.wait_for(Buffer::pop).await,
        }
    }

    /// Takes one ID if the buffer has one; never waits. This is the whole fast path of
    /// [`Client::next_id`].
    #[inline]
    pub fn try_next_id(&self) -> Option<u64> {
        let (id, wake) = {
            let mut buffer = self.shared.buffer();
            let id = buffer.pop();
            (id, buffer.wants_refill())
        };
        if wake {
            self.shared.wake.notify_one();
        }
        id
    }

    /// Takes `n` IDs, waiting for refills as needed; the timeout restarts whenever IDs arrive.
    /// The IDs are unique but not necessarily consecutive.
    pub async fn next_ids(&self, n: usize) -> Result<Vec<u64>, Error> {
        // Do not let a huge `n` reserve memory before a single ID exists.
        let mut out = Vec::with_capacity(n.min(1 << 16));
        let (wake, done) = {
            let mut buffer = self.shared.buffer();
            buffer.take_into(&mut out, n);
            (buffer.wants_refill(), out.len() == n)
        };
        if wake {
            self.shared.wake.notify_one();
        }
        if !done {
            self.wait_for(|b| {
                b.take_into(&mut out, n);
                (out.len() == n).then_some(())
            })
            .await?;
        }
        Ok(out)
    }

    /// Takes up to `max` IDs at once, as verified ranges straight out of the buffer: the way to
    /// move millions of IDs per second through one client, which [`Client::next_id`] (one
    /// lock per ID) cannot.
    ///
    /// While the buffer holds IDs this is a memory operation under the buffer's lock, one
    /// step per range, never a round trip: it returns everything buffered up to `max`, which
    /// may be less than `max` (at least one ID). When the buffer is empty it waits for a
    /// refill like `next_id`, failing with [`Error::Unavailable`] after
    /// [`ClientConfig::timeout`] without IDs. Each [`IdRange`] is consecutive integers inside
    /// one tick of one worker (at most `max_lease`, 4,096 IDs by default); ranges of
    /// different workers and ticks follow each other in the order they were received, so the
    /// IDs are unique (with every other ID of this client and of any other client) but not
    /// sorted. `max` of 0 is [`Error::InvalidArgument`].
    ///
    /// Taking IDs counts toward the draw rate the buffer is refilled by, so a bulk consumer
    /// gets bulk leases (protocol version 2) on its own. What one client can sustain is
    /// bounded by [`ClientConfig::buffer_capacity`]: a refill asks for at most the room left,
    /// and the client refills once half of it is gone, so about half the capacity arrives per
    /// round trip. The default capacity (262,144 IDs) is sized for one server; raise it
    /// (for example to 50 ms of the rate wanted) to draw from many servers at their ceiling.
    pub async fn lease_bulk(&self, max: u64) -> Result<Vec<IdRange>, Error> {
        if max == 0 {
            return Err(Error::InvalidArgument(
                "lease_bulk needs room for at least 1 ID".into(),
            ));
        }
        let ranges = self.try_lease_bulk(max);
        if !ranges.is_empty() {
            return Ok(ranges);
        }
        self.wait_for(|b| {
            let mut ranges = Vec::new();
            (b.take_ranges(&mut ranges, max) > 0).then_some(ranges)
        })
        .await
    }

    /// Takes up to `max` IDs as ranges if the buffer has any; never waits (empty if it has
    /// none). This is the whole fast path of [`Client::lease_bulk`].
    pub fn try_lease_bulk(&self, max: u64) -> Vec<IdRange> {
        let mut ranges = Vec::new();
        let wake = {
            let mut buffer = self.shared.buffer();
            buffer.take_ranges(&mut ranges, max);
            buffer.wants_refill()
        };
        if wake {
            self.shared.wake.notify_one();
        }
        ranges
    }

    /// Takes up to `n` consecutive IDs: from the buffer if one leased range still holds
    /// `min(n, max_lease)`, otherwise straight from a server (which may return fewer, up to
    /// the end of its current tick). `n` above the server's `max_lease` (4,096 by default)
    /// is reduced to it.
    pub async fn lease(&self, n: u32) -> Result<IdRange, Error> {
        if n == 0 {
            return Err(Error::InvalidArgument(
                "lease count must be at least 1".into(),
            ));
        }
        let count = n.min(self.layout().max_lease());
        let (range, wake) = {
            let mut buffer = self.shared.buffer();
            let range = buffer.take_range(count);
            (range, buffer.wants_refill())
        };
        if wake {
            self.shared.wake.notify_one();
        }
        if let Some(range) = range {
            return Ok(range);
        }
        let (reply, answer) = oneshot::channel();
        self.handle
            .commands
            .send(Command::Lease(DirectLease { count, reply }))
            .map_err(|_| Error::Closed)?;
        match tokio::time::timeout(self.handle.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(self.unavailable(self.handle.timeout)),
        }
    }

    /// The layout announced by the servers' WELCOME (all servers must agree on it).
    pub fn layout(&self) -> Layout {
        self.shared.layout.get().copied().unwrap_or_default()
    }

    /// Takes an ID apart with the servers' layout and epoch.
    pub fn decode(&self, id: u64) -> Parts {
        self.layout().decompose(id)
    }

    /// Closes every connection and drops the buffered IDs; afterwards every call on any
    /// clone fails with [`Error::Closed`]. Returns once the driver has stopped.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let (ack, done) = oneshot::channel();
        if self.handle.commands.send(Command::Close(ack)).is_ok() {
            let _ = done.await;
        }
        self.shared.buffer().clear();
        self.shared.refilled.notify_waiters();
    }

    /// Runs `attempt` on the buffer until it yields, waking the driver and waiting for
    /// refills in between. The wait ends with [`Error::Unavailable`] once
    /// [`ClientConfig::timeout`] passes without any IDs arriving.
    async fn wait_for<T>(
        &self,
        mut attempt: impl FnMut(&mut Buffer) -> Option<T>,
    ) -> Result<T, Error> {
        let start = Instant::now();
        let mut deadline = start + self.handle.timeout;
        let mut pushed = None;
        loop {
            let notified = self.shared.refilled.notified();
            tokio::pin!(notified);
            // Register before looking, so a refill between the look and the wait is not lost.
            notified.as_mut().enable();
            let (got, now_pushed) = {
                let mut buffer = self.shared.buffer();
                (attempt(&mut buffer), buffer.pushed())
            };
            if let Some(value) = got {
                return Ok(value);
            }
            if pushed.is_some_and(|p| p != now_pushed) {
                // IDs arrived (others took them): servers are reachable, keep waiting.
                deadline = Instant::now() + self.handle.timeout;
            }
            pushed = Some(now_pushed);
            if self.shared.is_closed() || self.handle.commands.is_closed() {
                return Err(Error::Closed);
            }
            self.shared.wake.notify_one();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.unavailable(start.elapsed()));
            }
        }
    }

    fn unavailable(&self, waited: Duration) -> Error {
        let cause = match self.shared.last_error() {
            Some(e) => e.to_string(),
            None if self.shared.layout.get().is_some() => {
                "the connected servers stopped answering".to_owned()
            }
            None => "no server answered yet".to_owned(),
        };
        Error::Unavailable { waited, cause }
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("layout", &self.shared.layout.get())
            .field("available", &self.shared.buffer().available())
            .field("closed", &self.shared.is_closed())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn clients_can_be_shared_across_threads_and_tasks() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<Client>();
        shareable::<BlockingClient>();
        shareable::<Error>();
    }

    #[test]
    fn an_id_range_iterates_its_ids() {
        let r = IdRange {
            first: 10,
            count: 3,
        };
        assert_eq!(r.end(), 13);
        assert_eq!(r.into_iter().collect::<Vec<_>>(), [10, 11, 12]);
    }
}
