//! Raw bytes, cut into arbitrary reads, into the server's request decoder.
//!
//! Checks the decoder contract around every call (see `snowlease_fuzz::feed`) and that every
//! frame it accepts re-encodes to exactly the bytes it came from, so no two byte strings
//! decode to the same request and nothing in a frame is silently ignored.

#![no_main]

use libfuzzer_sys::fuzz_target;
use snowlease::wire::{decode_request, MAX_TOKEN_LEN};
use snowlease_fuzz::{feed, split};

fuzz_target!(|data: &[u8]| {
    let input = split(data);
    feed(
        input.stream,
        &input.cuts,
        decode_request,
        |request, bytes| {
            if let snowlease::wire::Request::Hello { token, .. } = &request {
                assert!(token.len() <= MAX_TOKEN_LEN);
            }
            assert_eq!(
                &request.to_bytes()[..],
                bytes,
                "{request:?} re-encodes differently"
            );
        },
    );
});
