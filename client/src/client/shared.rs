//! What callers and the driver share: the buffer, the two wake-ups between them, the
//! servers' layout, and the last error; plus the commands callers send the driver.
//!
//! Callers only read and pop; the driver writes everything else. The buffer is the one lock
//! on the hot path; the other mutexes are touched on failures and timeouts only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use tokio::sync::{oneshot, Notify};

use super::buffer::Buffer;
use super::{Error, IdRange};
use crate::layout::Layout;

/// State shared by every [`Client`](super::Client) clone and the driver.
#[derive(Debug)]
pub(crate) struct Shared {
    pub buffer: Mutex<Buffer>,
    /// Callers to driver: the buffer is low or empty.
    pub wake: Notify,
    /// Driver to waiting callers: IDs arrived, a server greeted us, or the client closed.
    pub refilled: Notify,
    /// The layout of the first accepted WELCOME; every later server must match it.
    pub layout: OnceLock<Layout>,
    pub closed: AtomicBool,
    /// The most recent failure, reported to callers who time out.
    pub last_error: Mutex<Option<Error>>,
    /// Set while every server refuses us for a reason that retrying cannot fix.
    pub fatal: Mutex<Option<Error>>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            buffer: Mutex::new(Buffer::new()),
            wake: Notify::new(),
            refilled: Notify::new(),
            layout: OnceLock::new(),
            closed: AtomicBool::new(false),
            last_error: Mutex::new(None),
            fatal: Mutex::new(None),
        }
    }

    /// The buffer. Nothing panics while holding it, so a poisoned lock still holds a
    /// consistent buffer.
    #[inline]
    pub fn buffer(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn last_error(&self) -> Option<Error> {
        lock(&self.last_error).clone()
    }

    pub fn fatal(&self) -> Option<Error> {
        lock(&self.fatal).clone()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A caller asking for one contiguous range straight from a server.
#[derive(Debug)]
pub(crate) struct DirectLease {
    pub count: u32,
    pub reply: oneshot::Sender<Result<IdRange, Error>>,
}

/// Requests from callers that need the driver's attention.
#[derive(Debug)]
pub(crate) enum Command {
    Lease(DirectLease),
    /// Close every connection, empty the buffer, then acknowledge.
    Close(oneshot::Sender<()>),
}
