//! Raw bytes, cut into arbitrary reads, into the client's response decoder.
//!
//! Body and checks: `snowlease_fuzz::decode::response`. This file picks the engine: AFL++ with
//! `--no-default-features --features afl`, libFuzzer (cargo-fuzz) by default.

#![cfg_attr(feature = "libfuzzer", no_main)]

snowlease_fuzz::fuzz_entry!(snowlease_fuzz::decode::response);
