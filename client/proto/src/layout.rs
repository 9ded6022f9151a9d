//! The bit layout of an ID: pure arithmetic, no I/O, no globals.
//!
//! A [`Layout`] is built once (from configuration on the server, from the server's WELCOME
//! frame on a client), validated, and then passed by value to whatever composes or decomposes
//! IDs. Data flows one way: `(tick, worker, sequence)` goes in through [`Layout::compose`] and
//! comes back out of [`Layout::decompose`] as [`Parts`], with the tick turned back into Unix
//! milliseconds. Keeping the widths in a value rather than in globals means an ID minted under
//! a custom layout is never decoded with the default one by accident.
//!
//! ```text
//! +---+-----------------------------------------+------------+--------------+
//! | 0 |  timestamp: ms since epoch (41 bits)     | worker (10)| sequence (12)|
//! +---+-----------------------------------------+------------+--------------+
//!  63  62                                     22  21       12  11          0
//! ```

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// 2024-01-01T00:00:00Z in Unix milliseconds: the default epoch.
pub const DEFAULT_EPOCH_UNIX_MS: u64 = 1_704_067_200_000;

/// Bits available for the three fields; the sign bit stays zero so IDs are positive `i64`s too.
pub const ID_BITS: u8 = 63;

/// Why a layout was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The three widths must add up to exactly 63.
    #[error("timestamp_bits + worker_bits + sequence_bits must be 63, got {timestamp} + {worker} + {sequence} = {sum}")]
    BadWidths {
        /// Timestamp width given.
        timestamp: u8,
        /// Worker width given.
        worker: u8,
        /// Sequence width given.
        sequence: u8,
        /// Their sum.
        sum: u16,
    },
    /// A field of width zero cannot carry anything.
    #[error("{0} must be at least 1 bit wide")]
    EmptyField(&'static str),
    /// The sequence field is capped so one lease count fits a `u32` on the wire.
    #[error("sequence_bits must be at most 31, got {0}")]
    SequenceTooWide(u8),
    /// Worker ids travel as `u16` on the wire.
    #[error("worker_bits must be at most 16, got {0}")]
    WorkerTooWide(u8),
    /// An epoch after the current time would make every tick negative.
    #[error("epoch {epoch} is in the future (now is {now})")]
    EpochInFuture {
        /// Epoch given, RFC 3339.
        epoch: String,
        /// Current time, RFC 3339.
        now: String,
    },
}

/// Widths of the three ID fields and the epoch their timestamps count from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    epoch_unix_ms: u64,
    timestamp_bits: u8,
    worker_bits: u8,
    sequence_bits: u8,
}

/// An ID taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Parts {
    /// Wall-clock time the ID's tick stands for, in Unix milliseconds.
    pub unix_ms: u64,
    /// Milliseconds since the layout's epoch (the raw timestamp field).
    pub tick: u64,
    /// Worker that issued it.
    pub worker: u16,
    /// Position inside the tick.
    pub sequence: u32,
}

impl Layout {
    /// Twitter's 41/10/12 split with the 2024-01-01 epoch.
    pub const DEFAULT: Layout = Layout {
        epoch_unix_ms: DEFAULT_EPOCH_UNIX_MS,
        timestamp_bits: 41,
        worker_bits: 10,
        sequence_bits: 12,
    };

    /// Builds a layout and checks it against the current wall clock.
    pub fn new(
        epoch_unix_ms: u64,
        timestamp_bits: u8,
        worker_bits: u8,
        sequence_bits: u8,
    ) -> Result<Layout, LayoutError> {
        Self::checked_at(
            epoch_unix_ms,
            timestamp_bits,
            worker_bits,
            sequence_bits,
            unix_ms_now(),
        )
    }

    /// Builds a layout and checks it against `now_unix_ms`, so tests can fix the time.
    pub fn checked_at(
        epoch_unix_ms: u64,
        timestamp_bits: u8,
        worker_bits: u8,
        sequence_bits: u8,
        now_unix_ms: u64,
    ) -> Result<Layout, LayoutError> {
        let layout = Self::widths(epoch_unix_ms, timestamp_bits, worker_bits, sequence_bits)?;
        if epoch_unix_ms > now_unix_ms {
            return Err(LayoutError::EpochInFuture {
                epoch: format_unix_ms(epoch_unix_ms),
                now: format_unix_ms(now_unix_ms),
            });
        }
        Ok(layout)
    }

    /// Checks the widths only. A client uses this for the layout a server announces: the
    /// server already checked its epoch, and a client's clock may be behind it.
    pub fn widths(
        epoch_unix_ms: u64,
        timestamp_bits: u8,
        worker_bits: u8,
        sequence_bits: u8,
    ) -> Result<Layout, LayoutError> {
        let sum = u16::from(timestamp_bits) + u16::from(worker_bits) + u16::from(sequence_bits);
        if sum != u16::from(ID_BITS) {
            return Err(LayoutError::BadWidths {
                timestamp: timestamp_bits,
                worker: worker_bits,
                sequence: sequence_bits,
                sum,
            });
        }
        for (name, bits) in [
            ("timestamp_bits", timestamp_bits),
            ("worker_bits", worker_bits),
            ("sequence_bits", sequence_bits),
        ] {
            if bits == 0 {
                return Err(LayoutError::EmptyField(name));
            }
        }
        if sequence_bits > 31 {
            return Err(LayoutError::SequenceTooWide(sequence_bits));
        }
        // worker ids travel as u16 on the wire.
        if worker_bits > 16 {
            return Err(LayoutError::WorkerTooWide(worker_bits));
        }
        Ok(Layout {
            epoch_unix_ms,
            timestamp_bits,
            worker_bits,
            sequence_bits,
        })
    }

    /// Unix milliseconds that tick 0 stands for.
    pub fn epoch_unix_ms(&self) -> u64 {
        self.epoch_unix_ms
    }

    /// Width of the timestamp field.
    pub fn timestamp_bits(&self) -> u8 {
        self.timestamp_bits
    }

    /// Width of the worker field.
    pub fn worker_bits(&self) -> u8 {
        self.worker_bits
    }

    /// Width of the sequence field.
    pub fn sequence_bits(&self) -> u8 {
        self.sequence_bits
    }

    /// Highest worker id the layout can hold (1023 by default).
    pub fn max_worker(&self) -> u16 {
        // worker_bits <= 16 is checked on construction.
        ((1u32 << self.worker_bits) - 1) as u16
    }

    /// IDs per tick per worker, which is also the largest lease (4096 by default).
    pub fn max_lease(&self) -> u32 {
        1u32 << self.sequence_bits
    }

    /// Highest tick the timestamp field can hold.
    pub fn max_tick(&self) -> u64 {
        (1u64 << self.timestamp_bits) - 1
    }

    /// The last Unix millisecond an ID can carry: after it the layout is exhausted
    /// (2093-09-06 for the default).
    pub fn end_of_life_unix_ms(&self) -> u64 {
        self.epoch_unix_ms.saturating_add(self.max_tick())
    }

    /// The tick that `unix_ms` falls in, or `None` before the epoch.
    pub fn tick_at(&self, unix_ms: u64) -> Option<u64> {
        unix_ms.checked_sub(self.epoch_unix_ms)
    }

    /// Puts an ID together. Out-of-range fields are masked; the server never passes one.
    pub fn compose(&self, tick: u64, worker: u16, sequence: u32) -> u64 {
        debug_assert!(tick <= self.max_tick());
        debug_assert!(worker <= self.max_worker());
        debug_assert!(sequence < self.max_lease());
        let tick = tick & self.max_tick();
        let worker = u64::from(worker) & u64::from(self.max_worker());
        let sequence = u64::from(sequence) & u64::from(self.max_lease() - 1);
        (tick << (self.worker_bits + self.sequence_bits))
            | (worker << self.sequence_bits)
            | sequence
    }

    /// Takes an ID apart.
    pub fn decompose(&self, id: u64) -> Parts {
        let tick = (id >> (self.worker_bits + self.sequence_bits)) & self.max_tick();
        let worker = ((id >> self.sequence_bits) & u64::from(self.max_worker())) as u16;
        let sequence = (id & u64::from(self.max_lease() - 1)) as u32;
        Parts {
            unix_ms: self.epoch_unix_ms.saturating_add(tick),
            tick,
            worker,
            sequence,
        }
    }
}

impl Layout {
    /// The position of an ID inside its worker's sequence space: `tick << sequence_bits |
    /// sequence`. Positions of one worker only grow as IDs are issued, one per ID.
    pub fn position(&self, id: u64) -> u64 {
        let p = self.decompose(id);
        (p.tick << self.sequence_bits) | u64::from(p.sequence)
    }

    /// The ID at `position` of `worker`, or `None` past the last tick.
    pub fn id_at(&self, worker: u16, position: u64) -> Option<u64> {
        let tick = position >> self.sequence_bits;
        (tick <= self.max_tick()).then(|| {
            let sequence = (position & u64::from(self.max_lease() - 1)) as u32;
            self.compose(tick, worker, sequence)
        })
    }

    /// Expands a BULK_LEASED run (`count` IDs at consecutive positions of the worker of
    /// `first_id`) into blocks `(first_id, count)` of consecutive integers, each inside one
    /// tick, in order. Stops early if the run would pass the layout's last tick, so a hostile
    /// run can never wrap into small IDs; callers check [`Layout::run_fits`] first.
    pub fn blocks(&self, first_id: u64, count: u32) -> impl Iterator<Item = (u64, u32)> + '_ {
        let worker = self.decompose(first_id).worker;
        let per_tick = u64::from(self.max_lease());
        let mut position = self.position(first_id);
        let mut left = u64::from(count);
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let room = per_tick - (position & (per_tick - 1));
            let take = room.min(left);
            let id = self.id_at(worker, position)?;
            position += take;
            left -= take;
            Some((id, take as u32))
        })
    }

    /// Whether a run of `count` IDs starting at `first_id` stays within the layout's last
    /// tick (and `count` is at least 1).
    pub fn run_fits(&self, first_id: u64, count: u32) -> bool {
        let last = self.position(first_id) + u64::from(count);
        count >= 1 && (last - 1) >> self.sequence_bits <= self.max_tick()
    }
}

impl Default for Layout {
    fn default() -> Self {
        Layout::DEFAULT
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{} epoch {}",
            self.timestamp_bits,
            self.worker_bits,
            self.sequence_bits,
            format_unix_ms(self.epoch_unix_ms)
        )
    }
}

impl fmt::Display for Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} worker {} sequence {}",
            format_unix_ms(self.unix_ms),
            self.worker,
            self.sequence
        )
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_unix_ms(unix_ms: u64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses an epoch given as RFC 3339 (`2024-01-01T00:00:00Z`) or as Unix milliseconds.
pub fn parse_epoch(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("epoch {text:?} is neither Unix milliseconds nor RFC 3339: {e}"))?;
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("epoch {text:?} is before 1970"))?
        .as_millis();
    u64::try_from(ms).map_err(|_| format!("epoch {text:?} is out of range"))
}

/// The wall clock in Unix milliseconds (0 if the clock is before 1970).
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_run_expands_into_blocks_that_each_stay_inside_one_tick() {
        let l = Layout::DEFAULT;
        let first = l.compose(100, 7, 4000);
        let blocks: Vec<_> = l.blocks(first, 96 + 4096 + 10).collect();
        assert_eq!(
            blocks,
            vec![
                (first, 96),
                (l.compose(101, 7, 0), 4096),
                (l.compose(102, 7, 0), 10)
            ]
        );
        assert_eq!(l.position(l.compose(102, 7, 9)), (102 << 12) | 9);
        assert_eq!(l.id_at(7, (102 << 12) | 9), Some(l.compose(102, 7, 9)));
    }

    #[test]
    fn a_run_past_the_last_tick_does_not_fit_and_never_wraps() {
        let l = Layout::widths(0, 16, 16, 31).unwrap();
        let last = l.compose(l.max_tick(), 3, 0);
        assert!(l.run_fits(last, u32::MAX >> 1));
        assert!(!l.run_fits(last, u32::MAX));
        assert!(!l.run_fits(last, 0));
        // Expanding anyway stops at the end of the layout instead of wrapping to tick 0.
        let total: u64 = l.blocks(last, u32::MAX).map(|(_, n)| u64::from(n)).sum();
        assert_eq!(total, u64::from(l.max_lease()));
    }

    #[test]
    fn default_layout_ends_on_2093_09_06() {
        let eol = format_unix_ms(Layout::DEFAULT.end_of_life_unix_ms());
        assert!(eol.starts_with("2093-09-06"), "{eol}");
        assert_eq!(Layout::DEFAULT.max_worker(), 1023);
        assert_eq!(Layout::DEFAULT.max_lease(), 4096);
    }

    #[test]
    fn widths_that_do_not_sum_to_63_are_refused() {
        let err = Layout::widths(0, 41, 10, 11).unwrap_err();
        assert!(
            matches!(err, LayoutError::BadWidths { sum: 62, .. }),
            "{err}"
        );
        assert!(matches!(
            Layout::widths(0, 0, 51, 12),
            Err(LayoutError::EmptyField("timestamp_bits"))
        ));
        assert!(matches!(
            Layout::widths(0, 20, 11, 32),
            Err(LayoutError::SequenceTooWide(32))
        ));
    }

    #[test]
    fn an_epoch_in_the_future_is_refused() {
        let err = Layout::checked_at(2_000, 41, 10, 12, 1_000).unwrap_err();
        assert!(err.to_string().contains("in the future"), "{err}");
        assert!(Layout::checked_at(1_000, 41, 10, 12, 1_000).is_ok());
    }

    #[test]
    fn epochs_parse_from_rfc3339_or_milliseconds() {
        assert_eq!(
            parse_epoch("2024-01-01T00:00:00Z"),
            Ok(DEFAULT_EPOCH_UNIX_MS)
        );
        assert_eq!(parse_epoch("1704067200000"), Ok(DEFAULT_EPOCH_UNIX_MS));
        assert!(parse_epoch("yesterday").is_err());
    }

    #[test]
    fn parts_display_reads_as_time_worker_sequence() {
        let id = Layout::DEFAULT.compose(1, 7, 42);
        let text = Layout::DEFAULT.decompose(id).to_string();
        assert_eq!(text, "2024-01-01T00:00:00.001Z worker 7 sequence 42");
    }

    #[test]
    fn a_custom_layout_decodes_its_own_ids() {
        let custom = Layout::widths(0, 39, 8, 16).unwrap();
        let id = custom.compose(123_456, 200, 65_000);
        let parts = custom.decompose(id);
        assert_eq!(
            (parts.tick, parts.worker, parts.sequence),
            (123_456, 200, 65_000)
        );
        assert_ne!(Layout::DEFAULT.decompose(id).worker, 200);
    }

    proptest! {
        #[test]
        fn compose_then_decompose_round_trips(
            tick in 0u64..(1 << 41), worker in 0u16..1024, seq in 0u32..4096
        ) {
            let l = Layout::DEFAULT;
            let id = l.compose(tick, worker, seq);
            prop_assert!(id < (1 << 63));
            let p = l.decompose(id);
            prop_assert_eq!((p.tick, p.worker, p.sequence), (tick, worker, seq));
            prop_assert_eq!(p.unix_ms, DEFAULT_EPOCH_UNIX_MS + tick);
        }

        #[test]
        fn ids_sort_by_tick_then_worker_then_sequence(
            a in (0u64..(1 << 41), 0u16..1024, 0u32..4096),
            b in (0u64..(1 << 41), 0u16..1024, 0u32..4096),
        ) {
            let l = Layout::DEFAULT;
            prop_assert_eq!(l.compose(a.0, a.1, a.2).cmp(&l.compose(b.0, b.1, b.2)), a.cmp(&b));
        }

        #[test]
        fn blocks_cover_exactly_the_run_in_order(tick in 0u64..1_000_000, seq in 0u32..4096, count in 1u32..100_000, worker in 0u16..1024) {
            let l = Layout::DEFAULT;
            let first = l.compose(tick, worker, seq);
            let mut next = l.position(first);
            let mut total = 0u64;
            for (id, n) in l.blocks(first, count) {
                let p = l.decompose(id);
                prop_assert_eq!(p.worker, worker);
                prop_assert_eq!(l.position(id), next);
                prop_assert!(u64::from(p.sequence) + u64::from(n) <= 4096);
                next += u64::from(n);
                total += u64::from(n);
            }
            prop_assert_eq!(total, u64::from(count));
        }
    }
}
