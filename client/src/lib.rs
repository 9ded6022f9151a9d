//! snowlease: unique, time-sortable 64-bit IDs leased from a server in blocks.
//!
//! # Quick start
//! Point a [`Client`] at the servers' lease port (7609; the admin port 7610 is HTTP), or at
//! a name that resolves to all of them, such as a Kubernetes headless Service, and draw IDs:
//! ```no_run
//! use snowlease::{Client, ClientConfig};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), snowlease::Error> {
//!     let client = Client::connect(ClientConfig::new(["snowlease-headless.snowlease.svc:7609"])).await?;
//!     let id = client.next_id().await?; // from the local buffer: no round trip
//!     let parts = client.decode(id); // time, worker and sequence
//!     println!("{id} = {parts}");
//!     let batch = client.next_ids(1000).await?; // 1,000 unique IDs
//!     assert_eq!(batch.len(), 1000);
//!     client.close().await;
//!     Ok(())
//! }
//! ```
//! Without a tokio runtime, [`BlockingClient`] does the same from plain threads. Clones of a
//! client share one buffer; [`ClientConfig`] documents the settings, failover and what
//! happens when servers go silent.
//!
//! For millions of IDs per second, take whole ranges with [`Client::lease_bulk`] instead of
//! one ID at a time; the client then asks servers with bulk leases (protocol version 2) on
//! its own, one request for many milliseconds of every worker a server holds:
//! ```no_run
//! # async fn f(client: snowlease::Client) -> Result<(), snowlease::Error> {
//! for range in client.lease_bulk(1_000_000).await? {
//!     // `range.count` consecutive IDs from `range.first`, one tick of one worker.
//!     for id in range {
//!         let _ = id;
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`layout`] and [`wire`] are pure: bit arithmetic and the frame codec, no I/O. They live in
//!   the crate `snowlease-proto` (re-exported here unchanged), which the server, snowcat and
//!   the fuzz targets share without compiling this client.
//! - [`codec`] adapts the wire functions to tokio-util's `Decoder`/`Encoder`.
//! - [`client`] is the buffered client: a background task leases blocks over TCP ahead of
//!   demand and [`Client::next_id`] pops from a local buffer; optionally over TLS
//!   ([`client::TlsOptions`], feature `tls`, on by default).

pub mod client;
pub mod codec;

pub use snowlease_proto::{layout, wire};

pub use client::{BlockingClient, Client, ClientConfig, Error, IdRange};
pub use layout::{Layout, Parts};
/// The TLS stack the client speaks (feature `tls`), re-exported so callers build
/// [`client::TlsOptions::config`] and connectors against the same versions.
#[cfg(feature = "tls")]
pub use tokio_rustls::{self, rustls};
