//! The adversarial audit's reproductions (issue 11), rerun against the real binary: one
//! process per worker id, wall-clock glitches, readiness, the durability deadline on both
//! ports, connection slots, the default state directory and the smaller holes. Each test names
//! the reproduction it replays. Waits are bounded polls of a condition; the two that must
//! watch time pass (an idle server, a held connection) say so.

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use snowlease::wire::{self, goaway, ErrorCode, Request, Response};
use snowlease::Layout;
use snowlease_server::state::{Record, STATE_FILE};
use snowlease_testkit::{temp_dir, ServerCommand, Signal, LIBFAKETIME};
use support::{have_faketime, refusal, Client, Server, BIN, TIMEOUT};

/// The tick (ms since the default epoch) of the wall clock now.
fn tick_now() -> u64 {
    Layout::DEFAULT
        .tick_at(snowlease::layout::unix_ms_now())
        .expect("after the epoch")
}

fn mark(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(dir.join(STATE_FILE)).expect("a state file");
    Record::decode(&text)
        .expect("a version-1 state file")
        .reserved_until
}

/// Polls `pred` every 20 ms until it holds; panics after `TIMEOUT` saying `what`.
fn wait_until(what: &str, pred: impl FnMut() -> bool) {
    wait_until_by(what, Instant::now() + TIMEOUT, pred);
}

/// [`wait_until`] with its own deadline, for a condition that cannot hold before a known
/// moment.
fn wait_until_by(what: &str, deadline: Instant, mut pred: impl FnMut() -> bool) {
    while !pred() {
        assert!(Instant::now() < deadline, "{what}: not by the deadline");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn status(s: &Server, path: &str) -> u16 {
    s.process.http_get(path, &[]).expect("admin port").status
}

#[test]
fn a_second_process_on_the_same_state_directory_refuses_naming_the_holder_and_writes_nothing() {
    let dir = temp_dir("audit-lock");
    let state = path(dir.path());
    let first = Server::start(&[], &["--worker-id", "5", "--state-dir", state], &[]);
    let mut c = Client::connect(first.lease);
    c.lease_many(10);
    let before = std::fs::read(dir.path().join(STATE_FILE)).expect("state");
    // The audit's reproduction: same worker id, same state directory, same lease port, only
    // another admin port. It must refuse before it binds or writes anything.
    let lease = first.lease.to_string();
    let err = refusal(
        &[],
        &[
            "--worker-id",
            "5",
            "--state-dir",
            state,
            "--listen",
            &lease,
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    assert!(
        err.contains("is in use by another snowlease-server"),
        "{err}"
    );
    assert!(
        err.contains(&format!("pid {}", first.process.pid())),
        "{err}"
    );
    assert!(!err.contains("\"serving\""), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join(STATE_FILE)).expect("state"),
        before,
        "the refused start wrote a mark"
    );
    assert_eq!(c.lease_many(1).len(), 1, "the first server still serves");
}

#[test]
fn a_server_refuses_a_lease_port_another_process_listens_on_and_writes_no_mark() {
    let first = Server::start(&[], &["--worker-id", "6"], &[]);
    let dir = temp_dir("audit-port");
    let lease = first.lease.to_string();
    let err = refusal(
        &[],
        &[
            "--worker-id",
            "7",
            "--state-dir",
            path(dir.path()),
            "--listen",
            &lease,
        ],
    );
    assert!(err.contains("already in use"), "{err}");
    assert!(
        !dir.path().join(STATE_FILE).exists(),
        "a refused start wrote a mark"
    );
}

/// A server whose wall clock the test moves while it runs: libfaketime reads `clock`.
fn glitchable(state: &Path, clock: &Path, worker: &str) -> Server {
    std::fs::write(clock, "+0").expect("clock file");
    Server::start(
        &[],
        &["--worker-id", worker, "--state-dir", path(state)],
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_TIMESTAMP_FILE", path(clock)),
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    )
}

#[test]
fn a_short_forward_glitch_of_the_wall_clock_leaves_no_trace_in_ids_or_the_state_file() {
    if !have_faketime() {
        return;
    }
    let dir = temp_dir("audit-glitch");
    let (clock, state) = (dir.path().join("clock"), dir.path().join("state"));
    let s = glitchable(&state, &clock, "8");
    let mut c = Client::connect(s.lease);
    c.lease_many(1);
    // The audit's glitch: the wall clock 2 h ahead for a couple of seconds, while leasing.
    std::fs::write(&clock, "+2h").expect("clock file");
    wait_until("the server holding the forward step", || {
        s.metric("snowlease_clock_forward_held_ms") > 3_600_000.0
    });
    for (first, _) in c.lease_many(5) {
        let tick = Layout::DEFAULT.decompose(first).tick;
        assert!(tick < tick_now() + 5_000, "an ID carries the glitch");
    }
    std::fs::write(&clock, "+0").expect("clock file");
    wait_until("the glitch ending", || {
        s.metric("snowlease_clock_forward_held_ms") == 0.0
    });
    assert!(
        mark(&state) < tick_now() + 5_000,
        "the mark followed the glitch"
    );
    assert_eq!(
        s.metric("snowlease_clock_steps_total{direction=\"forward\"}"),
        0.0
    );
}

#[test]
fn a_70_year_glitch_on_an_idle_server_then_kill_9_leaves_the_worker_usable() {
    if !have_faketime() {
        return;
    }
    let dir = temp_dir("audit-seventy");
    let (clock, state) = (dir.path().join("clock"), dir.path().join("state"));
    let mut s = glitchable(&state, &clock, "9");
    std::fs::write(&clock, "+70y").expect("clock file");
    wait_until("the server holding the step", || {
        s.metric("snowlease_clock_forward_held_ms") > 0.0
    });
    s.signal(Signal::Kill);
    s.wait();
    let again = Server::start(&[], &["--worker-id", "9", "--state-dir", path(&state)], &[]);
    let (first, _) = Client::connect(again.lease).lease_many(1)[0];
    assert!(Layout::DEFAULT.decompose(first).tick <= tick_now() + 5_000);
    assert_eq!(status(&again, "/readyz"), 200);
}

#[test]
fn an_idle_server_writes_nothing_new_to_its_state_file() {
    let dir = temp_dir("audit-idle");
    let args = [
        "--worker-id",
        "10",
        "--reserve-ms",
        "100",
        "--state-dir",
        path(dir.path()),
    ];
    let s = Server::start(&[], &args, &[]);
    Client::connect(s.lease).lease_many(1);
    // Active for one window after the lease, then idle: watching time pass is the test here.
    // Three windows to settle, then ten windows in which nothing may be written.
    let writes = || s.metric("snowlease_state_writes_total");
    let settle = Instant::now();
    wait_until("the worker going idle", || {
        settle.elapsed() > Duration::from_millis(300)
    });
    let (before, marked) = (writes(), mark(dir.path()));
    let idle = Instant::now();
    wait_until("ten windows of idleness", || {
        idle.elapsed() > Duration::from_millis(1_000)
    });
    assert_eq!(writes(), before, "an idle server wrote its state file");
    assert_eq!(mark(dir.path()), marked, "an idle server moved its mark");
}

#[test]
fn a_mark_past_the_end_of_life_refuses_to_start_with_a_clear_message() {
    let dir = temp_dir("audit-eol");
    for mark in [Layout::DEFAULT.max_tick() + 1, u64::MAX - 7] {
        let record = Record {
            worker_id: 11,
            layout: Layout::DEFAULT,
            reserved_until: mark,
        };
        std::fs::write(dir.path().join(STATE_FILE), record.encode()).expect("state");
        let err = refusal(&[], &["--worker-id", "11", "--state-dir", path(dir.path())]);
        assert!(err.contains("past the layout's end of life"), "{err}");
    }
}

/// The real end of life, reached while serving (audit point 3: `/readyz` said ready when
/// nothing could be issued). The layout's smallest timestamp field (16 bits: 65.5 s) with an
/// epoch that puts its end 20 s after now: far enough for any start on a loaded machine to
/// finish before it, so this test watches the clock reach a moment, bounded past it.
#[test]
fn a_layout_that_runs_out_while_serving_turns_readiness_to_exhausted_and_leases_away() {
    let end_in = 20_000;
    let epoch = (snowlease::layout::unix_ms_now() + end_in - (1 << 16)).to_string();
    let args = [
        "--worker-id",
        "19",
        "--timestamp-bits",
        "16",
        "--worker-bits",
        "16",
        "--sequence-bits",
        "31",
        "--epoch",
        &epoch,
        "--min-years-left",
        "0",
    ];
    let s = Server::start(&[], &args, &[]);
    let end = Instant::now() + Duration::from_millis(end_in);
    let mut c = Client::connect(s.lease);
    assert_eq!(c.lease_many(1).len(), 1, "served before its end of life");
    wait_until_by("readiness saying exhausted", end + TIMEOUT, || {
        let r = s.process.http_get("/readyz", &[]).expect("readyz");
        r.status == 503 && r.body.contains("exhausted")
    });
    assert_eq!(s.metric("snowlease_not_ready{reason=\"exhausted\"}"), 1.0);
    c.send(&Request::Lease {
        request_id: 42,
        count: 1,
    });
    match c.response() {
        Some(Response::Error {
            request_id: 42,
            code: ErrorCode::UNAVAILABLE,
            ..
        }) => {}
        other => panic!("expected UNAVAILABLE past the end of life, got {other:?}"),
    }
    let r = s
        .process
        .http_get("/generate-id", &[])
        .expect("generate-id");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        status(&s, "/healthz"),
        200,
        "liveness does not depend on the layout"
    );
}

#[test]
fn a_state_file_lost_from_a_used_directory_refuses_to_start() {
    let dir = temp_dir("audit-lost");
    let args = ["--worker-id", "12", "--state-dir", path(dir.path())];
    let mut s = Server::start(&[], &args, &[]);
    Client::connect(s.lease).lease_many(1);
    s.signal(Signal::Kill);
    s.wait();
    std::fs::remove_file(dir.path().join(STATE_FILE)).expect("remove the state file");
    let err = refusal(&[], &args);
    assert!(
        err.contains("is missing, but this state directory held one"),
        "{err}"
    );
}

/// A state directory on a 64 KiB tmpfs the test can fill; `None` (after saying so) where
/// mounting is not allowed. CI runs as root and must be able to.
struct SmallDisk {
    dir: snowlease_testkit::TempDir,
}

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = temp_dir("audit-disk");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs", path(dir.path())])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to mount a tmpfs"
            );
            eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn fill(&self) {
        let filler = self.dir.path().join("filler");
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", &format!("of={}", path(&filler)), "bs=4k"])
            .output();
    }

    fn free(&self) {
        std::fs::remove_file(self.dir.path().join("filler")).expect("remove the filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l", path(self.dir.path())])
            .status();
    }
}

#[test]
fn a_full_disk_makes_the_server_unready_and_both_ports_answer_within_the_deadline() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let args = [
        "--worker-id",
        "13",
        "--reserve-ms",
        "200",
        "--durable-timeout-ms",
        "500",
        "--state-dir",
        path(disk.dir.path()),
    ];
    let s = Server::start(&[], &args, &[]);
    let mut c = Client::connect(s.lease);
    c.lease_many(1);
    disk.fill();
    // Once the reservation runs out, a lease needs a write the disk refuses.
    wait_until("readiness saying not_durable", || {
        let r = s.process.http_get("/readyz", &[]).expect("readyz");
        r.status == 503 && r.body.contains("not_durable")
    });
    let started = Instant::now();
    let r = s
        .process
        .http_get("/generate-id", &[])
        .expect("generate-id");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        status(&s, "/healthz"),
        200,
        "liveness never depends on the disk"
    );
    c.send(&Request::Lease {
        request_id: 41,
        count: 1,
    });
    match c.response() {
        Some(Response::Error {
            request_id: 41,
            code: ErrorCode::UNAVAILABLE,
            ..
        }) => {}
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    assert_eq!(s.metric("snowlease_not_ready{reason=\"not_durable\"}"), 1.0);
    // The disk recovers: so does the server, by itself.
    disk.free();
    wait_until("readiness coming back", || status(&s, "/readyz") == 200);
    assert_eq!(c.lease_many(1).len(), 1);
}

/// Opens a connection from `source` (a loopback address) to `to`.
fn connect_from(source: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect(&to.into())?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

#[test]
fn one_peer_over_its_cap_is_turned_away_while_another_peer_is_served() {
    let s = Server::start(
        &[],
        &["--worker-id", "14", "--max-connections-per-peer", "50"],
        &[],
    );
    // The holder, 127.0.0.1: 50 connections, each proven accepted by a round trip.
    let mut held = Vec::new();
    for i in 0..50 {
        let mut c = Client::connect(s.lease);
        c.send(&Request::Ping { nonce: i });
        assert_eq!(c.response(), Some(Response::Pong { nonce: i }));
        held.push(c);
    }
    // The 51st from the same peer is turned away with a message naming the per-peer cap.
    let mut extra = Client::connect(s.lease);
    match extra.response() {
        Some(Response::Error { code, message, .. }) => {
            assert_eq!(code, ErrorCode::OVERLOADED);
            assert!(message.contains("per peer"), "{message}");
        }
        other => panic!("expected OVERLOADED, got {other:?}"),
    }
    // Another peer, 127.0.0.2, is served at once, every time.
    for i in 0..20u32 {
        let mut c = Client {
            s: connect_from([127, 0, 0, 2], s.lease).expect("connect from 127.0.0.2"),
            buf: Default::default(),
        };
        c.send(&Request::Lease {
            request_id: i,
            count: 1,
        });
        assert!(
            matches!(c.response(), Some(Response::Leased { request_id, .. }) if request_id == i),
            "the other peer was not served"
        );
    }
    assert_eq!(
        s.metric("snowlease_connections_rejected_by_reason_total{reason=\"peer_cap\"}"),
        1.0
    );
}

#[test]
fn a_connection_that_never_sends_a_frame_is_closed_after_the_first_frame_timeout() {
    let s = Server::start(
        &[],
        &["--worker-id", "15", "--first-frame-timeout-ms", "300"],
        &[],
    );
    let mut silent = TcpStream::connect(s.lease).expect("connect");
    silent.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let started = Instant::now();
    let mut got = Vec::new();
    silent.read_to_end(&mut got).expect("the server closes");
    let mut buf = bytes::BytesMut::from(&got[..]);
    assert_eq!(
        wire::decode_response(&mut buf).expect("a frame"),
        Some(Response::GoAway {
            reason: goaway::IDLE_TIMEOUT
        })
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held {:?}",
        started.elapsed()
    );
    assert_eq!(s.metric("snowlease_first_frame_timeouts_total"), 1.0);
    // A connection that speaks is held to the idle timeout, not the first-frame one.
    let mut c = Client::connect(s.lease);
    c.send(&Request::Ping { nonce: 1 });
    assert_eq!(c.response(), Some(Response::Pong { nonce: 1 }));
}

#[test]
fn the_default_run_persists_to_a_default_state_directory_and_a_restart_behind_repeats_nothing() {
    if !have_faketime() {
        return;
    }
    let home = temp_dir("audit-default");
    let xdg = path(home.path());
    // The audit's reproduction: no state directory given, kill -9, restart 5 s behind.
    let start = |env: &[(&str, &str)]| {
        let process = ServerCommand::new(BIN)
            .without_state_dir()
            .args(["--worker-id", "16"])
            .env("XDG_STATE_HOME", xdg)
            .envs(env.iter().copied())
            .spawn()
            .expect("serving");
        let lease = process.lease_addr();
        (process, lease)
    };
    let (mut first, lease) = start(&[]);
    let before = Client::connect(lease).lease_many(50);
    let high = support::max_end(&before);
    assert!(home
        .path()
        .join("snowlease/worker-16")
        .join(STATE_FILE)
        .exists());
    first.kill();
    let (_second, lease) = start(&[("LD_PRELOAD", LIBFAKETIME), ("FAKETIME", "-5s")]);
    let after = Client::connect(lease).lease_many(50);
    let low = after.iter().map(|r| r.0).min().expect("runs");
    assert!(
        low >= high,
        "an ID after the restart is not above the ones before"
    );
}

#[test]
fn reserve_ms_out_of_range_refuses_to_start() {
    for bad in ["1", "60001", "18446744073709551615"] {
        let err = refusal(&[], &["--worker-id", "17", "--reserve-ms", bad]);
        assert!(err.contains("--reserve-ms"), "{bad}: {err}");
    }
}

#[test]
fn a_crash_loop_that_leases_in_every_life_drifts_at_most_the_window_plus_100_ms_a_life() {
    let dir = temp_dir("audit-loop");
    let args = [
        "--worker-id",
        "18",
        "--reserve-ms",
        "1000",
        "--state-dir",
        path(dir.path()),
    ];
    const LIVES: u64 = 6;
    for _ in 0..LIVES {
        let mut s = Server::start(&[], &args, &[]);
        Client::connect(s.lease).lease_many(1);
        wait_until("the lease's reservation on disk", || {
            mark(dir.path()) > tick_now()
        });
        s.signal(Signal::Kill);
        s.wait();
    }
    let drift = mark(dir.path()).saturating_sub(tick_now());
    // Before the fix each life added a whole window: 6 lives, 6 s.
    assert!(
        drift <= 1_000 + LIVES * 100 + 500,
        "drifted {drift} ms ahead"
    );
}

#[test]
fn a_pod_with_k_workers_serves_version_1_clients_one_worker_each_and_bulk_leases_from_all() {
    let dir = temp_dir("audit-k");
    let args = ["--workers-per-pod", "4", "--state-dir", path(dir.path())];
    let s = Server::start(&[], &args, &[("POD_NAME", "snowlease-2")]);
    let mut workers = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let (first, _) = Client::connect(s.lease).lease_many(1)[0];
        workers.insert(Layout::DEFAULT.decompose(first).worker);
    }
    assert_eq!(workers.into_iter().collect::<Vec<_>>(), vec![8, 9, 10, 11]);
    let mut c = Client::connect(s.lease);
    c.send(&Request::Hello {
        version: 2,
        token: Default::default(),
    });
    assert!(matches!(c.response(), Some(Response::WelcomeV2 { .. })));
    // More than all four workers hold within their 100 ms lead (4 x 101 x 4,096 IDs).
    c.send(&Request::BulkLease {
        request_id: 1,
        count: wire::MAX_BULK,
    });
    let Some(Response::BulkLeased { runs, .. }) = c.response() else {
        panic!("no BULK_LEASED");
    };
    let from: std::collections::BTreeSet<u16> = runs
        .iter()
        .map(|r| Layout::DEFAULT.decompose(r.first_id).worker)
        .collect();
    assert_eq!(from.len(), 4, "runs from every worker: {from:?}");
    drop(s);
    // The state file records the set; another K over it is refused like another epoch.
    let err = refusal(
        &[("POD_NAME", "snowlease-2")],
        &["--workers-per-pod", "2", "--state-dir", path(dir.path())],
    );
    assert!(err.contains("worker ids = 8-11"), "{err}");
}
