//! snowlease-server: unique, time-sortable 64-bit IDs leased in blocks over TCP.
//!
//! # Layout
//! Start-up and the threads it starts:
//! - [`start`](mod@start) (module `start`): the order of start-up and shutdown, and [`RunningServer`].
//! - [`listen`]: the sockets, all bound before anything is written.
//! - [`cores`]: one `current_thread` runtime per core and its accept loop; [`peers`]: the
//!   per-peer connection cap it applies.
//! - [`housekeeping`]: the admin thread (HTTP, clock resync, file reloads) and the persister.
//!
//! What they share and how an ID is made:
//! - [`shared`]: the state every thread shares, built once.
//! - [`lease`]: the one place leases wait for time and for the disk, with one deadline.
//! - [`generator`]: one lock-free generator per worker id; [`clock`]: the time it reads.
//! - [`persist`], [`state`], [`lockfile`]: the reservation ahead of issued ticks, the state
//!   file that holds it, and the lock that keeps one process per state directory.
//! - [`health`]: readiness and its reasons.
//!
//! The ports:
//! - [`conn`]: one lease connection, frames in, replies out. [`auth`] and [`tls`]: the token
//!   and TLS on the lease port.
//! - [`admin`]: the admin HTTP port. [`metrics`]: per-core counters and their exposition.
//!
//! Settings come in through [`config`]; everything that refuses a start is a [`StartError`].

pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
pub mod conn;
pub mod cores;
pub mod error;
pub mod generator;
pub mod health;
pub mod housekeeping;
pub mod lease;
pub mod listen;
pub mod lockfile;
pub mod metrics;
pub mod peers;
pub mod persist;
pub mod shared;
pub mod start;
pub mod state;
pub mod tls;

pub use config::ServerConfig;
pub use cores::TURNING_AWAY_MAX;
pub use error::StartError;
pub use listen::reuseport_listener;
pub use shared::{Shared, CLAIM_HORIZON_MS};
pub use start::{start, RunningServer};
