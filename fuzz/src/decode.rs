//! Raw bytes, cut into arbitrary reads, into the two decoders: [`request`] is what any peer
//! can send the server, [`response`] what a hostile or broken server can send a client.
//!
//! Both check the decoder contract around every call (see [`crate::feed`]) and that every
//! frame a decoder accepts re-encodes to exactly the bytes it came from, so no two byte
//! strings decode to the same frame and nothing in a frame is silently ignored. Neither names
//! an opcode: every frame the codec knows, a version 2 frame as soon as it is in the codec,
//! is reached by the fuzzer through the bytes alone.

use snowlease_proto::wire::{self, Request, Response, MAX_ERROR_MESSAGE, MAX_TOKEN_LEN};

use crate::{feed, split};

/// The `decode_request` target.
pub fn request(data: &[u8]) {
    let input = split(data);
    feed(
        input.stream,
        &input.cuts,
        wire::decode_request,
        |request, bytes| {
            if let Request::Hello { token, .. } = &request {
                assert!(token.len() <= MAX_TOKEN_LEN);
            }
            assert_eq!(
                &request.to_bytes()[..],
                bytes,
                "{request:?} re-encodes differently"
            );
        },
    );
}

/// The `decode_response` target. An ERROR message is only accepted as valid UTF-8 that fits
/// one frame.
pub fn response(data: &[u8]) {
    let input = split(data);
    feed(
        input.stream,
        &input.cuts,
        wire::decode_response,
        |response, bytes| {
            if let Response::Error { message, .. } = &response {
                assert!(message.len() <= MAX_ERROR_MESSAGE);
            }
            assert_eq!(
                &response.to_bytes()[..],
                bytes,
                "{response:?} re-encodes differently"
            );
        },
    );
}
