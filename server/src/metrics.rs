//! Counters for `/metrics`, kept per core so the hot path never shares a cache line.
//!
//! Each serving core (and the admin thread) owns one cache-padded [`CoreMetrics`] slot and only
//! ever increments its own; a scrape sums the slots and adds the gauges read from the
//! generator, the clock and the state file, then renders Prometheus text in [`render`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use snowlease_proto::wire::ErrorCode;

/// Lease outcomes, the `outcome` label of `snowlease_leases_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Granted everything asked.
    Full = 0,
    /// Granted what was left of the tick.
    Partial = 1,
    /// Count out of range.
    Invalid = 2,
    /// Layout exhausted or server draining.
    Unavailable = 3,
}

const OUTCOMES: [&str; 4] = ["full", "partial", "invalid_count", "unavailable"];
const MAX_CODE: usize = 8;

/// One core's counters.
#[derive(Debug, Default)]
pub struct CoreMetrics {
    ids_issued: AtomicU64,
    leases: [AtomicU64; 4],
    http_requests: AtomicU64,
    http_rejected: AtomicU64,
    conns_accepted: AtomicU64,
    conns_rejected: AtomicU64,
    conns_closed: AtomicU64,
    frame_errors: [AtomicU64; MAX_CODE],
    waits_lead: AtomicU64,
    waits_durable: AtomicU64,
    tls_handshake_failures: AtomicU64,
}

fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

impl CoreMetrics {
    /// Records a lease's outcome and the IDs it carried.
    pub fn lease(&self, outcome: Outcome, ids: u64) {
        bump(&self.leases[outcome as usize], 1);
        if ids > 0 {
            bump(&self.ids_issued, ids);
        }
    }

    /// Records an ERROR frame sent.
    pub fn frame_error(&self, code: ErrorCode) {
        bump(&self.frame_errors[usize::from(code.0).min(MAX_CODE - 1)], 1);
    }

    /// A connection was accepted.
    pub fn accepted(&self) {
        bump(&self.conns_accepted, 1);
    }

    /// Connections this slot accepted so far.
    pub fn accepted_total(&self) -> u64 {
        self.conns_accepted.load(Ordering::Relaxed)
    }

    /// A connection was turned away at the cap.
    pub fn rejected(&self) {
        bump(&self.conns_rejected, 1);
    }

    /// An accepted connection closed.
    pub fn closed(&self) {
        bump(&self.conns_closed, 1);
    }

    /// A lease waited for the clock (lead exhausted).
    pub fn waited_lead(&self) {
        bump(&self.waits_lead, 1);
    }

    /// A lease waited for the durable reservation (slow disk).
    pub fn waited_durable(&self) {
        bump(&self.waits_durable, 1);
    }

    /// A TLS handshake on the lease port failed or timed out; the connection was closed.
    pub fn tls_handshake_failed(&self) {
        bump(&self.tls_handshake_failures, 1);
    }

    /// An admin HTTP request was served.
    pub fn http_request(&self) {
        bump(&self.http_requests, 1);
    }

    /// An admin connection was turned away at its cap.
    pub fn http_rejected(&self) {
        bump(&self.http_rejected, 1);
    }
}

/// All slots: one per serving core, then one for the admin thread.
#[derive(Debug)]
pub struct Metrics {
    slots: Vec<CachePadded<CoreMetrics>>,
}

impl Metrics {
    /// Slots for `cores` serving cores plus the admin thread.
    pub fn new(cores: usize) -> Metrics {
        Metrics {
            slots: (0..=cores)
                .map(|_| CachePadded::new(CoreMetrics::default()))
                .collect(),
        }
    }

    /// The slot of serving core `i`.
    pub fn core(&self, i: usize) -> &CoreMetrics {
        &self.slots[i.min(self.slots.len() - 1)]
    }

    /// The admin thread's slot.
    pub fn admin(&self) -> &CoreMetrics {
        &self.slots[self.slots.len() - 1]
    }

    fn sum(&self, f: impl Fn(&CoreMetrics) -> &AtomicU64) -> u64 {
        self.slots
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum()
    }

    /// IDs issued so far (all cores and the admin port).
    pub fn ids_issued(&self) -> u64 {
        self.sum(|s| &s.ids_issued)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.sum(|s| &s.conns_accepted)
            .saturating_sub(self.sum(|s| &s.conns_closed))
    }
}

/// Gauges read at scrape time from outside the counters.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Worker id.
    pub worker_id: u16,
    /// Layout as text, e.g. `41/10/12`.
    pub layout: String,
    /// Epoch, RFC 3339.
    pub epoch: String,
    /// Ticks started ahead of the clock.
    pub borrowed_ticks: u64,
    /// Generator tick minus clock tick, ms.
    pub lead_ms: u64,
    /// Generator tick minus the *wall* clock (may differ after a step back), ms.
    pub wall_lead_ms: i64,
    /// Clock steps seen: (back, forward).
    pub clock_steps: (u64, u64),
    /// Seconds until the timestamp field runs out.
    pub lifetime_seconds: u64,
    /// Durable reservation ahead of the generator, ms (None without a state dir).
    pub reserved_ahead_ms: Option<i64>,
    /// State file writes so far.
    pub state_writes: u64,
    /// Whether the server is ready.
    pub ready: bool,
    /// Serving threads.
    pub threads: usize,
}

/// Renders the Prometheus text exposition format.
pub fn render(m: &Metrics, g: &Gauges) -> String {
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v.to_string())];
    metric(
        "snowlease_info",
        "gauge",
        "Worker id and layout of this server.",
        &[(
            format!(
                "{{worker_id=\"{}\",layout=\"{}\",epoch=\"{}\",threads=\"{}\"}}",
                g.worker_id, g.layout, g.epoch, g.threads
            ),
            "1".into(),
        )],
    );
    metric(
        "snowlease_ready",
        "gauge",
        "1 while serving, 0 while starting or draining.",
        &one(u64::from(g.ready)),
    );
    metric(
        "snowlease_ids_issued_total",
        "counter",
        "IDs handed out.",
        &one(m.ids_issued()),
    );
    let leases: Vec<_> = OUTCOMES
        .iter()
        .enumerate()
        .map(|(i, o)| {
            (
                format!("{{outcome=\"{o}\"}}"),
                m.sum(|s| &s.leases[i]).to_string(),
            )
        })
        .collect();
    metric(
        "snowlease_leases_total",
        "counter",
        "LEASE requests by outcome.",
        &leases,
    );
    metric(
        "snowlease_connections_open",
        "gauge",
        "Lease connections open now.",
        &one(m.open_connections()),
    );
    metric(
        "snowlease_connections_accepted_total",
        "counter",
        "Lease connections accepted.",
        &one(m.sum(|s| &s.conns_accepted)),
    );
    metric(
        "snowlease_connections_rejected_total",
        "counter",
        "Lease connections refused at the cap (OVERLOADED).",
        &one(m.sum(|s| &s.conns_rejected)),
    );
    let errors: Vec<_> = ErrorCode::ALL
        .iter()
        .map(|c| {
            let i = usize::from(c.0).min(MAX_CODE - 1);
            (
                format!("{{code=\"{}\"}}", c.name()),
                m.sum(|s| &s.frame_errors[i]).to_string(),
            )
        })
        .collect();
    metric(
        "snowlease_frame_errors_total",
        "counter",
        "ERROR frames sent, by code.",
        &errors,
    );
    metric(
        "snowlease_tls_handshake_failures_total",
        "counter",
        "Lease connections closed because the TLS handshake failed or timed out (plaintext clients, wrong CA, scanners).",
        &one(m.sum(|s| &s.tls_handshake_failures)),
    );
    metric(
        "snowlease_http_requests_total",
        "counter",
        "Admin HTTP requests served.",
        &one(m.sum(|s| &s.http_requests)),
    );
    metric(
        "snowlease_http_connections_rejected_total",
        "counter",
        "Admin connections turned away at the admin connection cap.",
        &one(m.sum(|s| &s.http_rejected)),
    );
    metric(
        "snowlease_ticks_borrowed_total",
        "counter",
        "Milliseconds started ahead of the clock under load.",
        &one(g.borrowed_ticks),
    );
    metric(
        "snowlease_lead_ms",
        "gauge",
        "How far the last claimed tick is ahead of the server clock; IDs are handed out at most max_lead ms ahead, claims beyond wait for their time.",
        &one(g.lead_ms),
    );
    metric(
        "snowlease_wall_clock_lead_ms",
        "gauge",
        "Last issued tick minus the wall clock (positive after the wall clock stepped back).",
        &[(String::new(), g.wall_lead_ms.to_string())],
    );
    metric(
        "snowlease_clock_steps_total",
        "counter",
        "Wall clock steps seen against the monotonic clock.",
        &[
            ("{direction=\"back\"}".into(), g.clock_steps.0.to_string()),
            (
                "{direction=\"forward\"}".into(),
                g.clock_steps.1.to_string(),
            ),
        ],
    );
    metric(
        "snowlease_generator_waits_total",
        "counter",
        "Leases that waited: for the clock (lead used up) or for the durable reservation.",
        &[
            (
                "{reason=\"lead\"}".into(),
                m.sum(|s| &s.waits_lead).to_string(),
            ),
            (
                "{reason=\"durable\"}".into(),
                m.sum(|s| &s.waits_durable).to_string(),
            ),
        ],
    );
    metric(
        "snowlease_lifetime_remaining_seconds",
        "gauge",
        "Seconds until the timestamp field runs out.",
        &one(g.lifetime_seconds),
    );
    if let Some(ahead) = g.reserved_ahead_ms {
        metric(
            "snowlease_reserved_ahead_ms",
            "gauge",
            "Durably reserved milliseconds ahead of the generator.",
            &[(String::new(), ahead.to_string())],
        );
        metric(
            "snowlease_state_writes_total",
            "counter",
            "State file writes (each fsynced).",
            &one(g.state_writes),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_every_core_are_summed_in_the_exposition() {
        let m = Metrics::new(2);
        m.core(0).lease(Outcome::Full, 4096);
        m.core(1).lease(Outcome::Partial, 10);
        m.admin().lease(Outcome::Full, 1);
        m.core(1).frame_error(ErrorCode::INVALID_COUNT);
        m.core(0).accepted();
        m.core(1).accepted();
        m.core(0).closed();
        m.core(1).tls_handshake_failed();
        let text = render(
            &m,
            &Gauges {
                worker_id: 7,
                ..Gauges::default()
            },
        );
        assert!(text.contains("snowlease_ids_issued_total 4107\n"), "{text}");
        assert!(text.contains("snowlease_leases_total{outcome=\"full\"} 2\n"));
        assert!(text.contains("snowlease_frame_errors_total{code=\"INVALID_COUNT\"} 1\n"));
        assert!(text.contains("snowlease_connections_open 1\n"));
        assert!(text.contains("snowlease_tls_handshake_failures_total 1\n"));
        assert!(text.contains("worker_id=\"7\""));
        assert!(
            !text.contains("reserved_ahead"),
            "no state dir, no state gauges"
        );
    }
}
