//! Table-driven tests of the engine, with a harness that plays the shell: it keeps a real
//! `Buffer`, records every action, and plays servers that greet and answer (or do not)
//! on demand. Time is an `Instant` the test advances; nothing runs in the background.
#![allow(clippy::unwrap_used)]

mod bulk;
mod dns;
mod silence;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::engine::{Action, CallerId, ConnId, Engine, Level};
use crate::client::buffer::Buffer;
use crate::client::config::ClientConfig;
use crate::client::{Error, IdRange};
use crate::layout::Layout;
use crate::wire::{goaway, ErrorCode, Request, Response, Run, Welcome, WorkerSet, MAX_BULK};

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn welcome(worker_id: u16) -> Welcome {
    Welcome::announcing(1, worker_id, &Layout::DEFAULT, 0)
}

/// The shell, as far as the engine can tell.
struct Harness {
    engine: Engine,
    now: Instant,
    buffer: Buffer,
    /// Open connections: address, worker once greeted, and requests written but not yet
    /// answered by the test, oldest first.
    conns: HashMap<ConnId, Conn>,
    /// Every connection ever opened, in order.
    opened: Vec<(ConnId, SocketAddr)>,
    closed: Vec<ConnId>,
    /// When each connection was opened and closed.
    opened_at: HashMap<ConnId, Instant>,
    closed_at: HashMap<ConnId, Instant>,
    /// While set, every greeted connection not in `silent` answers each request at once.
    auto: bool,
    silent: HashSet<ConnId>,
    /// Longest step of `advance`: 1 ms, like callers drawing all the time.
    step: Duration,
    /// Endpoints asked to resolve, in order, and when.
    resolves: Vec<usize>,
    resolve_times: Vec<Instant>,
    /// While set, every resolution is answered with these addresses at the next step.
    dns: Option<Vec<SocketAddr>>,
    unanswered_resolves: Vec<usize>,
    answers: Vec<(CallerId, IdRange)>,
    last_error: Option<Error>,
    fatal: Option<Error>,
    layout: Option<Layout>,
    /// Next tick each fake worker issues from, so every range is fresh and ascending.
    ticks: HashMap<u16, u64>,
    /// Every request written, in order.
    requests: Vec<(ConnId, Request)>,
}

#[derive(Debug, Default)]
struct Conn {
    addr: Option<SocketAddr>,
    worker: Option<u16>,
    /// The worker set of a version-2 WELCOME.
    set: Option<WorkerSet>,
    written: VecDeque<(u32, u32)>,
    /// Request ids in `written` that are BULK_LEASEs.
    bulk: HashSet<u32>,
}

/// How many IDs one fake worker grants a BULK_LEASE at most: 16 ticks, as if a busy
/// server's home worker had that much of its lead left, so large bulk leases take runs of
/// several workers.
const RUN_LIMIT: u32 = 65_536;

impl Harness {
    fn new(config: ClientConfig) -> Harness {
        let targets = config.validate().unwrap();
        let now = Instant::now();
        Harness {
            engine: Engine::new(config, targets, now, 7),
            now,
            buffer: Buffer::new(),
            conns: HashMap::new(),
            opened: Vec::new(),
            closed: Vec::new(),
            opened_at: HashMap::new(),
            closed_at: HashMap::new(),
            auto: false,
            silent: HashSet::new(),
            step: Duration::from_millis(1),
            resolves: Vec::new(),
            resolve_times: Vec::new(),
            dns: None,
            unanswered_resolves: Vec::new(),
            answers: Vec::new(),
            last_error: None,
            fatal: None,
            layout: None,
            ticks: HashMap::new(),
            requests: Vec::new(),
        }
    }

    /// Servers at these addresses, each connected and greeted as worker 1, 2, ... in order.
    fn connected(endpoints: &[&str]) -> Harness {
        Harness::connected_with(ClientConfig::new(endpoints.iter().copied()))
    }

    fn connected_with(config: ClientConfig) -> Harness {
        let mut h = Harness::new(config);
        h.pass();
        h.greet_opened();
        h
    }

    /// The name `ids.svc:7609`, resolved once to these addresses, each connected and greeted
    /// as worker 1, 2, ... in order.
    fn resolved(addresses: &[&str]) -> Harness {
        let mut h = Harness::new(ClientConfig::new(["ids.svc:7609"]));
        h.pass();
        let listed = addresses.iter().map(|a| addr(a)).collect();
        h.engine.on_resolved(0, Ok(listed), h.now);
        h.pass();
        h.greet_opened();
        h
    }

    /// Greets every connection opened so far as worker 1, 2, ... in the order they opened.
    fn greet_opened(&mut self) {
        let opened: Vec<ConnId> = self.opened.iter().map(|&(c, _)| c).collect();
        for (i, conn) in opened.into_iter().enumerate() {
            self.welcome(conn, u16::try_from(i + 1).unwrap());
        }
    }

    fn drain(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            self.perform(action);
        }
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Connect { conn, addr, .. } => {
                self.opened.push((conn, addr));
                self.opened_at.insert(conn, self.now);
                let state = Conn {
                    addr: Some(addr),
                    ..Conn::default()
                };
                self.conns.insert(conn, state);
            }
            Action::Send { conn: id, request } => {
                self.requests.push((id, request.clone()));
                let conn = self
                    .conns
                    .get_mut(&id)
                    .expect("send on a closed connection");
                match request {
                    Request::Lease { request_id, count } => {
                        conn.written.push_back((request_id, count));
                    }
                    Request::BulkLease { request_id, count } => {
                        conn.written.push_back((request_id, count));
                        conn.bulk.insert(request_id);
                    }
                    other => panic!("unexpected request {other:?}"),
                }
            }
            Action::Close { conn } => {
                self.closed.push(conn);
                self.closed_at.insert(conn, self.now);
                self.conns.remove(&conn);
            }
            Action::Resolve { endpoint, .. } => {
                self.resolves.push(endpoint);
                self.resolve_times.push(self.now);
                self.unanswered_resolves.push(endpoint);
            }
            Action::Buffer(block) => self.buffer.push(block),
            Action::BufferAll(blocks) => blocks.into_iter().for_each(|b| self.buffer.push(b)),
            Action::Answer { caller, range, .. } => self.answers.push((caller, range)),
            Action::Layout(layout) => self.layout = Some(layout),
            Action::LastError(why) => self.last_error = Some(why),
            Action::Fatal(fatal) => self.fatal = fatal,
            Action::Arm(wake_below) => self.buffer.arm(wake_below),
            Action::WakeWaiters => {}
        }
    }

    /// One driver pass, as the shell runs it.
    fn pass(&mut self) {
        if let Some(cutoff) = self.engine.expiry_cutoff(self.now) {
            self.buffer.expire(cutoff);
        }
        let level = Level {
            available: self.buffer.available(),
            drawn: self.buffer.drawn(),
        };
        self.engine.maintain(self.now, level);
        self.drain();
    }

    /// Lets time pass in steps of at most `step`, with a pass after each (and so at every
    /// deadline the engine asked for, as the shell's timer would); with `auto`, answering
    /// servers answer after every pass.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while self.now < end {
            let wake = self.engine.next_deadline();
            self.now = wake
                .max(self.now + Duration::from_micros(1))
                .min(self.now + self.step)
                .min(end);
            self.pass();
            self.serve();
            self.answer_dns();
        }
    }

    /// With `dns` set, answers every resolution asked for so far.
    fn answer_dns(&mut self) {
        let Some(addrs) = self.dns.clone() else {
            return;
        };
        for endpoint in std::mem::take(&mut self.unanswered_resolves) {
            self.engine
                .on_resolved(endpoint, Ok(addrs.clone()), self.now);
            self.drain();
        }
    }

    /// With `auto`, answers everything written on greeted connections that are not silent.
    fn serve(&mut self) {
        if !self.auto {
            return;
        }
        loop {
            let due = self.conns.iter().find(|(id, c)| {
                !self.silent.contains(id) && c.worker.is_some() && !c.written.is_empty()
            });
            let Some((&conn, _)) = due else {
                return;
            };
            self.answer(conn, 1);
        }
    }

    fn frame(&mut self, conn: ConnId, frame: Response) {
        self.engine.on_frame(conn, frame, self.now);
        self.drain();
    }

    fn welcome(&mut self, conn: ConnId, worker: u16) {
        self.conns.get_mut(&conn).unwrap().worker = Some(worker);
        self.frame(conn, Response::Welcome(welcome(worker)));
    }

    /// A version-2 WELCOME: home worker `worker` of the set `first..first + count`.
    fn welcome_v2(&mut self, conn: ConnId, worker: u16, first: u16, count: u16) {
        let set = WorkerSet {
            first_worker: first,
            worker_count: count,
            max_bulk: MAX_BULK,
        };
        let c = self.conns.get_mut(&conn).unwrap();
        c.worker = Some(worker);
        c.set = Some(set);
        let mut w = welcome(worker);
        w.version = 2;
        self.frame(
            conn,
            Response::WelcomeV2 {
                welcome: w,
                workers: set,
            },
        );
    }

    /// The connection's end as its task reports it.
    fn close(&mut self, conn: ConnId) {
        let addr = self.conns[&conn].addr.unwrap();
        self.engine
            .on_closed(conn, Error::Disconnected { addr }, self.now);
        self.drain();
    }

    /// A correct LEASED (or BULK_LEASED) for the oldest request written on `conn`.
    fn good_reply(&mut self, conn: ConnId) -> Response {
        let c = self.conns.get_mut(&conn).unwrap();
        let (request_id, count) = c.written.pop_front().expect("nothing to answer");
        let worker = c.worker.unwrap();
        if c.bulk.remove(&request_id) {
            let set = c.set.expect("BULK_LEASE on a version-1 connection");
            return self.bulk_reply(request_id, count, worker, set);
        }
        let tick = self.ticks.entry(worker).or_insert(1_000_000);
        *tick += 1;
        Response::Leased {
            request_id,
            first_id: Layout::DEFAULT.compose(*tick, worker, 0),
            count,
        }
    }

    /// The good LEASED reply for `conn`'s oldest request with its `(request_id, first_id,
    /// count)` bent by `bend`.
    fn bent_reply(&mut self, conn: ConnId, bend: fn(u32, u64, u32) -> (u32, u64, u32)) -> Response {
        let Response::Leased {
            request_id,
            first_id,
            count,
        } = self.good_reply(conn)
        else {
            panic!("the oldest request is not a LEASE");
        };
        let (request_id, first_id, count) = bend(request_id, first_id, count);
        Response::Leased {
            request_id,
            first_id,
            count,
        }
    }

    /// Runs like a server's: from the home worker first, then the others of the set, each
    /// worker at most [`RUN_LIMIT`] IDs from a fresh tick.
    fn bulk_reply(&mut self, request_id: u32, count: u32, home: u16, set: WorkerSet) -> Response {
        let mut left = count;
        let mut runs = Vec::new();
        for i in 0..set.worker_count {
            if left == 0 {
                break;
            }
            let worker = set.first_worker + (home - set.first_worker + i) % set.worker_count;
            let take = left.min(RUN_LIMIT);
            let tick = self.ticks.entry(worker).or_insert(1_000_000);
            *tick += 1;
            runs.push(Run {
                first_id: Layout::DEFAULT.compose(*tick, worker, 0),
                count: take,
            });
            *tick += u64::from(take.div_ceil(4096)) - 1;
            left -= take;
        }
        Response::BulkLeased { request_id, runs }
    }

    /// How many LEASEs and BULK_LEASEs were written from request number `from` on.
    fn kinds_since(&self, from: usize) -> (usize, usize) {
        let bulk = self.requests[from..]
            .iter()
            .filter(|(_, r)| matches!(r, Request::BulkLease { .. }))
            .count();
        (self.requests.len() - from - bulk, bulk)
    }

    /// Answers the `n` oldest requests on `conn` correctly, each with a pass after it.
    fn answer(&mut self, conn: ConnId, n: usize) {
        for _ in 0..n {
            let reply = self.good_reply(conn);
            self.frame(conn, reply);
            self.pass();
        }
    }

    fn answer_all(&mut self, conn: ConnId) {
        let n = self.written(conn);
        self.answer(conn, n);
    }

    fn written(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.written.len())
    }

    /// Callers take `n` IDs (fewer if the buffer runs dry); returns how many they got.
    fn draw(&mut self, n: usize) -> usize {
        let mut out = Vec::new();
        self.buffer.take_into(&mut out, n);
        out.len()
    }

    fn conn_of(&self, address: &str) -> Option<ConnId> {
        let a = addr(address);
        self.conns
            .iter()
            .find(|(_, c)| c.addr == Some(a))
            .map(|(&id, _)| id)
    }

    fn error_text(&self) -> String {
        self.last_error
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

const A: &str = "10.0.0.1:7609";
const B: &str = "10.0.0.2:7609";
const C: &str = "10.0.0.3:7609";

#[test]
fn the_engine_modules_touch_no_runtime_and_no_shared_state() {
    let modules = [
        ("engine.rs", include_str!("engine.rs")),
        ("latency.rs", include_str!("latency.rs")),
        ("recheck.rs", include_str!("recheck.rs")),
        ("refill.rs", include_str!("refill.rs")),
        ("replies.rs", include_str!("replies.rs")),
        ("slots.rs", include_str!("slots.rs")),
    ];
    for (file, text) in modules {
        for banned in ["tokio", "Shared", "spawn(", "Instant::now", "Mutex"] {
            assert!(!text.contains(banned), "{file} mentions {banned}");
        }
    }
}

#[test]
fn the_first_pass_connects_to_every_address_and_leases_once_greeted() {
    let mut h = Harness::new(ClientConfig::new([A, B]));
    h.pass();
    assert_eq!(h.opened, [(1, addr(A)), (2, addr(B))]);
    assert_eq!(
        (h.written(1), h.written(2)),
        (0, 0),
        "nothing before WELCOME"
    );
    h.welcome(1, 1);
    assert_eq!(h.layout, Some(Layout::DEFAULT));
    h.pass();
    // Idle: one lease of low_water (4,096) covers the plan.
    assert_eq!(h.conns[&1].written, [(1, 4096)]);
    h.answer_all(1);
    assert_eq!(h.buffer.available(), 4096);
}

/// How a connection can end while it has work outstanding.
type Ending = fn(&mut Harness, ConnId);

const ENDINGS: [(&str, Ending); 4] = [
    ("closed by the peer", |h, c| h.close(c)),
    ("ERROR that closes", |h, c| {
        h.frame(
            c,
            Response::Error {
                request_id: 0,
                code: ErrorCode::INTERNAL,
                message: "boom".into(),
            },
        );
    }),
    ("silent past request_timeout", |h, _| {
        h.advance(Duration::from_millis(2200));
    }),
    ("a reply that breaks the contract", |h, c| {
        let Response::Leased {
            request_id,
            first_id,
            count,
        } = h.good_reply(c)
        else {
            unreachable!()
        };
        h.frame(
            c,
            Response::Leased {
                request_id,
                first_id,
                count: count + 1,
            },
        );
    }),
];

#[test]
fn a_lost_connection_sends_its_unanswered_direct_leases_elsewhere_in_order() {
    for (ending, end) in ENDINGS {
        let mut h = Harness::connected(&[A, B]);
        // Fill the buffer so refills stay out of the way.
        h.pass();
        h.answer_all(1);
        h.answer_all(2);
        h.engine.on_lease(10, 7);
        h.engine.on_lease(11, 9);
        h.pass();
        let on_a = h.written(1);
        let on_b = h.written(2);
        assert_eq!(on_a + on_b, 2, "{ending}");
        // Put both on A: answer B's and re-send until A has both.
        let (dead, alive) = if on_a >= 1 { (1, 2) } else { (2, 1) };
        h.answer_all(alive);
        h.auto = true;
        h.silent.insert(dead);
        end(&mut h, dead);
        assert!(h.closed.contains(&dead), "{ending}: not closed");
        h.pass();
        h.answer_all(alive);
        let callers: Vec<CallerId> = h.answers.iter().map(|&(c, _)| c).collect();
        assert_eq!(callers.len(), 2, "{ending}: {callers:?}");
        assert!(callers.contains(&10) && callers.contains(&11), "{ending}");
        assert!(
            h.answers
                .iter()
                .all(|&(c, r)| r.count == if c == 10 { 7 } else { 9 }),
            "{ending}: {:?}",
            h.answers
        );
    }
}

#[test]
fn a_lost_connection_is_retried_after_a_jittered_backoff() {
    for (ending, end) in ENDINGS {
        let mut h = Harness::connected(&[A, B]);
        h.pass();
        let conn = if h.written(1) > 0 { 1 } else { 2 };
        let address = h.conns[&conn].addr.unwrap();
        end(&mut h, conn);
        assert!(h.last_error.is_some(), "{ending}");
        let lost_at = h.closed_at[&conn];
        h.advance(Duration::from_millis(100));
        let (again, _) = h
            .opened
            .iter()
            .copied()
            .find(|&(c, a)| c > conn && a == address)
            .unwrap_or_else(|| panic!("{ending}: no reconnect"));
        // Default backoff: the first retry 25..=50 ms after the failure.
        let delay = h.opened_at[&again] - lost_at;
        assert!(
            (Duration::from_millis(25)..=Duration::from_millis(50)).contains(&delay),
            "{ending}: {delay:?}"
        );
    }
}

#[test]
fn buffer_leases_of_a_lost_connection_are_not_resent_but_refilled_by_the_plan() {
    let mut h = Harness::connected(&[A, B]);
    h.pass();
    let (dead, alive) = if h.written(1) > 0 { (1, 2) } else { (2, 1) };
    assert_eq!(h.written(alive), 0, "idle: one lease in flight");
    h.close(dead);
    h.pass();
    assert_eq!(h.conns[&alive].written, [(1, 4096)]);
}

#[test]
fn goaway_lets_outstanding_replies_finish_and_sends_nothing_new() {
    let mut h = Harness::new(ClientConfig::new([A, B]));
    h.pass();
    h.welcome(1, 1);
    h.pass();
    assert_eq!(h.written(1), 1);
    h.frame(
        1,
        Response::GoAway {
            reason: goaway::SHUTDOWN,
        },
    );
    assert!(h.closed.is_empty(), "a reply is still due");
    h.engine.on_lease(5, 100);
    h.pass();
    assert_eq!(h.written(1), 1, "nothing new to a draining connection");
    h.welcome(2, 2);
    h.pass();
    assert_eq!(
        h.conns[&2].written,
        [(1, 100)],
        "the direct lease went to B"
    );
    h.answer(1, 1);
    assert_eq!(h.closed, [1], "closed after its last reply");
    assert!(
        h.error_text().contains("GOAWAY SHUTDOWN"),
        "{}",
        h.error_text()
    );
    assert_eq!(
        h.buffer.available(),
        4096,
        "the draining server's IDs were used"
    );
}

#[test]
fn goaway_with_nothing_outstanding_closes_at_once() {
    let mut h = Harness::connected(&[A, B]);
    h.pass();
    let idle = if h.written(1) > 0 { 2 } else { 1 };
    h.frame(idle, Response::GoAway { reason: 1 });
    assert!(h.closed.contains(&idle));
}

#[test]
fn requests_unanswered_past_request_timeout_fail_their_connection() {
    let mut h = Harness::connected(&[A]);
    h.pass();
    assert_eq!(h.written(1), 1);
    h.advance(Duration::from_millis(1900));
    assert!(h.closed.is_empty(), "2 s is the limit");
    h.advance(Duration::from_millis(300));
    assert_eq!(h.closed, [1]);
    assert!(
        matches!(h.last_error, Some(Error::RequestTimeout { .. })),
        "{:?}",
        h.last_error
    );
}

/// A bad reply, and what the error must say.
type Breaker = fn(&mut Harness, ConnId) -> Response;

#[test]
fn replies_that_break_the_contract_drop_the_connection_and_hand_out_nothing() {
    let cases: [(&str, Breaker, &str); 6] = [
        (
            "more IDs than asked",
            |h, c| h.bent_reply(c, |r, first, n| (r, first, n + 1)),
            "for a LEASE of",
        ),
        (
            "another request id",
            |h, c| h.bent_reply(c, |r, first, n| (r + 1, first, n)),
            "oldest outstanding",
        ),
        (
            "another worker's IDs",
            |h, c| {
                h.bent_reply(c, |r, _, n| {
                    (r, Layout::DEFAULT.compose(2_000_000, 99, 0), n)
                })
            },
            "belongs to worker 99",
        ),
        (
            "a range below the previous one",
            |h, c| {
                h.answer(c, 1);
                h.draw(4096);
                h.pass();
                let worker = h.conns[&c].worker.unwrap();
                *h.ticks.get_mut(&worker).unwrap() -= 10;
                h.good_reply(c)
            },
            "could repeat",
        ),
        (
            "a second WELCOME",
            |_, _| Response::Welcome(welcome(5)),
            "second WELCOME",
        ),
        (
            "a second WELCOME with another layout",
            |_, _| {
                let mut w = welcome(5);
                w.epoch_unix_ms += 1;
                Response::Welcome(w)
            },
            "share a layout",
        ),
    ];
    for (case, make, says) in cases {
        let mut h = Harness::connected(&[A]);
        h.pass();
        let reply = make(&mut h, 1);
        let pushed = h.buffer.pushed();
        h.frame(1, reply);
        assert_eq!(h.closed, [1], "{case}");
        assert_eq!(h.buffer.pushed(), pushed, "{case}: IDs handed out");
        let text = h.error_text();
        assert!(text.contains(says), "{case}: {text}");
        assert!(text.contains("protocol violation"), "{case}: {text}");
    }
}

#[test]
fn welcomes_that_cannot_be_trusted_are_refused_before_any_lease() {
    type Change = fn(&mut Welcome);
    let cases: [(&str, Change, &str); 3] = [
        ("version 2", |w| w.version = 2, "version 2"),
        ("another layout", |w| w.epoch_unix_ms += 1, "share a layout"),
        (
            "the worker of another connection",
            |w| w.worker_id = 1,
            "already connected",
        ),
    ];
    for (case, change, says) in cases {
        let mut h = Harness::new(ClientConfig::new([A, B]));
        h.pass();
        h.welcome(1, 1);
        let mut w = welcome(2);
        change(&mut w);
        h.frame(2, Response::Welcome(w));
        assert_eq!(h.closed, [2], "{case}");
        assert!(h.error_text().contains(says), "{case}: {}", h.error_text());
    }
}

#[test]
fn a_name_connects_to_every_address_it_resolves_to() {
    let mut h = Harness::new(ClientConfig::new(["ids.svc:7609"]));
    h.pass();
    assert_eq!(h.resolves, [0]);
    assert!(
        h.opened.is_empty(),
        "nothing to connect to before the answer"
    );
    h.engine.on_resolved(0, Ok(vec![addr(A), addr(B)]), h.now);
    h.pass();
    let opened: Vec<SocketAddr> = h.opened.iter().map(|&(_, a)| a).collect();
    assert_eq!(opened, [addr(A), addr(B)]);
}

/// DNS churn: what one re-resolution that lists `now_listed` does to connections on
/// A and B.
#[test]
fn re_resolution_adds_new_addresses_and_retires_vanished_ones_when_they_end() {
    type Addrs = &'static [&'static str];
    let cases: [(&str, Addrs, Addrs, Addrs); 4] = [
        // (case, listed now, connected after the answer, connected after A and B end)
        ("unchanged", &[A, B], &[A, B], &[A, B]),
        ("one added", &[A, B, C], &[A, B, C], &[A, B, C]),
        ("one gone", &[B], &[A, B], &[B]),
        ("one replaced", &[B, C], &[A, B, C], &[B, C]),
    ];
    for (case, listed, after_answer, after_end) in cases {
        let mut h = Harness::resolved(&[A, B]);
        h.auto = true;
        // The periodic re-resolution (30 s by default).
        h.advance(Duration::from_secs(30));
        assert_eq!(h.resolves, [0, 0], "{case}");
        let listed: Vec<SocketAddr> = listed.iter().map(|a| addr(a)).collect();
        h.engine.on_resolved(0, Ok(listed), h.now);
        h.pass();
        let mut connected: Vec<SocketAddr> = h.conns.values().filter_map(|c| c.addr).collect();
        connected.sort();
        let want: Vec<SocketAddr> = after_answer.iter().map(|a| addr(a)).collect();
        assert_eq!(connected, want, "{case}: after the answer");
        // Both original connections end; listed addresses reconnect, vanished ones do not.
        let (a, b) = (h.conn_of(A).unwrap(), h.conn_of(B).unwrap());
        h.close(a);
        h.close(b);
        h.advance(Duration::from_millis(100));
        // A reconnect first re-resolves; answer with the same list.
        let listed_again: Vec<SocketAddr> = after_end.iter().map(|a| addr(a)).collect();
        h.engine.on_resolved(0, Ok(listed_again), h.now);
        h.advance(Duration::from_millis(100));
        let mut connected: Vec<SocketAddr> = h.conns.values().filter_map(|c| c.addr).collect();
        connected.sort();
        let want: Vec<SocketAddr> = after_end.iter().map(|a| addr(a)).collect();
        assert_eq!(connected, want, "{case}: after the old connections ended");
    }
}

#[test]
fn a_failed_resolution_keeps_the_addresses_already_known() {
    let mut h = Harness::resolved(&[A]);
    h.auto = true;
    h.advance(Duration::from_secs(30));
    h.auto = false;
    let failure = Error::NoAddresses {
        endpoint: "ids.svc:7609".into(),
    };
    h.engine.on_resolved(0, Err(failure), h.now);
    h.pass();
    assert!(h.closed.is_empty());
    h.draw(4096);
    h.pass();
    assert_eq!(h.written(1), 1, "still leasing from A");
    assert!(
        h.error_text().contains("no addresses"),
        "{}",
        h.error_text()
    );
}

#[test]
fn a_reconnect_to_a_name_waits_for_a_fresh_resolution() {
    let mut h = Harness::resolved(&[A]);
    h.close(1);
    h.advance(Duration::from_millis(100));
    assert_eq!(h.resolves, [0, 0], "re-resolved before reconnecting");
    assert_eq!(h.opened.len(), 1, "no reconnect before the answer");
    h.engine.on_resolved(0, Ok(vec![addr(A)]), h.now);
    h.pass();
    assert_eq!(h.opened.len(), 2);
    assert_eq!(h.opened[1].1, addr(A));
}

#[test]
fn connect_gives_up_only_when_every_server_refuses_for_good() {
    let unauthorized = |h: &mut Harness, c| {
        h.frame(
            c,
            Response::Error {
                request_id: 0,
                code: ErrorCode::UNAUTHORIZED,
                message: "a valid token is required".into(),
            },
        );
    };
    let mut h = Harness::new(ClientConfig::new([A, B]));
    h.pass();
    unauthorized(&mut h, 1);
    assert!(h.fatal.is_none(), "B has not answered yet");
    unauthorized(&mut h, 2);
    let fatal = h
        .fatal
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(fatal.contains("UNAUTHORIZED"), "{fatal}");
    // A server that greets clears the verdict.
    h.advance(Duration::from_millis(60));
    let again = h.opened.last().unwrap().0;
    h.welcome(again, 1);
    assert!(h.fatal.is_none());
}

#[test]
fn refusals_end_connect_only_before_any_server_greeted_the_client() {
    let refused = |h: &mut Harness, conn: ConnId| {
        let addr = h.conns[&conn].addr.unwrap();
        let source = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        h.engine.on_closed(
            conn,
            Error::Connect {
                addr,
                source: source.into(),
            },
            h.now,
        );
        h.drain();
    };
    // (case, B greeted first, A and B then refused: connect gives up)
    for (case, greeted, gives_up) in [
        ("first contact", false, true),
        ("after a WELCOME", true, false),
    ] {
        let mut h = Harness::new(ClientConfig::new([A, B]));
        h.pass();
        if greeted {
            h.welcome(2, 2);
            h.close(2);
            h.advance(Duration::from_millis(60));
        }
        let (a, b) = (h.conn_of(A).unwrap(), h.conn_of(B).unwrap());
        refused(&mut h, a);
        assert!(h.fatal.is_none(), "{case}: B has not refused yet");
        refused(&mut h, b);
        let fatal = h.fatal.as_ref().map(ToString::to_string);
        assert_eq!(fatal.is_some(), gives_up, "{case}: {fatal:?}");
        if gives_up {
            assert!(fatal.unwrap().contains("refused"), "{case}");
        }
    }
}

#[test]
fn a_direct_lease_whose_caller_left_is_not_sent_and_a_sent_one_is_buffered() {
    let mut h = Harness::connected(&[A]);
    h.pass();
    h.answer_all(1);
    h.engine.on_lease(1, 50);
    h.engine.on_caller_gone(1);
    h.pass();
    assert_eq!(h.written(1), 0, "nothing sent for a caller who left");
    h.engine.on_lease(2, 50);
    h.pass();
    assert_eq!(h.written(1), 1);
    h.engine.on_caller_gone(2);
    let before = h.buffer.available();
    h.answer_all(1);
    assert!(h.answers.is_empty());
    assert_eq!(h.buffer.available(), before + 50);
}

#[test]
fn ranges_are_dropped_before_they_pass_max_age() {
    let mut h = Harness::connected_with(ClientConfig::new([A]).max_age(Duration::from_millis(800)));
    h.pass();
    h.answer_all(1);
    assert_eq!(h.buffer.available(), 4096);
    // The tick is max_age / 8 = 100 ms: a range goes between 700 and 800 ms.
    h.advance(Duration::from_millis(690));
    assert_eq!(h.buffer.available(), 4096, "too early");
    h.advance(Duration::from_millis(110));
    assert_eq!(h.written(1), 1, "expired and re-leased");
}

/// Prints what one LEASED reply and one refill pass cost the engine (with the buffer push),
/// the figures behind `EVENT_BATCH`. Run it optimised:
/// `cargo test -p snowlease --release --lib measure_the_engine -- --ignored --nocapture`
#[test]
#[ignore = "measurement: prints figures"]
fn measure_the_engine_cost_of_a_reply_and_a_pass() {
    let mut h = Harness::connected(&[A, B, C, "10.0.0.4:7609"]);
    let (mut replies_time, mut replies) = (Duration::ZERO, 0u32);
    let (mut pass_time, mut passes) = (Duration::ZERO, 0u32);
    for _ in 0..20_000 {
        h.draw(usize::MAX);
        let t = Instant::now();
        h.pass();
        pass_time += t.elapsed();
        passes += 1;
        let conns: Vec<ConnId> = h.conns.keys().copied().collect();
        let mut due = Vec::new();
        for conn in conns {
            while h.written(conn) > 0 {
                due.push((conn, h.good_reply(conn)));
            }
        }
        let t = Instant::now();
        for (conn, reply) in due {
            h.engine.on_frame(conn, reply, h.now);
            h.drain();
            replies += 1;
        }
        replies_time += t.elapsed();
        h.now += Duration::from_micros(100);
    }
    println!(
        "{replies} replies: {:?} each; {passes} passes: {:?} each",
        replies_time / replies,
        pass_time / passes
    );
}
