//! An arbitrary byte stream, cut into arbitrary writes, into the server's connection handler.
//!
//! Body and checks: `snowlease_fuzz::connection::run`. This file picks the engine: AFL++ with
//! `--no-default-features --features afl`, libFuzzer (cargo-fuzz) by default.

#![cfg_attr(feature = "libfuzzer", no_main)]

snowlease_fuzz::fuzz_entry!(snowlease_fuzz::connection::run);
