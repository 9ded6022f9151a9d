//! A blocking facade for code without a tokio runtime.
//!
//! [`BlockingClient`] owns a one-thread runtime that runs the driver and the connection tasks,
//! and a [`Client`] on it. A call first tries the buffer directly (the same fast path as the
//! async client, no runtime involved); only when the buffer is empty does it block the
//! calling thread on the runtime until the refill arrives or the timeout passes.

use std::future::Future;
use std::sync::Arc;

use tokio::runtime::Runtime;

use super::{Client, ClientConfig, Error, IdRange};
use crate::layout::{Layout, Parts};

/// Worker threads of the private runtime: 1. The driver does microseconds of work per reply
/// and connection tasks only shuttle frames, so one thread keeps up with several servers;
/// more threads would only compete with the callers for cores.
const RUNTIME_THREADS: usize = 1;

/// The blocking counterpart of [`Client`]. Clone it to share one buffer across threads.
///
/// # Panics
///
/// Methods that may wait (`connect`, `next_id` and `lease_bulk` on an empty buffer,
/// `next_ids`, `lease`, `close`) block the calling thread, which tokio forbids on an async runtime's worker
/// threads: calling them from async code panics. Use [`Client`] there (or `spawn_blocking`).
#[derive(Clone)]
pub struct BlockingClient {
    // Declared before `_runtime` so the client (and with it the driver's command channel)
    // goes first.
    client: Client,
    handle: tokio::runtime::Handle,
    _runtime: Arc<OwnedRuntime>,
}

/// Shuts the runtime down without waiting for its tasks, so dropping the last clone never
/// blocks, even from async code.
struct OwnedRuntime(Option<Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl BlockingClient {
    /// Starts the private runtime and connects; see [`Client::connect`].
    pub fn connect(config: ClientConfig) -> Result<BlockingClient, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("snowlease-client")
            .enable_all()
            .build()
            .map_err(|e| Error::Runtime(e.into()))?;
        let client = runtime.block_on(Client::connect(config))?;
        Ok(BlockingClient {
            client,
            handle: runtime.handle().clone(),
            _runtime: Arc::new(OwnedRuntime(Some(runtime))),
        })
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.handle.block_on(future)
    }

    /// Takes one ID, blocking for a refill if the buffer is empty; see [`Client::next_id`].
    pub fn next_id(&self) -> Result<u64, Error> {
        match self.client.try_next_id() {
            Some(id) => Ok(id),
            None => self.block_on(self.client.next_id()),
        }
    }

    /// Takes one ID if the buffer has one; never blocks.
    pub fn try_next_id(&self) -> Option<u64> {
        self.client.try_next_id()
    }

    /// Takes `n` IDs; see [`Client::next_ids`].
    pub fn next_ids(&self, n: usize) -> Result<Vec<u64>, Error> {
        self.block_on(self.client.next_ids(n))
    }

    /// Takes up to `max` IDs as verified ranges, blocking for a refill only if the buffer is
    /// empty; see [`Client::lease_bulk`].
    pub fn lease_bulk(&self, max: u64) -> Result<Vec<IdRange>, Error> {
        let ranges = if max > 0 {
            self.client.try_lease_bulk(max)
        } else {
            Vec::new()
        };
        if ranges.is_empty() {
            self.block_on(self.client.lease_bulk(max))
        } else {
            Ok(ranges)
        }
    }

    /// Takes up to `n` consecutive IDs; see [`Client::lease`].
    pub fn lease(&self, n: u32) -> Result<IdRange, Error> {
        self.block_on(self.client.lease(n))
    }

    /// The servers' layout.
    pub fn layout(&self) -> Layout {
        self.client.layout()
    }

    /// Takes an ID apart with the servers' layout and epoch.
    pub fn decode(&self, id: u64) -> Parts {
        self.client.decode(id)
    }

    /// Closes every connection; see [`Client::close`].
    pub fn close(&self) {
        self.block_on(self.client.close());
    }

    /// The async client underneath, sharing this one's buffer.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl std::fmt::Debug for BlockingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BlockingClient").field(&self.client).finish()
    }
}
