//! Hostile clients against the real `snowlease-server` binary: garbage, bogus lengths, every
//! malformed frame, slow and silent clients, clients that never read, connection floods and
//! churn, and the shared token.
//!
//! Each test starts its own server through `snowlease-testkit` (OS-assigned loopback ports
//! read back from the JSON `serving` line, a fresh state directory, stderr kept whole by a
//! reader thread so every line can be waited for), attacks it with plain blocking sockets,
//! and ends with [`Server::check_healthy`]: a fresh connection still gets a LEASE, the
//! server's resident memory is under [`RSS_LIMIT_KIB`], and no ID appeared twice in any
//! LEASED reply the test saw.

#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use snowlease::wire::{self, goaway, opcode, ErrorCode, Request, Response};
use snowlease_testkit::{procfs, Log, ServerCommand, ServerProcess, Signal};

const BIN: &str = env!("CARGO_BIN_EXE_snowlease-server");
/// Longest wait for anything the server should do at once.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Resident memory the server may use after any attack. It idles at about 5 MiB; 5,000 open
/// connections add about 12 MiB, 1,000 that pipelined a burst about 27 MiB.
const RSS_LIMIT_KIB: u64 = 64 * 1024;
const WORKER: &str = "9";

/// Every LEASED block a test has seen, to prove no ID was issued twice.
#[derive(Default)]
struct Ledger(Mutex<Vec<(u64, u32)>>);

impl Ledger {
    fn record(&self, first: u64, count: u32) {
        self.0.lock().unwrap().push((first, count));
    }

    fn assert_unique(&self, after: &str) {
        let mut blocks = self.0.lock().unwrap().clone();
        blocks.sort_unstable();
        for w in blocks.windows(2) {
            let end = w[0].0 + u64::from(w[0].1);
            assert!(
                end <= w[1].0,
                "after {after}: blocks {:?} and {:?} overlap",
                w[0],
                w[1]
            );
        }
    }
}

struct Server {
    process: ServerProcess,
    lease: SocketAddr,
    admin: SocketAddr,
    log: Arc<Log>,
    ids: Arc<Ledger>,
    /// The token a health check presents, when the server requires one.
    token: Option<Vec<u8>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        Self::start_wrapped(&[], args)
    }

    /// Starts the binary (behind `prefix`, e.g. `prlimit ...`) with `args` after this
    /// suite's defaults, and waits for its `serving` line.
    fn start_wrapped(prefix: &[&str], args: &[&str]) -> Server {
        let process = ServerCommand::new(BIN)
            .wrapper(prefix)
            .args(["--threads", "2", "--worker-id", WORKER])
            .args(args)
            .startup_timeout(TIMEOUT)
            .spawn()
            .unwrap_or_else(|e| panic!("no log line `serving` within {TIMEOUT:?}: {e}"));
        Server {
            lease: process.lease_addr(),
            admin: process.admin_addr(),
            log: process.log().clone(),
            process,
            ids: Arc::default(),
            token: None,
        }
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn connect(&self) -> Conn {
        Conn::new(TcpStream::connect(self.lease).expect("connect"), &self.ids)
    }

    fn signal(&self, sig: Signal) {
        self.process
            .signal(sig)
            .unwrap_or_else(|e| panic!("kill {sig:?} failed: {e}"));
    }

    /// Waits (bounded) for a line after the first `from` that satisfies `pred`.
    fn wait_log(&self, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.log
            .wait_for(from, pred, Instant::now() + TIMEOUT)
            .map(|(_, line)| line)
            .unwrap_or_else(|e| panic!("no log line {what} within {TIMEOUT:?}: {e}"))
    }

    fn rss_kib(&self) -> u64 {
        self.process
            .rss_kib()
            .expect("the server is still running, with VmRSS in /proc/PID/status")
    }

    fn metric(&self, name: &str) -> f64 {
        self.process
            .metric(name)
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// After an attack: a new connection is served (retrying while closed connections still
    /// hold the cap), memory is bounded, and no ID was seen twice.
    fn check_healthy(&self, after: &str) {
        assert!(
            self.process.is_alive(),
            "after {after}: the server exited; log {:?}",
            self.log.lines()
        );
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let mut c = self.connect();
            if let Some(token) = &self.token {
                c.request(&hello(token));
                assert!(
                    matches!(c.reply(), Some(Response::Welcome(_))),
                    "after {after}: the token is refused"
                );
            }
            c.request(&lease(0xC0FFEE, 4096));
            match c.reply() {
                Some(Response::Leased {
                    request_id: 0xC0FFEE,
                    ..
                }) => break,
                Some(Response::Error { code, .. })
                    if code == ErrorCode::OVERLOADED && Instant::now() < deadline =>
                {
                    thread::sleep(Duration::from_millis(20));
                }
                other => panic!("after {after}: a LEASE got {other:?}"),
            }
        }
        let rss = self.rss_kib();
        assert!(
            rss < RSS_LIMIT_KIB,
            "after {after}: the server uses {rss} KiB, over {RSS_LIMIT_KIB}"
        );
        self.ids.assert_unique(after);
    }
}

/// A blocking protocol connection that checks every reply is a well-formed frame.
struct Conn {
    s: TcpStream,
    buf: BytesMut,
    ids: Arc<Ledger>,
}

impl Conn {
    fn new(s: TcpStream, ids: &Arc<Ledger>) -> Conn {
        s.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        s.set_write_timeout(Some(TIMEOUT)).expect("write timeout");
        Conn {
            s,
            buf: BytesMut::new(),
            ids: ids.clone(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    fn request(&mut self, r: &Request) {
        self.send(&r.to_bytes());
    }

    /// The next reply, or `None` once the server has closed. Panics on a malformed reply, on
    /// a close in the middle of a frame and on silence past [`TIMEOUT`].
    fn reply(&mut self) -> Option<Response> {
        loop {
            match wire::decode_response(&mut self.buf) {
                Ok(Some(r)) => {
                    if let Response::Leased {
                        first_id, count, ..
                    } = &r
                    {
                        self.ids.record(*first_id, *count);
                    }
                    return Some(r);
                }
                Ok(None) => {}
                Err(e) => panic!("the server sent a malformed frame: {e}"),
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => {
                    assert!(self.buf.is_empty(), "the server closed inside a frame");
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    assert!(self.buf.is_empty(), "the server reset inside a frame");
                    return None;
                }
                Err(e) => panic!("no reply within {TIMEOUT:?}: {e}"),
            }
        }
    }

    /// Expects ERROR `code` for `request_id` as the last frame, then the close. Returns the
    /// message.
    fn expect_error_then_close(&mut self, code: ErrorCode, request_id: u32) -> String {
        match self.reply() {
            Some(Response::Error {
                request_id: id,
                code: c,
                message,
            }) if c == code && id == request_id => {
                assert_eq!(self.reply(), None, "{code} is the last frame");
                message
            }
            other => panic!("expected ERROR {code}, got {other:?}"),
        }
    }
}

fn lease(request_id: u32, count: u32) -> Request {
    Request::Lease { request_id, count }
}

fn hello(token: &[u8]) -> Request {
    Request::Hello {
        version: wire::VERSION,
        token: Bytes::copy_from_slice(token),
    }
}

/// A frame with any opcode and body, valid or not.
fn raw_frame(op: u8, body: &[u8]) -> Vec<u8> {
    let mut f = (1 + body.len() as u32).to_be_bytes().to_vec();
    f.push(op);
    f.extend_from_slice(body);
    f
}

/// `GET path` on the admin port; returns the status code and body.
fn http_get(admin: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String) {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let reply = snowlease_testkit::http::get(admin, path, &headers, TIMEOUT).expect("admin GET");
    (reply.status, reply.body)
}

/// xorshift64*: deterministic bytes, so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The number of replies protocol.md promises for `stream`, and whether the last one is the
/// closing error `code`: one per request, up to and including a MALFORMED frame or a HELLO
/// asking for version 0.
fn replies_promised(stream: &[u8]) -> (usize, Option<ErrorCode>) {
    let mut buf = BytesMut::from(stream);
    let mut n = 0;
    loop {
        match wire::decode_request(&mut buf) {
            Ok(None) => return (n, None),
            Err(_) => return (n + 1, Some(ErrorCode::MALFORMED)),
            Ok(Some(Request::Hello { version: 0, .. })) => {
                return (n + 1, Some(ErrorCode::UNSUPPORTED_VERSION))
            }
            Ok(Some(_)) => n += 1,
        }
    }
}

/// Random garbage of three kinds: pure noise; frames with plausible lengths and random opcodes
/// and bodies; valid frames with noise spliced in.
fn hostile_stream(rng: &mut Rng, kind: usize) -> Vec<u8> {
    match kind {
        0 => {
            let n = 1 + rng.below(2048);
            rng.bytes(n)
        }
        1 => {
            let mut out = Vec::new();
            for _ in 0..1 + rng.below(8) {
                let ops = [0x00, 0x01, 0x02, 0x03, 0x42, 0x81, 0x82, 0x8f, 0xff];
                let op = ops[rng.below(ops.len())];
                let size = if rng.below(2) == 0 && (op == 0x02 || op == 0x03) {
                    8
                } else {
                    rng.below(21)
                };
                let body = rng.bytes(size);
                out.extend(raw_frame(op, &body));
            }
            out
        }
        _ => {
            let mut out = Vec::new();
            for i in 0..1 + rng.below(6) {
                out.extend_from_slice(&lease(i as u32, 1 + rng.below(5000) as u32).to_bytes());
                out.extend_from_slice(&Request::Ping { nonce: rng.next() }.to_bytes());
            }
            let at = rng.below(out.len() + 1);
            let n = 1 + rng.below(16);
            let noise = rng.bytes(n);
            out.splice(at..at, noise);
            out
        }
    }
}

#[test]
fn random_bytes_get_only_well_formed_replies_and_malformed_input_closes_the_connection() {
    let s = Server::start(&[]);
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    for i in 0..300 {
        let stream = hostile_stream(&mut rng, i % 3);
        let mut c = s.connect();
        let mut from = 0;
        while from < stream.len() {
            let to = (from + 1 + rng.below(512)).min(stream.len());
            // The server may already have closed after a malformed frame; it still reads and
            // discards what follows, so a failed write here is not the server's fault.
            let _ = c.s.write_all(&stream[from..to]);
            from = to;
        }
        let _ = c.s.shutdown(Shutdown::Write);
        let mut replies = Vec::new();
        while let Some(r) = c.reply() {
            replies.push(r);
        }
        let (promised, closing) = replies_promised(&stream);
        assert_eq!(replies.len(), promised, "stream {i}: {replies:?}");
        if let Some(code) = closing {
            assert!(
                matches!(replies.last(), Some(Response::Error { code: c, request_id: 0, .. }) if *c == code),
                "stream {i} must end with {code}: {replies:?}"
            );
        }
    }
    s.check_healthy("300 streams of random bytes");
}

#[test]
fn a_4_gib_length_prefix_is_refused_at_once_and_closed_without_buffering() {
    let s = Server::start(&[]);
    let before = s.rss_kib();
    let mut c = s.connect();
    c.send(&[0xff, 0xff, 0xff, 0xff]);
    let message = c.expect_error_then_close(ErrorCode::MALFORMED, 0);
    assert_eq!(message, "frame length 4294967295 exceeds the limit of 1024");
    // Also with a body streaming behind the prefix: still refused, nothing buffered.
    let mut c = s.connect();
    let mut flood = vec![0x00, 0x10, 0x00, 0x00, opcode::LEASE];
    flood.resize(64 * 1024, 0x55);
    let _ = c.s.write_all(&flood);
    let message = c.expect_error_then_close(ErrorCode::MALFORMED, 0);
    assert_eq!(message, "frame length 1048576 exceeds the limit of 1024");
    assert!(
        s.rss_kib() < before + 4 * 1024,
        "no memory reserved for the claimed length"
    );
    s.check_healthy("4 GiB length prefixes");
}

#[test]
fn a_zero_length_prefix_is_malformed_and_closes() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    c.request(&Request::Ping { nonce: 5 });
    c.send(&[0, 0, 0, 0]);
    assert_eq!(
        c.reply(),
        Some(Response::Pong { nonce: 5 }),
        "earlier frames answered first"
    );
    let message = c.expect_error_then_close(ErrorCode::MALFORMED, 0);
    assert_eq!(message, "frame length 0 (a frame needs at least an opcode)");
    s.check_healthy("a zero length");
}

/// Whether a body of `size` zero bytes is valid for `op` (a HELLO of three zeros is version 0
/// with an empty token: well-formed, refused later as a version).
fn well_formed(op: u8, size: usize) -> bool {
    matches!(
        (op, size),
        (opcode::HELLO, 3) | (opcode::LEASE, 8) | (opcode::PING, 8)
    )
}

#[test]
fn every_opcode_with_every_wrong_body_size_is_malformed_then_closed() {
    let s = Server::start(&[]);
    let sizes: Vec<usize> = (0..=16).chain([1024]).collect();
    let done = AtomicUsize::new(0);
    thread::scope(|scope| {
        for part in 0..4u16 {
            let (s, sizes, done) = (&s, &sizes, &done);
            scope.spawn(move || {
                for op in (part * 64..part * 64 + 64).map(|o| o as u8) {
                    for &size in sizes {
                        if well_formed(op, size) {
                            continue;
                        }
                        let mut c = s.connect();
                        let _ = c.s.write_all(&raw_frame(op, &vec![0; size]));
                        let message = c.expect_error_then_close(ErrorCode::MALFORMED, 0);
                        assert!(!message.is_empty(), "opcode {op:#04x} size {size}");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(done.into_inner(), 256 * sizes.len() - 3);
    s.check_healthy("every malformed opcode and size");
}

#[test]
fn lease_counts_outside_1_to_4096_get_invalid_count_and_the_connection_stays() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    for (id, count) in [(1, 0), (2, 4097), (3, u32::MAX)] {
        c.request(&lease(id, count));
    }
    c.request(&lease(4, 4096));
    c.request(&Request::Ping { nonce: 9 });
    for (id, count) in [(1, 0), (2, 4097), (3, u32::MAX)] {
        match c.reply() {
            Some(Response::Error {
                request_id,
                code,
                message,
            }) => {
                assert_eq!((request_id, code), (id, ErrorCode::INVALID_COUNT));
                assert_eq!(message, format!("lease count {count} is outside 1..=4096"));
            }
            other => panic!("expected INVALID_COUNT, got {other:?}"),
        }
    }
    assert!(matches!(c.reply(), Some(Response::Leased { request_id: 4, count, .. }) if count >= 1));
    assert_eq!(c.reply(), Some(Response::Pong { nonce: 9 }));
    s.check_healthy("invalid counts");
}

#[test]
fn a_hello_with_a_255_byte_token_gets_welcome_when_no_token_is_configured() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    c.request(&hello(&[0xA5; 255]));
    c.request(&lease(1, 10));
    match c.reply() {
        Some(Response::Welcome(w)) => assert_eq!(w.worker_id.to_string(), WORKER),
        other => panic!("expected WELCOME, got {other:?}"),
    }
    assert!(matches!(
        c.reply(),
        Some(Response::Leased { request_id: 1, .. })
    ));
    s.check_healthy("a 255-byte token");
}

#[test]
fn half_a_frame_then_silence_gets_goaway_idle_timeout() {
    let s = Server::start(&["--idle-timeout-ms", "300"]);
    let mut c = s.connect();
    let started = Instant::now();
    c.send(&lease(1, 1).to_bytes()[..6]);
    assert_eq!(
        c.reply(),
        Some(Response::GoAway {
            reason: goaway::IDLE_TIMEOUT
        })
    );
    assert_eq!(c.reply(), None);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(3),
        "GOAWAY after {took:?}"
    );

    // A slowloris dribbling one byte of a big frame every 50 ms does not hold the timer open:
    // bytes of an incomplete frame do not count as a request.
    let mut c = s.connect();
    let started = Instant::now();
    c.send(&[0, 0, 4, 0, opcode::HELLO]);
    let mut dribbled = 0;
    while dribbled < 100 && c.s.write_all(&[0]).is_ok() {
        dribbled += 1;
        let mut probe = [0u8; 64];
        c.s.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        match c.s.read(&mut probe) {
            Ok(n) => {
                c.buf.extend_from_slice(&probe[..n]);
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("dribble read: {e}"),
        }
    }
    c.s.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(
        c.reply(),
        Some(Response::GoAway {
            reason: goaway::IDLE_TIMEOUT
        })
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "slowloris held on for {took:?}"
    );
    s.check_healthy("idle and slowloris connections");
}

#[test]
fn clients_that_never_read_are_dropped_while_memory_stays_flat_and_others_are_served() {
    const TARGET: u64 = 100 * 1024 * 1024;
    let s = Server::start(&["--write-timeout-ms", "300"]);
    let sent = AtomicU64::new(0);
    let dropped = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut batch = BytesMut::new();
    for i in 0..5_000u32 {
        lease(i, 1).encode(&mut batch);
    }
    let (mut max_rss, mut served) = (0, 0u32);
    thread::scope(|scope| {
        for _ in 0..4 {
            let (s, sent, dropped, stop, batch) = (&s, &sent, &dropped, &stop, &batch);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < TARGET {
                    let mut hog = TcpStream::connect(s.lease).expect("connect");
                    // Well past the server's write timeout: a write that blocks this long
                    // means the server kept a connection whose client never reads.
                    hog.set_write_timeout(Some(TIMEOUT)).unwrap();
                    loop {
                        match hog.write(&batch[..]) {
                            Ok(n) => sent.fetch_add(n as u64, Ordering::Relaxed),
                            Err(e) => {
                                assert!(
                                    !matches!(
                                        e.kind(),
                                        ErrorKind::WouldBlock | ErrorKind::TimedOut
                                    ),
                                    "the server kept a client that does not read: {e}"
                                );
                                dropped.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        };
                    }
                }
            });
        }
        // Meanwhile a well-behaved client is served, and memory is sampled.
        let mut good = s.connect();
        while sent.load(Ordering::Relaxed) < TARGET && Instant::now() < deadline {
            good.request(&lease(served, 16));
            assert!(
                matches!(good.reply(), Some(Response::Leased { request_id, .. }) if request_id == served)
            );
            served += 1;
            max_rss = max_rss.max(s.rss_kib());
            thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let sent = sent.into_inner();
    eprintln!(
        "never-reading clients: sent {} MiB over {} dropped connections; a good client got {served} leases meanwhile; server RSS peaked at {max_rss} KiB",
        sent >> 20,
        dropped.into_inner()
    );
    assert!(
        sent >= TARGET,
        "only {} MiB sent before the deadline",
        sent >> 20
    );
    assert!(max_rss < RSS_LIMIT_KIB, "RSS peaked at {max_rss} KiB");
    assert!(served > 10, "the well-behaved client was starved");
    s.check_healthy("clients that never read");
}

#[test]
fn an_idle_connection_costs_a_few_kib_of_server_memory() {
    const CONNS: usize = 2_000;
    // Measured 2,061 B per idle connection (10,000 welcomed connections); a task that carried
    // the TLS branch's state inline cost 5,648 B, so this bound catches that kind of growth.
    const PER_CONN_BYTES: u64 = 3_500;
    let s = Server::start(&[]);
    let base = s.rss_kib();
    let mut idle = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let mut c = s.connect();
        c.request(&hello(b""));
        assert!(matches!(c.reply(), Some(Response::Welcome(_))));
        idle.push(c);
    }
    let rss = s.rss_kib();
    let per_conn = rss.saturating_sub(base) * 1024 / CONNS as u64;
    eprintln!("{CONNS} idle connections: server RSS {base} -> {rss} KiB, {per_conn} B each");
    assert!(
        per_conn <= PER_CONN_BYTES,
        "{per_conn} B per idle connection"
    );
    drop(idle);
    s.check_healthy("idle connections");
}

#[test]
fn a_pipelined_burst_leaves_a_bounded_amount_of_memory_per_connection() {
    const CONNS: usize = 1_000;
    const BURST: u32 = 1_024;
    // The most user memory one quiet connection may keep after a burst it was answered in
    // full: the connection task and its small buffers. The buffers the burst grew (~27 KiB:
    // 4 KiB of reads, a batch of 55-byte replies) are given back once it goes quiet.
    const PER_CONN_KIB: u64 = 8;
    let s = Server::start(&[]);
    let base = s.rss_kib();
    // Count-0 LEASEs: the smallest request with the largest reply (a 55-byte ERROR).
    let mut flood = BytesMut::new();
    for i in 0..BURST {
        lease(i, 0).encode(&mut flood);
    }
    // One connection after another: each bursts, reads every reply, and stays open. A
    // server that kept each burst's buffers would grow by ~27 KiB per connection.
    let mut quiet = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let mut c = s.connect();
        c.send(&flood);
        for i in 0..BURST {
            match c.reply() {
                Some(Response::Error {
                    request_id, code, ..
                }) if request_id == i && code == ErrorCode::INVALID_COUNT => {}
                other => panic!("reply {i} to a burst: {other:?}"),
            }
        }
        quiet.push(c);
    }
    let rss = s.rss_kib();
    let per_conn = rss.saturating_sub(base) / CONNS as u64;
    eprintln!(
        "{CONNS} quiet connections after a pipelined burst of {BURST} each: server RSS {base} -> {rss} KiB, {per_conn} KiB each; at the default cap of 16384 that is {} MiB",
        per_conn * 16384 / 1024
    );
    assert!(
        per_conn <= PER_CONN_KIB,
        "{per_conn} KiB per connection after a burst"
    );
    drop(quiet);
    s.check_healthy("connections after a pipelined burst");
}

/// Raises this process's open-file limit to at least `want` (via util-linux `prlimit`, since
/// the workspace forbids `unsafe` and thus `setrlimit`); returns whether it now is.
fn raise_nofile(want: u64) -> bool {
    if nofile_limit() >= want {
        return true;
    }
    let _ = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={want}:{want}"),
        ])
        .status();
    nofile_limit() >= want
}

#[test]
fn ten_thousand_connections_at_once_get_overloaded_past_the_cap_and_the_rest_are_served() {
    const OPEN: usize = 10_000;
    const CAP: usize = 5_000;
    if !raise_nofile(OPEN as u64 + 2_000) {
        eprintln!(
            "SKIPPED: cannot raise RLIMIT_NOFILE to {} (try `ulimit -n 12000` or run as root)",
            OPEN + 2_000
        );
        return;
    }
    // The server inherits the raised limit.
    let s = Server::start(&["--max-connections", &CAP.to_string()]);
    let streams: Vec<TcpStream> = thread::scope(|scope| {
        let parts: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    (0..OPEN / 4)
                        .map(|_| TcpStream::connect(s.lease).expect("connect"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts.into_iter().flat_map(|p| p.join().unwrap()).collect()
    });
    // Turned-away connections get ERROR OVERLOADED at once; accepted ones get nothing until
    // they ask. Poll (bounded) until every connection past the cap has its refusal.
    let mut pending: Vec<Conn> = streams.into_iter().map(|t| Conn::new(t, &s.ids)).collect();
    for c in &pending {
        c.s.set_nonblocking(true).unwrap();
    }
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused < OPEN - CAP && Instant::now() < deadline {
        let mut still = Vec::with_capacity(pending.len());
        for mut c in pending {
            let mut chunk = [0u8; 256];
            match c.s.read(&mut chunk) {
                Ok(n) if n > 0 => {
                    c.buf.extend_from_slice(&chunk[..n]);
                    match wire::decode_response(&mut c.buf) {
                        Ok(Some(Response::Error {
                            code,
                            request_id: 0,
                            message,
                        })) if code == ErrorCode::OVERLOADED => {
                            assert!(message.contains("limit of 5000 connections"), "{message}");
                            refused += 1;
                        }
                        Ok(None) => still.push(c),
                        other => panic!("a connection past the cap got {other:?}"),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => still.push(c),
                other => panic!("a connection was closed without a frame: {other:?}"),
            }
        }
        pending = still;
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(refused, OPEN - CAP, "OVERLOADED past the cap of {CAP}");
    assert_eq!(pending.len(), CAP);
    // Every accepted connection is served: pipelined PINGs, then every PONG.
    for (i, c) in pending.iter_mut().enumerate() {
        c.s.set_nonblocking(false).unwrap();
        c.request(&Request::Ping { nonce: i as u64 });
    }
    for (i, c) in pending.iter_mut().enumerate() {
        assert_eq!(c.reply(), Some(Response::Pong { nonce: i as u64 }));
    }
    assert_eq!(
        s.metric("snowlease_connections_rejected_total"),
        (OPEN - CAP) as f64
    );
    let rss = s.rss_kib();
    eprintln!("{CAP} open connections: server RSS {rss} KiB");
    drop(pending);
    s.check_healthy("10,000 connections against a cap of 5,000");
}

/// This process's soft limit on open files.
fn nofile_limit() -> u64 {
    procfs::nofile_limits(None).map_or(0, |(soft, _)| soft)
}

/// Connects and closes `want` times from four threads (or until `budget` runs out), closing
/// three in four abortively (RST, one of them after a PING) and one gracefully. Returns how
/// many it did and how long that took.
fn churn(s: &Server, want: usize, budget: Duration) -> (usize, Duration) {
    let done = AtomicUsize::new(0);
    let started = Instant::now();
    thread::scope(|scope| {
        for t in 0..4 {
            let done = &done;
            scope.spawn(move || {
                let mut i = t;
                while done.load(Ordering::Relaxed) < want && started.elapsed() < budget {
                    let stream = match TcpStream::connect(s.lease) {
                        Ok(st) => st,
                        // Out of ephemeral ports for a moment (TIME_WAIT): back off briefly.
                        Err(e) if e.kind() == ErrorKind::AddrNotAvailable => {
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(e) => panic!("connect: {e}"),
                    };
                    let abort = || {
                        socket2::SockRef::from(&stream)
                            .set_linger(Some(Duration::ZERO))
                            .unwrap()
                    };
                    match i % 4 {
                        // Abortive close (RST): no TIME_WAIT, and the server sees a reset.
                        0 | 1 => abort(),
                        // A request, then a reset without reading the reply.
                        2 => {
                            let _ = (&stream).write_all(&Request::Ping { nonce: 1 }.to_bytes());
                            abort();
                        }
                        // Graceful close (FIN).
                        _ => {}
                    }
                    drop(stream);
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 4;
                }
            });
        }
    });
    (done.into_inner(), started.elapsed())
}

#[test]
fn a_churn_of_connects_and_closes_leaks_no_connection_and_no_memory() {
    const WANT: usize = 100_000;
    const BUDGET: Duration = Duration::from_secs(20);
    // A cap well under the descriptor limit the server inherits, so that when the churn
    // outruns it the cap answers (OVERLOADED) rather than the kernel (EMFILE).
    raise_nofile(20_000);
    let cap = (nofile_limit() / 4).min(4096);
    let s = Server::start(&["--max-connections", &cap.to_string()]);
    let (churned, took) = churn(&s, WANT, BUDGET);
    // Every connection the server saw ends: the open gauge returns to zero (bounded).
    let after = Instant::now();
    let deadline = after + Duration::from_secs(30);
    loop {
        let open = s.metric("snowlease_connections_open");
        if open == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connections still open after the churn"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let accepted = s.metric("snowlease_connections_accepted_total");
    let rejected = s.metric("snowlease_connections_rejected_total");
    eprintln!(
        "churn: {churned} connects and closes in {took:.1?} ({:.0}/s); the server accepted {accepted} and turned away {rejected} at its cap of {cap}; all were closed {:.1?} after the churn",
        churned as f64 / took.as_secs_f64(),
        after.elapsed(),
    );
    assert!(
        churned >= WANT.min(20_000),
        "only {churned} connections in {BUDGET:?}"
    );
    // Each connection the server saw was accepted or turned away. Some may never reach it:
    // when the accept queue is full the kernel drops the handshake's last ACK, and a client
    // that closes at once leaves nothing behind to accept.
    assert!(
        accepted + rejected <= churned as f64 && accepted + rejected > 0.0,
        "accepted {accepted} + turned away {rejected} vs {churned} connects"
    );
    let emfile = s
        .log
        .lines()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    if emfile > 0 {
        // Load-dependent, so reported rather than asserted here; the bound on descriptors is
        // asserted by `a_flood_past_the_cap_holds_a_bounded_number_of_descriptors`.
        eprintln!("churn: the server logged {emfile} accept failures (descriptors ran out)");
    }
    s.check_healthy("the connection churn");
}

/// How many file descriptors process `pid` has open.
fn open_fds(pid: u32) -> usize {
    procfs::open_fds(pid).unwrap_or(0)
}

#[test]
fn a_flood_past_the_cap_holds_a_bounded_number_of_descriptors() {
    const CAP: usize = 1_000;
    const FLOOD: Duration = Duration::from_secs(5);
    raise_nofile(20_000);
    let s = Server::start(&["--max-connections", &CAP.to_string()]);
    // Fill the cap with connections that stay, so every other connection is turned away.
    let held: Vec<Conn> = (0..CAP).map(|_| s.connect()).collect();
    let started = Instant::now();
    let max_fds = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                while started.elapsed() < FLOOD {
                    if let Ok(c) = TcpStream::connect(s.lease) {
                        let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
                    }
                }
            });
        }
        while started.elapsed() < FLOOD {
            max_fds.fetch_max(open_fds(s.pid()), Ordering::Relaxed);
            thread::sleep(Duration::from_millis(20));
        }
    });
    let max_fds = max_fds.into_inner();
    eprintln!("flood past a cap of {CAP}: the server held up to {max_fds} descriptors");
    assert!(
        max_fds < CAP + 2_048,
        "{max_fds} descriptors open with a cap of {CAP} connections"
    );
    drop(held);
    s.check_healthy("a flood past the cap");
}

#[test]
fn a_churn_of_connections_closed_at_once_is_not_turned_away_at_the_cap() {
    let s = Server::start(&["--max-connections", "4096"]);
    let (churned, _) = churn(&s, 50_000, Duration::from_secs(15));
    let rejected = s.metric("snowlease_connections_rejected_total");
    eprintln!("churn: {rejected} of {churned} turned away at a cap of 4096");
    // At most 4 connections are open at any moment on the client side; a server that keeps
    // up with closing them never reaches a cap of 4,096.
    assert!(
        rejected < churned as f64 / 100.0,
        "{rejected} of {churned} connections turned away although at most 4 were open at once"
    );
    s.check_healthy("a churn against the cap");
}

#[test]
fn sighup_does_not_stop_a_server_without_a_token_file() {
    let s = Server::start(&[]);
    s.signal(Signal::Hup);
    // Give a fatal default disposition the moment it needs to act: the next request must
    // find the same process serving.
    let mut c = s.connect();
    c.request(&Request::Ping { nonce: 1 });
    assert_eq!(c.reply(), Some(Response::Pong { nonce: 1 }));
    s.check_healthy("SIGHUP without a token file");
}

fn token_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("snowlease-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// Connects and presents `token` in HELLO; returns the connection if WELCOME came back.
fn hello_with(s: &Server, token: &[u8]) -> Option<Conn> {
    let mut c = s.connect();
    c.request(&hello(token));
    match c.reply() {
        Some(Response::Welcome(_)) => Some(c),
        Some(Response::Error {
            code,
            request_id: 0,
            ..
        }) if code == ErrorCode::UNAUTHORIZED => {
            assert_eq!(c.reply(), None, "UNAUTHORIZED closes");
            None
        }
        other => panic!("HELLO got {other:?}"),
    }
}

#[test]
fn with_a_token_only_a_first_hello_carrying_it_is_served() {
    let dir = token_dir("auth");
    let file = dir.join("token");
    std::fs::write(&file, "s3cret-token\n").expect("write");
    let mut s = Server::start(&["--token-file", file.to_str().unwrap()]);
    s.token = Some(b"s3cret-token".to_vec());

    let mut c = s.connect();
    c.request(&lease(1, 1));
    let message = c.expect_error_then_close(ErrorCode::UNAUTHORIZED, 0);
    assert!(message.contains("HELLO"), "{message}");
    let mut c = s.connect();
    c.request(&Request::Ping { nonce: 1 });
    c.expect_error_then_close(ErrorCode::UNAUTHORIZED, 0);
    for wrong in [
        &b""[..],
        b"s3cret-toke",
        b"s3cret-tokem",
        b"s3cret-token\n",
        b"S3CRET-TOKEN",
    ] {
        assert!(hello_with(&s, wrong).is_none(), "token {wrong:?} accepted");
    }
    assert!(hello_with(&s, &[0xff; 255]).is_none());
    // Malformed input is still MALFORMED before authentication.
    let mut c = s.connect();
    c.send(&[0xff, 0xff, 0xff, 0xff]);
    c.expect_error_then_close(ErrorCode::MALFORMED, 0);

    let mut c = hello_with(&s, b"s3cret-token").expect("the right token is accepted");
    c.request(&lease(7, 100));
    assert!(matches!(
        c.reply(),
        Some(Response::Leased { request_id: 7, .. })
    ));

    // The admin port's /generate-id wants the same token as a bearer token.
    assert_eq!(http_get(s.admin, "/generate-id", None).0, 401);
    assert_eq!(http_get(s.admin, "/generate-id", Some("wrong")).0, 401);
    let (status, body) = http_get(s.admin, "/generate-id", Some("s3cret-token"));
    assert_eq!(status, 200, "{body}");

    let log = s.log.lines().join("\n");
    assert!(!log.contains("s3cret"), "the token appears in the log");
    s.check_healthy("unauthorized attempts");
    let _ = std::fs::remove_dir_all(dir);
}

/// Replaces `file` with one holding `token` and modified at `mtime`, atomically (write beside
/// it, then rename), so the server's once-a-second check never sees a half-made file or an
/// in-between modification time.
fn rewrite(file: &std::path::Path, token: &str, mtime: SystemTime) {
    let staged = file.with_extension("new");
    std::fs::write(&staged, token).expect("write the token");
    std::fs::File::options()
        .write(true)
        .open(&staged)
        .and_then(|f| f.set_modified(mtime))
        .expect("set mtime");
    std::fs::rename(&staged, file).expect("rename the token into place");
}

/// Waits until the server's file reloader listens for SIGHUP. Today it subscribes on the
/// admin thread when that thread's event loop first runs, which is *after* the `serving`
/// line; tokio delivers a signal only to subscriptions that already exist, so a SIGHUP sent
/// in between is lost (measured under `stress --cpu 4`: 51 of 200 SIGHUPs sent right after
/// `serving`, each honoured by a second SIGHUP; 0 of 200 after this wait). An answered admin
/// request shows that event loop has run: the reloader is polled in the same `select!` as
/// the admin listener. Once the server subscribes before it reports `serving` (issue 15),
/// this returns at once and
/// `a_sighup_sent_as_soon_as_the_server_reports_serving_reloads_the_token` is enabled.
fn wait_for_the_reloader(s: &Server) {
    assert_eq!(http_get(s.admin, "/healthz", None).0, 200, "the admin port");
}

#[test]
fn sighup_and_a_changed_file_reload_the_token_and_keep_authenticated_connections() {
    let dir = token_dir("reload");
    let file = dir.join("token");
    let mtime = SystemTime::now() - Duration::from_secs(3600);
    rewrite(&file, "first-token", mtime);
    let mut s = Server::start(&["--token-file", file.to_str().unwrap()]);
    let mut kept = hello_with(&s, b"first-token").expect("first token accepted");

    // Same modification time, so only the signal can make the server look again.
    rewrite(&file, "second-token", mtime);
    wait_for_the_reloader(&s);
    let mark = s.log.len();
    s.signal(Signal::Hup);
    s.wait_log(mark, "`token reloaded` after SIGHUP", |l| {
        l.contains("token reloaded")
    });
    assert!(
        hello_with(&s, b"first-token").is_none(),
        "the old token still works"
    );
    assert!(hello_with(&s, b"second-token").is_some());
    kept.request(&lease(1, 1));
    assert!(
        matches!(kept.reply(), Some(Response::Leased { request_id: 1, .. })),
        "an authenticated connection survives a reload"
    );

    // A changed file is picked up without a signal.
    let mark = s.log.len();
    rewrite(&file, "third-token", SystemTime::now());
    s.wait_log(mark, "`token reloaded` after a change", |l| {
        l.contains("token reloaded")
    });
    assert!(hello_with(&s, b"third-token").is_some());

    // An unusable file keeps the current token and says so.
    let mark = s.log.len();
    rewrite(&file, "   \n", SystemTime::now() + Duration::from_secs(5));
    s.wait_log(mark, "a complaint about the empty token file", |l| {
        l.contains("token file unusable")
    });
    assert!(hello_with(&s, b"third-token").is_some());
    s.token = Some(b"third-token".to_vec());

    let log = s.log.lines().join("\n");
    for secret in ["first-token", "second-token", "third-token"] {
        assert!(!log.contains(secret), "{secret} appears in the log");
    }
    s.check_healthy("token reloads");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_sighup_sent_as_soon_as_the_server_reports_serving_reloads_the_token() {
    // A loaded machine makes the race likely (a quarter of the tries under `stress --cpu 4`),
    // an idle one rarely: each try is a fresh server signalled the moment it says `serving`.
    // A server that subscribes first passes every try.
    let dir = snowlease_testkit::temp_dir("hostile-early-hup");
    let file = dir.path().join("token");
    for attempt in 0..20 {
        let mtime = SystemTime::now() - Duration::from_secs(3600);
        rewrite(&file, "first-token", mtime);
        let s = Server::start(&["--token-file", file.to_str().unwrap()]);
        rewrite(&file, "second-token", mtime);
        let mark = s.log.len();
        s.signal(Signal::Hup);
        s.wait_log(mark, &format!("`token reloaded` (try {attempt})"), |l| {
            l.contains("token reloaded")
        });
    }
}

#[test]
fn idle_admin_connections_cannot_starve_the_lease_port_of_file_descriptors() {
    // A small descriptor budget makes the effect quick to show.
    let s = Server::start_wrapped(&["prlimit", "--nofile=256:256", "--"], &[]);
    let mut hogs = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect(s.admin) {
            Ok(mut h) => {
                let _ = h.write_all(b"GET /metrics HTTP/1.1\r\n");
                hogs.push(h);
            }
            Err(_) => break,
        }
    }
    let mut c = s.connect();
    c.request(&Request::Ping { nonce: 3 });
    assert_eq!(
        c.reply(),
        Some(Response::Pong { nonce: 3 }),
        "the lease port serves while {} admin connections idle",
        hogs.len()
    );
    // The admin port accepts in order: past its cap, a connection is answered 503 and
    // closed rather than held.
    let cap = snowlease_server::admin::MAX_ADMIN_CONNECTIONS;
    assert!(hogs.len() > cap, "only {} connections opened", hogs.len());
    for (i, h) in hogs.iter_mut().enumerate().skip(cap) {
        h.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        let mut reply = Vec::new();
        let _ = h.read_to_end(&mut reply);
        assert!(
            reply.starts_with(b"HTTP/1.1 503"),
            "admin connection {i} past the cap got {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    // A connection that never finishes its request is closed after the header timeout.
    let held = &mut hogs[0];
    held.set_read_timeout(Some(snowlease_server::admin::HEADER_READ_TIMEOUT + TIMEOUT))
        .expect("read timeout");
    let mut rest = Vec::new();
    let started = Instant::now();
    let end = held.read_to_end(&mut rest);
    assert!(
        end.is_ok(),
        "a half-sent admin request still open after {:?}: {end:?}",
        started.elapsed()
    );
    drop(hogs);
    assert!(s.metric("snowlease_http_connections_rejected_total") > 0.0);
    s.check_healthy("idle admin connections");
}
