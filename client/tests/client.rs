//! The buffered client against the real server, in-process on OS-assigned loopback ports, and
//! against small fake servers that break the protocol on purpose.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use snowlease::client::Violation;
use snowlease::codec::ServerCodec;
use snowlease::layout::unix_ms_now;
use snowlease::wire::{Request, Response, Welcome};
use snowlease::{BlockingClient, Client, ClientConfig, Error, Layout};
use snowlease_server::{RunningServer, ServerConfig};
use support::quick;
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

fn server(worker_id: u16) -> RunningServer {
    snowlease_server::start(ServerConfig::for_tests(worker_id)).unwrap()
}

fn assert_unique(mut ids: Vec<u64>) {
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "{} IDs repeated", n - ids.len());
}

#[test]
fn eight_threads_drawing_a_million_ids_each_never_see_a_repeat() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 1_000_000;
    let srv = server(1);
    let client = BlockingClient::connect(quick([srv.lease_addr().to_string()])).unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let client = client.clone();
            thread::spawn(move || {
                let mut ids = Vec::with_capacity(PER_THREAD);
                for _ in 0..PER_THREAD {
                    ids.push(client.next_id().unwrap());
                }
                ids
            })
        })
        .collect();
    let mut all = Vec::with_capacity(THREADS * PER_THREAD);
    for h in handles {
        all.extend(h.join().unwrap());
    }
    assert!(all.iter().all(|&id| client.decode(id).worker == 1));
    assert_unique(all);
    drop(client);
    srv.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_drawing_through_next_id_next_ids_and_lease_never_see_a_repeat() {
    let srv = server(2);
    let client = Client::connect(quick([srv.lease_addr().to_string()]))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..50_000 {
                    ids.push(client.next_id().await.unwrap());
                }
                ids.extend(client.next_ids(10_000).await.unwrap());
                ids.extend(client.lease(100).await.unwrap());
                ids
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 4 * 60_100);
    assert_unique(all);
    client.close().await;
    assert!(matches!(client.next_id().await, Err(Error::Closed)));
    tokio::task::spawn_blocking(move || srv.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_returns_one_contiguous_range_of_at_most_max_lease() {
    let srv = server(3);
    let client = Client::connect(quick([srv.lease_addr().to_string()]))
        .await
        .unwrap();
    let layout = client.layout();
    assert_eq!(layout, Layout::DEFAULT);
    let range = client.lease(1_000_000).await.unwrap();
    assert!((1..=layout.max_lease()).contains(&range.count), "{range:?}");
    let first = client.decode(range.first);
    let last = client.decode(range.end() - 1);
    assert_eq!((first.worker, first.tick), (last.worker, last.tick));
    assert_eq!(last.sequence - first.sequence + 1, range.count);
    assert!(matches!(
        client.lease(0).await,
        Err(Error::InvalidArgument(_))
    ));
    tokio::task::spawn_blocking(move || srv.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_ids_flowing_when_one_of_two_servers_is_aborted() {
    let (a, b) = (server(10), server(11));
    let config = quick([a.lease_addr().to_string(), b.lease_addr().to_string()])
        .buffer_capacity(16_384)
        .low_water(4096);
    let client = Client::connect(config).await.unwrap();
    let workers = |ids: &[u64]| {
        let mut w: Vec<u16> = ids.iter().map(|&id| client.decode(id).worker).collect();
        w.sort_unstable();
        w.dedup();
        w
    };
    // `connect` returns as soon as one server is ready; the second connection may come up
    // later on a loaded machine, so draw until both have served (the timeout only bounds a
    // failure, it does not order anything).
    let mut ids = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while ids.len() < 100_000 || workers(&ids) != [10, 11] {
            ids.push(client.next_id().await.unwrap());
        }
    })
    .await
    .expect("the client never drew from both servers");
    tokio::task::spawn_blocking(move || a.abort())
        .await
        .unwrap();
    let before = ids.len();
    // Far more than the buffer holds, so most must come from the surviving server.
    for _ in 0..100_000 {
        ids.push(client.next_id().await.unwrap());
    }
    assert_eq!(workers(&ids[ids.len() - 50_000..]), [11]);
    assert!(ids[before..]
        .iter()
        .any(|&id| client.decode(id).worker == 11));
    assert_unique(ids);
    tokio::task::spawn_blocking(move || b.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_older_than_max_age_are_dropped_not_handed_out() {
    let srv = server(4);
    let config = quick([srv.lease_addr().to_string()]).max_age(Duration::from_millis(200));
    let client = Client::connect(config).await.unwrap();
    let stale = client.decode(client.next_id().await.unwrap());
    // Waiting for time to pass is the point of this test, not synchronisation.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fresh = client.decode(client.next_id().await.unwrap());
    // Ranges are dropped at 7/8 of max_age (175 ms), so a range still held at 400 ms was
    // received after 225 ms.
    assert!(
        fresh.unix_ms >= stale.unix_ms + 150,
        "stale {stale}, next {fresh}"
    );
    tokio::task::spawn_blocking(move || srv.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_after_the_server_restarts_on_the_same_port() {
    let old = server(5);
    let addr = old.lease_addr();
    // A name, so the reconnect goes through resolution too.
    let config = quick([format!("localhost:{}", addr.port())])
        .buffer_capacity(8192)
        .low_water(4096);
    let client = Client::connect(config).await.unwrap();
    let before = client.next_ids(1000).await.unwrap();
    tokio::task::spawn_blocking(move || old.shutdown())
        .await
        .unwrap();
    let mut server_config = ServerConfig::for_tests(5);
    server_config.listen = addr;
    let new = snowlease_server::start(server_config).unwrap();
    let restarted_at = unix_ms_now();
    // More than the buffer can hold: the rest must come from the new server.
    let after = client.next_ids(20_000).await.unwrap();
    let newest = client.decode(*after.last().unwrap());
    assert!(newest.unix_ms + 5 >= restarted_at, "{newest}");
    assert_unique(before.into_iter().chain(after).collect());
    tokio::task::spawn_blocking(move || new.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nothing_fails_after_the_timeout_with_the_cause() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = Client::connect(quick([addr.to_string()]).timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("cannot connect"), "{text}");
    let err = Client::connect(ClientConfig::new(["ids:http"]))
        .await
        .unwrap_err();
    assert!(
        !err.is_retryable() && err.to_string().contains("port"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_reported_as_soon_as_every_address_refuses() {
    let closed = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let endpoints = [closed().to_string(), closed().to_string()];
    // The client would wait a minute; a refusal must not take that long.
    let config = quick(endpoints).timeout(Duration::from_secs(60));
    let err = tokio::time::timeout(Duration::from_secs(30), Client::connect(config))
        .await
        .expect("connect waited for its timeout")
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("refused"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pointed_at_the_admin_port_is_told_it_found_an_http_server() {
    let srv = server(6);
    let config = quick([srv.admin_addr().to_string()]).timeout(Duration::from_secs(60));
    let err = tokio::time::timeout(Duration::from_secs(30), Client::connect(config))
        .await
        .expect("connect waited for its timeout")
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Protocol {
                reason: Violation::HttpServer,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("HTTP server") && text.contains("wrong port") && text.contains("7609"),
        "{text}"
    );
    tokio::task::spawn_blocking(move || srv.shutdown())
        .await
        .unwrap();
}

const FAKE_WORKER: u16 = 5;

/// A server that greets properly and answers LEASE number `n` (counted across connections)
/// with whatever `answer(n, request_id, count)` returns.
async fn fake_server<F>(answer: F) -> SocketAddr
where
    F: Fn(usize, u32, u32) -> Response + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    let leases = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (answer, leases) = (Arc::clone(&answer), Arc::clone(&leases));
            tokio::spawn(async move {
                let mut framed = Framed::new(socket, ServerCodec);
                while let Some(Ok(request)) = framed.next().await {
                    let reply = match request {
                        Request::Hello { .. } => Response::Welcome(Welcome::announcing(
                            1,
                            FAKE_WORKER,
                            &Layout::DEFAULT,
                            unix_ms_now(),
                        )),
                        Request::Lease { request_id, count } => {
                            answer(leases.fetch_add(1, Ordering::SeqCst), request_id, count)
                        }
                        Request::Ping { nonce } => Response::Pong { nonce },
                        Request::BulkLease { request_id, .. } => Response::Error {
                            request_id,
                            code: snowlease::wire::ErrorCode::MALFORMED,
                            message: "this fake server speaks version 1".into(),
                        },
                    };
                    if framed.send(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn tick_now() -> u64 {
    Layout::DEFAULT.tick_at(unix_ms_now()).unwrap()
}

/// Draws until the client gives up; returns what it handed out and the error.
async fn drain(client: &Client) -> (Vec<u64>, Error) {
    let mut ids = Vec::new();
    for _ in 0..100_000 {
        match client.next_id().await {
            Ok(id) => ids.push(id),
            Err(e) => return (ids, e),
        }
    }
    panic!("the client never ran dry");
}

fn strict(addr: SocketAddr) -> ClientConfig {
    quick([addr.to_string()])
        .buffer_capacity(100)
        .low_water(10)
        .timeout(Duration::from_millis(400))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_with_more_ids_than_asked_is_never_handed_out() {
    let addr = fake_server(|_, request_id, count| Response::Leased {
        request_id,
        first_id: Layout::DEFAULT.compose(tick_now(), FAKE_WORKER, 0),
        count: count + 1,
    })
    .await;
    let client = Client::connect(strict(addr)).await.unwrap();
    let (ids, err) = drain(&client).await;
    assert!(ids.is_empty(), "handed out {ids:?}");
    let text = err.to_string();
    assert!(
        text.contains("protocol violation") && text.contains("for a LEASE of"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_below_the_previous_one_is_rejected_even_after_a_reconnect() {
    let start = tick_now();
    // The first LEASE gets a good range; every later one, on any connection, a range from an
    // earlier tick, as a server restarted without its state behind a stepped-back clock would.
    let addr = fake_server(move |n, request_id, count| Response::Leased {
        request_id,
        first_id: Layout::DEFAULT.compose(if n == 0 { start } else { start - 10 }, FAKE_WORKER, 0),
        count,
    })
    .await;
    let client = Client::connect(strict(addr)).await.unwrap();
    let (ids, err) = drain(&client).await;
    let good = Layout::DEFAULT.compose(start, FAKE_WORKER, 0);
    assert_eq!(ids, (good..good + 100).collect::<Vec<_>>());
    let text = err.to_string();
    assert!(text.contains("previous range"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_the_wrong_request_is_rejected() {
    let addr = fake_server(|_, request_id, count| Response::Leased {
        request_id: request_id + 1,
        first_id: Layout::DEFAULT.compose(tick_now(), FAKE_WORKER, 0),
        count,
    })
    .await;
    let client = Client::connect(strict(addr)).await.unwrap();
    let (ids, err) = drain(&client).await;
    assert!(ids.is_empty(), "handed out {ids:?}");
    assert!(err.to_string().contains("oldest outstanding"), "{err}");
}
