//! Structured frames, encoded back to back and decoded from arbitrary reads, come back exactly.
//!
//! The fuzzer builds mirror enums (derived `Arbitrary`, so any field value is reachable) that
//! turn into `Request`s and `Response`s. Each is encoded into one stream; the stream is cut at
//! arbitrary points and decoded. The decoded frames must equal the originals after the two
//! documented cuts the encoder makes: a HELLO token past 255 bytes and an ERROR message past
//! 1015 bytes (at a character boundary). Every encoded frame must fit the frame limit.

#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use snowlease::wire::{
    decode_request, decode_response, ErrorCode, Request, Response, Welcome, LEN_PREFIX,
    MAX_ERROR_MESSAGE, MAX_TOKEN_LEN,
};
use snowlease_fuzz::{feed, End, MAX_WIRE_FRAME};

#[derive(Debug, Arbitrary)]
enum Req {
    Hello { version: u16, token: Vec<u8> },
    Lease { request_id: u32, count: u32 },
    Ping { nonce: u64 },
}

#[derive(Debug, Arbitrary)]
enum Resp {
    Welcome {
        version: u16,
        worker_id: u16,
        epoch_unix_ms: u64,
        bits: (u8, u8, u8),
        max_lease: u32,
        server_unix_ms: u64,
    },
    Leased {
        request_id: u32,
        first_id: u64,
        count: u32,
    },
    Pong {
        nonce: u64,
    },
    GoAway {
        reason: u16,
    },
    Error {
        request_id: u32,
        code: u16,
        message: String,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    requests: Vec<Req>,
    responses: Vec<Resp>,
    cuts: Vec<u16>,
}

impl Req {
    /// The request to encode, and what decoding it must give back.
    fn build(&self) -> (Request, Request) {
        match self {
            Req::Hello { version, token } => {
                let kept = &token[..token.len().min(MAX_TOKEN_LEN)];
                let hello = |t: &[u8]| Request::Hello {
                    version: *version,
                    token: Bytes::copy_from_slice(t),
                };
                (hello(token), hello(kept))
            }
            Req::Lease { request_id, count } => {
                let r = Request::Lease {
                    request_id: *request_id,
                    count: *count,
                };
                (r.clone(), r)
            }
            Req::Ping { nonce } => (
                Request::Ping { nonce: *nonce },
                Request::Ping { nonce: *nonce },
            ),
        }
    }
}

/// The longest prefix of `s` that fits `max` bytes without splitting a character, computed
/// by walking characters rather than the encoder's boundary search.
fn cut_to(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

impl Resp {
    fn build(&self) -> (Response, Response) {
        let r = match self {
            Resp::Welcome {
                version,
                worker_id,
                epoch_unix_ms,
                bits,
                max_lease,
                server_unix_ms,
            } => Response::Welcome(Welcome {
                version: *version,
                worker_id: *worker_id,
                epoch_unix_ms: *epoch_unix_ms,
                timestamp_bits: bits.0,
                worker_bits: bits.1,
                sequence_bits: bits.2,
                max_lease: *max_lease,
                server_unix_ms: *server_unix_ms,
            }),
            Resp::Leased {
                request_id,
                first_id,
                count,
            } => Response::Leased {
                request_id: *request_id,
                first_id: *first_id,
                count: *count,
            },
            Resp::Pong { nonce } => Response::Pong { nonce: *nonce },
            Resp::GoAway { reason } => Response::GoAway { reason: *reason },
            Resp::Error {
                request_id,
                code,
                message,
            } => {
                let error = |m: String| Response::Error {
                    request_id: *request_id,
                    code: ErrorCode(*code),
                    message: m,
                };
                return (
                    error(message.clone()),
                    error(cut_to(message, MAX_ERROR_MESSAGE)),
                );
            }
        };
        (r.clone(), r)
    }
}

/// Appends `frame` via `encode` and checks the bytes it added form one frame within the limit.
fn encode_one(stream: &mut BytesMut, encode: impl FnOnce(&mut BytesMut)) {
    let start = stream.len();
    encode(stream);
    let frame = &stream[start..];
    assert!(frame.len() > LEN_PREFIX && frame.len() <= MAX_WIRE_FRAME);
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
    assert_eq!(len as usize, frame.len() - LEN_PREFIX);
}

fn sorted_cuts(cuts: &[u16], len: usize) -> Vec<usize> {
    let mut c: Vec<usize> = cuts.iter().map(|&c| usize::from(c) % (len + 1)).collect();
    c.sort_unstable();
    c
}

fuzz_target!(|input: Input| {
    let (sent, expected): (Vec<Request>, Vec<Request>) =
        input.requests.iter().map(Req::build).unzip();
    let mut stream = BytesMut::new();
    for r in &sent {
        encode_one(&mut stream, |b| r.encode(b));
    }
    let mut got = Vec::new();
    let end = feed(
        &stream,
        &sorted_cuts(&input.cuts, stream.len()),
        decode_request,
        |r, _| got.push(r),
    );
    assert_eq!(end, End::Clean);
    assert_eq!(got, expected);

    let (sent, expected): (Vec<Response>, Vec<Response>) =
        input.responses.iter().map(Resp::build).unzip();
    let mut stream = BytesMut::new();
    for r in &sent {
        encode_one(&mut stream, |b| r.encode(b));
    }
    let mut got = Vec::new();
    let end = feed(
        &stream,
        &sorted_cuts(&input.cuts, stream.len()),
        decode_response,
        |r, _| got.push(r),
    );
    assert_eq!(end, End::Clean);
    assert_eq!(got, expected);
});
