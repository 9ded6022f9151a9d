//! The bench binary end to end: one short run against an in-process server, with the overlap
//! check on, whose JSON report must parse and show IDs flowing.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use snowlease_server::{start, ServerConfig};

/// A one-second run plus setup and drain takes about two; this is far above that.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn run_bench(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_snowlease-bench"))
        .args(args)
        .env_remove("SNOWLEASE_ADDR")
        .env_remove("SNOWLEASE_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Bounded by RUN_LIMIT; the output is small (a table and a few progress lines), so the
    // pipes cannot fill while we poll.
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            child.kill().unwrap();
            panic!("snowlease-bench {args:?} still running after {RUN_LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json_report(mode: &str, extra: &[&str]) -> serde_json::Value {
    let server = start(ServerConfig::for_tests(4)).unwrap();
    let dir = std::env::temp_dir().join(format!("snowlease-bench-{}-{mode}", std::process::id()));
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
    assert!(chart.starts_with("<svg") && chart.contains("ceiling 4,096,000 IDs/s"));
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
