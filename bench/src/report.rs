//! The results of a run: counters, latency, errors, the verdict and the series go into one
//! [`Report`], which is printed as a table on stdout and serialised as JSON for `--json`
//! (and charted by [`crate::svg`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use serde::Serialize;

use snowlease::Layout;

use crate::probe::ProbeReport;
use crate::settings::{Mode, Settings};
use crate::stats::{self, duration_text, thousands, Counters, Latency, Sample};
use crate::verify::Verdict;

/// The settings as reported.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSettings {
    /// raw, client, client-lease, reconnect, fairness or peer-cap.
    pub mode: &'static str,
    /// Server address.
    pub addr: String,
    /// Whether the load spoke TLS.
    pub tls: bool,
    /// Raw mode connections.
    pub connections: usize,
    /// Raw mode requests in flight per connection.
    pub depth: usize,
    /// IDs per LEASE or per `lease()` call.
    pub batch: u32,
    /// IDs per BULK_LEASE (raw and fairness with `--bulk`); `None` when LEASEs were sent.
    pub bulk: Option<u32>,
    /// Client mode tasks.
    pub tasks: usize,
    /// Runtime threads.
    pub threads: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warmup seconds.
    pub warmup_s: f64,
    /// Whether blocks were checked for overlaps.
    pub verify: bool,
    /// One latency sample per this many calls (1 = every call).
    pub latency_sampled_every: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// How the run was set up.
    pub settings: ReportSettings,
    /// IDs received in the measured window.
    pub ids: u64,
    /// LEASED replies (raw) or successful calls (client modes) in the measured window.
    pub leases: u64,
    /// `ids` per measured second.
    pub ids_per_sec: f64,
    /// `leases` per measured second.
    pub leases_per_sec: f64,
    /// Distinct worker ids that answered.
    pub workers: Vec<u16>,
    /// What the workers seen can issue at most: a full sequence field per millisecond each.
    pub ceiling_ids_per_sec: f64,
    /// `ids_per_sec / ceiling_ids_per_sec`.
    pub ceiling_share: f64,
    /// Per-request (raw, client-lease) or per-call (client) latency.
    pub latency: Latency,
    /// Errors over the whole run, warmup and drain included.
    pub errors: u64,
    /// The same, by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// The overlap check, when enabled.
    pub verify: Option<Verdict>,
    /// IDs/s per second of the measured window.
    pub series: Vec<Sample>,
    /// The probe modes (fairness, peer-cap): what the light client saw.
    pub probe: Option<ProbeReport>,
}

impl Report {
    /// Assembles a report from a finished run.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        settings: &Settings,
        counters: &Counters,
        layout: &Layout,
        workers: BTreeSet<u16>,
        latency: &Histogram<u64>,
        error_kinds: BTreeMap<String, u64>,
        verify: Option<Verdict>,
        series: Vec<Sample>,
    ) -> Report {
        let secs = settings.duration.as_secs_f64();
        let ids = counters.ids.load(Ordering::Relaxed);
        let leases = counters.leases.load(Ordering::Relaxed);
        let ids_per_sec = stats::rate(ids, secs);
        let ceiling = stats::ceiling_per_worker(layout) * workers.len().max(1) as f64;
        Report {
            settings: ReportSettings {
                mode: settings.mode.name(),
                addr: settings.addr.clone(),
                tls: settings.tls.is_some(),
                connections: settings.connections,
                depth: settings.depth,
                batch: settings.batch,
                bulk: settings.bulk,
                tasks: settings.tasks,
                threads: settings.threads,
                duration_s: secs,
                warmup_s: settings.warmup.as_secs_f64(),
                verify: settings.verify,
                latency_sampled_every: match settings.mode {
                    Mode::Client => settings.sample_every,
                    _ => 1,
                },
            },
            ids,
            leases,
            ids_per_sec,
            leases_per_sec: stats::rate(leases, secs),
            workers: workers.into_iter().collect(),
            ceiling_ids_per_sec: ceiling,
            ceiling_share: if ceiling > 0.0 {
                ids_per_sec / ceiling
            } else {
                0.0
            },
            latency: stats::latency(latency),
            errors: error_kinds.values().sum(),
            error_kinds,
            verify,
            series,
            probe: None,
        }
    }

    /// Whether the run proved anything: IDs arrived and none overlapped. A peer-cap run
    /// needs only probes sent: a probe refused every time is its finding, not a failed run.
    pub fn ok(&self) -> bool {
        let measured = match (self.settings.mode, &self.probe) {
            ("peer-cap", Some(p)) => p.sent > 0,
            _ => self.ids > 0,
        };
        measured && self.verify.as_ref().is_none_or(Verdict::ok)
    }

    /// The end-of-run table: what ran, what came out, then latency, probe, errors, verdict.
    pub fn table(&self) -> String {
        let mut rows = self.run_rows();
        rows.extend(self.result_rows());
        let mut out = String::new();
        for (name, value) in rows {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{name:<14}{value}");
        }
        out
    }

    /// What ran: mode, load shape, time.
    fn run_rows(&self) -> Vec<(String, String)> {
        let s = &self.settings;
        let tls = if s.tls { " over TLS" } else { "" };
        vec![
            ("mode".into(), format!("{} against {}{tls}", s.mode, s.addr)),
            ("load".into(), load_shape(s)),
            (
                "time".into(),
                format!(
                    "{:.1} s measured after {:.1} s warmup, {} runtime thread(s)",
                    s.duration_s, s.warmup_s, s.threads
                ),
            ),
        ]
    }

    /// What came out: counts, rates, ceiling, latency, probe, errors and the verdict.
    fn result_rows(&self) -> Vec<(String, String)> {
        let per_call = match self.settings.mode {
            "raw" | "fairness" => "leases/s",
            "peer-cap" => "probes/s",
            "reconnect" => "conns/s",
            _ => "calls/s",
        };
        let workers = self.workers.len().max(1);
        let mut rows: Vec<(String, String)> = vec![
            ("IDs".into(), thousands(self.ids)),
            ("IDs/s".into(), thousands(self.ids_per_sec.round() as u64)),
            (
                per_call.into(),
                thousands(self.leases_per_sec.round() as u64),
            ),
            (
                "ceiling".into(),
                format!(
                    "{} IDs/s ({workers} worker{}: {:?}), {:.1} % used",
                    thousands(self.ceiling_ids_per_sec.round() as u64),
                    if workers == 1 { "" } else { "s" },
                    self.workers,
                    self.ceiling_share * 100.0
                ),
            ),
            ("latency".into(), latency_text(&self.latency)),
        ];
        if let Some(p) = &self.probe {
            rows.extend(probe_rows(p));
        }
        let kinds: Vec<String> = self
            .error_kinds
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        let errors = if kinds.is_empty() {
            "0".into()
        } else {
            format!("{} ({})", self.errors, kinds.join(", "))
        };
        rows.push(("errors".into(), errors));
        let verify = self
            .verify
            .as_ref()
            .map_or_else(|| "off".into(), Verdict::describe);
        rows.push(("verify".into(), verify));
        rows
    }
}

/// A latency summary on one line.
fn latency_text(l: &Latency) -> String {
    format!(
        "p50 {}  p99 {}  p99.9 {}  max {}  mean {}  ({} samples)",
        duration_text(l.p50_us),
        duration_text(l.p99_us),
        duration_text(l.p999_us),
        duration_text(l.max_us),
        duration_text(l.mean_us),
        thousands(l.count)
    )
}

/// What each load request asks: a LEASE of `batch` or a BULK_LEASE of `bulk`.
fn request_text(s: &ReportSettings) -> String {
    match s.bulk {
        Some(n) => format!("BULK_LEASE {n} (version 2)"),
        None => format!("batch {}", s.batch),
    }
}

/// The load a mode puts on the server, in words.
fn load_shape(s: &ReportSettings) -> String {
    match s.mode {
        "raw" => format!(
            "{} connections x depth {}, {}",
            s.connections,
            s.depth,
            request_text(s)
        ),
        "client-lease" => format!("{} tasks, lease({})", s.tasks, s.batch),
        "reconnect" => format!(
            "{} tasks, each: connect, HELLO, lease({}), close",
            s.connections, s.batch
        ),
        "fairness" => format!(
            "{} connections x depth {}, {}, plus one idle connection probing",
            s.connections,
            s.depth,
            request_text(s)
        ),
        "peer-cap" => format!("{} connections held by one peer", s.connections),
        _ => format!(
            "{} tasks, next_id() (latency: 1 call in {} timed)",
            s.tasks, s.latency_sampled_every
        ),
    }
}

/// The table rows of a probe.
fn probe_rows(p: &ProbeReport) -> Vec<(String, String)> {
    let l = &p.latency;
    let mut rows = vec![
        (
            "probe".into(),
            format!("{}, every {:.1} ms", p.what, p.interval_ms),
        ),
        (
            "probe result".into(),
            format!(
                "{} sent: {} served, {} OVERLOADED, {} failed",
                p.sent, p.served, p.overloaded, p.failed
            ),
        ),
        (
            "probe latency".into(),
            format!(
                "p50 {}  p99 {}  max {}  ({} served)",
                duration_text(l.p50_us),
                duration_text(l.p99_us),
                duration_text(l.max_us),
                thousands(l.count)
            ),
        ),
    ];
    if let Some(h) = &p.hog {
        rows.push((
            "held".into(),
            format!(
                "{} of {} connections from {} open ({} failed to connect); {} turned away, {} closed by the server",
                h.opened, h.asked, h.source, h.connect_failed, h.turned_away, h.closed_by_server
            ),
        ));
    }
    rows
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;
    use crate::verify::{check_disjoint, Block};

    fn settings() -> Settings {
        Settings {
            mode: Mode::Raw,
            addr: "127.0.0.1:1".into(),
            connections: 2,
            depth: 4,
            batch: 4096,
            bulk: None,
            tasks: 1,
            threads: 1,
            duration: Duration::from_secs(2),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(1),
            verify: true,
            sample_every: 16,
            token: None,
            tls: None,
            quiet: true,
            probe_interval: Duration::from_millis(5),
            hog_source: [127, 0, 0, 1].into(),
            hog_hello: false,
            probe_source: [127, 0, 0, 2].into(),
        }
    }

    fn report(ids: u64, workers: &[u16], verdict: Option<Verdict>) -> Report {
        let counters = Counters::default();
        counters.add(ids, ids / 4096, 0);
        let mut h = stats::histogram();
        stats::record(&mut h, Duration::from_micros(50));
        Report::build(
            &settings(),
            &counters,
            &Layout::DEFAULT,
            workers.iter().copied().collect(),
            &h,
            BTreeMap::from([("ERROR UNAVAILABLE".to_string(), 2)]),
            verdict,
            Vec::new(),
        )
    }

    #[test]
    fn rates_and_the_ceiling_share_scale_with_workers() {
        let r = report(8_192_000, &[1], None);
        assert_eq!(r.ids_per_sec, 4_096_000.0);
        assert_eq!(r.leases_per_sec, 1000.0);
        assert_eq!(r.ceiling_share, 1.0);
        let r = report(8_192_000, &[1, 2], None);
        assert_eq!(r.ceiling_ids_per_sec, 8_192_000.0);
        assert_eq!(r.ceiling_share, 0.5);
        assert_eq!(r.errors, 2);
    }

    #[test]
    fn a_run_is_ok_only_with_ids_and_no_overlap() {
        assert!(report(4096, &[1], None).ok());
        assert!(!report(0, &[1], None).ok());
        let overlap =
            check_disjoint(&mut [Block { first: 1, count: 2 }, Block { first: 2, count: 1 }]);
        assert!(!report(4096, &[1], Some(overlap)).ok());
    }

    #[test]
    fn the_table_names_every_figure() {
        let t = report(8_192_000, &[3], None).table();
        for needle in [
            "IDs/s         4,096,000",
            "leases/s      1,000",
            "100.0 % used",
            "p50 50.0 us",
            "errors        2 (ERROR UNAVAILABLE: 2)",
            "verify        off",
        ] {
            assert!(t.contains(needle), "{needle:?} missing from\n{t}");
        }
    }

    #[test]
    fn the_report_serialises_to_json_with_the_series() {
        let json = serde_json::to_value(report(4096, &[1], None)).unwrap();
        assert_eq!(json["settings"]["mode"], "raw");
        assert_eq!(json["ids"], 4096);
        assert!(json["series"].is_array());
        assert!(json["latency"]["p99_us"].is_number());
    }
}
