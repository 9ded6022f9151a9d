//! Frames of the codec's own types, encoded back to back and decoded from arbitrary reads,
//! come back exactly.
//!
//! After the common header ([`crate::header`]: a mode byte, unused here, and the cut values)
//! the input is a list of recipes: `opcode: u8`, `len: u16` (big-endian, taken modulo 1,024,
//! so a body of 0..=1,023 bytes), `stretch: u8`, then `len` body bytes (fewer if the input
//! ends). Each recipe becomes one correctly framed frame, and whichever decoder accepts it
//! (request and response opcodes are disjoint) turns it into a `wire::Request` or a
//! `wire::Response`. The frames are therefore values of the codec's own enums, every variant
//! its decoders produce, a version 2 frame as soon as it is in the codec: there is no mirror
//! type here to keep up to date, and the fuzzer spends its time on bodies rather than on
//! finding a valid length prefix.
//!
//! A recipe with `stretch` > 0 lengthens its frame past what the wire carries, to drive the
//! encoder's two documented cuts: a HELLO token gains `2 * stretch` bytes (255 are kept), an
//! ERROR message gains `4 * stretch` copies of a character of 1 to 4 bytes (kept: the longest
//! prefix of whole characters within 1,015 bytes, computed here by walking characters rather
//! than by the encoder's boundary search).
//!
//! Checks: every request is encoded into one stream and every response into another, each
//! frame within the 1,028-byte limit and with a correct prefix; a frame that was not
//! stretched encodes to exactly the bytes it was decoded from; each stream, cut at the
//! input's cut points into reads, decodes cleanly to exactly the expected frames.

use bytes::{Bytes, BytesMut};
use snowlease_proto::wire::{
    self, Request, Response, WireError, LEN_PREFIX, MAX_ERROR_MESSAGE, MAX_FRAME_LEN, MAX_TOKEN_LEN,
};

use crate::{cut_offsets, feed, header, End, MAX_WIRE_FRAME};

/// What an ERROR message is stretched with: one character of each UTF-8 length.
const FILL: [char; 4] = ['x', 'é', '€', '𝄞'];

/// Bytes of a recipe before its body.
const RECIPE_HEAD: usize = 4;

/// One frame to send: what is encoded, what must come back, and the bytes it was decoded
/// from when it was not stretched.
struct Planned<T> {
    sent: T,
    expected: T,
    original: Option<Vec<u8>>,
}

/// The recipes of `rest` as framed bytes and their stretch.
fn recipes(mut rest: &[u8]) -> Vec<(Vec<u8>, u8)> {
    let mut out = Vec::new();
    while rest.len() >= RECIPE_HEAD {
        let opcode = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])) % MAX_FRAME_LEN as usize;
        let stretch = rest[3];
        let body = &rest[RECIPE_HEAD..][..len.min(rest.len() - RECIPE_HEAD)];
        rest = &rest[RECIPE_HEAD + body.len()..];
        let mut frame = Vec::with_capacity(LEN_PREFIX + 1 + body.len());
        frame.extend_from_slice(&(1 + body.len() as u32).to_be_bytes());
        frame.push(opcode);
        frame.extend_from_slice(body);
        out.push((frame, stretch));
    }
    out
}

/// Decodes one whole frame with `decode`: `Some` only if it took all of it.
fn decode_whole<T>(
    frame: &[u8],
    decode: fn(&mut BytesMut) -> Result<Option<T>, WireError>,
) -> Option<T> {
    let mut buf = BytesMut::from(frame);
    match decode(&mut buf) {
        Ok(Some(t)) => {
            assert!(buf.is_empty(), "a decoder left part of a whole frame");
            Some(t)
        }
        Ok(None) => panic!("a whole frame was judged incomplete"),
        Err(_) => None,
    }
}

fn plan_request(request: Request, stretch: u8, original: Vec<u8>) -> Planned<Request> {
    match request {
        Request::Hello { version, token } if stretch > 0 => {
            let mut long = token.to_vec();
            long.extend(std::iter::repeat_n(stretch, 2 * usize::from(stretch)));
            let kept = Bytes::copy_from_slice(&long[..long.len().min(MAX_TOKEN_LEN)]);
            Planned {
                sent: Request::Hello {
                    version,
                    token: long.into(),
                },
                expected: Request::Hello {
                    version,
                    token: kept,
                },
                original: None,
            }
        }
        other => Planned {
            sent: other.clone(),
            expected: other,
            original: Some(original),
        },
    }
}

/// The longest prefix of `s` that fits `max` bytes without splitting a character.
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

fn plan_response(response: Response, stretch: u8, original: Vec<u8>) -> Planned<Response> {
    match response {
        Response::Error {
            request_id,
            code,
            message,
        } if stretch > 0 => {
            let fill = FILL[usize::from(stretch & 3)];
            let mut long = message;
            long.extend(std::iter::repeat_n(fill, 4 * usize::from(stretch)));
            let kept = cut_to(&long, MAX_ERROR_MESSAGE);
            Planned {
                sent: Response::Error {
                    request_id,
                    code,
                    message: long,
                },
                expected: Response::Error {
                    request_id,
                    code,
                    message: kept,
                },
                original: None,
            }
        }
        other => Planned {
            sent: other.clone(),
            expected: other,
            original: Some(original),
        },
    }
}

/// Encodes every frame into one stream, checking each, then decodes the stream cut at
/// `raw_cuts` and checks that exactly the expected frames come back.
fn round_trip<T: PartialEq + std::fmt::Debug>(
    planned: &[Planned<T>],
    encode: impl Fn(&T, &mut BytesMut),
    decode: fn(&mut BytesMut) -> Result<Option<T>, WireError>,
    raw_cuts: &[u16],
) {
    let mut stream = BytesMut::new();
    for p in planned {
        let start = stream.len();
        encode(&p.sent, &mut stream);
        let frame = &stream[start..];
        assert!(
            frame.len() > LEN_PREFIX && frame.len() <= MAX_WIRE_FRAME,
            "{:?} encodes to {} bytes",
            p.sent,
            frame.len()
        );
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        assert_eq!(
            len as usize,
            frame.len() - LEN_PREFIX,
            "prefix of {:?}",
            p.sent
        );
        if let Some(original) = &p.original {
            assert_eq!(frame, &original[..], "{:?} re-encodes differently", p.sent);
        }
    }
    let mut got = Vec::new();
    let end = feed(
        &stream,
        &cut_offsets(raw_cuts, stream.len()),
        decode,
        |t, _| got.push(t),
    );
    assert_eq!(end, End::Clean);
    let expected: Vec<&T> = planned.iter().map(|p| &p.expected).collect();
    assert_eq!(got.iter().collect::<Vec<_>>(), expected);
}

/// The `roundtrip` target.
pub fn run(data: &[u8]) {
    let (_mode, raw_cuts, rest) = header(data);
    let mut requests = Vec::new();
    let mut responses = Vec::new();
    for (frame, stretch) in recipes(rest) {
        if let Some(r) = decode_whole(&frame, wire::decode_request) {
            requests.push(plan_request(r, stretch, frame));
        } else if let Some(r) = decode_whole(&frame, wire::decode_response) {
            responses.push(plan_response(r, stretch, frame));
        }
    }
    round_trip(&requests, Request::encode, wire::decode_request, &raw_cuts);
    round_trip(
        &responses,
        Response::encode,
        wire::decode_response,
        &raw_cuts,
    );
}
