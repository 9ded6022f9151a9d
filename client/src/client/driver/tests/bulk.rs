//! Protocol version 2: greeting with a worker set, choosing BULK_LEASE by the draw rate,
//! verifying every BULK_LEASED as a whole before any ID of it reaches the buffer, expanding
//! runs into per-tick blocks, and failover with bulk leases in flight.

use super::*;
use crate::client::driver::refill::{ask_for, Ask};
use crate::client::verify::check_welcome;

const MS: Duration = Duration::from_millis(1);

/// One version-2 server holding workers 0..=3 (home 0), greeted.
fn v2() -> Harness {
    let mut h = Harness::new(ClientConfig::new([A]));
    h.pass();
    h.welcome_v2(1, 0, 0, 4);
    h
}

/// Callers draw `per_ms` IDs every millisecond for `ms` ms, servers answering at once.
fn busy(h: &mut Harness, per_ms: usize, ms: u32) {
    h.auto = true;
    for _ in 0..ms {
        h.draw(per_ms);
        h.advance(MS);
    }
}

/// Workers whose IDs are in the buffer.
fn buffered_workers(h: &mut Harness) -> Vec<u16> {
    let mut ranges = Vec::new();
    h.buffer.take_ranges(&mut ranges, u64::MAX);
    let mut workers: Vec<u16> = ranges
        .iter()
        .map(|r| Layout::DEFAULT.decompose(r.first).worker)
        .collect();
    workers.sort_unstable();
    workers.dedup();
    workers
}

#[test]
fn requests_are_sized_by_what_the_plan_wants_from_the_connection() {
    let layout = Layout::DEFAULT;
    let mut w = welcome(0);
    let v1 = check_welcome(&w, None, 2, None).unwrap();
    w.version = 2;
    let set = WorkerSet {
        first_worker: 0,
        worker_count: 4,
        max_bulk: 100_000,
    };
    let v2 = check_welcome(&w, Some(&set), 2, Some(layout)).unwrap();
    // (case, greeting, want, room, ask)
    let cases = [
        ("not greeted", None, 10_000, 10_000, Ask::Lease(1)),
        (
            "v1, any amount",
            Some(v1),
            1_000_000,
            1_000_000,
            Ask::Lease(4096),
        ),
        ("v1, little room", Some(v1), 1_000_000, 100, Ask::Lease(100)),
        (
            "v2, one lease's worth",
            Some(v2),
            4096,
            1_000_000,
            Ask::Lease(4096),
        ),
        (
            "v2, a little less",
            Some(v2),
            10,
            1_000_000,
            Ask::Lease(4096),
        ),
        (
            "v2, more than a lease",
            Some(v2),
            4097,
            1_000_000,
            Ask::Bulk(4097),
        ),
        (
            "v2, many ticks",
            Some(v2),
            50_000,
            1_000_000,
            Ask::Bulk(50_000),
        ),
        (
            "v2, capped by room",
            Some(v2),
            50_000,
            20_000,
            Ask::Bulk(20_000),
        ),
        (
            "v2, room for one lease",
            Some(v2),
            50_000,
            4096,
            Ask::Lease(4096),
        ),
        (
            "v2, capped by max_bulk",
            Some(v2),
            500_000,
            1_000_000,
            Ask::Bulk(100_000),
        ),
        (
            "v2, beyond u32",
            Some(v2),
            u64::MAX,
            u64::MAX,
            Ask::Bulk(100_000),
        ),
    ];
    for (case, greeting, want, room, ask) in cases {
        assert_eq!(ask_for(greeting, want, room), ask, "{case}");
    }
}

#[test]
fn an_idle_client_leases_and_a_busy_one_leases_in_bulk_from_several_workers() {
    let mut h = v2();
    h.pass();
    assert_eq!(h.conns[&1].written, [(1, 4096)], "idle: one LEASE");
    assert_eq!(h.kinds_since(0), (1, 0));
    // 16 M IDs/s: four workers' ceiling, far more than one LEASE per round trip.
    busy(&mut h, 16_000, 300);
    let from = h.requests.len();
    busy(&mut h, 16_000, 100);
    let (leases, bulks) = h.kinds_since(from);
    assert!(
        bulks > 0 && leases == 0,
        "{leases} LEASEs, {bulks} BULK_LEASEs"
    );
    // 1.6 M IDs in 100 ms from ~100 requests rather than ~400 LEASEs.
    assert!(bulks < 120, "{bulks} BULK_LEASEs");
    assert!(h.requests[from..].iter().all(|(_, r)| match r {
        Request::BulkLease { count, .. } => *count > 4096 && *count <= 262_144,
        _ => false,
    }));
    // The fake server grants at most 16 ticks per worker, so runs come from several.
    let workers = buffered_workers(&mut h);
    assert!(workers.len() >= 2 && workers[0] == 0, "{workers:?}");
    // Demand gone: back to LEASEs once the rate estimate has fallen.
    h.advance(Duration::from_secs(3));
    let from = h.requests.len();
    busy(&mut h, 10, 1500);
    let (leases, bulks) = h.kinds_since(from);
    assert!(
        leases > 0 && bulks == 0,
        "{leases} LEASEs, {bulks} BULK_LEASEs"
    );
}

#[test]
fn version_1_connections_never_lease_in_bulk_however_busy() {
    let mut h = Harness::connected(&[A]);
    busy(&mut h, 16_000, 300);
    let (leases, bulks) = h.kinds_since(0);
    assert!(
        leases > 100 && bulks == 0,
        "{leases} LEASEs, {bulks} BULK_LEASEs"
    );
    assert_eq!(buffered_workers(&mut h), [1]);
}

#[test]
fn the_bulk_share_is_split_among_version_2_connections_and_leases_go_to_version_1_ones() {
    let mut h = Harness::new(ClientConfig::new([A, B]));
    h.pass();
    h.welcome_v2(1, 0, 0, 4);
    h.welcome(2, 9);
    busy(&mut h, 8_000, 300);
    let from = h.requests.len();
    busy(&mut h, 8_000, 100);
    let on = |conn| {
        h.requests[from..]
            .iter()
            .filter(|(c, _)| *c == conn)
            .map(|(_, r)| r.clone())
            .collect::<Vec<_>>()
    };
    assert!(on(1).iter().all(|r| matches!(r, Request::BulkLease { .. })));
    assert!(on(2).iter().all(|r| matches!(r, Request::Lease { .. })));
    assert!(!on(1).is_empty() && !on(2).is_empty());
}

/// A version-2 harness whose callers drew at 16 M IDs/s and then emptied the buffer, with
/// one BULK_LEASE outstanding that the test answers itself; returns its id and count.
fn bulk_outstanding(h: &mut Harness) -> (u32, u32) {
    busy(h, 16_000, 100);
    h.auto = false;
    h.draw(usize::MAX);
    h.pass();
    let c = h.conns.get_mut(&1).unwrap();
    assert_eq!(c.written.len(), 1, "{:?}", c.written);
    let (request_id, count) = c.written.pop_front().unwrap();
    assert!(c.bulk.remove(&request_id), "not a BULK_LEASE");
    (request_id, count)
}

#[test]
fn a_bulk_reply_reaches_the_buffer_as_per_tick_blocks_of_its_runs() {
    let mut h = v2();
    let (request_id, count) = bulk_outstanding(&mut h);
    assert!(count >= 8292, "asked {count}");
    let l = Layout::DEFAULT;
    let runs = vec![
        run(5_000_000, 2, 4000, 96 + 4096 + 4),
        run(5_000_000, 3, 0, 4096),
    ];
    let pushed = h.buffer.pushed();
    h.frame(1, bulk(request_id, runs));
    assert!(h.closed.is_empty(), "{}", h.error_text());
    assert_eq!(h.buffer.pushed() - pushed, 8292);
    let mut ranges = Vec::new();
    h.buffer.take_ranges(&mut ranges, u64::MAX);
    let range = |first, count| IdRange { first, count };
    assert_eq!(
        ranges,
        [
            range(l.compose(5_000_000, 2, 4000), 96),
            range(l.compose(5_000_001, 2, 0), 4096),
            range(l.compose(5_000_002, 2, 0), 4),
            range(l.compose(5_000_000, 3, 0), 4096),
        ]
    );
}

/// A BULK_LEASED for the oldest request, built from its id and count.
type BadBulk = fn(u32, u32) -> Response;

fn bulk(request_id: u32, runs: Vec<Run>) -> Response {
    Response::BulkLeased { request_id, runs }
}

fn run(tick: u64, worker: u16, sequence: u32, count: u32) -> Run {
    Run {
        first_id: Layout::DEFAULT.compose(tick, worker, sequence),
        count,
    }
}

#[test]
fn bulk_replies_that_break_the_contract_drop_the_connection_and_hand_out_nothing() {
    let cases: [(&str, BadBulk, &str); 8] = [
        (
            "a worker outside the set",
            |id, _| bulk(id, vec![run(3_000_000, 0, 0, 10), run(3_000_000, 4, 0, 10)]),
            "outside the server's worker set 0..=3",
        ),
        (
            "a run past the end of the layout",
            |id, _| bulk(id, vec![run(Layout::DEFAULT.max_tick(), 1, 4000, 100)]),
            "passes the layout's last tick",
        ),
        (
            "more IDs than asked",
            |id, n| bulk(id, vec![run(3_000_000, 0, 0, n), run(3_000_000, 1, 0, 1)]),
            "IDs in all for a BULK_LEASE of",
        ),
        (
            "a run of no IDs",
            |id, _| bulk(id, vec![run(3_000_000, 0, 0, 10), run(3_000_000, 1, 0, 0)]),
            "has count 0",
        ),
        (
            "no runs at all",
            |id, _| bulk(id, vec![]),
            "carries 0 IDs in all",
        ),
        (
            "a run below the worker's last ID",
            |id, _| bulk(id, vec![run(1_000_000, 0, 0, 10)]),
            "could repeat",
        ),
        (
            "overlapping runs",
            |id, _| {
                bulk(
                    id,
                    vec![run(3_000_000, 2, 0, 4096), run(3_000_000, 2, 100, 10)],
                )
            },
            "could repeat",
        ),
        (
            "another request id",
            |id, _| bulk(id + 1, vec![run(3_000_000, 0, 0, 10)]),
            "oldest outstanding",
        ),
    ];
    for (case, make, says) in cases {
        let mut h = v2();
        // Worker 0's last ID is now at tick 1,000,001 or later.
        let (request_id, count) = bulk_outstanding(&mut h);
        let pushed = h.buffer.pushed();
        h.frame(1, make(request_id, count));
        assert_eq!(h.closed, [1], "{case}");
        assert_eq!(h.buffer.pushed(), pushed, "{case}: IDs handed out");
        assert!(h.answers.is_empty(), "{case}: answered a caller");
        let text = h.error_text();
        assert!(text.contains(says), "{case}: {text}");
        assert!(text.contains("protocol violation"), "{case}: {text}");
        assert!(
            matches!(h.last_error, Some(Error::Protocol { .. })),
            "{case}: {:?}",
            h.last_error
        );
    }
}

#[test]
fn a_bulk_reply_to_a_lease_is_a_violation() {
    let mut h = v2();
    h.pass();
    assert_eq!(h.conns[&1].written, [(1, 4096)], "idle: a LEASE");
    h.frame(1, bulk(1, vec![run(3_000_000, 0, 0, 10)]));
    assert_eq!(h.closed, [1]);
    assert_eq!(h.buffer.pushed(), 0);
    let text = h.error_text();
    assert!(
        text.contains("BULK_LEASED answers request 1, which was a LEASE"),
        "{text}"
    );
}

#[test]
fn a_bulk_reply_on_a_version_1_connection_is_a_violation() {
    let mut h = Harness::connected(&[A]);
    h.pass();
    h.frame(1, bulk(1, vec![run(3_000_000, 1, 0, 10)]));
    assert_eq!(h.closed, [1]);
    assert!(
        h.error_text().contains("on a version-1 connection"),
        "{}",
        h.error_text()
    );
}

#[test]
fn a_version_2_welcome_is_refused_when_the_client_offered_version_1() {
    let mut h = Harness::new(ClientConfig::new([A]).protocol_version(1));
    h.pass();
    h.welcome_v2(1, 0, 0, 4);
    assert_eq!(h.closed, [1]);
    assert!(
        h.error_text().contains("above the version 1"),
        "{}",
        h.error_text()
    );
}

#[test]
fn two_connections_whose_worker_sets_overlap_are_refused() {
    // (case, B's home and set, refused)
    let cases = [
        ("disjoint", (4, 4, 4), false),
        ("overlapping", (5, 3, 4), true),
        ("the same process twice", (1, 0, 4), true),
    ];
    for (case, (home, first, count), refused) in cases {
        let mut h = Harness::new(ClientConfig::new([A, B]));
        h.pass();
        h.welcome_v2(1, 0, 0, 4);
        h.welcome_v2(2, home, first, count);
        assert_eq!(h.closed.contains(&2), refused, "{case}");
        if refused {
            assert!(
                h.error_text().contains("already connected"),
                "{case}: {}",
                h.error_text()
            );
        }
    }
    // A version-1 server whose worker is in a version-2 server's set.
    let mut h = Harness::new(ClientConfig::new([A, B]));
    h.pass();
    h.welcome_v2(1, 0, 0, 4);
    h.welcome(2, 3);
    assert_eq!(h.closed, [2]);
}

#[test]
fn a_bulk_lease_unanswered_at_goaway_is_asked_of_another_server() {
    let mut h = Harness::new(ClientConfig::new([A, B]));
    h.pass();
    h.welcome_v2(1, 0, 0, 4);
    h.welcome_v2(2, 4, 4, 4);
    busy(&mut h, 16_000, 200);
    h.auto = false;
    h.draw(usize::MAX);
    h.pass();
    let (a_bulk, b_bulk) = (h.conns[&1].bulk.len(), h.conns[&2].bulk.len());
    assert!(
        a_bulk > 0 && b_bulk > 0,
        "{a_bulk} and {b_bulk} bulk leases"
    );
    // B answers what it has; A says GOAWAY and closes with its bulk lease unanswered.
    h.answer_all(2);
    h.draw(usize::MAX);
    let before = h.requests.len();
    h.frame(
        1,
        Response::GoAway {
            reason: goaway::SHUTDOWN,
        },
    );
    h.close(1);
    h.pass();
    let (_, bulks) = h.kinds_since(before);
    assert!(bulks > 0, "nothing asked after the GOAWAY");
    assert!(h.requests[before..].iter().all(|(c, _)| *c == 2));
    // The rest keeps coming from B's workers alone, and none of A's old IDs repeat.
    h.auto = true;
    h.silent.insert(1);
    let mut ids = Vec::new();
    for _ in 0..200 {
        let want = ids.len() + 16_000;
        h.buffer.take_into(&mut ids, want);
        h.advance(MS);
    }
    assert!(ids.len() > 2_000_000, "{}", ids.len());
    assert!(ids
        .iter()
        .all(|&id| (4..8).contains(&Layout::DEFAULT.decompose(id).worker)));
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n);
}

#[test]
fn ids_below_the_last_bulk_run_of_a_worker_are_refused_after_a_reconnect() {
    let mut h = v2();
    busy(&mut h, 16_000, 100);
    h.auto = false;
    // A run of worker 0 below its last run, on a new connection, must be refused.
    h.close(1);
    h.advance(Duration::from_millis(60));
    let again = h.opened.last().unwrap().0;
    assert_ne!(again, 1);
    h.welcome_v2(again, 0, 0, 4);
    h.draw(usize::MAX);
    h.pass();
    let (request_id, _) = h.conns[&again].written[0];
    assert!(h.conns[&again].bulk.contains(&request_id));
    let pushed = h.buffer.pushed();
    h.frame(again, bulk(request_id, vec![run(1_000_001, 0, 0, 1)]));
    assert!(h.closed.contains(&again));
    assert_eq!(h.buffer.pushed(), pushed);
    assert!(
        h.error_text().contains("could repeat"),
        "{}",
        h.error_text()
    );
}

#[test]
fn a_drained_connection_is_held_for_half_the_time_the_buffer_lasts_at_most_25_ms() {
    use crate::client::driver::refill::{bulk_hold, MAX_BULK_HOLD};
    // (IDs on hand, draw rate in IDs/s, hold)
    let cases = [
        (160_000, 16_000_000.0, Duration::from_millis(5)),
        (16_000, 16_000_000.0, Duration::from_micros(500)),
        (0, 16_000_000.0, Duration::ZERO),
        (1_000_000, 1_000_000.0, MAX_BULK_HOLD),
        (1000, 0.0, MAX_BULK_HOLD),
        (u64::MAX, f64::MIN_POSITIVE, MAX_BULK_HOLD),
        (1000, f64::NAN, MAX_BULK_HOLD),
    ];
    for (available, rate, hold) in cases {
        assert_eq!(bulk_hold(available, rate), hold, "{available} at {rate}/s");
    }
}

#[test]
fn after_a_short_bulk_reply_refills_skip_the_connection_until_its_hold_ends() {
    let mut h = v2();
    let (request_id, count) = bulk_outstanding(&mut h);
    // 16 ticks of worker 0, past everything the fake server issued so far.
    let tick = h.ticks.values().max().unwrap() + 1;
    h.ticks.insert(0, tick + 16);
    assert!(count > 16 * 4096);
    h.frame(1, bulk(request_id, vec![run(tick, 0, 0, 16 * 4096)]));
    let hold = h.engine.slots[0]
        .conn()
        .and_then(|c| c.drained_until)
        .expect("no hold after a short reply")
        - h.now;
    assert!(
        hold > Duration::ZERO && hold <= Duration::from_millis(25),
        "{hold:?}"
    );
    // Callers take everything: the plan wants more at once, yet nothing goes to A.
    h.draw(usize::MAX);
    h.pass();
    assert!(h.conns[&1].written.is_empty(), "asked during the hold");
    // A caller's direct lease is not held back.
    h.engine.on_lease(5, 10);
    h.pass();
    assert_eq!(h.conns[&1].written, [(request_id + 1, 10)]);
    assert!(
        h.engine.next_deadline() <= h.now + hold,
        "the hold's end is a deadline"
    );
    h.answer_all(1);
    h.draw(usize::MAX);
    let ask = h.now + hold;
    h.advance(hold);
    let asked = h
        .requests
        .iter()
        .rposition(|(_, r)| matches!(r, Request::BulkLease { .. }));
    assert!(
        h.requests.len() > asked.unwrap(),
        "asked again after the hold"
    );
    assert!(h.now >= ask);
    let (id, _) = *h.conns[&1].written.back().unwrap();
    assert!(
        h.conns[&1].bulk.contains(&id),
        "a bulk lease after the hold"
    );
    // A full reply lifts the hold.
    h.answer_all(1);
    assert!(h.engine.slots[0].conn().unwrap().drained_until.is_none());
}

#[test]
fn a_second_welcome_with_the_same_worker_set_is_named_a_second_welcome() {
    let mut h = v2();
    h.welcome_v2(1, 0, 0, 4);
    assert_eq!(h.closed, [1]);
    assert!(
        h.error_text().contains("second WELCOME"),
        "{}",
        h.error_text()
    );
}
