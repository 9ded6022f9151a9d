//! The bench binary end to end: one short run against an in-process server, with the overlap
//! check on, whose JSON report must parse and show IDs flowing.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use snowlease_server::{start, ServerConfig};

/// A one-second run plus setup and drain takes about two; this is far above that.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn run_bench(args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_snowlease-bench"));
    command
        .args(args)
        .env_remove("SNOWLEASE_ADDR")
        .env_remove("SNOWLEASE_TOKEN");
    let out = snowlease_testkit::cli::run(&mut command, None, RUN_LIMIT)
        .unwrap_or_else(|e| panic!("snowlease-bench {args:?} {e}"));
    (out.code, out.stdout, out.stderr)
}

fn json_report(mode: &str, extra: &[&str]) -> serde_json::Value {
    json_report_from(ServerConfig::for_tests(4), mode, extra)
}

/// A server holding worker ids 4..=7 (protocol version 2 lets a bulk lease take them all).
fn four_workers() -> ServerConfig {
    let mut config = ServerConfig::for_tests(4);
    config.worker_count = 4;
    config
}

fn json_report_from(config: ServerConfig, mode: &str, extra: &[&str]) -> serde_json::Value {
    let server = start(config).unwrap();
    let tag = extra.concat().len();
    let dir = std::env::temp_dir().join(format!(
        "snowlease-bench-{}-{mode}-{tag}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let svg = dir.join("chart.svg");
    let addr = server.lease_addr().to_string();
    let mut args = vec![
        "--addr",
        &addr,
        "--mode",
        mode,
        "--duration",
        "1",
        "--verify",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = run_bench(&args);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("verify        ok:"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let chart = std::fs::read_to_string(&svg).unwrap();
    // 4,096,000 IDs/s per worker the load could be served from.
    let ceiling = snowlease_bench::stats::thousands(
        4_096_000 * report["workers"].as_array().unwrap().len() as u64,
    );
    assert!(
        chart.starts_with("<svg") && chart.contains(&format!("ceiling {ceiling} IDs/s")),
        "{ceiling}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    server.shutdown();
    report
}

#[test]
fn a_one_second_raw_run_reports_ids_and_verifies_them() {
    let report = json_report("raw", &["--connections", "2", "--depth", "4"]);
    assert!(report["ids_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["workers"], serde_json::json!([4]));
    assert_eq!(report["verify"]["overlaps"], 0);
    assert!(report["verify"]["ids"].as_u64().unwrap() >= report["ids"].as_u64().unwrap());
    assert!(report["latency"]["count"].as_u64().unwrap() > 0);
    assert!(!report["series"].as_array().unwrap().is_empty());
}

#[test]
fn a_one_second_client_run_reports_ids_and_verifies_them() {
    let report = json_report("client", &["--tasks", "2"]);
    assert!(report["ids_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["verify"]["overlaps"], 0);
    assert_eq!(report["settings"]["latency_sampled_every"], 16);
}

#[test]
fn a_batch_above_max_lease_is_refused_before_any_load() {
    let server = start(ServerConfig::for_tests(4)).unwrap();
    let addr = server.lease_addr().to_string();
    let (code, _, stderr) = run_bench(&["--addr", &addr, "--batch", "5000", "--duration", "1"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("exceeds the server's max_lease 4096"),
        "{stderr}"
    );
    server.shutdown();
}

#[test]
fn an_unreachable_server_exits_2_with_the_reason() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (code, _, stderr) =
        run_bench(&["--addr", &addr, "--duration", "1", "--timeout-ms", "2000"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

#[test]
fn raw_and_reconnect_runs_over_tls_report_ids_and_verify_them() {
    let pki = snowlease_bench::tls::throwaway().unwrap();
    let mut config = ServerConfig::for_tests(4);
    config.tls = Some(snowlease_server::config::TlsPaths {
        cert: pki.cert.clone(),
        key: pki.key.clone(),
        client_ca: None,
    });
    let server = start(config).unwrap();
    let addr = server.lease_addr().to_string();
    let ca = pki.ca.display().to_string();
    for mode in ["raw", "reconnect", "client"] {
        let (code, stdout, stderr) = run_bench(&[
            "--addr",
            &addr,
            "--tls",
            "--tls-ca",
            &ca,
            "--mode",
            mode,
            "--duration",
            "0.5",
            "--connections",
            "2",
            "--quiet",
        ]);
        assert_eq!(code, 0, "{mode}: stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(stdout.contains("over TLS"), "{stdout}");
        assert!(stdout.contains("verify        ok:"), "{stdout}");
    }
    server.shutdown();
}

/// A fairness run (after `extra`: 20 load connections, a short warmup, a probe every 2 ms) in
/// which the probe was served, every time it was sent.
fn fairness_report(config: ServerConfig, extra: &[&str]) -> serde_json::Value {
    let shape = [
        "--connections",
        "20",
        "--warmup",
        "0.2",
        "--probe-interval-ms",
        "2",
    ];
    let report = json_report_from(config, "fairness", &[extra, &shape].concat());
    let probe = &report["probe"];
    assert!(probe["served"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(probe["served"], probe["sent"], "{report}");
    report
}

#[test]
fn a_fairness_run_times_the_idle_probe_beside_whole_tick_leases() {
    let report = fairness_report(ServerConfig::for_tests(4), &[]);
    let probe = &report["probe"];
    assert!(probe["latency"]["p99_us"].as_f64().unwrap() > 0.0);
    assert_eq!(report["settings"]["depth"], 1);
    assert_eq!(report["verify"]["overlaps"], 0);
}

#[test]
fn a_bulk_raw_run_takes_ids_from_every_worker_and_verifies_every_block() {
    let report = json_report_from(
        four_workers(),
        "raw",
        &["--bulk", "100000", "--connections", "1", "--depth", "2"],
    );
    assert_eq!(report["settings"]["bulk"], 100_000, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["workers"], serde_json::json!([4, 5, 6, 7]));
    let verify = &report["verify"];
    assert_eq!(verify["overlaps"], 0);
    assert!(verify["ids"].as_u64().unwrap() >= report["ids"].as_u64().unwrap());
    // Each run is expanded into per-tick blocks: many blocks per reply.
    let leases = report["leases"].as_u64().unwrap();
    assert!(leases > 0, "{report}");
    assert!(verify["blocks"].as_u64().unwrap() > leases, "{report}");
    assert!(report["ids"].as_u64().unwrap() > leases * 4096, "{report}");
}

#[test]
fn a_bulk_fairness_run_keeps_the_probe_a_version_1_lease_of_one() {
    let report = fairness_report(four_workers(), &["--bulk", "16384"]);
    let probe = &report["probe"];
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["settings"]["bulk"], 16_384);
    assert_eq!(report["verify"]["overlaps"], 0);
    // The bulk load spans more than one tick per reply.
    let leases = report["leases"].as_u64().unwrap() - probe["served"].as_u64().unwrap();
    assert!(report["ids"].as_u64().unwrap() > leases * 4096, "{report}");
}

#[test]
fn bulk_is_refused_outside_the_raw_and_fairness_modes_and_above_max_bulk() {
    let server = start(ServerConfig::for_tests(4)).unwrap();
    let addr = server.lease_addr().to_string();
    let (code, _, stderr) = run_bench(&[
        "--addr",
        &addr,
        "--mode",
        "client",
        "--bulk",
        "10",
        "--duration",
        "1",
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--bulk works with --mode raw and --mode fairness"),
        "{stderr}"
    );
    let (code, _, stderr) = run_bench(&["--addr", &addr, "--bulk", "4194305", "--duration", "1"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("4194305"), "{stderr}");
    server.shutdown();
}

#[test]
fn a_bulk_run_against_the_server_binary_with_four_workers_verifies() {
    let Some(bin) = server_next_to_bench() else {
        return;
    };
    let server = snowlease_testkit::ServerCommand::new(bin)
        .args(["--worker-ids", "8-11", "--threads", "1"])
        .spawn()
        .unwrap();
    let lease = server.lease_addr().to_string();
    let (code, stdout, stderr) = run_bench(&[
        "--addr",
        &lease,
        "--bulk",
        "1048576",
        "--connections",
        "1",
        "--depth",
        "2",
        "--duration",
        "0.5",
        "--quiet",
    ]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("BULK_LEASE 1048576 (version 2)"),
        "{stdout}"
    );
    assert!(stdout.contains("[8, 9, 10, 11]"), "{stdout}");
    assert!(stdout.contains("verify        ok:"), "{stdout}");
    assert!(stdout.contains("errors        0"), "{stdout}");
}

#[test]
fn a_peer_cap_run_reports_the_other_peer_turned_away_at_a_full_server() {
    let mut config = ServerConfig::for_tests(4);
    config.max_connections = 20;
    let server = start(config).unwrap();
    let addr = server.lease_addr().to_string();
    let dir = std::env::temp_dir().join(format!("snowlease-bench-{}-peer", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let (code, stdout, stderr) = run_bench(&[
        "--addr",
        &addr,
        "--mode",
        "peer-cap",
        "--connections",
        "30",
        "--duration",
        "0.5",
        "--warmup",
        "0.3",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    // Every probe refused is this mode's finding, not a failed run.
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let probe = &report["probe"];
    assert!(probe["sent"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(probe["overloaded"], probe["sent"], "{report}");
    assert_eq!(probe["hog"]["opened"], 30);
    assert_eq!(probe["hog"]["source"], "127.0.0.1");
    // The probing peer's first connection holds one of the 20 slots for the run.
    assert_eq!(probe["hog"]["turned_away"], 11, "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
    server.shutdown();
}

#[test]
fn verify_ranges_reports_totals_and_fails_on_an_overlap_or_a_foreign_worker() {
    let dir = std::env::temp_dir().join(format!("snowlease-bench-{}-ranges", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let layout = snowlease::Layout::DEFAULT;
    let good = dir.join("good.txt");
    std::fs::write(
        &good,
        format!(
            "{} 4096\n{} 16\n",
            layout.compose(10, 0, 0),
            layout.compose(10, 1, 0)
        ),
    )
    .unwrap();
    let (code, stdout, _) =
        run_bench(&["verify-ranges", "--workers", "0 1", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["per_worker"], serde_json::json!({"0": 4096, "1": 16}));
    assert_eq!(v["ok"], true);
    let (code, stdout, _) = run_bench(&[
        "verify-ranges",
        "--format",
        "workers",
        good.to_str().unwrap(),
    ]);
    assert_eq!((code, stdout.trim()), (0, "0:4096 1:16"));
    let (code, stdout, _) = run_bench(&[
        "verify-ranges",
        "--workers",
        "0",
        "--format",
        "text",
        good.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(stdout.contains("1 from unexpected workers"), "{stdout}");
    let overlap = dir.join("overlap.txt");
    std::fs::write(&overlap, format!("{} 1\n", layout.compose(10, 0, 5))).unwrap();
    let (code, stdout, _) = run_bench(&[
        "verify-ranges",
        good.to_str().unwrap(),
        overlap.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("\"overlaps\":1"), "{stdout}");
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "12 x\n").unwrap();
    let (code, _, stderr) = run_bench(&["verify-ranges", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("line 1"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The server binary next to this bench binary, as `--spawn`, `serve` and `startup` find it:
/// present in a workspace test run (`cargo test --workspace` builds every binary first).
fn server_next_to_bench() -> Option<std::path::PathBuf> {
    let found = snowlease_bench::spawn::locate(None).ok().or_else(|| {
        let bench = std::path::Path::new(env!("CARGO_BIN_EXE_snowlease-bench"));
        let server = bench.with_file_name("snowlease-server");
        server.is_file().then_some(server)
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the workspace's tests, which build snowlease-server next to the bench"
        );
        eprintln!("SKIPPED: no snowlease-server next to the bench: run cargo test --workspace");
    }
    found
}

#[test]
fn startup_and_idle_conns_measure_a_real_server_and_report_json() {
    let Some(bin) = server_next_to_bench() else {
        return;
    };
    let bin = bin.to_str().unwrap();
    let (code, stdout, stderr) = run_bench(&["startup", "--server-bin", bin, "--runs", "2"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["ms"].as_array().unwrap().len(), 2);
    assert!(v["median_ms"].as_f64().unwrap() > 0.0);

    let server = snowlease_testkit::ServerCommand::new(bin)
        .args(["--worker-id", "3"])
        .spawn()
        .unwrap();
    let (lease, admin, pid) = (
        server.lease_addr().to_string(),
        server.admin_addr().to_string(),
        server.pid().to_string(),
    );
    let (code, stdout, stderr) = run_bench(&[
        "idle-conns",
        "--addr",
        &lease,
        "--admin",
        &admin,
        "--pid",
        &pid,
        "--connections",
        "300",
        "--per-source",
        "100",
        "--settle-ms",
        "10",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["welcomed"], 300, "{v}");
    assert_eq!(v["sources"], 3);
    assert!(v["open_metric"].as_f64().unwrap() >= 300.0, "{v}");
    assert!(v["rss_conns_kib"].as_u64().unwrap() > 0);
}

#[test]
fn serve_prints_the_addresses_then_stops_the_server_on_sigterm() {
    let Some(bin) = server_next_to_bench() else {
        return;
    };
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_snowlease-bench"))
        .args([
            "serve",
            "--server-bin",
            bin.to_str().unwrap(),
            "--",
            "--worker-id",
            "6",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let server_pid = v["pid"].as_u64().unwrap() as u32;
    assert!(snowlease_testkit::procfs::alive(server_pid));
    let admin: std::net::SocketAddr = v["admin_addr"].as_str().unwrap().parse().unwrap();
    let ready = snowlease_testkit::http::get(admin, "/readyz", &[], RUN_LIMIT).unwrap();
    assert_eq!(ready.status, 200);
    let state = std::path::PathBuf::from(v["state_dir"].as_str().unwrap());
    assert!(state.is_dir());
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = snowlease_testkit::cli::wait_or_kill(&mut child, RUN_LIMIT)
        .expect("serve still running after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!snowlease_testkit::procfs::alive(server_pid));
    assert!(!state.exists(), "the fresh state directory is removed");
}
