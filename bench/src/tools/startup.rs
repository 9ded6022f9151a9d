//! `snowlease-bench startup [--runs N] -- SERVER_ARGS...`: how long the server takes from
//! process start to the first `/readyz` 200, over `--runs` fresh starts.
//!
//! Each run starts the server through the shared harness (OS-chosen ports, a fresh state
//! directory: the state file is written and synced before `serving`, as in production),
//! waits for its `serving` line to learn the admin port, then asks `/readyz` until it
//! answers 200, and stops it with SIGTERM. The time is from just before the spawn to that
//! 200. Output: `{"runs":N,"ms":[...],"median_ms":M,"max_ms":X}`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::spawn;

/// Arguments of `startup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server binary (default: snowlease-server next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Starts to time.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// Bound on each start, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// Arguments for the server, after `--`.
    #[arg(last = true)]
    server_args: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Startups {
    runs: usize,
    ms: Vec<f64>,
    median_ms: f64,
    max_ms: f64,
}

/// Runs `startup`.
pub fn run(args: &Args) -> Result<bool, String> {
    let bin = spawn::locate(args.server_bin.as_deref())?;
    let bound = Duration::from_millis(args.timeout_ms);
    let mut ms = Vec::with_capacity(args.runs as usize);
    for run in 1..=args.runs {
        ms.push(time_one(&bin, &args.server_args, bound).map_err(|e| format!("start {run}: {e}"))?);
    }
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median_ms = median(&sorted);
    let max_ms = sorted.last().copied().unwrap_or(0.0);
    super::print_json(&Startups {
        runs: ms.len(),
        ms,
        median_ms,
        max_ms,
    })?;
    Ok(true)
}

fn time_one(bin: &std::path::Path, extra: &[String], bound: Duration) -> Result<f64, String> {
    let started = Instant::now();
    let deadline = started + bound;
    let mut server = spawn::spawn(bin, extra, None, bound)?;
    // Bounded by `deadline`; each ask is a fresh connection, as a kubelet probe is.
    let ready = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break None;
        }
        match snowlease_testkit::http::get(server.admin_addr(), "/readyz", &[], left) {
            Ok(reply) if reply.status == 200 => break Some(started.elapsed()),
            _ => std::thread::sleep(Duration::from_micros(500)),
        }
    };
    server.stop(spawn::STOP_GRACE);
    ready
        .map(|d| d.as_secs_f64() * 1000.0)
        .ok_or_else(|| format!("/readyz never answered 200 within {bound:?}"))
}

/// The median of sorted values (0 for none).
fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 4.0, 9.0]), 3.0);
    }
}
