//! The numbers: connections and tasks add to shared [`Counters`] as replies arrive, a sampler
//! thread turns the counters into a [`Sample`] per second (printed as progress and kept for
//! the chart), and at the end per-connection latency histograms are merged and reduced to a
//! [`Latency`] summary. The pure helpers (percentiles, rates, the ceiling) are unit-tested.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use snowlease::Layout;

/// Counts added by every connection or task, inside the measured window only.
#[derive(Debug, Default)]
pub struct Counters {
    /// IDs received.
    pub ids: AtomicU64,
    /// Replies carrying IDs (LEASED frames, or `next_id`/`lease` calls in the client modes).
    pub leases: AtomicU64,
    /// Failed requests and connection failures.
    pub errors: AtomicU64,
}

impl Counters {
    /// Adds one batch of results.
    pub fn add(&self, ids: u64, leases: u64, errors: u64) {
        if ids > 0 {
            self.ids.fetch_add(ids, Ordering::Relaxed);
        }
        if leases > 0 {
            self.leases.fetch_add(leases, Ordering::Relaxed);
        }
        if errors > 0 {
            self.errors.fetch_add(errors, Ordering::Relaxed);
        }
    }

    fn read(&self) -> (u64, u64, u64) {
        (
            self.ids.load(Ordering::Relaxed),
            self.leases.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// One point of the per-second series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the measured window opened, at the end of this sample.
    pub t: f64,
    /// IDs received during the sample.
    pub ids: u64,
    /// Leases received during the sample.
    pub leases: u64,
    /// Errors during the sample.
    pub errors: u64,
    /// `ids` per second of the sample's actual length.
    pub ids_per_sec: f64,
    /// `leases` per second of the sample's actual length.
    pub leases_per_sec: f64,
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    /// Latencies recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

/// Longest latency the histogram can hold: a minute, far past every timeout here.
const HISTOGRAM_MAX_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds, 1 ns to a minute, three significant digits (0.1 %
/// error, about 200 kB).
pub fn histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5); the
    // unit tests build one, so this cannot fail at run time.
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_NS, 3).expect("constant histogram bounds are valid")
}

/// Records a latency, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, latency: Duration) {
    let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    h.saturating_record(ns.clamp(1, HISTOGRAM_MAX_NS));
}

/// Percentiles of a nanosecond histogram, in microseconds.
pub fn latency(h: &Histogram<u64>) -> Latency {
    let us = |ns: u64| ns as f64 / 1000.0;
    if h.is_empty() {
        return Latency {
            count: 0,
            mean_us: 0.0,
            p50_us: 0.0,
            p99_us: 0.0,
            p999_us: 0.0,
            max_us: 0.0,
        };
    }
    Latency {
        count: h.len(),
        mean_us: h.mean() / 1000.0,
        p50_us: us(h.value_at_quantile(0.50)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}

/// IDs per second one worker can issue under `layout`: a full sequence field every
/// millisecond (4,096,000 for the default layout).
pub fn ceiling_per_worker(layout: &Layout) -> f64 {
    f64::from(layout.max_lease()) * 1000.0
}

/// `count` per second over `secs`, 0 for an empty interval.
pub fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// The sampler thread: reads the counters once a second from `from` until `until`, prints a
/// progress line per sample to stderr (unless `quiet`), and returns the series. A final
/// shorter sample covers a fractional last second.
pub struct Sampler {
    stop: mpsc::Sender<()>,
    /// `None` if the thread could not be started: there is no series then, and the totals
    /// still come from the counters.
    thread: Option<JoinHandle<Vec<Sample>>>,
}

/// A last sample shorter than this is folded away: its rate would be noise.
const MIN_SAMPLE: Duration = Duration::from_millis(50);

impl Sampler {
    /// Starts sampling. `per_call` names the second rate in progress lines (`leases/s`,
    /// `calls/s`).
    pub fn start(
        counters: Arc<Counters>,
        from: Instant,
        until: Instant,
        quiet: bool,
        per_call: &'static str,
    ) -> Sampler {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-sampler".into())
            .spawn(move || sample_loop(&counters, from, until, quiet, per_call, &stopped))
            .ok();
        Sampler { stop, thread }
    }

    /// Stops sampling (at once if the window is still open: a run cut short ends its series
    /// with what was counted so far) and returns the series.
    pub fn finish(self) -> Vec<Sample> {
        drop(self.stop);
        self.thread.and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

fn sample_loop(
    counters: &Counters,
    from: Instant,
    until: Instant,
    quiet: bool,
    per_call: &str,
    stopped: &mpsc::Receiver<()>,
) -> Vec<Sample> {
    let mut series = Vec::new();
    let mut last = (0, 0, 0);
    let mut last_at = from;
    // Bounded: one iteration per second of the window, plus the final short one.
    loop {
        let next = (last_at + Duration::from_secs(1)).min(until);
        let wait = next.saturating_duration_since(Instant::now());
        // A timer, not synchronisation: the channel only ever says that the run ended early.
        let cut_short = matches!(
            stopped.recv_timeout(wait),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
        let now = Instant::now();
        let dt = now.saturating_duration_since(last_at);
        let counts = counters.read();
        // A run cut short still reports what it counted since the last sample.
        let final_counts = cut_short && counts != last;
        if now >= from && (dt >= MIN_SAMPLE || final_counts) {
            let sample = Sample {
                t: now.duration_since(from).as_secs_f64(),
                ids: counts.0 - last.0,
                leases: counts.1 - last.1,
                errors: counts.2 - last.2,
                ids_per_sec: rate(counts.0 - last.0, dt.as_secs_f64()),
                leases_per_sec: rate(counts.1 - last.1, dt.as_secs_f64()),
            };
            if !quiet {
                eprintln!("{}", progress_line(&sample, per_call));
            }
            series.push(sample);
            last = counts;
            last_at = now;
        }
        if now >= until || cut_short {
            return series;
        }
    }
}

/// The per-second progress line.
pub fn progress_line(s: &Sample, per_call: &str) -> String {
    format!(
        "[{:6.1}s] {:>13} IDs/s {:>11} {per_call} {:>6} errors",
        s.t,
        thousands(s.ids_per_sec.round() as u64),
        thousands(s.leases_per_sec.round() as u64),
        s.errors
    )
}

/// A latency in microseconds with a unit that keeps it readable: `85 ns`, `12.3 us`,
/// `4.56 ms`.
pub fn duration_text(us: f64) -> String {
    if us < 1.0 {
        format!("{:.0} ns", us * 1000.0)
    } else if us < 1000.0 {
        format!("{us:.1} us")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn percentiles_come_out_in_microseconds() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let l = latency(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.p999_us - 999.0).abs() < 1.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() < 1.0, "{l:?}");
        assert!((l.mean_us - 500.5).abs() < 1.0, "{l:?}");
    }

    #[test]
    fn an_empty_histogram_reports_zeros() {
        assert_eq!(latency(&histogram()).count, 0);
        assert_eq!(latency(&histogram()).max_us, 0.0);
    }

    #[test]
    fn latencies_beyond_the_range_are_clamped_not_lost() {
        let mut h = histogram();
        record(&mut h, Duration::from_secs(3600));
        record(&mut h, Duration::ZERO);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn the_default_layout_ceiling_is_4096000_per_worker() {
        assert_eq!(ceiling_per_worker(&Layout::DEFAULT), 4_096_000.0);
        let narrow = Layout::widths(0, 43, 10, 10).unwrap();
        assert_eq!(ceiling_per_worker(&narrow), 1_024_000.0);
    }

    #[test]
    fn rates_divide_by_the_interval_and_survive_zero() {
        assert_eq!(rate(500, 0.5), 1000.0);
        assert_eq!(rate(500, 0.0), 0.0);
    }

    #[test]
    fn latencies_print_in_a_readable_unit() {
        assert_eq!(duration_text(0.085), "85 ns");
        assert_eq!(duration_text(12.34), "12.3 us");
        assert_eq!(duration_text(4560.0), "4.56 ms");
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(4_096_000), "4,096,000");
    }

    #[test]
    fn the_sampler_reports_what_was_counted_in_its_window() {
        let counters = Arc::new(Counters::default());
        counters.add(1000, 10, 0);
        let from = Instant::now();
        let sampler = Sampler::start(
            counters.clone(),
            from,
            from + Duration::from_millis(300),
            true,
            "leases/s",
        );
        let series = sampler.finish();
        assert_eq!(series.len(), 1, "{series:?}");
        assert_eq!(series[0].ids, 1000);
        assert!(series[0].ids_per_sec > 1000.0);
    }
}
