//! Readiness: whether a lease could be granted now, and if not, why.
//!
//! The admin port's `/readyz`, the `snowlease_ready` and `snowlease_not_ready{reason}` metrics
//! and the drain all read [`Health`]. The phase (starting, serving, draining) is set by
//! start-up and shutdown; the other reasons are computed afresh at every probe from the
//! generators, the clock and what the persister last saw of the state directory, so readiness
//! comes back by itself when the disk recovers.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::clock::MonotonicClock;
use crate::lease::Leaser;
use crate::persist::StateHealth;

/// Why the server is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Start-up has not finished.
    Starting,
    /// SIGTERM: draining.
    Draining,
    /// A lease now would need a state file write, and the state directory does not take any.
    NotDurable,
    /// The layout's timestamp field is used up (or the clock is past its end).
    Exhausted,
}

impl Reason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [Reason; 4] = [
        Reason::Starting,
        Reason::Draining,
        Reason::NotDurable,
        Reason::Exhausted,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Starting => "starting",
            Reason::Draining => "draining",
            Reason::NotDurable => "not_durable",
            Reason::Exhausted => "exhausted",
        }
    }
}

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const DRAINING: u8 = 2;

/// The server's phase; see the module docs.
#[derive(Debug, Default)]
pub struct Health {
    phase: AtomicU8,
}

impl Health {
    /// Start-up finished.
    pub fn serving(&self) {
        self.phase.store(SERVING, Ordering::Release);
    }

    /// Shutdown began.
    pub fn draining(&self) {
        self.phase.store(DRAINING, Ordering::Release);
    }

    /// Whether the server accepts work (serving, not draining), whatever the disk says.
    pub fn is_serving(&self) -> bool {
        self.phase.load(Ordering::Acquire) == SERVING
    }

    /// Every reason that holds now, with a sentence for each; empty when ready.
    pub fn check(
        &self,
        leaser: &Leaser<Arc<MonotonicClock>>,
        state: Option<&StateHealth>,
    ) -> Vec<(Reason, String)> {
        let mut out = Vec::new();
        match self.phase.load(Ordering::Acquire) {
            STARTING => out.push((Reason::Starting, "starting".to_owned())),
            DRAINING => out.push((Reason::Draining, "draining after SIGTERM".to_owned())),
            _ => {}
        }
        let first = leaser.first();
        let now_tick = first.now_tick();
        let layout = first.layout();
        if now_tick > layout.max_tick()
            || leaser
                .workers()
                .iter()
                .any(|g| g.next_tick() > layout.max_tick())
        {
            let eol = snowlease_proto::layout::format_unix_ms(layout.end_of_life_unix_ms());
            out.push((
                Reason::Exhausted,
                format!("the layout's timestamp field ran out at {eol}"),
            ));
        }
        if let Some(state) = state.filter(|s| !s.writable()) {
            // Still ready while the current reservation covers a lease now.
            let uncovered = leaser
                .workers()
                .iter()
                .any(|g| g.durable_limit() <= g.next_tick().max(now_tick));
            if uncovered {
                let why = state
                    .last_error()
                    .unwrap_or_else(|| "write failed".to_owned());
                out.push((
                    Reason::NotDurable,
                    format!("the state directory does not take writes: {why}"),
                ));
            }
        }
        out
    }
}
