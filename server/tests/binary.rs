//! Tests of the real `snowlease-server` binary: start-up refusals, the default worker,
//! SIGTERM under load, and restart safety with the clock set back (Debian's `faketime`).
//!
//! Each test starts the binary through `snowlease-testkit` (OS-assigned loopback ports read
//! back from the JSON start line, a fresh state directory unless the test gives one), and
//! talks to it with a small blocking protocol client.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use snowlease::wire::{self, Request, Response};
use snowlease::Layout;
use snowlease_testkit::{procfs, temp_dir, Signal, LIBFAKETIME};
use support::{have_faketime, max_end, refusal, Client, Server, TIMEOUT};

#[test]
fn worker_ids_the_layout_cannot_hold_refuse_to_start() {
    let err = refusal(&[("WORKER_ID", "1024")], &[]);
    assert!(
        err.contains(
            "worker id 1024 (from WORKER_ID=1024) does not fit the layout's 10 worker bits"
        ),
        "{err}"
    );
    let err = refusal(&[("POD_NAME", "snowlease-2000")], &[]);
    assert!(err.contains("from POD_NAME=snowlease-2000"), "{err}");
    let err = refusal(
        &[
            ("POD_NAME", "web-7f9c8d-x2x9z"),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ],
        &[],
    );
    assert!(err.contains("has no ordinal"), "{err}");
    let err = refusal(&[("WORKER_ID", "seven")], &[]);
    assert!(err.contains("not a whole number"), "{err}");
    let err = refusal(&[], &["--epoch", "2999-01-01T00:00:00Z"]);
    assert!(err.contains("in the future"), "{err}");
    let err = refusal(&[], &["--worker-bits", "11"]);
    assert!(err.contains("must be 63"), "{err}");
}

#[test]
fn the_pod_ordinal_after_the_last_dash_is_the_worker_id() {
    let s = Server::start(&[], &[], &[("POD_NAME", "id-gen2-5")]);
    let mut c = Client::connect(s.lease);
    let (first, _) = c.lease_many(1)[0];
    assert_eq!(Layout::DEFAULT.decompose(first).worker, 5);
}

#[test]
fn sigterm_under_load_answers_in_order_then_goaway_and_exits_zero() {
    let mut s = Server::start(&[], &[], &[("WORKER_ID", "1")]);
    let stream = TcpStream::connect(s.lease).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Keep requests flowing until the reader sees GOAWAY, as a well-behaved client does.
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u32;
            let mut batch = BytesMut::new();
            while sent < 5_000_000 && !stop.load(std::sync::atomic::Ordering::Acquire) {
                batch.clear();
                for i in sent..sent + 100 {
                    Request::Lease {
                        request_id: i,
                        count: 64,
                    }
                    .encode(&mut batch);
                }
                if writer.write_all(&batch).is_err() {
                    break;
                }
                sent += 100;
            }
            let _ = writer.shutdown(std::net::Shutdown::Write);
            sent
        })
    };
    let mut c = Client {
        s: stream,
        buf: BytesMut::new(),
    };
    let mut next = 0u32;
    let mut last_end = 0;
    let mut signalled = false;
    let mut goaway = false;
    while let Some(r) = c.response() {
        match r {
            Response::Leased {
                request_id,
                first_id,
                count,
            } => {
                assert_eq!(request_id, next, "replies in order, none skipped");
                assert!(first_id >= last_end);
                last_end = first_id + u64::from(count);
                next += 1;
                if next == 2_000 && !signalled {
                    s.signal(Signal::Term);
                    signalled = true;
                }
            }
            Response::GoAway { reason } => {
                assert_eq!(reason, wire::goaway::SHUTDOWN);
                goaway = true;
                stop.store(true, std::sync::atomic::Ordering::Release);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(signalled && goaway, "answered {next}, goaway {goaway}");
    assert!(s.wait().success(), "exit 0 after draining");
    let sent = sender.join().expect("sender");
    assert!(next <= sent);
}

#[test]
fn outside_kubernetes_with_nothing_set_it_runs_as_worker_zero_and_says_so() {
    let s = Server::start(&[], &[], &[]);
    let mut c = Client::connect(s.lease);
    let (first, _) = c.lease_many(1)[0];
    let worker = Layout::DEFAULT.decompose(first).worker;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    match snowlease_server::config::ordinal(host.trim()) {
        // A hostname like build-3 names the worker; nothing to warn about.
        Some(n) => assert_eq!(u64::from(worker), n),
        None => {
            assert_eq!(worker, 0);
            assert!(
                s.early.iter().any(|l| l.contains("running as worker 0")),
                "{:?}",
                s.early
            );
        }
    }
}

fn restart_with_clock_behind(stop: impl Fn(&mut Server)) {
    if !have_faketime() {
        return;
    }
    let dir = temp_dir("bin-restart");
    let state = dir.path().to_str().expect("utf-8 path");
    let mut first = Server::start(&[], &["--state-dir", state], &[("WORKER_ID", "3")]);
    let mut c = Client::connect(first.lease);
    // Run ahead of the clock: 200 full ticks as fast as possible.
    let before = c.lease_many(200);
    let high = max_end(&before);
    stop(&mut first);
    drop(first);

    // libfaketime preloaded into the server itself (the `faketime` wrapper would fork, and
    // killing the wrapper would orphan the server).
    let second = Server::start(
        &[],
        &["--state-dir", state],
        &[
            ("WORKER_ID", "3"),
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME", "-10s"),
        ],
    );
    let mut c = Client::connect(second.lease);
    let after = c.lease_many(200);
    let low = after.iter().map(|r| r.0).min().expect("runs");
    assert!(
        low >= high,
        "an ID after the restart ({low}) is not above every ID before it ({high})"
    );
    // Serving from the mark, ahead of the (faked) wall clock by about 10 s, and saying so.
    let lead = second.metric("snowlease_wall_clock_lead_ms");
    assert!(lead > 9_000.0, "wall clock lead {lead}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn after_kill_9_and_a_restart_10_s_behind_every_id_is_above_the_old_ones() {
    restart_with_clock_behind(|s| {
        s.signal(Signal::Kill);
        let _ = s.wait();
    });
}

#[test]
fn after_sigterm_and_a_restart_10_s_behind_every_id_is_above_the_old_ones() {
    restart_with_clock_behind(|s| {
        s.signal(Signal::Term);
        assert!(s.wait().success());
    });
}

#[test]
fn a_clock_stepped_back_5_s_while_running_repeats_nothing_and_reports_the_lead() {
    if !have_faketime() {
        return;
    }
    let dir = temp_dir("bin-step");
    let file = dir.path().join("faketime");
    std::fs::write(&file, "+0s").expect("write");
    let s = Server::start(
        &[],
        &[],
        &[
            ("WORKER_ID", "4"),
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_TIMESTAMP_FILE", file.to_str().expect("utf-8")),
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let mut c = Client::connect(s.lease);
    let before = c.lease_many(50);
    std::fs::write(&file, "-5s").expect("step the clock back");
    // The admin thread checks the clock once a second; wait for it to notice (bounded).
    let deadline = Instant::now() + TIMEOUT;
    while s.metric("snowlease_clock_steps_total{direction=\"back\"}") < 1.0 {
        assert!(Instant::now() < deadline, "clock step never noticed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = c.lease_many(50);
    assert!(after.iter().map(|r| r.0).min().expect("runs") >= max_end(&before));
    let lead = s.metric("snowlease_wall_clock_lead_ms");
    assert!(lead > 4_000.0, "wall clock lead {lead}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The soft `RLIMIT_NOFILE` of process `pid`, from `/proc/<pid>/limits`.
fn soft_nofile(pid: u32) -> u64 {
    procfs::nofile_limits(Some(pid)).expect("a soft limit").0
}

#[test]
fn it_raises_the_open_file_limit_to_the_cap_and_warns_when_the_hard_limit_is_lower() {
    // Room under the hard limit (an unprivileged process cannot raise its own hard limit, so
    // stay under this test's): the soft limit is raised to the cap plus what turned-away
    // and admin connections may hold: 1,000 + 2 x 512 + 64 + 64.
    let want = 2_152;
    let hard = hard_nofile().min(8_000);
    assert!(
        hard > want,
        "this test needs a hard open-file limit above {want}"
    );
    let limit = format!("--nofile=512:{hard}");
    let s = Server::start(
        &["prlimit", &limit, "--"],
        &["--max-connections", "1000"],
        &[],
    );
    assert_eq!(soft_nofile(s.process.pid()), want);
    assert!(!s.early.iter().any(|l| l.contains("open-file limit")));
    drop(s);
    // A hard limit below that: raised as far as it goes, and the log says why that is not
    // enough (the test server runs 2 threads).
    let s = Server::start(
        &["prlimit", "--nofile=512:2048", "--"],
        &["--max-connections", "1000"],
        &[],
    );
    assert_eq!(soft_nofile(s.process.pid()), 2048);
    assert!(
        s.early
            .iter()
            .any(|l| l.contains("open-file limit is below")),
        "{:?}",
        s.early
    );
}

/// This process's hard `RLIMIT_NOFILE`.
fn hard_nofile() -> u64 {
    procfs::nofile_limits(None).map_or(u64::MAX, |(_, hard)| hard)
}
