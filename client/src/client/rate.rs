//! Draw-rate estimate: how many IDs per second callers take, from which the driver sizes its
//! refills.
//!
//! The driver feeds in the number of IDs drawn since its last look (read from the buffer's
//! counter) together with the time; counts accumulate into a window of at least
//! [`MIN_WINDOW`], and each closed window updates an exponentially weighted moving average.
//! The average rises quickly and falls slowly: running dry costs callers a round trip, while
//! holding a little too much only costs IDs that expire.

use std::time::{Duration, Instant};

/// Shortest window turned into a sample: 5 ms. The driver may look many times per
/// millisecond while replies stream in; a window of a few microseconds holding one 4,096-ID
/// take would read as a rate of billions per second.
pub(crate) const MIN_WINDOW: Duration = Duration::from_millis(5);

/// Time constant while demand grows: 20 ms. The buffer holds ~50 ms of IDs, so the estimate
/// reaches 92 % of a new, higher rate (2.5 time constants) before the old buffer runs out.
pub(crate) const TAU_RISE: Duration = Duration::from_millis(20);

/// Time constant while demand shrinks: 500 ms. Short lulls between bursts (a batch job
/// between pages, GC pauses) do not shrink the buffer; a real drop is followed within about a
/// second, before `max_age` (1 s by default) would start throwing IDs away.
pub(crate) const TAU_FALL: Duration = Duration::from_millis(500);

/// See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct RateEstimator {
    rate: f64,
    window_start: Instant,
    window_drawn: u64,
}

impl RateEstimator {
    /// Starts at zero at `now`.
    pub fn new(now: Instant) -> RateEstimator {
        RateEstimator {
            rate: 0.0,
            window_start: now,
            window_drawn: 0,
        }
    }

    /// Records `drawn` more IDs taken by `now` and returns the estimate in IDs per second.
    pub fn observe(&mut self, drawn: u64, now: Instant) -> f64 {
        self.window_drawn = self.window_drawn.saturating_add(drawn);
        let dt = now.saturating_duration_since(self.window_start);
        if dt < MIN_WINDOW {
            return self.rate;
        }
        let sample = self.window_drawn as f64 / dt.as_secs_f64();
        let tau = if sample > self.rate {
            TAU_RISE
        } else {
            TAU_FALL
        };
        let alpha = 1.0 - (-dt.as_secs_f64() / tau.as_secs_f64()).exp();
        self.rate += alpha * (sample - self.rate);
        self.window_start = now;
        self.window_drawn = 0;
        self.rate
    }

    /// The current estimate in IDs per second.
    #[cfg(test)]
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Feeds `per_ms` IDs every millisecond for `ms` milliseconds.
    fn feed(r: &mut RateEstimator, now: &mut Instant, per_ms: u64, ms: u64) -> f64 {
        for _ in 0..ms {
            *now += Duration::from_millis(1);
            r.observe(per_ms, *now);
        }
        r.rate()
    }

    #[test]
    fn a_steady_rate_is_learned() {
        let mut now = Instant::now();
        let mut r = RateEstimator::new(now);
        let rate = feed(&mut r, &mut now, 1000, 500);
        assert!((rate - 1_000_000.0).abs() < 10_000.0, "{rate}");
    }

    #[test]
    fn a_rise_is_followed_within_fifty_milliseconds() {
        let mut now = Instant::now();
        let mut r = RateEstimator::new(now);
        feed(&mut r, &mut now, 10, 1000);
        let rate = feed(&mut r, &mut now, 4000, 50);
        assert!(rate > 0.85 * 4_000_000.0, "{rate}");
    }

    #[test]
    fn a_fall_is_followed_slowly() {
        let mut now = Instant::now();
        let mut r = RateEstimator::new(now);
        feed(&mut r, &mut now, 1000, 500);
        let after_100ms = feed(&mut r, &mut now, 0, 100);
        assert!(after_100ms > 750_000.0, "{after_100ms}");
        let after_2s = feed(&mut r, &mut now, 0, 1900);
        assert!(after_2s < 30_000.0, "{after_2s}");
    }

    #[test]
    fn short_windows_accumulate_instead_of_spiking() {
        let now = Instant::now();
        let mut r = RateEstimator::new(now);
        for i in 1..=4 {
            let rate = r.observe(4096, now + Duration::from_micros(10 * i));
            assert_eq!(rate, 0.0);
        }
        let rate = r.observe(0, now + Duration::from_millis(5));
        // 16,384 IDs over 5 ms is 3.3 M/s; one 5 ms step covers 22 % of the way there.
        assert!((600_000.0..900_000.0).contains(&rate), "{rate}");
    }

    #[test]
    fn time_going_nowhere_is_harmless() {
        let now = Instant::now();
        let mut r = RateEstimator::new(now);
        assert_eq!(r.observe(u64::MAX, now), 0.0);
        assert!(r.observe(u64::MAX, now + MIN_WINDOW).is_finite());
    }
}
