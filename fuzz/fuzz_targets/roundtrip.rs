//! Frames of the codec's own types, encoded back to back and decoded from arbitrary reads.
//!
//! Body and checks: `snowlease_fuzz::roundtrip::run`. This file picks the engine: AFL++ with
//! `--no-default-features --features afl`, libFuzzer (cargo-fuzz) by default.

#![cfg_attr(feature = "libfuzzer", no_main)]

snowlease_fuzz::fuzz_entry!(snowlease_fuzz::roundtrip::run);
