//! The persistence thread: keeps each worker's durable reservation ahead of what leases are
//! about to use, and nothing more.
//!
//! Every `reserve_ms / 8` (at most 100 ms), or at once when a waiting lease unparks it, the
//! thread looks at every worker's generator. A worker *needs* a reservation from tick `t` on
//! when it issued IDs within the last window (`t` = its next tick or the clock's, whichever is
//! later) or when a lease found tick `t` not yet durable. When what is reserved beyond `t` is
//! less than half the window, all marks are written in one state file write (see `state`), one
//! window beyond their needs, and the generators' limits raised. So the marks follow issued
//! ticks plus the window, never the bare clock: an idle server writes nothing new, and a wall
//! clock glitch never reaches the disk, because the server's clock does not follow it (see
//! `clock`) and nothing issued carries it.
//!
//! While the server's clock runs ahead of the wall clock (after a restart from a mark), the
//! window shrinks by that lead, down to [`MIN_RESERVE_MS`], so a crash loop that issues IDs in
//! every life drifts ahead by at most `reserve_ms` plus 100 ms per life instead of a whole
//! window per life.
//!
//! While idle, the thread probes the directory (a small file written, fsynced and removed)
//! every [`PROBE_EVERY`], so readiness learns of a full or read-only disk before a lease does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use snowlease_proto::layout::unix_ms_now;

use crate::clock::{Clock, MonotonicClock};
use crate::generator::Generator;
use crate::lease::Leaser;
use crate::state::StateStore;

/// Smallest window reserved while the server's clock is ahead of the wall clock: 100 ms, so
/// the persister writes at most 20 times a second then (a fsync takes 1 to 10 ms on the disks
/// measured), and a crash loop drifts by at most that per life.
pub const MIN_RESERVE_MS: u64 = 100;

/// How often an idle persister checks that the state directory still takes a write: readiness
/// turns 503 within this long of a disk going read-only or full while nothing is leased. One
/// small fsync every 10 s.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);

/// What the persister knows about the state directory, for readiness and metrics.
#[derive(Debug)]
pub struct StateHealth {
    writable: AtomicBool,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Default for StateHealth {
    fn default() -> Self {
        StateHealth {
            writable: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }
}

impl StateHealth {
    /// Whether the last write or probe succeeded.
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// Failed writes and probes so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The last failure's text, while the directory is not writable.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record(&self, result: &Result<(), crate::state::StateError>) {
        let was = self.writable.swap(result.is_ok(), Ordering::AcqRel);
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                if !was {
                    tracing::info!("the state directory takes writes again");
                }
                *last = None;
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if was {
                    tracing::error!(error = %e, "the state directory does not take writes; leases needing a new reservation wait, then fail UNAVAILABLE, and /readyz says not_durable once the reservation runs out");
                }
                *last = Some(e.to_string());
            }
        }
    }
}

/// Everything the persistence thread works on.
#[derive(Debug)]
pub struct Persister<'a> {
    /// The state file.
    pub store: &'a StateStore,
    /// The generators and the meeting point with waiting leases.
    pub leaser: &'a Leaser<Arc<MonotonicClock>>,
    /// Readiness and metrics.
    pub health: &'a StateHealth,
    /// `--reserve-ms`.
    pub window: u64,
    /// Set at shutdown.
    pub stopping: &'a AtomicBool,
}

impl Persister<'_> {
    /// Runs until `stopping` is set. See the module docs.
    pub fn run(&self) {
        let poll = Duration::from_millis((self.window / 8).clamp(1, 100));
        let mut last_io = Instant::now();
        while !self.stopping.load(Ordering::Acquire) {
            if let Some(marks) = self.plan() {
                let result = self.store.persist_all(&marks);
                self.health.record(&result);
                last_io = Instant::now();
                if result.is_ok() {
                    for (g, mark) in self.leaser.workers().iter().zip(&marks) {
                        g.set_durable_limit(*mark);
                    }
                    self.leaser.durability().raised();
                } else {
                    thread::sleep(poll);
                }
            } else if last_io.elapsed() >= PROBE_EVERY
                || (!self.health.writable() && last_io.elapsed() >= poll)
            {
                self.health.record(&self.store.probe());
                last_io = Instant::now();
            }
            thread::park_timeout(poll);
        }
    }

    /// The marks to write now, or `None` if every worker's reservation covers its need.
    fn plan(&self) -> Option<Vec<u64>> {
        let first = self.leaser.first();
        let clock = first.clock();
        let ahead = clock.now_unix_ms().saturating_sub(unix_ms_now());
        let window = effective_window(self.window, ahead);
        let now_tick = first.now_tick();
        let mut any = false;
        let marks = self
            .leaser
            .workers()
            .iter()
            .map(|g| {
                let durable = g.durable_limit();
                match need(g, self.window, now_tick) {
                    Some(from) if durable.saturating_sub(from) < window / 2 + 1 => {
                        any = true;
                        let last = g.layout().max_tick() + 1;
                        from.saturating_add(window).min(last).max(durable)
                    }
                    _ => durable,
                }
            })
            .collect();
        any.then_some(marks)
    }
}

/// The first tick a worker's leases are about to use, if any: its next tick (or the clock's)
/// when it issued within the last window, and any tick a lease found not durable.
fn need<C: Clock>(g: &Generator<C>, window: u64, now_tick: u64) -> Option<u64> {
    let next = g.next_tick();
    let active = g.issued_any() && next.saturating_add(window) > now_tick;
    let demand = g.demand_tick();
    let waiting = demand >= g.durable_limit() && demand > 0;
    match (active, waiting) {
        (true, true) => Some(next.max(now_tick).max(demand)),
        (true, false) => Some(next.max(now_tick)),
        (false, true) => Some(demand),
        (false, false) => None,
    }
}

/// The window to reserve when the server's clock is `ahead_ms` ahead of the wall clock.
pub fn effective_window(window: u64, ahead_ms: u64) -> u64 {
    window
        .saturating_sub(ahead_ms)
        .max(MIN_RESERVE_MS.min(window))
}

/// After a graceful drain nothing more will be issued, so the state file can hold each
/// worker's first unused tick instead of the window reserved ahead: a quick restart then does
/// not start seconds ahead of the clock. Never lowers a mark below what this process started
/// from.
pub fn lower_marks_after_drain(store: &StateStore, leaser: &Leaser<Arc<MonotonicClock>>) {
    let marks: Vec<u64> = leaser
        .workers()
        .iter()
        .map(|g| g.first_unused_tick().min(g.durable_limit()))
        .collect();
    let lower = leaser
        .workers()
        .iter()
        .zip(&marks)
        .any(|(g, m)| *m < g.durable_limit());
    if lower {
        if let Err(e) = store.persist_all(&marks) {
            tracing::warn!(error = %e, "could not lower the reservation after the drain; the next start begins at the reserved mark");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_window_shrinks_while_the_clock_runs_ahead_of_the_wall() {
        assert_eq!(effective_window(3_000, 0), 3_000);
        assert_eq!(effective_window(3_000, 1_000), 2_000);
        assert_eq!(effective_window(3_000, 2_950), MIN_RESERVE_MS);
        assert_eq!(effective_window(3_000, 60_000), MIN_RESERVE_MS);
        assert_eq!(
            effective_window(50, 10),
            50,
            "never above the configured window"
        );
    }
}
