//! How quickly a connection usually answers, and so when it has gone silent.
//!
//! Every LEASED reply yields one sample: the time from when the connection could first have
//! answered it (the later of the request's send and the previous frame from the connection)
//! to its arrival. Under pipelining that is the gap between consecutive replies, so a
//! server that is busy but answering keeps its samples small, and one that is slow because
//! demand outruns its clock has samples of that slowness. The estimate follows a larger
//! sample at once (a server slowed by load is never taken for a silent one) and decays
//! toward smaller ones by an eighth per reply.
//!
//! A connection with requests outstanding that has been quiet for [`Latency::limit`] is
//! *silent*: the engine stops counting its requests as IDs on the way and stops sending it
//! more, until it answers again.

use std::time::Duration;

/// How many usual gaps a connection may stay quiet before it counts as silent: 4. Measured
/// with four servers at their ceiling (reply gaps of 1-4 ms): of the gaps above 2 ms, about
/// 0.2 % were more than four times the estimate before them, and the 20 ms floor (see
/// [`SILENCE_FLOOR`]) absorbs those; the run saw two healthy connections taken for silent,
/// both at start-up. A mistaken silence only makes the client ask the others too.
pub(crate) const SILENCE_FACTOR: u32 = 4;

/// Quiet time that always counts as normal: see
/// [`MIN_SILENCE`](crate::client::MIN_SILENCE) for the measured reason.
pub(crate) const SILENCE_FLOOR: Duration = crate::client::config::MIN_SILENCE;

/// Weight of a smaller sample: 1/8, so the estimate halves in about 5 replies (0.875^5 =
/// 0.51) once a burst of slowness is over; a guess, harmless either way because the floor
/// dominates for any server answering within a few milliseconds.
const DECAY: u32 = 8;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Latency {
    estimate: Duration,
}

impl Latency {
    /// Takes in one reply's gap.
    pub fn observe(&mut self, gap: Duration) {
        if gap >= self.estimate {
            self.estimate = gap;
        } else {
            self.estimate -= (self.estimate - gap) / DECAY;
        }
    }

    /// The usual gap.
    pub fn estimate(&self) -> Duration {
        self.estimate
    }

    /// How long the connection may stay quiet with work outstanding before it counts as
    /// silent: [`SILENCE_FACTOR`] usual gaps, at least [`SILENCE_FLOOR`], at most `cap` (the
    /// request timeout, past which the connection is dropped anyway).
    pub fn limit(&self, cap: Duration) -> Duration {
        (self.estimate * SILENCE_FACTOR).max(SILENCE_FLOOR).min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_slower_reply_raises_the_estimate_at_once_and_faster_ones_lower_it_slowly() {
        let mut l = Latency::default();
        l.observe(MS * 40);
        assert_eq!(l.estimate(), MS * 40);
        l.observe(Duration::ZERO);
        assert_eq!(l.estimate(), MS * 35);
        for _ in 0..40 {
            l.observe(Duration::ZERO);
        }
        assert!(l.estimate() < MS, "{:?}", l.estimate());
    }

    #[test]
    fn the_limit_is_a_multiple_of_the_usual_gap_between_the_floor_and_the_cap() {
        let cap = MS * 2000;
        let cases = [
            (Duration::ZERO, SILENCE_FLOOR),
            (MS, SILENCE_FLOOR),
            (MS * 100, MS * 400),
            (MS * 1000, cap),
        ];
        for (gap, limit) in cases {
            let mut l = Latency::default();
            l.observe(gap);
            assert_eq!(l.limit(cap), limit, "gap {gap:?}");
        }
    }
}
