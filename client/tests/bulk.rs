//! Bulk leases (protocol version 2) end to end: the client against in-process servers holding
//! four worker ids, against the server binary (today's, and the version-1 release), and
//! against fake servers whose BULK_LEASED replies break the contract on purpose.
//!
//! A client with one connection to a server process gets IDs of workers other than the
//! connection's home worker only through BULK_LEASED (LEASE is always answered from the home
//! worker), so the workers in what it hands out show whether bulk leases were used; the
//! server's `snowlease_leases_total` against `snowlease_ids_issued_total` shows how many IDs
//! each request carried. The measuring test at the end is `#[ignore]`d: it prints figures.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use snowlease::codec::ServerCodec;
use snowlease::layout::unix_ms_now;
use snowlease::wire::{Request, Response, Run, Welcome, WorkerSet, MAX_BULK};
use snowlease::{BlockingClient, Client, ClientConfig, Error, IdRange, Layout};
use snowlease_server::{RunningServer, ServerConfig};
use snowlease_testkit::procfs::{cpu_seconds, cpu_seconds_precise};
use support::{http_get, metric, quick, server_binary_or_skip, ServerProcess};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

/// Bounds a wait that only a failure makes long; never a measure of speed.
const PATIENCE: Duration = Duration::from_secs(60);

/// An in-process server holding worker ids `first..first + 4`.
fn four_workers(first: u16) -> RunningServer {
    let mut config = ServerConfig::for_tests(first);
    config.worker_count = 4;
    snowlease_server::start(config).unwrap()
}

async fn stop(server: RunningServer) {
    tokio::task::spawn_blocking(move || server.shutdown())
        .await
        .unwrap();
}

/// Asserts that no ID is in two of `ranges` (each `first..end`).
fn assert_disjoint(mut ranges: Vec<(u64, u64)>) {
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "IDs repeated: {pair:?}");
    }
}

fn spans(ranges: &[IdRange]) -> Vec<(u64, u64)> {
    ranges.iter().map(|r| (r.first, r.end())).collect()
}

/// The workers of `ranges`, sorted.
fn workers(ranges: &[IdRange]) -> Vec<u16> {
    let mut w: Vec<u16> = ranges
        .iter()
        .map(|r| Layout::DEFAULT.decompose(r.first).worker)
        .collect();
    w.sort_unstable();
    w.dedup();
    w
}

fn count(ranges: &[IdRange]) -> u64 {
    ranges.iter().map(|r| u64::from(r.count)).sum()
}

/// Draws `n` IDs through `lease_bulk` into `out`; any error fails the test.
async fn draw(client: &Client, n: u64, out: &mut Vec<IdRange>) {
    let mut got = 0;
    while got < n {
        let ranges = client.lease_bulk(n - got).await.unwrap();
        got += count(&ranges);
        out.extend(ranges);
    }
}

/// Draws in chunks of a million until `done` holds for the ranges drawn since the call.
async fn draw_until(client: &Client, out: &mut Vec<IdRange>, done: impl Fn(&[IdRange]) -> bool) {
    let from = out.len();
    tokio::time::timeout(PATIENCE, async {
        while !done(&out[from..]) {
            draw(client, 1_000_000, out).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("condition not reached; workers {:?}", workers(&out[from..])));
}

/// The ranges checked: every one inside one tick of one worker, at most `max_lease` IDs.
fn assert_blocks(ranges: &[IdRange]) {
    let l = Layout::DEFAULT;
    for r in ranges {
        let (a, b) = (l.decompose(r.first), l.decompose(r.end() - 1));
        assert!(
            r.count >= 1 && (a.tick, a.worker) == (b.tick, b.worker),
            "{r:?} is not one block"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_drawing_through_next_id_lease_and_lease_bulk_from_four_workers_never_see_a_repeat() {
    let srv = four_workers(0);
    let client = Client::connect(quick([srv.lease_addr().to_string()]))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..100_000 {
                let id = client.next_id().await.unwrap();
                ids.push(IdRange {
                    first: id,
                    count: 1,
                });
            }
            ids
        }));
    }
    for _ in 0..2 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut ranges = Vec::new();
            for _ in 0..300 {
                let range = client.lease(1000).await.unwrap();
                // A direct lease may get the rest of a tick, fewer than asked.
                assert!((1..=1000).contains(&range.count), "{range:?}");
                ranges.push(range);
            }
            ranges
        }));
    }
    for _ in 0..3 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut ranges = Vec::new();
            draw(&client, 5_000_000, &mut ranges).await;
            ranges
        }));
    }
    let mut all = Vec::new();
    let mut leased = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let ranges = t.await.unwrap();
        if (3..5).contains(&i) {
            leased += count(&ranges);
        }
        all.extend(ranges);
    }
    assert_eq!(count(&all) - leased, 300_000 + 15_000_000);
    assert_blocks(&all);
    assert!(workers(&all).iter().all(|w| (0..4).contains(w)));
    assert_disjoint(spans(&all));
    assert!(matches!(
        client.lease_bulk(0).await,
        Err(Error::InvalidArgument(_))
    ));
    client.close().await;
    assert!(matches!(client.lease_bulk(10).await, Err(Error::Closed)));
    stop(srv).await;
}

/// IDs issued per LEASE or BULK_LEASE request, and IDs issued per worker, from `/metrics`.
fn issued(admin: SocketAddr, first_worker: u16) -> (f64, Vec<f64>) {
    let text = http_get(admin, "/metrics");
    let requests: f64 = ["full", "partial"]
        .iter()
        .map(|o| metric(&text, &format!("snowlease_leases_total{{outcome=\"{o}\"}}")))
        .sum();
    let ids = metric(&text, "snowlease_ids_issued_total");
    let per_worker = (first_worker..first_worker + 4)
        .map(|w| {
            metric(
                &text,
                &format!("snowlease_worker_ids_issued_total{{worker=\"{w}\"}}"),
            )
        })
        .collect();
    (ids / requests, per_worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_drawing_faster_than_one_worker_leases_in_bulk_and_version_1_does_not() {
    // (protocol version offered, bulk leases expected)
    for (version, bulk) in [(2, true), (1, false)] {
        let srv = four_workers(8);
        let config = quick([srv.lease_addr().to_string()]).protocol_version(version);
        let client = Client::connect(config).await.unwrap();
        let mut ranges = Vec::new();
        if bulk {
            // Only a BULK_LEASED carries IDs of workers other than the connection's home.
            draw_until(&client, &mut ranges, |r| workers(r) == [8, 9, 10, 11]).await;
        } else {
            // Twice what one worker issues in a second, as fast as the client can take it.
            draw(&client, 8_000_000, &mut ranges).await;
            assert_eq!(
                workers(&ranges).len(),
                1,
                "version 1: the home worker alone"
            );
        }
        assert_disjoint(spans(&ranges));
        let (per_request, per_worker) = issued(srv.admin_addr(), 8);
        let busy_workers = per_worker.iter().filter(|&&n| n > 0.0).count();
        if bulk {
            assert!(per_request > 4096.0, "{per_request} IDs per request");
            assert_eq!(busy_workers, 4, "{per_worker:?}");
        } else {
            assert!(per_request <= 4096.0, "{per_request} IDs per request");
            assert_eq!(busy_workers, 1, "{per_worker:?}");
        }
        client.close().await;
        stop(srv).await;
    }
}

/// Draws at full speed while `stop` runs beside the callers, then more than the buffer holds
/// (so what the stopped server sent before it closed is used up), and returns the workers that
/// served the 3,000,000 IDs drawn after that.
async fn draw_through(
    client: &Client,
    ranges: &mut Vec<IdRange>,
    stop: impl FnOnce() + Send + 'static,
) -> Vec<u16> {
    let stopping = tokio::task::spawn_blocking(stop);
    draw(client, 3_000_000, ranges).await;
    stopping.await.unwrap();
    draw(client, 1_000_000, ranges).await;
    let tail = ranges.len();
    draw(client, 3_000_000, ranges).await;
    workers(&ranges[tail..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_leases_in_flight_survive_goaway_and_an_aborted_server_without_a_repeat() {
    let (a, b, c) = (four_workers(0), four_workers(4), four_workers(8));
    let endpoints = [&a, &b, &c].map(|s| s.lease_addr().to_string());
    let client = Client::connect(quick(endpoints)).await.unwrap();
    let mut ranges = Vec::new();
    // `connect` returns once one server greets; draw until all three served.
    let servers = |r: &[IdRange]| {
        let mut s: Vec<u16> = workers(r).iter().map(|w| w / 4).collect();
        s.dedup();
        s
    };
    draw_until(&client, &mut ranges, |r| servers(r) == [0, 1, 2]).await;
    // GOAWAY while drawing at full speed: A answers what it read, the rest goes elsewhere.
    let after = draw_through(&client, &mut ranges, move || a.shutdown()).await;
    assert!(after.iter().all(|&w| w >= 4), "A still served");
    // An abrupt stop: B's connection resets with bulk leases unanswered.
    let left = draw_through(&client, &mut ranges, move || b.abort()).await;
    assert!(
        left.iter().all(|w| (8..12).contains(w)),
        "only C is left: {left:?}"
    );
    assert_blocks(&ranges);
    assert_disjoint(spans(&ranges));
    client.close().await;
    stop(c).await;
}

/// The released version-1 server, which knows nothing of version 2.
fn baseline_binary() -> Option<PathBuf> {
    let path = std::env::var_os("SNOWLEASE_BASELINE_SERVER_BIN").map_or_else(
        || PathBuf::from("/work/baseline/snowlease-server"),
        PathBuf::from,
    );
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: no version-1 server at {} (set SNOWLEASE_BASELINE_SERVER_BIN)",
            path.display()
        );
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_server_answers_version_1_and_is_used_with_leases_as_before() {
    let Some(bin) = baseline_binary() else {
        return;
    };
    let servers = [
        ServerProcess::start(&bin, 7, None),
        ServerProcess::start(&bin, 8, None),
    ];
    let client = Client::connect(quick(servers.iter().map(|s| s.addr.to_string())))
        .await
        .unwrap();
    let mut ranges = Vec::new();
    draw_until(&client, &mut ranges, |r| workers(r) == [7, 8]).await;
    for _ in 0..50_000 {
        let first = client.next_id().await.unwrap();
        ranges.push(IdRange { first, count: 1 });
    }
    ranges.push(client.lease(100).await.unwrap());
    assert_blocks(&ranges);
    assert_disjoint(spans(&ranges));
    client.close().await;
}

#[test]
fn the_server_binary_with_four_workers_serves_bulk_leases_and_drains_with_goaway() {
    let Some(bin) = server_binary_or_skip("bulk binary test") else {
        return;
    };
    let mut servers = [
        ServerProcess::start_with(&bin, &["--worker-ids", "0-3", "--threads", "1"], None),
        ServerProcess::start_with(&bin, &["--worker-ids", "4-7", "--threads", "1"], None),
    ];
    let client =
        BlockingClient::connect(quick(servers.iter().map(|s| s.addr.to_string()))).unwrap();
    let mut ranges = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    // Both servers served, and more workers than their two home workers: bulk leases.
    let enough = |w: Vec<u16>| w.len() > 2 && w[0] < 4 && w[w.len() - 1] >= 4;
    while !enough(workers(&ranges)) {
        assert!(Instant::now() < deadline, "workers {:?}", workers(&ranges));
        ranges.extend(client.lease_bulk(1 << 20).unwrap());
    }
    // SIGTERM: the server sends GOAWAY and exits; bulk leases it did not read go to the other.
    servers[0].terminate();
    let mut drawn = 0;
    while drawn < 2_000_000 {
        let more = client.lease_bulk(1 << 20).unwrap();
        drawn += count(&more);
        ranges.extend(more);
    }
    assert!(
        servers[0].wait_exit(PATIENCE),
        "the server did not exit after SIGTERM"
    );
    // More than the buffer holds, so what it sent before it exited is used up.
    let mut drawn = 0;
    while drawn < 1_000_000 {
        let more = client.lease_bulk(1 << 20).unwrap();
        drawn += count(&more);
        ranges.extend(more);
    }
    let tail = ranges.len();
    let mut drawn = 0;
    while drawn < 2_000_000 {
        let more = client.lease_bulk(1 << 20).unwrap();
        drawn += count(&more);
        ranges.extend(more);
    }
    let left = workers(&ranges[tail..]);
    assert!(left.iter().all(|w| (4..8).contains(w)), "{left:?}");
    assert_blocks(&ranges);
    assert_disjoint(spans(&ranges));
    client.close();
}

/// What the fake server is told when it must answer a BULK_LEASE.
#[derive(Debug, Clone, Copy)]
struct Asked {
    request_id: u32,
    count: u32,
    /// A tick no ID was issued from yet (nor will be).
    fresh: u64,
    /// The tick of the first LEASE answered.
    oldest: u64,
}

/// A version-2 server (home worker 4, set 4..=7) that answers LEASEs correctly from fresh
/// ticks until the first BULK_LEASE, which it answers with `bad(..)`; after that it answers
/// nothing (so the client runs dry and reports its last error). Returns its address and the
/// bad reply once sent.
async fn fake_v2_server(bad: fn(Asked) -> Response) -> (SocketAddr, Arc<Mutex<Option<Asked>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let oldest = Layout::DEFAULT.tick_at(unix_ms_now()).unwrap();
    let tick = Arc::new(AtomicU64::new(oldest));
    let spoiled = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(None));
    let record = Arc::clone(&sent);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (tick, spoiled, record) =
                (Arc::clone(&tick), Arc::clone(&spoiled), Arc::clone(&record));
            tokio::spawn(async move {
                let mut framed = Framed::new(socket, ServerCodec);
                while let Some(Ok(request)) = framed.next().await {
                    let reply = match request {
                        Request::Hello { .. } => Some(welcome_v2()),
                        Request::Ping { nonce } => Some(Response::Pong { nonce }),
                        _ if spoiled.load(Ordering::SeqCst) => None,
                        Request::Lease { request_id, count } => Some(Response::Leased {
                            request_id,
                            first_id: Layout::DEFAULT.compose(
                                tick.fetch_add(1, Ordering::SeqCst),
                                4,
                                0,
                            ),
                            count,
                        }),
                        Request::BulkLease { request_id, count } => {
                            spoiled.store(true, Ordering::SeqCst);
                            let asked = Asked {
                                request_id,
                                count,
                                fresh: tick.fetch_add(1000, Ordering::SeqCst),
                                oldest,
                            };
                            *record.lock().unwrap() = Some(asked);
                            Some(bad(asked))
                        }
                    };
                    if let Some(reply) = reply {
                        if framed.send(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, sent)
}

fn welcome_v2() -> Response {
    Response::WelcomeV2 {
        welcome: Welcome::announcing(2, 4, &Layout::DEFAULT, unix_ms_now()),
        workers: WorkerSet {
            first_worker: 4,
            worker_count: 4,
            max_bulk: MAX_BULK,
        },
    }
}

fn run(tick: u64, worker: u16, sequence: u32, count: u32) -> Run {
    Run {
        first_id: Layout::DEFAULT.compose(tick, worker, sequence),
        count,
    }
}

fn bulk(request_id: u32, runs: Vec<Run>) -> Response {
    Response::BulkLeased { request_id, runs }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_replies_that_break_the_contract_are_never_handed_out() {
    type Bad = fn(Asked) -> Response;
    let cases: [(&str, Bad, &str); 9] = [
        (
            "a worker outside the set",
            |a| {
                bulk(
                    a.request_id,
                    vec![run(a.fresh, 4, 0, 10), run(a.fresh, 8, 0, 10)],
                )
            },
            "outside the server's worker set 4..=7",
        ),
        (
            "a run past the end of the layout",
            |a| {
                bulk(
                    a.request_id,
                    vec![
                        run(a.fresh, 5, 0, 10),
                        run(Layout::DEFAULT.max_tick(), 6, 4000, 200),
                    ],
                )
            },
            "passes the layout's last tick",
        ),
        (
            "more IDs than asked",
            |a| {
                bulk(
                    a.request_id,
                    vec![run(a.fresh, 4, 0, a.count), run(a.fresh, 5, 0, 1)],
                )
            },
            "IDs in all for a BULK_LEASE of",
        ),
        ("no runs", |a| bulk(a.request_id, vec![]), "run count 0"),
        (
            "a run of no IDs",
            |a| {
                bulk(
                    a.request_id,
                    vec![run(a.fresh, 4, 0, 10), run(a.fresh, 5, 0, 0)],
                )
            },
            "has count 0",
        ),
        (
            "a run below the worker's last ID",
            |a| {
                bulk(
                    a.request_id,
                    vec![run(a.fresh, 5, 0, 10), run(a.oldest, 4, 0, 10)],
                )
            },
            "could repeat",
        ),
        (
            "overlapping runs",
            |a| {
                bulk(
                    a.request_id,
                    vec![run(a.fresh, 5, 0, 4096), run(a.fresh, 5, 100, 10)],
                )
            },
            "could repeat",
        ),
        (
            "another request id",
            |a| bulk(a.request_id.wrapping_add(1), vec![run(a.fresh, 4, 0, 10)]),
            "oldest outstanding",
        ),
        (
            "a LEASED for the BULK_LEASE",
            |a| Response::Leased {
                request_id: a.request_id,
                first_id: Layout::DEFAULT.compose(a.fresh, 4, 0),
                count: 10,
            },
            "which was a BULK_LEASE",
        ),
    ];
    for (case, bad, says) in cases {
        let (addr, sent) = fake_v2_server(bad).await;
        let config = quick([addr.to_string()])
            .buffer_capacity(1 << 20)
            .timeout(Duration::from_millis(400));
        let client = Client::connect(config).await.unwrap();
        let mut ranges = Vec::new();
        let err = loop {
            match client.lease_bulk(u64::MAX).await {
                Ok(more) => ranges.extend(more),
                Err(e) => break e,
            }
            assert!(count(&ranges) < 1 << 32, "{case}: the client never ran dry");
        };
        let asked = sent.lock().unwrap().expect("no BULK_LEASE was sent");
        // Every ID before the bad reply came from ticks below `fresh`; any ID of it, above.
        let l = Layout::DEFAULT;
        assert!(
            ranges
                .iter()
                .all(|r| l.decompose(r.first).tick < asked.fresh),
            "{case}: handed out an ID of the bad reply"
        );
        assert_disjoint(spans(&ranges));
        let text = err.to_string();
        assert!(
            text.contains("protocol violation") && text.contains(says),
            "{case}: {text}"
        );
        client.close().await;
    }
}

/// Measures, against the server binary holding four workers on one thread (pinned to CPU 0),
/// IDs per second and the server's CPU time per million IDs issued, with bulk leases on
/// (version 2) and off (`protocol_version(1)`), for `next_id()` from four tasks and
/// `lease_bulk` from one; rounds alternate so the modes run side by side. Run it pinned to
/// CPU 1, optimised:
/// `taskset -c 1 cargo test -p snowlease --release --test bulk -- --ignored --nocapture`
/// (`SNOWLEASE_MEASURE_SECS` sets each run's length, default 3; `SNOWLEASE_MEASURE_ROUNDS`
/// the rounds, default 3).
#[ignore = "measurement: prints figures"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_bulk_leases_against_version_1() {
    let Some(bin) = server_binary_or_skip("measure_bulk") else {
        return;
    };
    let secs = std::env::var("SNOWLEASE_MEASURE_SECS").map_or(3, |s| s.parse().unwrap());
    let rounds = std::env::var("SNOWLEASE_MEASURE_ROUNDS").map_or(3, |s| s.parse().unwrap());
    let pin = std::process::Command::new("taskset")
        .args(["-c", "0", "true"])
        .status()
        .is_ok_and(|s| s.success())
        .then_some("0");
    let server = ServerProcess::start_with(&bin, &["--worker-ids", "0-3", "--threads", "1"], pin);
    println!("server pinned to CPU 0: {}", pin.is_some());
    println!(
        "mode, consumer, IDs/s, server CPU ms per million IDs issued (utime+stime; schedstat), \
         IDs issued/drawn, requests/s, lead waits/s"
    );
    let mut results: Vec<(String, f64, f64, f64)> = Vec::new();
    for round in 0..rounds {
        for consumer in ["next_id x4", "lease_bulk x1", "lease_bulk 3M/s"] {
            for version in [2u16, 1] {
                let m = measure_one(&server, version, consumer, secs).await;
                let mode = if version == 2 {
                    "bulk (v2)"
                } else {
                    "LEASE (v1)"
                };
                println!(
                    "round {round}: {mode}, {consumer}, {:.0}, {:.2}; {:.2}, {:.3}, {:.0}, {:.0}",
                    m.ids_per_s,
                    m.cpu_ms_per_million,
                    m.precise_ms_per_million,
                    m.issued_per_drawn,
                    m.requests_per_s,
                    m.lead_waits_per_s
                );
                let key = format!("{mode}, {consumer}");
                results.push((
                    key,
                    m.ids_per_s,
                    m.cpu_ms_per_million,
                    m.precise_ms_per_million,
                ));
            }
        }
    }
    println!(
        "medians: mode, consumer, IDs/s, server CPU ms per million IDs (utime+stime; schedstat)"
    );
    let mut keys: Vec<String> = results.iter().map(|r| r.0.clone()).collect();
    keys.sort();
    keys.dedup();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for key in keys {
        let of = |pick: fn(&(String, f64, f64, f64)) -> f64| {
            median(results.iter().filter(|r| r.0 == key).map(pick).collect())
        };
        println!(
            "{key}, {:.0}, {:.2}; {:.2}",
            of(|r| r.1),
            of(|r| r.2),
            of(|r| r.3)
        );
    }
}

/// One run: a fresh client offering `version`, drawing with `consumer` for `secs` seconds
/// (after a 0.5 s warm-up).
async fn measure_one(server: &ServerProcess, version: u16, consumer: &str, secs: u64) -> Measured {
    let config = ClientConfig::new([server.addr.to_string()]).protocol_version(version);
    let client = Client::connect(config).await.unwrap();
    let drawn = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = match consumer {
        "next_id x4" => (0..4)
            .map(|_| {
                let (client, drawn, stop) = (client.clone(), Arc::clone(&drawn), Arc::clone(&stop));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let mut n = 0;
                        for _ in 0..1024 {
                            std::hint::black_box(client.next_id().await.unwrap());
                            n += 1;
                        }
                        drawn.fetch_add(n, Ordering::Relaxed);
                    }
                })
            })
            .collect(),
        "lease_bulk x1" => {
            let (client, drawn, stop) = (client.clone(), Arc::clone(&drawn), Arc::clone(&stop));
            vec![tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let ranges = client.lease_bulk(1 << 20).await.unwrap();
                    drawn.fetch_add(count(&ranges), Ordering::Relaxed);
                }
            })]
        }
        // Below one worker's ceiling: what the IDs cost when the server is not the limit.
        _ => {
            let (client, drawn, stop) = (client.clone(), Arc::clone(&drawn), Arc::clone(&stop));
            vec![tokio::spawn(async move {
                let start = Instant::now();
                let mut ticker = tokio::time::interval(Duration::from_millis(1));
                let mut taken = 0;
                while !stop.load(Ordering::Relaxed) {
                    ticker.tick().await;
                    let due = (start.elapsed().as_secs_f64() * 3e6) as u64;
                    while taken < due {
                        let ranges = client.lease_bulk(due - taken).await.unwrap();
                        taken += count(&ranges);
                        drawn.fetch_add(count(&ranges), Ordering::Relaxed);
                    }
                }
            })]
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sample = || {
        let text = http_get(server.admin, "/metrics");
        let requests: f64 = ["full", "partial"]
            .iter()
            .map(|o| metric(&text, &format!("snowlease_leases_total{{outcome=\"{o}\"}}")))
            .sum();
        let waits = metric(&text, "snowlease_generator_waits_total{reason=\"lead\"}");
        (metric(&text, "snowlease_ids_issued_total"), requests, waits)
    };
    let pid = server.pid();
    let (before, cpu0, precise0, drawn0, t0) = (
        sample(),
        cpu_seconds(pid).unwrap(),
        cpu_seconds_precise(pid).unwrap(),
        drawn.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (after, cpu1, precise1, drawn1, elapsed) = (
        sample(),
        cpu_seconds(pid).unwrap(),
        cpu_seconds_precise(pid).unwrap(),
        drawn.load(Ordering::Relaxed),
        t0.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    client.close().await;
    let drawn = (drawn1 - drawn0) as f64;
    let issued = after.0 - before.0;
    let seconds = elapsed.as_secs_f64();
    Measured {
        ids_per_s: drawn / seconds,
        cpu_ms_per_million: (cpu1 - cpu0) * 1000.0 / (issued / 1e6),
        precise_ms_per_million: (precise1 - precise0) * 1000.0 / (issued / 1e6),
        issued_per_drawn: issued / drawn,
        requests_per_s: (after.1 - before.1) / seconds,
        lead_waits_per_s: (after.2 - before.2) / seconds,
    }
}

/// What one measuring run found.
struct Measured {
    ids_per_s: f64,
    /// From utime + stime (`/proc/PID/stat`, 10 ms granularity).
    cpu_ms_per_million: f64,
    /// From the threads' `schedstat` (nanoseconds).
    precise_ms_per_million: f64,
    issued_per_drawn: f64,
    /// LEASE and BULK_LEASE requests the server answered per second.
    requests_per_s: f64,
    /// Leases that waited for the clock (the lead was used up) per second.
    lead_waits_per_s: f64,
}
