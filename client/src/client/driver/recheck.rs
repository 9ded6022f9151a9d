//! Early re-resolution: a name that lost a server is resolved again within a quarter second,
//! then with backoff, until it has as many answering servers as before.
//!
//! Every endpoint given as a name remembers its `peak`, the most connections of its
//! addresses that answered at once. A connection of it that fails, or goes silent, starts a
//! [`Recheck`] (unless one runs): the name is resolved again after [`RECHECK_FIRST`], then
//! after steps doubling up to [`RECHECK_MAX`], so a pod that comes back under a new address
//! (or the same one, after leaving the endpoints) gets a connection within one step of
//! reappearing in DNS instead of one `resolve_interval`. Each due recheck first counts the
//! answering connections: back at the peak ends it; a recheck older than [`RECHECK_WINDOW`]
//! ends too and takes the current count as the new peak (the Service was scaled down).

use std::time::{Duration, Instant};

use super::engine::Engine;
use crate::client::config::Target;

/// First early re-resolution after a loss: 250 ms. Kubernetes removes a failed pod from a
/// headless Service's endpoints within about a second of its readiness probe failing, and
/// adds a replacement as soon as it is ready; a quarter second is the shortest step that
/// still costs little (8 queries in the first minute of an outage).
pub(crate) const RECHECK_FIRST: Duration = Duration::from_millis(250);

/// Longest step between early re-resolutions: 2 s (or `resolve_interval`, if shorter). A pod
/// back in DNS is then connected within 2 s, inside the 5 s that issue 16 asks for, for one
/// DNS query per name every 2 s while the endpoint is short of servers.
pub(crate) const RECHECK_MAX: Duration = Duration::from_secs(2);

/// How long an endpoint short of servers keeps re-resolving early: 5 minutes. Long enough
/// for a pod to be rescheduled on another node and pull its image, which usually takes well
/// under that; a guess, and harmless either way: past it a lost pod that comes back is found
/// at the next `resolve_interval` as before, and the cost it bounds is at most 150 extra
/// queries per client per loss.
pub(crate) const RECHECK_WINDOW: Duration = Duration::from_secs(300);

/// An endpoint's run of early re-resolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Recheck {
    /// When the endpoint first fell short.
    since: Instant,
    /// When to look again.
    pub(super) at: Instant,
    step: Duration,
}

impl Engine {
    /// Connections of endpoint `index` that are greeted, not draining and not silent.
    pub(super) fn answering(&self, index: usize) -> usize {
        self.slots
            .iter()
            .filter(|s| s.endpoint == index)
            .filter_map(|s| s.conn())
            .filter(|c| c.ready.is_some() && c.draining.is_none() && !c.silent)
            .count()
    }

    /// A connection of endpoint `index` became ready: the endpoint may have a new peak.
    pub(super) fn note_answering(&mut self, index: usize) {
        let answering = self.answering(index);
        let ep = &mut self.endpoints[index];
        ep.peak = ep.peak.max(answering);
    }

    /// A connection of endpoint `index` failed or went silent: re-resolve its name soon.
    pub(super) fn recheck_soon(&mut self, index: usize, now: Instant) {
        let ep = &mut self.endpoints[index];
        if matches!(ep.target, Target::Name(_)) && ep.recheck.is_none() {
            ep.recheck = Some(Recheck {
                since: now,
                at: now + RECHECK_FIRST,
                step: RECHECK_FIRST,
            });
        }
    }

    /// Whether endpoint `index` needs an early resolution now; ends its recheck when the
    /// endpoint has recovered or the window has passed.
    pub(super) fn recheck_due(&mut self, index: usize, now: Instant) -> bool {
        let Some(r) = self.endpoints[index].recheck else {
            return false;
        };
        if now < r.at {
            return false;
        }
        let answering = self.answering(index);
        let max = RECHECK_MAX.min(self.config.resolve_interval);
        let ep = &mut self.endpoints[index];
        if answering >= ep.peak || now.saturating_duration_since(r.since) >= RECHECK_WINDOW {
            ep.peak = answering;
            ep.recheck = None;
            return false;
        }
        let step = (r.step * 2).min(max);
        ep.recheck = Some(Recheck {
            at: now + step,
            step,
            ..r
        });
        true
    }
}
