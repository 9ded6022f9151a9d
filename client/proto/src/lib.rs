//! snowlease-proto: the wire protocol and the ID layout, as pure functions over bytes and
//! integers. No sockets, no clocks but [`layout::unix_ms_now`], no async runtime.
//!
//! # Layout
//! - [`layout`]: the bit layout of an ID. `(tick, worker, sequence)` goes in through
//!   [`Layout::compose`], [`Parts`] come back out of [`Layout::decompose`].
//! - [`wire`]: the frame codec. Bytes from a socket go in through
//!   [`wire::decode_request`] / [`wire::decode_response`], typed frames come out; typed frames
//!   go in through `encode` and bytes come out, appended to one buffer.
//!
//! The server, the client crate `snowlease` (which re-exports both modules), snowcat and the
//! fuzz targets all build on this crate, so the boundary between protocol logic and I/O is a
//! crate boundary, as quinn draws it between `quinn-proto` and `quinn`. `protocol.md` at the
//! repository root is the authoritative description of every byte.

pub mod layout;
pub mod wire;

pub use layout::{Layout, Parts};
