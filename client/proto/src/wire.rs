//! Wire format, versions 1 and 2: a pure codec over `BytesMut`, shared by the server, the client, snowcat and
//! the fuzz targets. No sockets, no clocks, no tokio.
//!
//! Bytes flow in through [`decode_request`] / [`decode_response`], which look at the 4-byte
//! length prefix, check it against [`MAX_FRAME_LEN`] *before* anything is buffered or
//! allocated, and then split exactly one frame off the front of the buffer. They return
//! `Ok(None)` while the frame is incomplete and `Err` when the stream is corrupt (the caller
//! answers MALFORMED and closes). Typed frames flow out through [`Request::encode`] /
//! [`Response::encode`], which append to a buffer so many replies can share one write.
//! `protocol.md` is the authoritative description of every byte here.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::layout::{Layout, LayoutError};

/// Protocol version 1, the base protocol: what a client that does not use bulk leases sends in
/// HELLO, and what a connection without HELLO speaks.
pub const VERSION: u16 = 1;
/// Protocol version 2: adds BULK_LEASE / BULK_LEASED and the worker set in WELCOME.
pub const VERSION_2: u16 = 2;
/// The highest version this codec (and the server) speaks.
pub const MAX_VERSION: u16 = VERSION_2;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Largest value the length prefix may carry (opcode + body), in either direction.
pub const MAX_FRAME_LEN: u32 = 1024;
/// Longest ERROR message: what is left of a maximal frame after opcode, request id, code and
/// message length.
pub const MAX_ERROR_MESSAGE: usize = MAX_FRAME_LEN as usize - 1 - 4 - 2 - 2;
/// Longest HELLO token (its length travels in one byte).
pub const MAX_TOKEN_LEN: usize = 255;
/// Most runs one BULK_LEASED carries: what fits in [`MAX_FRAME_LEN`] after the opcode, the
/// request id and the run count, at 12 bytes a run.
pub const MAX_RUNS: usize = (MAX_FRAME_LEN as usize - 1 - 4 - 2) / RUN_BYTES;
/// Bytes of one run in BULK_LEASED: `first_id` (u64) and `count` (u32).
pub const RUN_BYTES: usize = 12;
/// Largest count a BULK_LEASE may ask for: 2^22 IDs, about one second of one worker at its
/// ceiling. A server grants at most what its workers hold within their lead, so the limit
/// only bounds what a request may say, not what a reply carries.
pub const MAX_BULK: u32 = 1 << 22;
/// WELCOME body bytes in version 1, and in version 2 with the worker set and `max_bulk`.
const WELCOME_V1_BODY: usize = 27;
const WELCOME_V2_BODY: usize = 35;

/// Opcodes. Requests are 0x01..=0x7F; a reply is its request's opcode with the top bit set.
pub mod opcode {
    /// Client greeting: version and optional token.
    pub const HELLO: u8 = 0x01;
    /// Ask for a block of IDs.
    pub const LEASE: u8 = 0x02;
    /// Liveness and round-trip probe.
    pub const PING: u8 = 0x03;
    /// Ask for many IDs, possibly from many ticks and workers (version 2).
    pub const BULK_LEASE: u8 = 0x04;
    /// Reply to HELLO.
    pub const WELCOME: u8 = 0x81;
    /// Reply to LEASE.
    pub const LEASED: u8 = 0x82;
    /// Reply to PING.
    pub const PONG: u8 = 0x83;
    /// Reply to BULK_LEASE: runs of IDs (version 2).
    pub const BULK_LEASED: u8 = 0x84;
    /// Server is closing this connection; finish and go elsewhere.
    pub const GOAWAY: u8 = 0x8E;
    /// A request failed.
    pub const ERROR: u8 = 0x8F;
}

/// Declares the error codes once: the constant, its name, whether the server closes the
/// connection after sending it, whether retrying elsewhere can help, and its text. protocol.md's
/// table is written from this list.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal, closes: $closes:literal, retry: $retry:literal, $text:literal;)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: ErrorCode = ErrorCode($code);)*

            /// Every code this version defines.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code's name, as in protocol.md.
            pub fn name(self) -> &'static str {
                match self.0 { $($code => stringify!($name),)* _ => "UNKNOWN" }
            }

            /// A sentence saying what the code means.
            pub fn description(self) -> &'static str {
                match self.0 { $($code => $text,)* _ => "unknown error code" }
            }

            /// Whether the server closes the connection after sending this code.
            pub fn closes_connection(self) -> bool {
                match self.0 { $($code => $closes,)* _ => true }
            }

            /// Whether sending the same request again (here later, or to another server) can
            /// succeed.
            pub fn is_retryable(self) -> bool {
                match self.0 { $($code => $retry,)* _ => false }
            }
        }
    };
}

/// An ERROR frame's code. A newtype rather than an enum so codes from a newer server still
/// decode.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u16);

error_codes! {
    /// The stream is not valid protocol.
    MALFORMED = 1, closes: true, retry: false, "frame is malformed";
    /// HELLO asked for a version the server does not speak.
    UNSUPPORTED_VERSION = 2, closes: true, retry: false, "protocol version not supported";
    /// LEASE count was 0 or above max_lease.
    INVALID_COUNT = 3, closes: false, retry: false, "lease count must be between 1 and max_lease";
    /// A token is required and the first frame did not carry the right one.
    UNAUTHORIZED = 4, closes: true, retry: false, "a valid token is required";
    /// The server cannot issue IDs right now (starting, draining, layout exhausted).
    UNAVAILABLE = 5, closes: false, retry: true, "server cannot issue IDs right now";
    /// Too many connections.
    OVERLOADED = 6, closes: true, retry: true, "server is at its connection limit";
    /// A bug on the server side.
    INTERNAL = 7, closes: true, retry: true, "internal server error";
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Why a GOAWAY was sent.
pub mod goaway {
    /// The server is shutting down (SIGTERM): reconnect to another server.
    pub const SHUTDOWN: u16 = 0;
    /// No complete request arrived within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 1;
    /// The peer did not read its replies within the write timeout.
    pub const WRITE_TIMEOUT: u16 = 2;

    /// Name of a reason code.
    pub fn name(reason: u16) -> &'static str {
        match reason {
            SHUTDOWN => "SHUTDOWN",
            IDLE_TIMEOUT => "IDLE_TIMEOUT",
            WRITE_TIMEOUT => "WRITE_TIMEOUT",
            _ => "UNKNOWN",
        }
    }
}

/// A frame a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Version negotiation and authentication.
    Hello {
        /// Highest version the client speaks.
        version: u16,
        /// Shared secret, empty if none (at most 255 bytes).
        token: Bytes,
    },
    /// Ask for `count` consecutive IDs.
    Lease {
        /// Echoed in the reply so a client can match replies to requests.
        request_id: u32,
        /// How many IDs, 1..=max_lease; the reply may carry fewer.
        count: u32,
    },
    /// Echo `nonce` back.
    Ping {
        /// Any value.
        nonce: u64,
    },
    /// Ask for up to `count` IDs in runs (version 2 only).
    BulkLease {
        /// Echoed in the reply.
        request_id: u32,
        /// How many IDs, 1..=[`MAX_BULK`]; the reply may carry fewer.
        count: u32,
    },
}

impl Request {
    /// The lowest protocol version in which this request exists.
    pub fn min_version(&self) -> u16 {
        match self {
            Request::BulkLease { .. } => VERSION_2,
            _ => VERSION,
        }
    }
}

/// `count` IDs of one worker at consecutive positions `(tick, sequence)`, starting at the
/// position of `first_id`: the sequence runs to the end of its tick, then continues at
/// sequence 0 of the next tick. [`Layout::blocks`](crate::layout::Layout::blocks) expands a
/// run into blocks of consecutive integers, each inside one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Run {
    /// First ID of the run.
    pub first_id: u64,
    /// IDs in the run, at least 1.
    pub count: u32,
}

/// What a version-2 WELCOME adds: the worker ids the server process holds and its bulk limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSet {
    /// First worker id of the contiguous set.
    pub first_worker: u16,
    /// How many worker ids, at least 1.
    pub worker_count: u16,
    /// Largest count a BULK_LEASE may ask for.
    pub max_bulk: u32,
}

impl WorkerSet {
    /// Whether `worker` is one of the set.
    pub fn contains(&self, worker: u16) -> bool {
        worker >= self.first_worker
            && u32::from(worker) < u32::from(self.first_worker) + u32::from(self.worker_count)
    }
}

/// The server's description of itself, sent in reply to HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// Version both sides will speak.
    pub version: u16,
    /// This server's worker id.
    pub worker_id: u16,
    /// Epoch of the timestamp field, Unix milliseconds.
    pub epoch_unix_ms: u64,
    /// Width of the timestamp field.
    pub timestamp_bits: u8,
    /// Width of the worker field.
    pub worker_bits: u8,
    /// Width of the sequence field.
    pub sequence_bits: u8,
    /// Largest count a LEASE may ask for.
    pub max_lease: u32,
    /// Server wall clock when it sent WELCOME, Unix milliseconds.
    pub server_unix_ms: u64,
}

impl Welcome {
    /// A WELCOME announcing `layout` and its whole `max_lease`: what the server sends, and
    /// [`Welcome::layout`]'s inverse.
    pub fn announcing(
        version: u16,
        worker_id: u16,
        layout: &Layout,
        server_unix_ms: u64,
    ) -> Welcome {
        Welcome {
            version,
            worker_id,
            epoch_unix_ms: layout.epoch_unix_ms(),
            timestamp_bits: layout.timestamp_bits(),
            worker_bits: layout.worker_bits(),
            sequence_bits: layout.sequence_bits(),
            max_lease: layout.max_lease(),
            server_unix_ms,
        }
    }

    /// The layout this WELCOME announces, or why its widths make none. The codec accepts any
    /// widths; a client checks them here before it trusts a single ID.
    pub fn layout(&self) -> Result<Layout, LayoutError> {
        Layout::widths(
            self.epoch_unix_ms,
            self.timestamp_bits,
            self.worker_bits,
            self.sequence_bits,
        )
    }
}

/// A frame a server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Reply to HELLO (27-byte body): version 1.
    Welcome(Welcome),
    /// Reply to HELLO in version 2 and later (35-byte body): the version-1 fields, then the
    /// worker set and the bulk limit. The codec pairs body and version only by size; a client
    /// checks that a WELCOME naming version 2 is this one.
    WelcomeV2 {
        /// The version-1 fields.
        welcome: Welcome,
        /// The worker ids the server process holds, and its bulk limit.
        workers: WorkerSet,
    },
    /// Reply to LEASE: IDs `first_id .. first_id + count`.
    Leased {
        /// The request's id.
        request_id: u32,
        /// First ID of the block.
        first_id: u64,
        /// IDs in the block, 1..=the count asked.
        count: u32,
    },
    /// Reply to PING.
    Pong {
        /// The request's nonce.
        nonce: u64,
    },
    /// Reply to BULK_LEASE: 1..=[`MAX_RUNS`] runs.
    BulkLeased {
        /// The request's id.
        request_id: u32,
        /// The runs, in the order the server took them.
        runs: Vec<Run>,
    },
    /// The server will close this connection after this frame.
    GoAway {
        /// See [`goaway`].
        reason: u16,
    },
    /// A request failed.
    Error {
        /// The failing LEASE's request id, 0 when there is none.
        request_id: u32,
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
}

/// Why bytes could not be decoded. Every variant means the stream is corrupt: answer
/// MALFORMED (a server) or drop the connection (a client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The length prefix is above [`MAX_FRAME_LEN`].
    #[error("frame length {0} exceeds the limit of {MAX_FRAME_LEN}")]
    TooLong(u32),
    /// The length prefix is 0: there is no opcode.
    #[error("frame length 0 (a frame needs at least an opcode)")]
    Empty,
    /// No frame of this direction has this opcode.
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    /// The body does not have the size its opcode requires.
    #[error("{name} body must be {expected} bytes, got {got}")]
    BodySize {
        /// Frame name.
        name: &'static str,
        /// Bytes the opcode requires.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// An ERROR message is not UTF-8.
    #[error("ERROR message is not valid UTF-8")]
    BadUtf8,
    /// A BULK_LEASED run count outside 1..=[`MAX_RUNS`].
    #[error("BULK_LEASED run count {0} is outside 1..={MAX_RUNS}")]
    RunCount(u16),
}

/// Returns the length of the frame at the front of `src` once it is complete: `Ok(None)` if
/// more bytes are needed, `Err` if the prefix is invalid. Reserves room for the rest of the
/// frame so the next read can complete it, never more than [`MAX_FRAME_LEN`].
fn complete_frame(src: &mut BytesMut) -> Result<Option<usize>, WireError> {
    if src.len() < LEN_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
    if len == 0 {
        return Err(WireError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLong(len));
    }
    let total = LEN_PREFIX + len as usize;
    if src.len() < total {
        src.reserve(total - src.len());
        return Ok(None);
    }
    Ok(Some(total))
}

fn expect_body(name: &'static str, body: &[u8], expected: usize) -> Result<(), WireError> {
    if body.len() == expected {
        Ok(())
    } else {
        Err(WireError::BodySize {
            name,
            expected,
            got: body.len(),
        })
    }
}

/// Splits one request off the front of `src`.
pub fn decode_request(src: &mut BytesMut) -> Result<Option<Request>, WireError> {
    let Some(total) = complete_frame(src)? else {
        return Ok(None);
    };
    let opcode = src[LEN_PREFIX];
    // Validate before consuming, so a caller that reports the error still sees the frame.
    let body = &src[LEN_PREFIX + 1..total];
    match opcode {
        opcode::HELLO => {
            if body.len() < 3 || body.len() != 3 + usize::from(body[2]) {
                let expected = if body.len() < 3 {
                    3
                } else {
                    3 + usize::from(body[2])
                };
                return Err(WireError::BodySize {
                    name: "HELLO",
                    expected,
                    got: body.len(),
                });
            }
        }
        opcode::LEASE => expect_body("LEASE", body, 8)?,
        opcode::PING => expect_body("PING", body, 8)?,
        opcode::BULK_LEASE => expect_body("BULK_LEASE", body, 8)?,
        other => return Err(WireError::UnknownOpcode(other)),
    }
    let mut frame = src.split_to(total);
    frame.advance(LEN_PREFIX + 1);
    Ok(Some(match opcode {
        opcode::HELLO => {
            let version = frame.get_u16();
            frame.advance(1);
            Request::Hello {
                version,
                token: frame.freeze(),
            }
        }
        opcode::LEASE => Request::Lease {
            request_id: frame.get_u32(),
            count: frame.get_u32(),
        },
        opcode::BULK_LEASE => Request::BulkLease {
            request_id: frame.get_u32(),
            count: frame.get_u32(),
        },
        _ => Request::Ping {
            nonce: frame.get_u64(),
        },
    }))
}

/// Splits one response off the front of `src`.
pub fn decode_response(src: &mut BytesMut) -> Result<Option<Response>, WireError> {
    let Some(total) = complete_frame(src)? else {
        return Ok(None);
    };
    let opcode = src[LEN_PREFIX];
    // Validate before consuming, so a caller that reports the error still sees the frame.
    check_response_body(opcode, &src[LEN_PREFIX + 1..total])?;
    let mut f = src.split_to(total);
    f.advance(LEN_PREFIX + 1);
    Ok(Some(parse_response(opcode, f)))
}

/// Checks a server frame's body against its opcode: sizes, counts and UTF-8.
fn check_response_body(opcode: u8, body: &[u8]) -> Result<(), WireError> {
    // A u16 at `at`, or `missing` when the body is too short to hold it.
    let u16_at = |at: usize, missing: u16| {
        body.get(at..at + 2)
            .map_or(missing, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    match opcode {
        opcode::WELCOME if body.len() == WELCOME_V2_BODY => Ok(()),
        opcode::WELCOME => expect_body("WELCOME", body, WELCOME_V1_BODY),
        opcode::LEASED => expect_body("LEASED", body, 16),
        opcode::BULK_LEASED => {
            let runs = u16_at(4, 1);
            if runs == 0 || usize::from(runs) > MAX_RUNS {
                return Err(WireError::RunCount(runs));
            }
            expect_body("BULK_LEASED", body, 6 + RUN_BYTES * usize::from(runs))
        }
        opcode::PONG => expect_body("PONG", body, 8),
        opcode::GOAWAY => expect_body("GOAWAY", body, 2),
        opcode::ERROR => {
            expect_body("ERROR", body, 8 + usize::from(u16_at(6, 0)))?;
            std::str::from_utf8(&body[8..])
                .map(|_| ())
                .map_err(|_| WireError::BadUtf8)
        }
        other => Err(WireError::UnknownOpcode(other)),
    }
}

/// Reads a server frame's body, already checked by [`check_response_body`].
fn parse_response(opcode: u8, mut f: BytesMut) -> Response {
    match opcode {
        opcode::WELCOME => {
            let welcome = Welcome {
                version: f.get_u16(),
                worker_id: f.get_u16(),
                epoch_unix_ms: f.get_u64(),
                timestamp_bits: f.get_u8(),
                worker_bits: f.get_u8(),
                sequence_bits: f.get_u8(),
                max_lease: f.get_u32(),
                server_unix_ms: f.get_u64(),
            };
            if !f.has_remaining() {
                return Response::Welcome(welcome);
            }
            let workers = WorkerSet {
                first_worker: f.get_u16(),
                worker_count: f.get_u16(),
                max_bulk: f.get_u32(),
            };
            Response::WelcomeV2 { welcome, workers }
        }
        opcode::BULK_LEASED => {
            let request_id = f.get_u32();
            let n = f.get_u16();
            let runs = (0..n)
                .map(|_| Run {
                    first_id: f.get_u64(),
                    count: f.get_u32(),
                })
                .collect();
            Response::BulkLeased { request_id, runs }
        }
        opcode::LEASED => Response::Leased {
            request_id: f.get_u32(),
            first_id: f.get_u64(),
            count: f.get_u32(),
        },
        opcode::PONG => Response::Pong { nonce: f.get_u64() },
        opcode::GOAWAY => Response::GoAway {
            reason: f.get_u16(),
        },
        _ => {
            let request_id = f.get_u32();
            let code = ErrorCode(f.get_u16());
            f.advance(2);
            // Checked before; lossy conversion keeps this path free of a panic regardless.
            let message = String::from_utf8_lossy(&f).into_owned();
            Response::Error {
                request_id,
                code,
                message,
            }
        }
    }
}

fn put_header(dst: &mut BytesMut, body_len: usize, opcode: u8) {
    dst.reserve(LEN_PREFIX + 1 + body_len);
    dst.put_u32(1 + body_len as u32);
    dst.put_u8(opcode);
}

impl Request {
    /// Appends the frame to `dst`. A token longer than [`MAX_TOKEN_LEN`] is cut to that length.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Request::Hello { version, token } => {
                let token = &token[..token.len().min(MAX_TOKEN_LEN)];
                put_header(dst, 3 + token.len(), opcode::HELLO);
                dst.put_u16(*version);
                dst.put_u8(token.len() as u8);
                dst.put_slice(token);
            }
            Request::Lease { request_id, count } => {
                put_header(dst, 8, opcode::LEASE);
                dst.put_u32(*request_id);
                dst.put_u32(*count);
            }
            Request::Ping { nonce } => {
                put_header(dst, 8, opcode::PING);
                dst.put_u64(*nonce);
            }
            Request::BulkLease { request_id, count } => {
                put_header(dst, 8, opcode::BULK_LEASE);
                dst.put_u32(*request_id);
                dst.put_u32(*count);
            }
        }
    }

    /// The frame as bytes.
    pub fn to_bytes(&self) -> BytesMut {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b
    }
}

impl Response {
    /// Appends the frame to `dst`. An ERROR message longer than [`MAX_ERROR_MESSAGE`] is cut
    /// at a character boundary so the frame stays within [`MAX_FRAME_LEN`]; runs beyond
    /// [`MAX_RUNS`] are cut.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Response::Welcome(w) => encode_welcome(dst, w, None),
            Response::WelcomeV2 { welcome, workers } => encode_welcome(dst, welcome, Some(workers)),
            Response::BulkLeased { request_id, runs } => {
                encode_bulk_leased(dst, *request_id, runs);
            }
            Response::Leased {
                request_id,
                first_id,
                count,
            } => encode_leased(dst, *request_id, *first_id, *count),
            Response::Pong { nonce } => {
                put_header(dst, 8, opcode::PONG);
                dst.put_u64(*nonce);
            }
            Response::GoAway { reason } => {
                put_header(dst, 2, opcode::GOAWAY);
                dst.put_u16(*reason);
            }
            Response::Error {
                request_id,
                code,
                message,
            } => encode_error(dst, *request_id, *code, message),
        }
    }

    /// The frame as bytes.
    pub fn to_bytes(&self) -> BytesMut {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b
    }
}

fn encode_welcome(dst: &mut BytesMut, w: &Welcome, workers: Option<&WorkerSet>) {
    let body = if workers.is_some() {
        WELCOME_V2_BODY
    } else {
        WELCOME_V1_BODY
    };
    put_header(dst, body, opcode::WELCOME);
    dst.put_u16(w.version);
    dst.put_u16(w.worker_id);
    dst.put_u64(w.epoch_unix_ms);
    dst.put_u8(w.timestamp_bits);
    dst.put_u8(w.worker_bits);
    dst.put_u8(w.sequence_bits);
    dst.put_u32(w.max_lease);
    dst.put_u64(w.server_unix_ms);
    if let Some(set) = workers {
        dst.put_u16(set.first_worker);
        dst.put_u16(set.worker_count);
        dst.put_u32(set.max_bulk);
    }
}

/// Appends a LEASED frame without building a [`Response`] first (the server's hot path).
pub fn encode_leased(dst: &mut BytesMut, request_id: u32, first_id: u64, count: u32) {
    put_header(dst, 16, opcode::LEASED);
    dst.put_u32(request_id);
    dst.put_u64(first_id);
    dst.put_u32(count);
}

/// Appends a BULK_LEASED frame carrying the first [`MAX_RUNS`] of `runs` (at least one run
/// must be given; an empty slice encodes a frame the decoder refuses, so callers never pass
/// one).
pub fn encode_bulk_leased(dst: &mut BytesMut, request_id: u32, runs: &[Run]) {
    let runs = &runs[..runs.len().min(MAX_RUNS)];
    put_header(dst, 6 + RUN_BYTES * runs.len(), opcode::BULK_LEASED);
    dst.put_u32(request_id);
    dst.put_u16(runs.len() as u16);
    for run in runs {
        dst.put_u64(run.first_id);
        dst.put_u32(run.count);
    }
}

/// Appends an ERROR frame, cutting `message` to fit.
pub fn encode_error(dst: &mut BytesMut, request_id: u32, code: ErrorCode, message: &str) {
    let mut end = message.len().min(MAX_ERROR_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message[..end];
    put_header(dst, 8 + message.len(), opcode::ERROR);
    dst.put_u32(request_id);
    dst.put_u16(code.0);
    dst.put_u16(message.len() as u16);
    dst.put_slice(message.as_bytes());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn lease_request_has_the_documented_bytes() {
        let b = Request::Lease {
            request_id: 7,
            count: 4096,
        }
        .to_bytes();
        assert_eq!(hex(&b), "00000009020000000700001000");
    }

    #[test]
    fn a_welcome_announcing_a_layout_yields_that_layout_and_bad_widths_none() {
        let custom = Layout::widths(1_000, 39, 8, 16).unwrap();
        for layout in [Layout::DEFAULT, custom] {
            let w = Welcome::announcing(2, 9, &layout, 5);
            assert_eq!((w.version, w.worker_id, w.server_unix_ms), (2, 9, 5));
            assert_eq!(w.max_lease, layout.max_lease());
            assert_eq!(w.layout(), Ok(layout));
        }
        let mut bad = Welcome::announcing(1, 9, &Layout::DEFAULT, 5);
        bad.sequence_bits = 11;
        assert!(bad.layout().is_err(), "widths summing to 62 bits");
    }

    #[test]
    fn welcome_has_the_documented_bytes() {
        let w = Welcome::announcing(1, 7, &Layout::DEFAULT, 1_764_288_000_000);
        let b = Response::Welcome(w).to_bytes();
        assert_eq!(
            hex(&b),
            "0000001c81000100070000018cc251f400290a0c000010000000019ac7c27000"
        );
    }

    #[test]
    fn a_frame_split_into_single_bytes_decodes_once_complete() {
        let whole = Request::Ping { nonce: 0xdead_beef }.to_bytes();
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            assert_eq!(decode_request(&mut buf), Ok(None), "early at byte {i}");
            buf.put_u8(*byte);
        }
        assert_eq!(
            decode_request(&mut buf),
            Ok(Some(Request::Ping { nonce: 0xdead_beef }))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(decode_request(&mut buf), Err(WireError::TooLong(u32::MAX)));
        assert!(buf.capacity() < 64);
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert_eq!(decode_request(&mut buf), Err(WireError::Empty));
    }

    #[test]
    fn wrong_body_sizes_and_unknown_opcodes_are_malformed() {
        let mut buf = BytesMut::from(&[0, 0, 0, 5, opcode::LEASE, 0, 0, 0, 1][..]);
        assert!(matches!(
            decode_request(&mut buf),
            Err(WireError::BodySize {
                name: "LEASE",
                expected: 8,
                got: 4
            })
        ));
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0x42][..]);
        assert_eq!(
            decode_request(&mut buf),
            Err(WireError::UnknownOpcode(0x42))
        );
        // A reply opcode is not a request.
        let mut buf = BytesMut::from(&[0, 0, 0, 9, opcode::LEASED, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(
            decode_request(&mut buf),
            Err(WireError::UnknownOpcode(0x82))
        );
        // HELLO whose token length disagrees with the frame.
        let mut buf = BytesMut::from(&[0, 0, 0, 5, opcode::HELLO, 0, 1, 3, b'a'][..]);
        assert!(decode_request(&mut buf).is_err());
    }

    #[test]
    fn error_messages_are_cut_to_fit_a_frame() {
        let long = "é".repeat(2000);
        let b = Response::Error {
            request_id: 1,
            code: ErrorCode::INTERNAL,
            message: long,
        }
        .to_bytes();
        assert!(b.len() <= LEN_PREFIX + MAX_FRAME_LEN as usize);
        let mut buf = b;
        let Ok(Some(Response::Error { message, .. })) = decode_response(&mut buf) else {
            panic!("did not decode");
        };
        assert_eq!(message.len(), MAX_ERROR_MESSAGE - 1);
    }

    #[test]
    fn every_error_code_has_a_name_and_text() {
        for code in ErrorCode::ALL {
            assert_ne!(code.name(), "UNKNOWN");
            assert!(!code.description().is_empty());
        }
        assert_eq!(ErrorCode(99).name(), "UNKNOWN");
        assert!(!ErrorCode::INVALID_COUNT.closes_connection());
        assert!(ErrorCode::MALFORMED.closes_connection());
    }

    #[test]
    fn a_version_2_welcome_carries_the_worker_set_and_a_version_1_one_does_not() {
        let welcome = Welcome::announcing(2, 64, &Layout::DEFAULT, 1_764_288_000_000);
        let v2 = Response::WelcomeV2 {
            welcome,
            workers: WorkerSet {
                first_worker: 64,
                worker_count: 32,
                max_bulk: MAX_BULK,
            },
        };
        let b = v2.to_bytes();
        assert_eq!(b.len(), 4 + 1 + 35);
        assert_eq!(hex(&b[b.len() - 8..]), "0040002000400000");
        let mut buf = b.clone();
        assert_eq!(decode_response(&mut buf), Ok(Some(v2)));
        assert_eq!(Response::Welcome(welcome).to_bytes().len(), 4 + 1 + 27);
        // Any other body size is malformed.
        let mut odd = b.clone();
        odd.truncate(4 + 1 + 30);
        odd[3] = 31;
        assert!(matches!(
            decode_response(&mut odd),
            Err(WireError::BodySize {
                name: "WELCOME",
                ..
            })
        ));
        assert!(WorkerSet {
            first_worker: 64,
            worker_count: 32,
            max_bulk: 1
        }
        .contains(95));
    }

    #[test]
    fn bulk_leased_run_counts_outside_the_limit_are_malformed() {
        let run = Run {
            first_id: 1,
            count: 2,
        };
        let mut buf = Response::BulkLeased {
            request_id: 9,
            runs: vec![run; 3],
        }
        .to_bytes();
        assert_eq!(buf.len(), 4 + 1 + 6 + 36);
        assert_eq!(
            decode_response(&mut buf),
            Ok(Some(Response::BulkLeased {
                request_id: 9,
                runs: vec![run; 3]
            }))
        );
        let mut zero = BytesMut::from(&[0, 0, 0, 7, opcode::BULK_LEASED, 0, 0, 0, 9, 0, 0][..]);
        assert_eq!(decode_response(&mut zero), Err(WireError::RunCount(0)));
        let mut many = BytesMut::from(&[0, 0, 0, 7, opcode::BULK_LEASED, 0, 0, 0, 9, 0, 85][..]);
        assert_eq!(decode_response(&mut many), Err(WireError::RunCount(85)));
        // More runs than fit are cut at MAX_RUNS, so the frame stays within the limit.
        let long = Response::BulkLeased {
            request_id: 1,
            runs: vec![run; 200],
        }
        .to_bytes();
        assert!(long.len() <= LEN_PREFIX + MAX_FRAME_LEN as usize);
        assert_eq!(MAX_RUNS, 84);
    }

    fn any_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (
                any::<u16>(),
                proptest::collection::vec(any::<u8>(), 0..=255)
            )
                .prop_map(|(version, token)| Request::Hello {
                    version,
                    token: Bytes::from(token)
                }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(request_id, count)| Request::Lease { request_id, count }),
            any::<u64>().prop_map(|nonce| Request::Ping { nonce }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(request_id, count)| Request::BulkLease { request_id, count }),
        ]
    }

    fn any_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            (
                any::<(u16, u16, u64, u8, u8, u8)>(),
                any::<u32>(),
                any::<u64>(),
                proptest::option::of(any::<(u16, u16, u32)>()),
            )
                .prop_map(
                    |((version, worker_id, epoch_unix_ms, t, w, s), max_lease, now, set)| {
                        let welcome = Welcome {
                            version,
                            worker_id,
                            epoch_unix_ms,
                            timestamp_bits: t,
                            worker_bits: w,
                            sequence_bits: s,
                            max_lease,
                            server_unix_ms: now,
                        };
                        match set {
                            None => Response::Welcome(welcome),
                            Some((first_worker, worker_count, max_bulk)) => Response::WelcomeV2 {
                                welcome,
                                workers: WorkerSet {
                                    first_worker,
                                    worker_count,
                                    max_bulk,
                                },
                            },
                        }
                    }
                ),
            (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(|(request_id, first_id, count)| {
                Response::Leased {
                    request_id,
                    first_id,
                    count,
                }
            }),
            any::<u64>().prop_map(|nonce| Response::Pong { nonce }),
            (
                any::<u32>(),
                proptest::collection::vec(any::<(u64, u32)>(), 1..=MAX_RUNS)
            )
                .prop_map(|(request_id, runs)| Response::BulkLeased {
                    request_id,
                    runs: runs
                        .into_iter()
                        .map(|(first_id, count)| Run { first_id, count })
                        .collect(),
                }),
            any::<u16>().prop_map(|reason| Response::GoAway { reason }),
            (any::<u32>(), any::<u16>(), ".{0,300}").prop_map(|(request_id, code, message)| {
                let mut message: String = message;
                while message.len() > MAX_ERROR_MESSAGE {
                    message.pop();
                }
                Response::Error {
                    request_id,
                    code: ErrorCode(code),
                    message,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(reqs in proptest::collection::vec(any_request(), 1..20), cut in any::<prop::sample::Index>()) {
            let mut all = BytesMut::new();
            for r in &reqs { r.encode(&mut all); }
            // Deliver in two pieces split at an arbitrary point.
            let at = cut.index(all.len() + 1);
            let mut buf = BytesMut::from(&all[..at]);
            let mut got = Vec::new();
            while let Some(r) = decode_request(&mut buf).unwrap() { got.push(r); }
            buf.extend_from_slice(&all[at..]);
            while let Some(r) = decode_request(&mut buf).unwrap() { got.push(r); }
            prop_assert_eq!(got, reqs);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn responses_round_trip(resps in proptest::collection::vec(any_response(), 1..20)) {
            let mut buf = BytesMut::new();
            for r in &resps { r.encode(&mut buf); }
            let mut got = Vec::new();
            while let Some(r) = decode_response(&mut buf).unwrap() { got.push(r); }
            prop_assert_eq!(got, resps);
        }

        #[test]
        fn arbitrary_bytes_never_panic_or_overallocate(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            for decode in [
                |b: &mut BytesMut| decode_request(b).map(|o| o.is_some()),
                |b: &mut BytesMut| decode_response(b).map(|o| o.is_some()),
            ] {
                let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
                points.push(bytes.len());
                points.sort_unstable();
                let mut buf = BytesMut::new();
                let mut fed = 0;
                'feed: for p in points {
                    buf.extend_from_slice(&bytes[fed..p]);
                    fed = p;
                    loop {
                        match decode(&mut buf) {
                            Ok(true) => continue,
                            Ok(false) => break,
                            Err(_) => break 'feed,
                        }
                    }
                    // Never holds room for more than one maximal frame beyond what it was fed.
                    prop_assert!(buf.capacity() <= bytes.len() + LEN_PREFIX + MAX_FRAME_LEN as usize);
                }
            }
        }
    }
}
