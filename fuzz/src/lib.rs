//! The fuzz targets of snowlease, one body each, and the helpers they share.
//!
//! Each target is a plain function over the fuzzer's bytes ([`decode::request`],
//! [`decode::response`], [`roundtrip::run`], [`connection::run`]) that panics on a finding.
//! The files in `fuzz_targets/` only hand those bytes over, through [`fuzz_entry!`]: to
//! AFL++ (`cargo afl build --no-default-features --features afl`, stable Rust, what
//! `run.sh` and CI use) or to libFuzzer (`cargo +nightly fuzz`, the default features), so
//! both engines fuzz the same code and share one corpus format.
//!
//! An input becomes a byte stream plus the points where it is cut into reads ([`split`]), so
//! one corpus entry exercises both the frames and every way TCP may deliver them. [`feed`]
//! pushes such a stream through a decoder read by read and checks, around every call, what
//! the decoder may do to the buffer: consume exactly one whole frame or nothing, never grow
//! the buffer by more than one maximal frame (a length prefix of 4 GiB must cost nothing),
//! and refuse a bad prefix before reserving anything.

#[cfg(all(feature = "afl", feature = "libfuzzer"))]
compile_error!("pick one fuzzing engine: AFL++ builds with `--no-default-features --features afl`");

pub mod connection;
pub mod decode;
pub mod roundtrip;

/// The `main` of a fuzz target binary: hands each input to `$body` (a `fn(&[u8])`) under the
/// engine the build selected. Under AFL++ a binary run outside `afl-fuzz` reads one input
/// from stdin, so `target/debug/connection < crash-file` replays a finding.
#[macro_export]
macro_rules! fuzz_entry {
    ($body:path) => {
        #[cfg(feature = "libfuzzer")]
        ::libfuzzer_sys::fuzz_target!(|data: &[u8]| $body(data));

        #[cfg(feature = "afl")]
        fn main() {
            ::afl::fuzz!(|data: &[u8]| $body(data));
        }

        #[cfg(not(any(feature = "afl", feature = "libfuzzer")))]
        fn main() {
            compile_error!("enable the feature of one fuzzing engine: afl or libfuzzer");
        }
    };
}

use bytes::BytesMut;
use snowlease_proto::wire::{WireError, LEN_PREFIX, MAX_FRAME_LEN};

/// The largest frame on the wire: prefix plus the longest opcode and body.
pub const MAX_WIRE_FRAME: usize = LEN_PREFIX + MAX_FRAME_LEN as usize;

/// Most cuts taken from one input: enough to split a frame inside its prefix, its body and
/// across its neighbour, few enough that the header stays short for the mutator.
const MAX_CUTS: usize = 7;

/// One fuzz input, decoded.
#[derive(Debug)]
pub struct Split<'a> {
    /// Flags the target interprets (first input byte).
    pub mode: u8,
    /// Where the stream is cut into separate reads: sorted offsets within the stream.
    pub cuts: Vec<usize>,
    /// The bytes a peer sends.
    pub stream: &'a [u8],
}

/// Reads an input's header: `mode`, `cut_count` (low 3 bits), `cut_count` big-endian u16
/// values. Returns the mode, the raw cut values and the rest of the input. Short inputs
/// simply get fewer cuts; every input is valid.
pub fn header(data: &[u8]) -> (u8, Vec<u16>, &[u8]) {
    let mode = data.first().copied().unwrap_or(0);
    let wanted = data.get(1).map_or(0, |b| usize::from(b & 7)).min(MAX_CUTS);
    let rest = data.get(2..).unwrap_or(&[]);
    let cuts_bytes = (wanted * 2).min(rest.len() & !1);
    let (cuts, rest) = rest.split_at(cuts_bytes);
    let cuts = cuts
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    (mode, cuts, rest)
}

/// Raw cut values as sorted offsets inside a stream of `len` bytes.
pub fn cut_offsets(raw: &[u16], len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.iter().map(|&c| usize::from(c) % (len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

/// Reads an input as [`header`], then the stream.
pub fn split(data: &[u8]) -> Split<'_> {
    let (mode, raw, stream) = header(data);
    Split {
        mode,
        cuts: cut_offsets(&raw, stream.len()),
        stream,
    }
}

/// The stream cut at `cuts` (sorted offsets), as the reads a peer would see.
pub fn chunks<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for &at in cuts.iter().chain(std::iter::once(&stream.len())) {
        out.push(&stream[from..at]);
        from = at;
    }
    out
}

/// How a stream fed through [`feed`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Every byte was consumed as whole frames.
    Clean,
    /// The stream ended inside a frame (this many bytes were left over).
    Partial(usize),
    /// The decoder called the stream corrupt.
    Corrupt(WireError),
}

/// The length prefix at the front of `buf`, once its four bytes are there.
fn declared(buf: &[u8]) -> Option<u32> {
    let p: [u8; 4] = buf.get(..LEN_PREFIX)?.try_into().ok()?;
    Some(u32::from_be_bytes(p))
}

/// Feeds `stream` to `decode` one chunk at a time, decoding every complete frame after each
/// chunk, and hands each frame with the exact bytes it was decoded from to `on_frame`.
/// Panics (a fuzz finding) if the decoder breaks its contract; see the module docs.
pub fn feed<T>(
    stream: &[u8],
    cuts: &[usize],
    decode: impl Fn(&mut BytesMut) -> Result<Option<T>, WireError>,
    mut on_frame: impl FnMut(T, &[u8]),
) -> End {
    let mut buf = BytesMut::new();
    let mut fed = 0usize;
    for chunk in chunks(stream, cuts) {
        buf.extend_from_slice(chunk);
        fed += chunk.len();
        loop {
            let before = buf.clone();
            let cap_before = buf.capacity();
            let result = decode(&mut buf);
            // Growth is bounded by what was fed plus one maximal frame, whatever the prefix says.
            let bound = cap_before.max(2 * (fed + MAX_WIRE_FRAME));
            assert!(
                buf.capacity() <= bound,
                "decoder grew the buffer to {} (bound {bound}) for prefix {:?}",
                buf.capacity(),
                declared(&before)
            );
            match result {
                Ok(Some(frame)) => {
                    let used = before.len() - buf.len();
                    let len = declared(&before).expect("a frame has a prefix");
                    assert_eq!(
                        used,
                        LEN_PREFIX + len as usize,
                        "consumed exactly one frame"
                    );
                    assert!((1..=MAX_FRAME_LEN).contains(&len));
                    assert_eq!(&buf[..], &before[used..], "the rest is left untouched");
                    on_frame(frame, &before[..used]);
                }
                Ok(None) => {
                    assert_eq!(buf, before, "an incomplete frame is left in place");
                    if let Some(len) = declared(&buf) {
                        assert!(
                            (1..=MAX_FRAME_LEN).contains(&len),
                            "bad prefix {len} not refused"
                        );
                        assert!(
                            buf.len() < LEN_PREFIX + len as usize,
                            "a whole frame was left"
                        );
                    }
                    break;
                }
                Err(e) => {
                    assert_eq!(
                        buf, before,
                        "a refused frame is left for the caller to report"
                    );
                    assert_eq!(
                        buf.capacity(),
                        cap_before,
                        "nothing reserved for a refused frame"
                    );
                    let len = declared(&buf).expect("only a prefix can be refused");
                    match &e {
                        WireError::Empty => assert_eq!(len, 0),
                        WireError::TooLong(n) => {
                            assert_eq!(*n, len);
                            assert!(len > MAX_FRAME_LEN);
                        }
                        _ => assert!(buf.len() >= LEN_PREFIX + len as usize, "judged early"),
                    }
                    return End::Corrupt(e);
                }
            }
        }
    }
    if buf.is_empty() {
        End::Clean
    } else {
        End::Partial(buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_committed_input_passes_its_target() {
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        type Body = fn(&[u8]);
        let targets: [(&str, Body); 4] = [
            ("decode_request", decode::request),
            ("decode_response", decode::response),
            ("roundtrip", roundtrip::run),
            ("connection", connection::run),
        ];
        for (name, body) in targets {
            let mut n = 0;
            for dir in ["seeds", "found"] {
                let Ok(entries) = std::fs::read_dir(here.join(dir).join(name)) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.expect("a directory entry").path();
                    body(&std::fs::read(&path).expect("a readable input"));
                    n += 1;
                }
            }
            assert!(n > 0, "{name} has seeds");
        }
    }

    #[test]
    fn a_short_input_is_all_stream_and_cuts_stay_inside_it() {
        let s = split(&[3, 2, 0, 9, 0, 1, 0xaa, 0xbb]);
        assert_eq!(s.mode, 3);
        assert_eq!(s.stream, &[0xaa, 0xbb]);
        assert_eq!(s.cuts, vec![0, 1]);
        assert_eq!(chunks(s.stream, &s.cuts), vec![&[][..], &[0xaa], &[0xbb]]);
        assert!(split(&[]).stream.is_empty());
    }
}
