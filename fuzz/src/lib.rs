//! Helpers the fuzz targets share.
//!
//! An input becomes a byte stream plus the points where it is cut into reads ([`split`]), so
//! one corpus entry exercises both the frames and every way TCP may deliver them. [`feed`]
//! pushes such a stream through a decoder read by read and checks, around every call, what
//! the decoder may do to the buffer: consume exactly one whole frame or nothing, never grow
//! the buffer by more than one maximal frame (a length prefix of 4 GiB must cost nothing),
//! and refuse a bad prefix before reserving anything.

use bytes::BytesMut;
use snowlease::wire::{WireError, LEN_PREFIX, MAX_FRAME_LEN};

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

/// Reads an input as `mode`, `cut_count` (low 3 bits), `cut_count` big-endian u16 offsets,
/// then the stream. Short inputs simply get fewer cuts; every input is valid.
pub fn split(data: &[u8]) -> Split<'_> {
    let mode = data.first().copied().unwrap_or(0);
    let wanted = data.get(1).map_or(0, |b| usize::from(b & 7)).min(MAX_CUTS);
    let rest = data.get(2..).unwrap_or(&[]);
    let cuts_bytes = (wanted * 2).min(rest.len() & !1);
    let (header, stream) = rest.split_at(cuts_bytes);
    let mut cuts: Vec<usize> = header
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_be_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    Split { mode, cuts, stream }
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
    fn a_short_input_is_all_stream_and_cuts_stay_inside_it() {
        let s = split(&[3, 2, 0, 9, 0, 1, 0xaa, 0xbb]);
        assert_eq!(s.mode, 3);
        assert_eq!(s.stream, &[0xaa, 0xbb]);
        assert_eq!(s.cuts, vec![0, 1]);
        assert_eq!(chunks(s.stream, &s.cuts), vec![&[][..], &[0xaa], &[0xbb]]);
        assert!(split(&[]).stream.is_empty());
    }
}
