//! snowcat end to end: the built binary against an in-process server on 127.0.0.1:0.
//!
//! Each test starts its own server, runs snowcat with arguments and stdin, and reads its exit
//! code, stdout and stderr. Every run is bounded: a child still running after
//! [`RUN_LIMIT`] is killed and the test fails.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::process::Command;
use std::thread;
use std::time::Duration;

use snowlease::Layout;
use snowlease_server::{start, RunningServer, ServerConfig};

/// Far above any run here (each takes milliseconds) and below a test harness's patience.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// Exit code, stdout and stderr of one run.
type Run = snowlease_testkit::cli::Output;

fn server() -> RunningServer {
    start(ServerConfig::for_tests(3)).unwrap()
}

fn snowcat(args: &[&str], stdin: &str) -> Run {
    snowcat_env(args, stdin, &[])
}

/// Runs snowcat like [`snowcat`] and requires exit code 0 (its stderr is the failure message).
#[track_caller]
fn snowcat_ok(args: &[&str], stdin: &str) -> Run {
    let run = snowcat(args, stdin);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run
}

fn snowcat_env(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_snowcat"));
    command
        .args(args)
        .env_remove("SNOWLEASE_ADDR")
        .env_remove("SNOWLEASE_TOKEN")
        .envs(env.iter().copied());
    snowlease_testkit::cli::run(&mut command, Some(stdin), RUN_LIMIT)
        .unwrap_or_else(|e| panic!("snowcat {args:?} {e}"))
}

fn addr(server: &RunningServer) -> String {
    server.lease_addr().to_string()
}

/// Runs snowcat like [`snowcat`] against `server`: `args`, then `--addr` with its address.
fn snowcat_at(server: &RunningServer, args: &[&str], stdin: &str) -> Run {
    snowcat(&[args, &["--addr", &addr(server)]].concat(), stdin)
}

/// Runs snowcat like [`snowcat_at`] and requires exit code 0, as [`snowcat_ok`] does.
#[track_caller]
fn snowcat_ok_at(server: &RunningServer, args: &[&str], stdin: &str) -> Run {
    snowcat_ok(&[args, &["--addr", &addr(server)]].concat(), stdin)
}

#[test]
fn lease_prints_n_distinct_rising_ids_from_the_servers_worker() {
    let s = server();
    let run = snowcat_ok_at(&s, &["lease", "10000"], "");
    let ids: Vec<u64> = run.stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(ids.len(), 10_000);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "IDs must rise");
    assert!(ids
        .iter()
        .all(|&id| Layout::DEFAULT.decompose(id).worker == 3));
}

#[test]
fn lease_ranges_prints_blocks_that_add_up_to_n() {
    let s = server();
    let run = snowcat_ok(&["--addr", &addr(&s), "lease", "9000", "--ranges"], "");
    let mut total = 0u64;
    for line in run.stdout.lines() {
        let (first, count) = line.split_once(' ').unwrap();
        first.parse::<u64>().unwrap();
        let count: u64 = count.parse().unwrap();
        assert!((1..=4096).contains(&count), "{line}");
        total += count;
    }
    assert_eq!(total, 9000);
}

#[test]
fn lease_of_zero_is_a_usage_error() {
    let run = snowcat(&["lease", "0", "--addr", "127.0.0.1:1"], "");
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
fn info_prints_the_welcome_fields_as_a_table_or_json() {
    let s = server();
    let run = snowcat_ok_at(&s, &["info"], "");
    for needle in [
        "worker id     3",
        "41/10/12",
        "2024-01-01T00:00:00.000Z",
        "max lease     4096",
    ] {
        assert!(
            run.stdout.contains(needle),
            "{needle:?} not in\n{}",
            run.stdout
        );
    }
    let run = snowcat_ok_at(&s, &["info", "--json"], "");
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v["worker_id"], 3);
    assert_eq!(v["version"], 1);
    assert_eq!(v["epoch_unix_ms"], 1_704_067_200_000u64);
}

#[test]
fn the_address_can_come_from_the_environment() {
    let s = server();
    let run = snowcat_env(&["info", "--json"], "", &[("SNOWLEASE_ADDR", &addr(&s))]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("\"worker_id\":3"), "{}", run.stdout);
}

#[test]
fn ping_prints_one_round_trip_per_pong_and_a_summary() {
    let s = server();
    let run = snowcat_ok_at(&s, &["ping", "--count", "3", "--interval-ms", "0"], "");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    for (i, line) in lines[..3].iter().enumerate() {
        assert!(
            line.starts_with(&format!("PONG nonce={} rtt=", i + 1)),
            "{line}"
        );
        assert!(line.ends_with(" ms"), "{line}");
    }
    assert!(
        lines[3].starts_with("3 PONGs, rtt min/avg/max = "),
        "{}",
        lines[3]
    );
}

#[test]
fn a_closed_port_is_a_connect_failure_with_exit_code_2() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = snowcat(&["info", "--addr", &format!("127.0.0.1:{port}")], "");
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
}

#[test]
fn decode_takes_the_layout_from_flags() {
    let epoch = 1_600_000_000_000u64;
    let layout = Layout::widths(epoch, 39, 8, 16).unwrap();
    let id = layout.compose(1_000, 200, 65_000);
    // The widths of `layout`, as flags.
    let widths = [
        "--timestamp-bits",
        "39",
        "--worker-bits",
        "8",
        "--sequence-bits",
        "16",
    ];
    let by_date = ["decode", "--epoch", "2020-09-13T12:26:40Z"];
    let run = snowcat_ok(&[&by_date[..], &widths, &[&id.to_string()]].concat(), "");
    assert_eq!(
        run.stdout.trim(),
        format!("{id} 2020-09-13T12:26:41.000Z worker 200 sequence 65000")
    );
    let by_ms = ["decode", "--json", "--epoch", &epoch.to_string()];
    let run = snowcat_ok(&[&by_ms[..], &widths, &[&format!("{id:#x}")]].concat(), "");
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v[0]["worker"], 200);
    assert_eq!(v[0]["tick"], 1_000);
}

#[test]
fn decode_refuses_bad_ids_and_bad_layouts_clearly() {
    let run = snowcat(&["decode", "12", "abc"], "");
    assert_eq!(run.code, 1);
    assert!(run
        .stdout
        .contains("12 2024-01-01T00:00:00.000Z worker 0 sequence 12"));
    assert!(
        run.stderr.contains("\"abc\" is not an ID"),
        "{}",
        run.stderr
    );

    let run = snowcat(&["decode", "--timestamp-bits", "40", "1"], "");
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("must be 63"), "{}", run.stderr);

    let run = snowcat(&["decode", "--epoch", "yesterday", "1"], "");
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("yesterday"), "{}", run.stderr);
}

#[test]
fn decode_reads_ids_from_stdin_when_none_are_given() {
    let run = snowcat_ok(&["decode"], "4096\n  4097 \n");
    assert_eq!(run.stdout.lines().count(), 2);
    assert!(run
        .stdout
        .contains("4097 2024-01-01T00:00:00.000Z worker 1 sequence 1"));
}

#[test]
fn decode_ask_uses_the_servers_layout() {
    let s = server();
    let leased = snowcat_ok_at(&s, &["lease", "1"], "");
    let id = leased.stdout.trim().to_owned();
    let run = snowcat_ok(&["decode", "--ask", "--json", "--addr", &addr(&s), &id], "");
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v[0]["worker"], 3);
    let now = snowlease::layout::unix_ms_now();
    let t = v[0]["unix_ms"].as_u64().unwrap();
    assert!(
        t.abs_diff(now) < 60_000,
        "decoded time {t} far from now {now}"
    );

    let run = snowcat(&["decode", "--ask", "--worker-bits", "9", &id], "");
    assert_eq!(run.code, 2, "--ask and layout flags conflict");
}

#[test]
fn stdin_lines_become_frames_and_replies_become_lines() {
    let s = server();
    let input = "# a session\nhello\n\nlease 5\nlease 5 id=9\nping 7\n";
    let run = snowcat_ok_at(&s, &[], input);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    assert!(
        lines[0].starts_with("WELCOME version=1 worker=3 layout=41/10/12"),
        "{}",
        lines[0]
    );
    assert!(lines[1].starts_with("LEASED id=1 first="), "{}", lines[1]);
    assert!(lines[1].contains(" worker 3 seq "), "{}", lines[1]);
    assert!(lines[2].starts_with("LEASED id=9 "), "{}", lines[2]);
    assert_eq!(lines[3], "PONG nonce=7");
}

#[test]
fn a_server_error_is_printed_and_sets_exit_code_1_while_the_session_goes_on() {
    let s = server();
    let run = snowcat_at(&s, &[], "lease 0\nlease 5000 id=4\nlease 1 id=2\n");
    assert_eq!(run.code, 1, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(
        lines[0].starts_with("ERROR id=1 code=INVALID_COUNT(3) message="),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("ERROR id=4 code=INVALID_COUNT(3)"),
        "{}",
        lines[1]
    );
    assert!(lines[2].starts_with("LEASED id=2 "), "{}", lines[2]);
    assert!(run.stderr.contains("2 server ERROR"), "{}", run.stderr);
}

#[test]
fn a_malformed_raw_frame_gets_malformed_and_the_connection_closes() {
    let s = server();
    // LEASE with a 4-byte body instead of 8.
    let run = snowcat_at(&s, &[], "raw 00000005 02 00000001\n");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("ERROR id=0 code=MALFORMED(1)"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_well_formed_raw_frame_is_answered_like_a_typed_one() {
    let s = server();
    let run = snowcat_ok_at(&s, &[], "raw 0000000903 0000000000000042\n");
    assert_eq!(run.stdout.trim(), "PONG nonce=66");
}

#[test]
fn bad_input_lines_are_reported_and_skipped() {
    let s = server();
    let run = snowcat_at(&s, &[], "lease abc\nraw zz\nping 1\n");
    assert_eq!(run.code, 1);
    assert_eq!(run.stdout.trim(), "PONG nonce=1");
    assert!(
        run.stderr.contains("line 1: lease count \"abc\""),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("line 2: raw hex contains \"zz\""),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("2 bad input line"), "{}", run.stderr);
}

#[test]
fn hex_dumps_the_bytes_both_ways() {
    let s = server();
    let run = snowcat_ok_at(&s, &["--hex"], "ping 7\n");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "> 00000009030000000000000007",
            "< 00000009830000000000000007",
            "PONG nonce=7"
        ]
    );
}

#[test]
fn hex_is_refused_with_a_subcommand() {
    let run = snowcat(&["--hex", "info"], "");
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("--hex"), "{}", run.stderr);
}

#[test]
fn a_token_in_the_stdin_mode_sends_hello_first() {
    let s = server();
    let run = snowcat_ok(&["--addr", &addr(&s), "--token", "t0ken"], "ping 2\n");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert!(lines[0].starts_with("WELCOME "), "{}", lines[0]);
    assert_eq!(lines[1], "PONG nonce=2");
}

#[test]
fn every_connecting_mode_works_over_tls_and_a_wrong_ca_is_a_connect_failure() {
    let dir = std::env::temp_dir().join(format!("snowcat-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = snowlease_testkit::pki::Ca::new("snowcat").unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let leaf = ca.leaf(&["ids.test"]).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.cert).unwrap();
    std::fs::write(dir.join("key.pem"), leaf.key).unwrap();
    let mut config = ServerConfig::for_tests(3);
    config.tls = Some(snowlease_server::config::TlsPaths {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca: None,
    });
    let s = start(config).unwrap();
    let (a, ca_file) = (addr(&s), dir.join("ca.pem").display().to_string());
    let tls = ["--addr", &a, "--tls", "--tls-ca", &ca_file];
    let named = [&tls[..], &["--tls-server-name", "ids.test"]].concat();

    let run = snowcat_ok(&[&named[..], &["lease", "5"]].concat(), "");
    assert_eq!(run.stdout.lines().count(), 5);
    snowcat_ok(&[&named[..], &["info", "--json"]].concat(), "");
    snowcat_ok(&[&named[..], &["ping", "--count", "1"]].concat(), "");
    snowcat_ok(&[&named[..], &["decode", "--ask", "1"]].concat(), "");
    let run = snowcat_ok(&named, "lease 2\n");
    assert!(run.stdout.contains("LEASED"), "{}", run.stdout);

    // Dialled by IP without the name override, the certificate for ids.test does not match.
    let run = snowcat(&[&tls[..], &["lease", "1"]].concat(), "");
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("TLS handshake"), "{}", run.stderr);
    let run = snowcat(&["--addr", &a, "--tls", "lease", "1"], "");
    assert_eq!(run.code, 2, "--tls needs --tls-ca: {}", run.stderr);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A server holding worker ids 4..=7.
fn four_workers() -> RunningServer {
    let mut config = ServerConfig::for_tests(4);
    config.worker_count = 4;
    start(config).unwrap()
}

#[test]
fn lease_bulk_prints_n_distinct_ids_in_blocks_from_the_servers_workers() {
    let s = four_workers();
    // More than one worker's lead (409,600), so the runs come from several workers.
    let run = snowcat_ok_at(&s, &["lease", "2000000", "--bulk", "--ranges"], "");
    let l = Layout::DEFAULT;
    let mut blocks: Vec<(u64, u64)> = Vec::new();
    let mut workers = Vec::new();
    for line in run.stdout.lines() {
        let (first, count) = line.split_once(' ').unwrap();
        let (first, count): (u64, u64) = (first.parse().unwrap(), count.parse().unwrap());
        let (a, b) = (l.decompose(first), l.decompose(first + count - 1));
        assert!(
            (a.tick, a.worker) == (b.tick, b.worker) && count >= 1,
            "{line}"
        );
        workers.push(a.worker);
        blocks.push((first, first + count));
    }
    assert_eq!(blocks.iter().map(|(a, b)| b - a).sum::<u64>(), 2_000_000);
    blocks.sort_unstable();
    assert!(
        blocks.windows(2).all(|w| w[0].1 <= w[1].0),
        "blocks overlap"
    );
    workers.sort_unstable();
    workers.dedup();
    assert!(
        workers.len() >= 2 && workers.iter().all(|w| (4..8).contains(w)),
        "{workers:?}"
    );

    // Every ID, and one summary line per run, add up the same way.
    let run = snowcat_ok_at(&s, &["lease", "10000", "--bulk"], "");
    let mut ids: Vec<u64> = run.stdout.lines().map(|l| l.parse().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 10_000);
    let run = snowcat_ok_at(&s, &["lease", "1000000", "--bulk", "--runs"], "");
    let total: u64 = run
        .stdout
        .lines()
        .map(|line| {
            assert!(line.starts_with("run first="), "{line}");
            let count = line.split(" count=").nth(1).unwrap();
            count.split(' ').next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(total, 1_000_000);
    let run = snowcat_at(&s, &["lease", "10", "--runs"], "");
    assert_eq!(run.code, 2, "--runs needs --bulk");
}

#[test]
fn lease_bulk_against_a_version_1_server_says_it_needs_version_2() {
    // A server that answers HELLO with the version-1 WELCOME whatever the client offers, as
    // the released server does.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let fake = thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut hello = [0u8; 8];
        socket.read_exact(&mut hello).unwrap();
        let welcome = snowlease::wire::Response::Welcome(snowlease::wire::Welcome {
            version: 1,
            worker_id: 3,
            epoch_unix_ms: Layout::DEFAULT.epoch_unix_ms(),
            timestamp_bits: 41,
            worker_bits: 10,
            sequence_bits: 12,
            max_lease: 4096,
            server_unix_ms: snowlease::layout::unix_ms_now(),
        });
        socket.write_all(&welcome.to_bytes()).unwrap();
        // Hold the socket until snowcat hangs up.
        let _ = socket.read(&mut hello);
        hello
    });
    let run = snowcat(&["lease", "10", "--bulk", "--addr", &address], "");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("--bulk needs version 2"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
    // HELLO: length 4, opcode 0x01, version 2, no token.
    assert_eq!(fake.join().unwrap(), [0, 0, 0, 4, 1, 0, 2, 0]);
}

#[test]
fn the_stdin_mode_speaks_version_2_after_hello_2_and_dumps_bulk_frames() {
    let s = four_workers();
    let run = snowcat_ok_at(&s, &["--hex"], "hello 2\nbulk 10000 id=8\nlease 5\n");
    // Sends and replies interleave as they happen; each kind keeps its own order.
    let of = |prefix: &str| -> Vec<String> {
        run.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(prefix).map(str::to_owned))
            .collect()
    };
    let (sent, received) = (of("> "), of("< "));
    let text: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| !l.starts_with("> ") && !l.starts_with("< "))
        .collect();
    assert_eq!(sent.len(), 3, "{}", run.stdout);
    assert_eq!(sent[0], "0000000401000200", "HELLO version 2");
    assert_eq!(
        sent[1], "00000009040000000800002710",
        "BULK_LEASE id=8 count=10000"
    );
    assert!(sent[2].starts_with("0000000902"), "{}", sent[2]);
    assert_eq!(received.len(), 3, "{}", run.stdout);
    assert!(received[0].starts_with("0000002481"), "{}", received[0]);
    assert_eq!(&received[1][8..10], "84", "{}", received[1]);
    assert_eq!(text.len(), 3, "{}", run.stdout);
    assert!(
        text[0].starts_with("WELCOME version=2 worker=")
            && text[0].ends_with(" workers=4..=7 max_bulk=4194304"),
        "{}",
        text[0]
    );
    assert!(
        text[1].starts_with("BULK_LEASED id=8 runs=") && text[1].contains(" ids=10000 "),
        "{}",
        text[1]
    );
    assert!(text[2].starts_with("LEASED id=1 "), "{}", text[2]);
}
