//! Raw bytes, cut into arbitrary reads, into the client's response decoder: what a hostile or
//! broken server could send a client.
//!
//! Checks the decoder contract around every call (see `snowlease_fuzz::feed`) and that every
//! frame it accepts re-encodes to exactly the bytes it came from (an ERROR message is only
//! accepted as valid UTF-8 that fits one frame).

#![no_main]

use libfuzzer_sys::fuzz_target;
use snowlease::wire::{decode_response, Response, MAX_ERROR_MESSAGE};
use snowlease_fuzz::{feed, split};

fuzz_target!(|data: &[u8]| {
    let input = split(data);
    feed(
        input.stream,
        &input.cuts,
        decode_response,
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
});
