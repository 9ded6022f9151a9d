//! The shared harness (`snowlease-testkit`) against the real binary: what every other test
//! file relies on when it spawns the server.

use std::time::{Duration, Instant};

use snowlease_testkit::{ServerCommand, Signal, SpawnError, Stopped};

const BIN: &str = env!("CARGO_BIN_EXE_snowlease-server");
const TIMEOUT: Duration = Duration::from_secs(15);

#[test]
fn servers_started_side_by_side_get_state_directories_of_their_own_removed_after_them() {
    let a = ServerCommand::new(BIN).spawn().expect("first server");
    let b = ServerCommand::new(BIN).spawn().expect("second server");
    let (da, db) = (
        a.state_dir().expect("a state dir").to_owned(),
        b.state_dir().expect("a state dir").to_owned(),
    );
    assert_ne!(da, db);
    for dir in [&da, &db] {
        let entries = std::fs::read_dir(dir)
            .expect("the state dir exists")
            .count();
        assert!(entries > 0, "{} holds no state file", dir.display());
    }
    assert!(a
        .startup_log()
        .last()
        .is_some_and(|l| l.contains("serving")));
    drop((a, b));
    assert!(
        !da.exists() && !db.exists(),
        "state directories left behind"
    );
}

#[test]
fn a_state_directory_given_by_the_test_is_used_and_kept() {
    let dir = snowlease_testkit::temp_dir("testkit-state");
    let s = ServerCommand::new(BIN)
        .state_dir(dir.path())
        .spawn()
        .expect("server");
    assert_eq!(s.state_dir(), Some(dir.path()));
    drop(s);
    assert!(std::fs::read_dir(dir.path()).expect("kept").count() > 0);
}

#[test]
fn a_server_that_refuses_to_start_is_reported_at_once_with_its_status_and_log() {
    let started = Instant::now();
    let err = ServerCommand::new(BIN)
        .args(["--worker-bits", "11"])
        .startup_timeout(Duration::from_secs(60))
        .spawn()
        .expect_err("a refusal");
    match &err {
        SpawnError::Exited { status, log } => {
            assert_eq!(status.and_then(|s| s.code()), Some(2), "{err}");
            assert!(log.iter().any(|l| l.contains("must be 63")), "{err}");
        }
        other => panic!("expected an exit before serving, got {other}"),
    }
    // Reported when the process ends, not when the start-up bound runs out.
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn stop_drains_with_sigterm_and_reports_exit_zero() {
    let mut s = ServerCommand::new(BIN).spawn().expect("server");
    assert_eq!(
        s.http_get("/healthz", &[]).expect("healthz").status,
        200,
        "admin port"
    );
    assert_eq!(s.metric("snowlease_ready"), Some(1.0));
    assert!(s.rss_kib().is_some_and(|k| k > 0));
    assert!(s.open_fds().is_some_and(|n| n > 3));
    assert!(s.threads().is_some_and(|n| n > 1));
    match s.stop(TIMEOUT) {
        Stopped::Terminated(status) => assert!(status.success(), "{status}"),
        other => panic!("{other}"),
    }
    assert!(!s.is_alive());
    s.wait_for_log(|l| l.contains("stopped"), Instant::now() + TIMEOUT)
        .expect("the server logs its stop");
}

#[test]
fn a_killed_server_is_seen_as_exited() {
    let mut s = ServerCommand::new(BIN).spawn().expect("server");
    s.signal(Signal::Kill).expect("kill");
    let status = s.wait_exit(TIMEOUT).expect("exited");
    assert!(!status.success());
    assert!(s.log().is_closed());
}
