//! The refill decision when servers go silent (connections open, nothing answers): demand
//! moves to the servers that answer within one silence limit, a slow server that answers is
//! not mistaken for a silent one, late replies are verified and used once, and direct
//! leases are hedged.

use super::*;
use crate::client::MIN_SILENCE;

const D: &str = "10.0.0.4:7609";
const MS: Duration = Duration::from_millis(1);

/// Four servers that answer at once, with callers having drawn `per_ms` IDs every
/// millisecond for 200 ms, so the rate estimate and the buffer are at their steady level.
fn busy(per_ms: usize) -> Harness {
    let mut h = Harness::connected(&[A, B, C, D]);
    h.auto = true;
    for _ in 0..200 {
        h.draw(per_ms);
        h.advance(MS);
    }
    h
}

/// Callers draw `per_ms` IDs every millisecond for `span`; returns the longest run of
/// milliseconds in which they got fewer than they asked for.
fn longest_shortfall(h: &mut Harness, per_ms: usize, span: Duration) -> Duration {
    let (mut longest, mut run) = (Duration::ZERO, Duration::ZERO);
    let end = h.now + span;
    while h.now < end {
        if h.draw(per_ms) < per_ms {
            run += MS;
            longest = longest.max(run);
        } else {
            run = Duration::ZERO;
        }
        h.advance(MS);
    }
    longest
}

#[test]
fn with_one_two_or_three_of_four_servers_silent_callers_keep_drawing() {
    // 2 M IDs/s: half of what one server can issue, so any one healthy server suffices.
    let per_ms = 2000;
    for silent in 1..=3 {
        let mut h = busy(per_ms);
        for conn in 1..=silent {
            h.silent.insert(conn);
        }
        let longest = longest_shortfall(&mut h, per_ms, Duration::from_secs(3));
        assert!(
            longest <= MIN_SILENCE,
            "{silent} silent: callers went short for {longest:?}"
        );
    }
}

#[test]
fn a_connection_counts_as_silent_after_four_usual_gaps_and_never_before_the_floor() {
    // (usual gap, quiet time, still trusted with its request). What it owes is a direct
    // lease, which moves to B the moment A counts as silent.
    let cases = [
        (0, 19, true),
        (0, 21, false),
        (10, 39, true),
        (10, 41, false),
        (100, 399, true),
        (100, 401, false),
    ];
    assert_eq!(MIN_SILENCE, MS * 20, "the table assumes a 20 ms floor");
    for (gap, quiet, counted) in cases {
        let mut h = Harness::new(ClientConfig::new([A, B]));
        h.pass();
        h.welcome(1, 1);
        h.pass();
        h.advance(MS * gap);
        h.answer(1, 1);
        h.engine.on_lease(9, 100);
        h.pass();
        assert_eq!(h.written(1), 1, "A owes one reply again");
        h.welcome(2, 2);
        h.advance(MS * quiet);
        let asked_b = h.written(2) > 0;
        assert_eq!(!asked_b, counted, "gap {gap} ms, quiet {quiet} ms");
    }
}

#[test]
fn a_late_reply_from_a_silent_connection_is_verified_and_buffered_once() {
    // (case, the late reply is good)
    for (case, good) in [("good", true), ("more IDs than asked", false)] {
        let mut h = Harness::connected(&[A, B]);
        h.pass();
        let (late, healthy) = if h.written(1) > 0 { (1, 2) } else { (2, 1) };
        h.advance(MIN_SILENCE + MS);
        assert_eq!(h.written(healthy), 1, "{case}: B asked instead");
        h.answer_all(healthy);
        let pushed = h.buffer.pushed();
        let mut reply = h.good_reply(late);
        if !good {
            if let Response::Leased { count, .. } = &mut reply {
                *count += 1;
            }
        }
        h.frame(late, reply);
        if good {
            assert_eq!(h.buffer.pushed(), pushed + 4096, "{case}");
            assert!(h.closed.is_empty(), "{case}");
        } else {
            assert_eq!(h.buffer.pushed(), pushed, "{case}: IDs handed out");
            assert_eq!(h.closed, [late], "{case}");
        }
    }
}

#[test]
fn a_silent_connection_that_answers_again_is_asked_again() {
    let mut h = Harness::connected(&[A, B]);
    h.pass();
    let (late, healthy) = if h.written(1) > 0 { (1, 2) } else { (2, 1) };
    h.advance(MIN_SILENCE + MS);
    h.answer_all(healthy);
    h.answer_all(late);
    // Both idle and answering: the next two leases go one to each.
    h.engine.on_lease(1, 10);
    h.engine.on_lease(2, 10);
    h.pass();
    assert_eq!((h.written(late), h.written(healthy)), (1, 1));
}

#[test]
fn a_direct_lease_on_a_silent_connection_is_hedged_only_when_another_can_take_it() {
    // (case, B is ready when A goes silent, who answers the caller)
    for (case, b_ready, answered_by) in [("hedged", true, 2), ("no one else", false, 1)] {
        let mut h = Harness::new(ClientConfig::new([A, B]));
        h.pass();
        h.welcome(1, 1);
        h.pass();
        h.answer_all(1);
        h.engine.on_lease(9, 100);
        h.pass();
        assert_eq!(h.conns[&1].written, [(2, 100)], "{case}");
        if b_ready {
            h.welcome(2, 2);
        }
        h.advance(MIN_SILENCE + MS);
        if b_ready {
            assert_eq!(h.conns[&2].written, [(1, 100)], "{case}: hedged to B");
            h.answer_all(2);
        }
        let pushed = h.buffer.pushed();
        h.answer_all(1);
        assert_eq!(h.answers.len(), 1, "{case}: {:?}", h.answers);
        let (caller, range) = h.answers[0];
        assert_eq!((caller, range.count), (9, 100), "{case}");
        let worker = Layout::DEFAULT.decompose(range.first).worker;
        assert_eq!(worker, answered_by, "{case}");
        let buffered = h.buffer.pushed() - pushed;
        assert_eq!(
            buffered,
            if b_ready { 100 } else { 0 },
            "{case}: A's late reply"
        );
    }
}
