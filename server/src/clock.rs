//! The server's clock: the wall clock read once at start, then advanced by the monotonic
//! clock, so a step of the wall clock cannot pull IDs backwards or, unchecked, forwards.
//!
//! Time flows in from two sources. [`Clock::now_unix_ms`] (the generator's hot path) adds the
//! monotonic time since the anchor to an offset. Once a second the housekeeping thread calls
//! [`MonotonicClock::resync`], which compares that with the wall clock:
//!
//! - wall behind: an NTP step back. Counted and ignored; IDs keep following the monotonic clock.
//! - wall ahead by up to `follow_max_ms` (1 s by default): slew or a small step. Followed at
//!   once, so the server never lags the wall by more than that for long.
//! - wall ahead by more: a *large forward step*. Not followed until it has held at every
//!   resync for `follow_after` (30 s by default). A glitch of a few seconds (a VM pause, a bad
//!   NTP answer, an operator typo) therefore leaves no trace: no ID carries the glitched time
//!   and, since the persisted mark follows issued ticks (see `persist`), nothing reaches the
//!   state file either. A step past the layout's end of life is never followed: following it
//!   would make every later lease fail.
//!
//! Following late is always safe for uniqueness: the offset only grows, so the clock never
//! reads less than before; the cost of a held step is timestamps that lag the wall clock.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use snowlease_proto::layout::unix_ms_now;

/// A source of Unix milliseconds for the generator.
pub trait Clock: Send + Sync + 'static {
    /// The current time in Unix milliseconds. Need not be monotonic: the generator never
    /// moves its tick backwards whatever this returns.
    fn now_unix_ms(&self) -> u64;
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    fn now_unix_ms(&self) -> u64 {
        (**self).now_unix_ms()
    }
}

/// Deviation between the wall clock and the monotonic estimate that counts as a clock step.
/// NTP slews at most 0.5 ms/s, so 50 ms apart cannot be slew between two resyncs a second apart.
pub const CLOCK_STEP_THRESHOLD_MS: u64 = 50;

/// Default for `--clock-follow-max-ms`: forward steps up to 1 s are followed at once. NTP
/// daemons step rather than slew above 128 ms (ntpd) or a configured threshold (chrony's
/// `makestep`, typically 1 s), so steps of that size are routine corrections.
pub const DEFAULT_FOLLOW_MAX_MS: u64 = 1_000;

/// Default for `--clock-follow-after-ms`: a larger forward step is followed once it has held
/// for 30 s. The audit's glitches lasted 2.5 s; 30 s is long past any VM pause or bad NTP
/// answer, and short against the hours a wrong clock would otherwise keep IDs behind.
pub const DEFAULT_FOLLOW_AFTER_MS: u64 = 30_000;

/// How the clock treats forward steps of the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPolicy {
    /// Forward steps up to this many ms are followed at once.
    pub follow_max_ms: u64,
    /// Larger forward steps are followed once they have held this long.
    pub follow_after: Duration,
    /// Never follow the wall clock past this Unix ms (the layout's end of life).
    pub ceiling_unix_ms: u64,
}

impl Default for StepPolicy {
    fn default() -> Self {
        StepPolicy {
            follow_max_ms: DEFAULT_FOLLOW_MAX_MS,
            follow_after: Duration::from_millis(DEFAULT_FOLLOW_AFTER_MS),
            ceiling_unix_ms: u64::MAX,
        }
    }
}

/// What one [`MonotonicClock::resync`] saw and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// Wall and server clock agree within the threshold (or the wall is behind by a standing
    /// gap).
    Level,
    /// The wall clock stepped back by more than the threshold since the last resync.
    SteppedBack {
        /// Wall minus server, ms (negative).
        diff_ms: i64,
    },
    /// The server clock moved forward to the wall clock.
    Followed {
        /// How far it moved, ms.
        by_ms: u64,
    },
    /// A large forward step is being held: not followed (yet).
    Held {
        /// Wall minus server, ms.
        ahead_ms: u64,
        /// How long it has held so far.
        for_ms: u64,
    },
}

/// The production clock. See the module docs.
#[derive(Debug)]
pub struct MonotonicClock {
    anchor: Instant,
    /// Unix ms that `anchor` stands for; only ever raised.
    offset_unix_ms: AtomicU64,
    steps_back: AtomicU64,
    steps_forward: AtomicU64,
    /// Wall minus monotonic at the last resync (0 when the wall clock was ahead or level).
    last_diff: AtomicI64,
    /// Monotonic ms (since `anchor`) when a large forward step was first seen, plus one; 0
    /// when none is pending.
    held_since: AtomicU64,
    /// The smallest lead of the wall clock seen while the current step is held.
    held_min_ms: AtomicU64,
    policy: StepPolicy,
}

impl MonotonicClock {
    /// Anchors to the wall clock now, with the default step policy.
    pub fn new() -> MonotonicClock {
        Self::at_least(0)
    }

    /// Anchors to the wall clock now, or to `min_unix_ms` if the wall clock is behind it: after
    /// a restart with the clock set back, the clock starts at the persisted mark and the
    /// server's time runs ahead of the wall clock until the wall clock catches up.
    pub fn at_least(min_unix_ms: u64) -> MonotonicClock {
        Self::with_policy(min_unix_ms, StepPolicy::default())
    }

    /// As [`at_least`](Self::at_least), with a step policy.
    pub fn with_policy(min_unix_ms: u64, policy: StepPolicy) -> MonotonicClock {
        let wall = unix_ms_now();
        let start = wall.max(min_unix_ms);
        MonotonicClock {
            anchor: Instant::now(),
            offset_unix_ms: AtomicU64::new(start),
            steps_back: AtomicU64::new(0),
            steps_forward: AtomicU64::new(0),
            // Starting ahead of the wall clock is a standing gap, not a step.
            last_diff: AtomicI64::new(wall as i64 - start as i64),
            held_since: AtomicU64::new(0),
            held_min_ms: AtomicU64::new(0),
            policy,
        }
    }

    /// Compares with the wall clock and applies the step policy (module docs). Returns wall
    /// minus server ms, as measured before any step was followed.
    pub fn resync(&self) -> i64 {
        self.check().0
    }

    /// As [`resync`](Self::resync), also saying what it saw and did.
    pub fn check(&self) -> (i64, Resync) {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let diff = wall as i64 - self.now_unix_ms() as i64;
        (diff, self.resync_to(wall))
    }

    fn resync_to(&self, wall: u64) -> Resync {
        let elapsed = self.anchor.elapsed().as_millis() as u64;
        let ours = self.now_unix_ms();
        let diff = wall as i64 - ours as i64;
        let threshold = CLOCK_STEP_THRESHOLD_MS as i64;
        let previous = self.last_diff.swap(diff.min(0), Ordering::AcqRel);
        if diff <= threshold {
            self.held_since.store(0, Ordering::Release);
            if diff < previous - threshold {
                self.steps_back.fetch_add(1, Ordering::Relaxed);
                return Resync::SteppedBack { diff_ms: diff };
            }
            return Resync::Level;
        }
        let ahead = diff as u64;
        if ahead > self.policy.follow_max_ms {
            let first_seen = match self.held_since.load(Ordering::Acquire) {
                0 => {
                    self.held_since.store(elapsed + 1, Ordering::Release);
                    self.held_min_ms.store(ahead, Ordering::Release);
                    elapsed
                }
                since => since - 1,
            };
            let held_min = self
                .held_min_ms
                .fetch_min(ahead, Ordering::AcqRel)
                .min(ahead);
            let held_for = elapsed.saturating_sub(first_seen);
            let beyond_life = wall > self.policy.ceiling_unix_ms;
            if held_for < self.policy.follow_after.as_millis() as u64 || beyond_life {
                return Resync::Held {
                    ahead_ms: ahead,
                    for_ms: held_for,
                };
            }
            // Held long enough: follow by what it held at every check, never by a momentary
            // extra overshoot.
            self.held_since.store(0, Ordering::Release);
            return self.follow(ours + held_min, elapsed, ahead.min(held_min));
        }
        self.held_since.store(0, Ordering::Release);
        self.follow(wall, elapsed, ahead)
    }

    fn follow(&self, to_unix_ms: u64, elapsed: u64, by_ms: u64) -> Resync {
        self.offset_unix_ms
            .fetch_max(to_unix_ms.saturating_sub(elapsed), Ordering::AcqRel);
        self.steps_forward.fetch_add(1, Ordering::Relaxed);
        Resync::Followed { by_ms }
    }

    /// Clock steps seen by [`resync`](Self::resync): `(back, forward followed)`.
    pub fn steps(&self) -> (u64, u64) {
        (
            self.steps_back.load(Ordering::Relaxed),
            self.steps_forward.load(Ordering::Relaxed),
        )
    }

    /// How far ahead a held forward step of the wall clock is, ms (0 when none is held).
    pub fn forward_held_ms(&self) -> u64 {
        if self.held_since.load(Ordering::Acquire) == 0 {
            0
        } else {
            self.held_min_ms.load(Ordering::Acquire)
        }
    }

    /// The `Instant` at which this clock will read `unix_ms`, for timers.
    pub fn instant_at(&self, unix_ms: u64) -> Instant {
        let offset = self.offset_unix_ms.load(Ordering::Acquire);
        self.anchor + Duration::from_millis(unix_ms.saturating_sub(offset))
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_unix_ms(&self) -> u64 {
        self.offset_unix_ms
            .load(Ordering::Acquire)
            .saturating_add(self.anchor.elapsed().as_millis() as u64)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(after_ms: u64, ceiling: u64) -> StepPolicy {
        StepPolicy {
            follow_max_ms: 1_000,
            follow_after: Duration::from_millis(after_ms),
            ceiling_unix_ms: ceiling,
        }
    }

    #[test]
    fn a_small_forward_step_is_followed_at_once() {
        let clock = MonotonicClock::new();
        let before = clock.now_unix_ms();
        let r = clock.resync_to(before + 600);
        assert!(
            matches!(r, Resync::Followed { by_ms } if by_ms >= 500),
            "{r:?}"
        );
        assert!(clock.now_unix_ms() >= before + 600);
        assert_eq!(clock.steps(), (0, 1));
    }

    #[test]
    fn a_short_large_glitch_leaves_no_trace() {
        let clock = MonotonicClock::with_policy(0, policy(30_000, u64::MAX));
        let base = clock.now_unix_ms();
        let two_hours = 2 * 3_600_000;
        for _ in 0..3 {
            let r = clock.resync_to(clock.now_unix_ms() + two_hours);
            assert!(matches!(r, Resync::Held { .. }), "{r:?}");
        }
        assert!(clock.forward_held_ms() >= two_hours - 10);
        // The glitch ends: nothing was followed and nothing is held any more.
        assert_eq!(clock.resync_to(clock.now_unix_ms()), Resync::Level);
        assert_eq!(clock.forward_held_ms(), 0);
        assert!(clock.now_unix_ms() < base + 60_000);
        assert_eq!(clock.steps(), (0, 0));
    }

    #[test]
    fn a_large_step_that_holds_is_followed_by_its_smallest_lead() {
        let clock = MonotonicClock::with_policy(0, policy(0, u64::MAX));
        let now = clock.now_unix_ms();
        // Held for 0 ms already counts as long enough with this policy.
        let r = clock.resync_to(now + 5_000);
        assert!(matches!(r, Resync::Followed { .. }), "{r:?}");
        assert!(clock.now_unix_ms() >= now + 5_000);
    }

    #[test]
    fn a_step_past_the_end_of_life_is_never_followed() {
        let now = unix_ms_now();
        let clock = MonotonicClock::with_policy(0, policy(0, now + 60_000));
        let r = clock.resync_to(now + 70 * 365 * 86_400_000);
        assert!(matches!(r, Resync::Held { .. }), "{r:?}");
        assert!(clock.now_unix_ms() < now + 60_000);
    }

    #[test]
    fn a_step_back_is_counted_once_and_ignored() {
        let clock = MonotonicClock::new();
        let now = clock.now_unix_ms();
        assert!(matches!(
            clock.resync_to(now - 5_000),
            Resync::SteppedBack { .. }
        ));
        // The standing gap afterwards is not a new step.
        assert_eq!(clock.resync_to(clock.now_unix_ms() - 5_000), Resync::Level);
        assert_eq!(clock.steps(), (1, 0));
        assert!(clock.now_unix_ms() >= now);
    }
}
