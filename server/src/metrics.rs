//! Counters for `/metrics`, kept per core so the hot path never shares a cache line.
//!
//! Each serving core (and the admin thread) owns one cache-padded [`CoreMetrics`] slot and only
//! ever increments its own. A scrape sums the slots, takes the [`Gauges`] the admin port reads
//! from the generators, the clock and the state directory, and renders every family of
//! `FAMILIES` in order: each family is declared once there (name, type, help and where its
//! samples come from), and label sets that follow an enum ([`Outcome`], [`Rejection`],
//! [`Wait`], the protocol's error codes) are generated from the enum, so no table can drift
//! from the code that counts.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use snowlease_proto::wire::ErrorCode;

/// Declares a fieldless enum used as a label, with its label values in one list.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vdoc])* $variant,)* }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            /// How many values there are.
            pub const COUNT: usize = Self::ALL.len();

            /// The label value.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }
        }
    };
}

label_enum! {
    /// Lease outcomes, the `outcome` label of `snowlease_leases_total`.
    Outcome {
        /// Granted everything asked.
        Full = "full",
        /// Granted what was left of the tick (or of the lead, for a bulk lease).
        Partial = "partial",
        /// Count out of range.
        Invalid = "invalid_count",
        /// Not durable in time, or the layout is exhausted.
        Unavailable = "unavailable",
    }
}

label_enum! {
    /// Why a lease connection was turned away, the `reason` label of
    /// `snowlease_connections_rejected_total`.
    Rejection {
        /// The server's connection cap.
        Cap = "cap",
        /// The per-peer cap.
        PeerCap = "peer_cap",
    }
}

label_enum! {
    /// What a lease waited for, the `reason` label of `snowlease_generator_waits_total`.
    Wait {
        /// The clock: the lead was used up.
        Lead = "lead",
        /// The durable reservation.
        Durable = "durable",
    }
}

/// Frame errors are counted per error code of the protocol, plus one slot for codes this
/// build does not know.
const ERROR_SLOTS: usize = ErrorCode::ALL.len() + 1;

/// One core's counters.
#[derive(Debug)]
pub struct CoreMetrics {
    /// IDs issued, per worker of the process (index into its worker set).
    ids_issued: Box<[AtomicU64]>,
    leases: [AtomicU64; Outcome::COUNT],
    http_requests: AtomicU64,
    http_rejected: AtomicU64,
    conns_accepted: AtomicU64,
    conns_rejected: [AtomicU64; Rejection::COUNT],
    conns_closed: AtomicU64,
    first_frame_timeouts: AtomicU64,
    frame_errors: [AtomicU64; ERROR_SLOTS],
    waits: [AtomicU64; Wait::COUNT],
    tls_handshake_failures: AtomicU64,
}

fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

impl CoreMetrics {
    fn new(workers: usize) -> CoreMetrics {
        CoreMetrics {
            ids_issued: (0..workers.max(1)).map(|_| AtomicU64::new(0)).collect(),
            leases: Default::default(),
            http_requests: AtomicU64::new(0),
            http_rejected: AtomicU64::new(0),
            conns_accepted: AtomicU64::new(0),
            conns_rejected: Default::default(),
            conns_closed: AtomicU64::new(0),
            first_frame_timeouts: AtomicU64::new(0),
            frame_errors: Default::default(),
            waits: Default::default(),
            tls_handshake_failures: AtomicU64::new(0),
        }
    }

    /// Records a lease's outcome and the IDs it carried, from the first worker.
    pub fn lease(&self, outcome: Outcome, ids: u64) {
        self.lease_from(outcome, 0, ids);
    }

    /// Records a lease's outcome and the IDs it carried from worker `worker` (an index into
    /// the process's worker set).
    pub fn lease_from(&self, outcome: Outcome, worker: usize, ids: u64) {
        bump(&self.leases[outcome as usize], 1);
        self.issued(worker, ids);
    }

    /// Records IDs issued by worker `worker` (an index into the process's worker set).
    pub fn issued(&self, worker: usize, ids: u64) {
        if ids > 0 {
            let slot = worker.min(self.ids_issued.len() - 1);
            bump(&self.ids_issued[slot], ids);
        }
    }

    /// Records an ERROR frame sent.
    pub fn frame_error(&self, code: ErrorCode) {
        let slot = ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .unwrap_or(ERROR_SLOTS - 1);
        bump(&self.frame_errors[slot], 1);
    }

    /// A connection was accepted.
    pub fn accepted(&self) {
        bump(&self.conns_accepted, 1);
    }

    /// Connections this slot accepted so far.
    pub fn accepted_total(&self) -> u64 {
        self.conns_accepted.load(Ordering::Relaxed)
    }

    /// A connection was turned away at the server's cap.
    pub fn rejected(&self) {
        self.rejected_for(Rejection::Cap);
    }

    /// A connection was turned away, for `why`.
    pub fn rejected_for(&self, why: Rejection) {
        bump(&self.conns_rejected[why as usize], 1);
    }

    /// An accepted connection closed.
    pub fn closed(&self) {
        bump(&self.conns_closed, 1);
    }

    /// A connection sent no complete frame in time.
    pub fn first_frame_timed_out(&self) {
        bump(&self.first_frame_timeouts, 1);
    }

    /// A lease waited for `why`.
    pub fn waited(&self, why: Wait) {
        bump(&self.waits[why as usize], 1);
    }

    /// A lease waited for the clock (lead used up).
    pub fn waited_lead(&self) {
        self.waited(Wait::Lead);
    }

    /// A lease waited for the durable reservation.
    pub fn waited_durable(&self) {
        self.waited(Wait::Durable);
    }

    /// A TLS handshake failed or timed out.
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
    workers: usize,
}

impl Metrics {
    /// Slots for `cores` serving cores plus the admin thread, for one worker.
    pub fn new(cores: usize) -> Metrics {
        Self::with_workers(cores, 1)
    }

    /// Slots for `cores` serving cores plus the admin thread, counting IDs per worker for
    /// `workers` workers.
    pub fn with_workers(cores: usize, workers: usize) -> Metrics {
        Metrics {
            slots: (0..=cores)
                .map(|_| CachePadded::new(CoreMetrics::new(workers)))
                .collect(),
            workers: workers.max(1),
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

    /// IDs issued so far by worker index `worker` (all cores and the admin port).
    pub fn ids_issued_by(&self, worker: usize) -> u64 {
        self.sum(|s| &s.ids_issued[worker.min(s.ids_issued.len() - 1)])
    }

    /// IDs issued so far (all workers, cores and the admin port).
    pub fn ids_issued(&self) -> u64 {
        (0..self.workers).map(|w| self.ids_issued_by(w)).sum()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.sum(|s| &s.conns_accepted)
            .saturating_sub(self.sum(|s| &s.conns_closed))
    }
}

/// One worker's gauges.
#[derive(Debug, Clone, Default)]
pub struct WorkerGauges {
    /// Worker id.
    pub worker_id: u16,
    /// How far its last claimed tick is ahead of the server clock, ms.
    pub lead_ms: u64,
    /// Durable reservation ahead of the clock and of its next tick, ms (None without a state
    /// dir); 0 once it has run out.
    pub reserved_ahead_ms: Option<i64>,
}

/// Gauges read at scrape time from outside the counters.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Worker id (the first one, with several).
    pub worker_id: u16,
    /// Each worker's gauges; empty means the single worker `worker_id`.
    pub workers: Vec<WorkerGauges>,
    /// Layout as text, e.g. `41/10/12`.
    pub layout: String,
    /// Epoch, RFC 3339.
    pub epoch: String,
    /// IDs per second the layout allows this process: workers x 2^sequence_bits x 1000.
    pub capacity_ids_per_second: u64,
    /// Ticks started ahead of the clock.
    pub borrowed_ticks: u64,
    /// Generator tick minus clock tick, ms (the largest over workers).
    pub lead_ms: u64,
    /// Generator tick minus the *wall* clock (may differ after a step back), ms.
    pub wall_lead_ms: i64,
    /// Clock steps seen: (back, forward followed).
    pub clock_steps: (u64, u64),
    /// A forward step of the wall clock held but not followed, ms.
    pub clock_forward_held_ms: u64,
    /// Seconds until the timestamp field runs out.
    pub lifetime_seconds: u64,
    /// Durable reservation ahead, ms (None without a state dir): the smallest over workers.
    pub reserved_ahead_ms: Option<i64>,
    /// State file writes so far.
    pub state_writes: u64,
    /// Failed state file writes and probes so far.
    pub state_write_errors: u64,
    /// Whether the state directory took the last write (None without a state dir).
    pub state_writable: Option<bool>,
    /// Whether the server is ready.
    pub ready: bool,
    /// Each readiness reason and whether it holds now (see `health`).
    pub not_ready: Vec<(&'static str, bool)>,
    /// Serving threads.
    pub threads: usize,
}

/// Prometheus metric types.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// The samples of one family: `(labels, value)`, labels already in `{...}` form or empty.
type Samples = Vec<(String, String)>;

/// One metric family: declared once, rendered from the declaration.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: fn(&Metrics, &Gauges) -> Samples,
}

fn one(v: impl ToString) -> Samples {
    vec![(String::new(), v.to_string())]
}

fn labelled<T: Copy>(
    all: &[T],
    key: &str,
    label: fn(T) -> &'static str,
    value: impl Fn(T) -> u64,
) -> Samples {
    all.iter()
        .map(|&t| (format!("{{{key}=\"{}\"}}", label(t)), value(t).to_string()))
        .collect()
}

/// The workers to report per worker: the gauges' list, or the one worker.
fn workers(g: &Gauges) -> Vec<WorkerGauges> {
    if g.workers.is_empty() {
        vec![WorkerGauges {
            worker_id: g.worker_id,
            lead_ms: g.lead_ms,
            reserved_ahead_ms: g.reserved_ahead_ms,
        }]
    } else {
        g.workers.clone()
    }
}

/// Every family `/metrics` exposes, in order.
const FAMILIES: &[Family] = &[
    Family {
        name: "snowlease_info",
        kind: Kind::Gauge,
        help: "Worker ids and layout of this server.",
        samples: |_, g| {
            let n = workers(g).len();
            vec![(
                format!(
                    "{{worker_id=\"{}\",layout=\"{}\",epoch=\"{}\",threads=\"{}\",workers=\"{n}\"}}",
                    g.worker_id, g.layout, g.epoch, g.threads
                ),
                "1".into(),
            )]
        },
    },
    Family {
        name: "snowlease_ready",
        kind: Kind::Gauge,
        help: "1 while a lease can be granted now, 0 while starting, draining, not durable or exhausted.",
        samples: |_, g| one(u64::from(g.ready)),
    },
    Family {
        name: "snowlease_not_ready",
        kind: Kind::Gauge,
        help: "1 for each reason the server is not ready now (starting, draining, not_durable, exhausted).",
        samples: |_, g| {
            g.not_ready
                .iter()
                .map(|(r, on)| (format!("{{reason=\"{r}\"}}"), u64::from(*on).to_string()))
                .collect()
        },
    },
    Family {
        name: "snowlease_capacity_ids_per_second",
        kind: Kind::Gauge,
        help: "IDs per second the layout allows this process (workers x IDs per tick x 1000).",
        samples: |_, g| one(g.capacity_ids_per_second),
    },
    Family {
        name: "snowlease_ids_issued_total",
        kind: Kind::Counter,
        help: "IDs handed out, all workers.",
        samples: |m, _| one(m.ids_issued()),
    },
    Family {
        name: "snowlease_worker_ids_issued_total",
        kind: Kind::Counter,
        help: "IDs handed out, per worker id.",
        samples: |m, g| {
            workers(g)
                .iter()
                .enumerate()
                .map(|(i, w)| (format!("{{worker=\"{}\"}}", w.worker_id), m.ids_issued_by(i).to_string()))
                .collect()
        },
    },
    Family {
        name: "snowlease_leases_total",
        kind: Kind::Counter,
        help: "LEASE and BULK_LEASE requests (and /generate-id calls) by outcome.",
        samples: |m, _| labelled(Outcome::ALL, "outcome", Outcome::label, |o| m.sum(|s| &s.leases[o as usize])),
    },
    Family {
        name: "snowlease_connections_open",
        kind: Kind::Gauge,
        help: "Lease connections open now.",
        samples: |m, _| one(m.open_connections()),
    },
    Family {
        name: "snowlease_connections_accepted_total",
        kind: Kind::Counter,
        help: "Lease connections accepted.",
        samples: |m, _| one(m.sum(|s| &s.conns_accepted)),
    },
    Family {
        name: "snowlease_connections_rejected_total",
        kind: Kind::Counter,
        help: "Lease connections turned away with OVERLOADED, at the server's cap or a peer's.",
        samples: |m, _| one(Rejection::ALL.iter().map(|r| m.sum(|s| &s.conns_rejected[*r as usize])).sum::<u64>()),
    },
    Family {
        name: "snowlease_connections_rejected_by_reason_total",
        kind: Kind::Counter,
        help: "Lease connections turned away with OVERLOADED, by cap: the server's (cap) or the peer's (peer_cap).",
        samples: |m, _| labelled(Rejection::ALL, "reason", Rejection::label, |r| m.sum(|s| &s.conns_rejected[r as usize])),
    },
    Family {
        name: "snowlease_first_frame_timeouts_total",
        kind: Kind::Counter,
        help: "Lease connections closed because no complete frame arrived within the first-frame timeout.",
        samples: |m, _| one(m.sum(|s| &s.first_frame_timeouts)),
    },
    Family {
        name: "snowlease_frame_errors_total",
        kind: Kind::Counter,
        help: "ERROR frames sent, by code.",
        samples: |m, _| {
            ErrorCode::ALL
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("{{code=\"{}\"}}", c.name()), m.sum(|s| &s.frame_errors[i]).to_string()))
                .collect()
        },
    },
    Family {
        name: "snowlease_tls_handshake_failures_total",
        kind: Kind::Counter,
        help: "Lease connections closed because the TLS handshake failed or timed out (plaintext clients, wrong CA, scanners).",
        samples: |m, _| one(m.sum(|s| &s.tls_handshake_failures)),
    },
    Family {
        name: "snowlease_http_requests_total",
        kind: Kind::Counter,
        help: "Admin HTTP requests served.",
        samples: |m, _| one(m.sum(|s| &s.http_requests)),
    },
    Family {
        name: "snowlease_http_connections_rejected_total",
        kind: Kind::Counter,
        help: "Admin connections turned away at the admin connection cap.",
        samples: |m, _| one(m.sum(|s| &s.http_rejected)),
    },
    Family {
        name: "snowlease_ticks_borrowed_total",
        kind: Kind::Counter,
        help: "Milliseconds started ahead of the clock under load.",
        samples: |_, g| one(g.borrowed_ticks),
    },
    Family {
        name: "snowlease_lead_ms",
        kind: Kind::Gauge,
        help: "How far the last claimed tick is ahead of the server clock (the largest over workers); IDs are handed out at most max_lead ms ahead, claims beyond wait for their time.",
        samples: |_, g| one(g.lead_ms),
    },
    Family {
        name: "snowlease_worker_lead_ms",
        kind: Kind::Gauge,
        help: "How far each worker's last claimed tick is ahead of the server clock.",
        samples: |_, g| {
            workers(g)
                .iter()
                .map(|w| (format!("{{worker=\"{}\"}}", w.worker_id), w.lead_ms.to_string()))
                .collect()
        },
    },
    Family {
        name: "snowlease_wall_clock_lead_ms",
        kind: Kind::Gauge,
        help: "Last issued tick minus the wall clock (positive after the wall clock stepped back, or while a forward step is held).",
        samples: |_, g| one(g.wall_lead_ms),
    },
    Family {
        name: "snowlease_clock_steps_total",
        kind: Kind::Counter,
        help: "Wall clock steps seen against the monotonic clock: back (ignored) and forward (followed).",
        samples: |_, g| {
            vec![
                ("{direction=\"back\"}".into(), g.clock_steps.0.to_string()),
                ("{direction=\"forward\"}".into(), g.clock_steps.1.to_string()),
            ]
        },
    },
    Family {
        name: "snowlease_clock_forward_held_ms",
        kind: Kind::Gauge,
        help: "A forward step of the wall clock larger than --clock-follow-max-ms, held and not (yet) followed; 0 when none.",
        samples: |_, g| one(g.clock_forward_held_ms),
    },
    Family {
        name: "snowlease_generator_waits_total",
        kind: Kind::Counter,
        help: "Leases that waited: for the clock (lead used up) or for the durable reservation.",
        samples: |m, _| labelled(Wait::ALL, "reason", Wait::label, |w| m.sum(|s| &s.waits[w as usize])),
    },
    Family {
        name: "snowlease_lifetime_remaining_seconds",
        kind: Kind::Gauge,
        help: "Seconds until the timestamp field runs out.",
        samples: |_, g| one(g.lifetime_seconds),
    },
    Family {
        name: "snowlease_reserved_ahead_ms",
        kind: Kind::Gauge,
        help: "Durably reserved milliseconds ahead of the clock and the next tick (the smallest over workers); 0 once the reservation has run out.",
        samples: |_, g| g.reserved_ahead_ms.map_or_else(Vec::new, one),
    },
    Family {
        name: "snowlease_state_writes_total",
        kind: Kind::Counter,
        help: "State file writes (each fsynced).",
        samples: |_, g| g.state_writable.map_or_else(Vec::new, |_| one(g.state_writes)),
    },
    Family {
        name: "snowlease_state_write_errors_total",
        kind: Kind::Counter,
        help: "State file writes and write probes that failed.",
        samples: |_, g| g.state_writable.map_or_else(Vec::new, |_| one(g.state_write_errors)),
    },
    Family {
        name: "snowlease_state_dir_writable",
        kind: Kind::Gauge,
        help: "1 while the state directory took the last write or probe, 0 after a failure until one succeeds.",
        samples: |_, g| g.state_writable.map_or_else(Vec::new, |w| one(u64::from(w))),
    },
];

/// Renders the Prometheus text exposition format. A family without samples (the state
/// gauges without a state directory) is left out entirely.
pub fn render(m: &Metrics, g: &Gauges) -> String {
    let mut out = String::with_capacity(8192);
    for family in FAMILIES {
        let samples = (family.samples)(m, g);
        if samples.is_empty() {
            continue;
        }
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {kind}",
            family.name, family.help, family.name
        );
        for (labels, value) in samples {
            let _ = writeln!(out, "{}{labels} {value}", family.name);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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

    #[test]
    fn every_family_has_help_and_type_and_label_sets_follow_their_enums() {
        let m = Metrics::with_workers(1, 3);
        m.core(0).lease_from(Outcome::Full, 2, 5);
        m.core(0).rejected_for(Rejection::PeerCap);
        m.core(0).frame_error(ErrorCode(999));
        let g = Gauges {
            worker_id: 10,
            workers: (10..13)
                .map(|w| WorkerGauges {
                    worker_id: w,
                    ..WorkerGauges::default()
                })
                .collect(),
            state_writable: Some(true),
            reserved_ahead_ms: Some(0),
            not_ready: vec![("starting", false), ("not_durable", true)],
            ..Gauges::default()
        };
        let text = render(&m, &g);
        for f in FAMILIES {
            assert!(text.contains(&format!("# HELP {} ", f.name)), "{}", f.name);
            assert!(text.contains(&format!("# TYPE {} ", f.name)), "{}", f.name);
        }
        assert!(
            text.contains("snowlease_worker_ids_issued_total{worker=\"12\"} 5\n"),
            "{text}"
        );
        assert!(text
            .contains("snowlease_connections_rejected_by_reason_total{reason=\"peer_cap\"} 1\n"));
        assert!(text.contains("snowlease_connections_rejected_total 1\n"));
        assert!(text.contains("snowlease_not_ready{reason=\"not_durable\"} 1\n"));
        for o in Outcome::ALL {
            assert!(text.contains(&format!("outcome=\"{}\"", o.label())));
        }
        for c in ErrorCode::ALL {
            assert!(text.contains(&format!("code=\"{}\"", c.name())));
        }
        // An unknown code is counted (in the extra slot) without panicking or being shown.
        assert!(!text.contains("UNKNOWN"));
    }
}
