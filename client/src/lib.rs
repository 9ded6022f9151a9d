//! snowlease: unique, time-sortable 64-bit IDs leased from a server in blocks.
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
