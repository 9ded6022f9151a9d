//! Integration tests against the real server, in process, on OS-assigned loopback ports:
//! exact bytes on the wire, pipelining, the per-core listeners, disjointness under
//! concurrency, limits, and the admin endpoints.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use snowlease::wire::{self, ErrorCode, Request, Response};
use snowlease::Layout;
use snowlease_server::{start, RunningServer, ServerConfig};

const TIMEOUT: Duration = Duration::from_secs(10);

fn server(worker: u16) -> RunningServer {
    start(ServerConfig::for_tests(worker)).expect("server starts")
}

/// A raw protocol connection that reads whole frames with a timeout.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    async fn request(&mut self, r: Request) {
        self.send(&r.to_bytes()).await;
    }

    /// The next frame's raw bytes, or None at EOF.
    async fn frame_bytes(&mut self) -> Option<Vec<u8>> {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                if self.buf.len() >= 4 {
                    let len =
                        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                            as usize;
                    if self.buf.len() >= 4 + len {
                        return Some(self.buf.split_to(4 + len).to_vec());
                    }
                }
                if self.stream.read_buf(&mut self.buf).await.expect("read") == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("reply within the timeout")
    }

    async fn response(&mut self) -> Option<Response> {
        let bytes = self.frame_bytes().await?;
        let mut b = BytesMut::from(&bytes[..]);
        Some(
            wire::decode_response(&mut b)
                .expect("well-formed reply")
                .expect("whole frame"),
        )
    }

    /// True once the server has closed the connection (EOF), within the timeout.
    async fn closed(&mut self) -> bool {
        self.frame_bytes().await.is_none()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn hello_is_answered_with_the_exact_welcome_bytes() {
    let s = server(7);
    let mut c = Raw::connect(s.lease_addr()).await;
    c.send(&[0, 0, 0, 4, 0x01, 0, 1, 0]).await;
    let f = c.frame_bytes().await.expect("welcome");
    assert_eq!(f.len(), 32);
    // Everything but the server's clock (last 8 bytes) is fixed.
    assert_eq!(
        hex(&f[..24]),
        "0000001c81000100070000018cc251f400290a0c00001000"
    );
    let server_ms = u64::from_be_bytes(f[24..32].try_into().expect("8 bytes"));
    let now = snowlease::layout::unix_ms_now();
    assert!(server_ms.abs_diff(now) < 5_000);
}

#[tokio::test]
async fn lease_pong_and_errors_have_the_exact_bytes() {
    let s = server(7);
    let mut c = Raw::connect(s.lease_addr()).await;
    c.send(&[0, 0, 0, 9, 0x02, 0, 0, 0, 42, 0, 0, 0, 10]).await;
    let f = c.frame_bytes().await.expect("leased");
    assert_eq!(hex(&f[..9]), "00000011820000002a");
    let first = u64::from_be_bytes(f[9..17].try_into().expect("8 bytes"));
    assert_eq!(hex(&f[17..]), "0000000a");
    let parts = Layout::DEFAULT.decompose(first);
    assert_eq!(parts.worker, 7);
    assert!(parts.unix_ms.abs_diff(snowlease::layout::unix_ms_now()) < 1_000);

    c.send(&[0, 0, 0, 9, 0x03, 1, 2, 3, 4, 5, 6, 7, 8]).await;
    assert_eq!(
        hex(&c.frame_bytes().await.expect("pong")),
        "00000009830102030405060708"
    );

    c.send(&[0, 0, 0, 9, 0x02, 0, 0, 0, 5, 0, 0, 0, 0]).await;
    let msg = b"lease count 0 is outside 1..=4096";
    let mut expected = vec![
        0,
        0,
        0,
        (9 + msg.len()) as u8,
        0x8f,
        0,
        0,
        0,
        5,
        0,
        3,
        0,
        msg.len() as u8,
    ];
    expected.extend_from_slice(msg);
    assert_eq!(c.frame_bytes().await.expect("error"), expected);
    // INVALID_COUNT keeps the connection open.
    c.request(Request::Lease {
        request_id: 6,
        count: 4097,
    })
    .await;
    assert!(matches!(
        c.response().await,
        Some(Response::Error {
            request_id: 6,
            code: ErrorCode::INVALID_COUNT,
            ..
        })
    ));
    c.request(Request::Ping { nonce: 1 }).await;
    assert_eq!(c.response().await, Some(Response::Pong { nonce: 1 }));
}

#[tokio::test]
async fn malformed_frames_get_an_error_then_the_connection_closes() {
    let s = server(1);
    let cases: [(&[u8], &str); 5] = [
        (
            &[0, 0, 0, 0],
            "frame length 0 (a frame needs at least an opcode)",
        ),
        (
            &[0xff, 0xff, 0xff, 0xff],
            "frame length 4294967295 exceeds the limit of 1024",
        ),
        (&[0, 0, 0, 1, 0x42], "unknown opcode 0x42"),
        (
            &[0, 0, 0, 5, 0x02, 0, 0, 0, 1],
            "LEASE body must be 8 bytes, got 4",
        ),
        (&[0, 0, 0, 2, 0x03, 0], "PING body must be 8 bytes, got 1"),
    ];
    for (bytes, message) in cases {
        let mut c = Raw::connect(s.lease_addr()).await;
        c.send(bytes).await;
        let mut expected = vec![
            0,
            0,
            0,
            (9 + message.len()) as u8,
            0x8f,
            0,
            0,
            0,
            0,
            0,
            1,
            0,
            message.len() as u8,
        ];
        expected.extend_from_slice(message.as_bytes());
        assert_eq!(
            c.frame_bytes().await.expect("error frame"),
            expected,
            "for {bytes:?}"
        );
        assert!(c.closed().await, "closed after {bytes:?}");
    }
}

#[tokio::test]
async fn version_zero_is_unsupported_and_closes() {
    let s = server(1);
    let mut c = Raw::connect(s.lease_addr()).await;
    c.request(Request::Hello {
        version: 0,
        token: Default::default(),
    })
    .await;
    let Some(Response::Error { code, message, .. }) = c.response().await else {
        panic!("no error")
    };
    assert_eq!(code, ErrorCode::UNSUPPORTED_VERSION);
    assert_eq!(message, "version 0 not supported; this server speaks 1");
    assert!(c.closed().await);
    // A newer client is answered with the version both speak.
    let mut c = Raw::connect(s.lease_addr()).await;
    c.request(Request::Hello {
        version: 9,
        token: Default::default(),
    })
    .await;
    // Version 2 added bulk leases, so "the version both speak" is now 2 (a version-1 client,
    // HELLO version 1, still gets exactly the version-1 WELCOME: see hello_is_answered_...).
    let Some(Response::WelcomeV2 {
        welcome: w,
        workers,
    }) = c.response().await
    else {
        panic!("no version-2 welcome")
    };
    assert_eq!(w.version, 2);
    assert_eq!((workers.first_worker, workers.worker_count), (1, 1));
}

#[tokio::test]
async fn ten_thousand_pipelined_leases_are_answered_in_order() {
    let s = server(2);
    let mut c = Raw::connect(s.lease_addr()).await;
    let mut all = BytesMut::new();
    for id in 0..10_000u32 {
        Request::Lease {
            request_id: id,
            count: 1 + id % 4096,
        }
        .encode(&mut all);
    }
    let (mut rd, mut wr) = c.stream.split();
    let writer = async { wr.write_all(&all).await.expect("write all") };
    let reader = async {
        let mut buf = BytesMut::new();
        let mut next = 0u32;
        let mut last_end = 0u64;
        while next < 10_000 {
            match wire::decode_response(&mut buf).expect("well-formed") {
                Some(Response::Leased {
                    request_id,
                    first_id,
                    count,
                }) => {
                    assert_eq!(request_id, next);
                    assert!(count >= 1 && count <= 1 + next % 4096);
                    assert!(first_id >= last_end);
                    last_end = first_id + u64::from(count);
                    next += 1;
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => {
                    let n = tokio::time::timeout(TIMEOUT, rd.read_buf(&mut buf))
                        .await
                        .expect("timely")
                        .expect("read");
                    assert!(n > 0, "closed early after {next}");
                }
            }
        }
    };
    tokio::join!(writer, reader);
    c.buf.clear();
}

#[tokio::test]
async fn every_core_listener_accepts_connections() {
    let s = server(3);
    let mut conns = Vec::new();
    for _ in 0..64 {
        let mut c = Raw::connect(s.lease_addr()).await;
        c.request(Request::Ping { nonce: 1 }).await;
        assert_eq!(c.response().await, Some(Response::Pong { nonce: 1 }));
        conns.push(c);
    }
    let m = &s.shared().metrics;
    let per_core: Vec<u64> = (0..2).map(|i| m.core(i).accepted_total()).collect();
    assert_eq!(per_core.iter().sum::<u64>(), 64);
    assert!(
        per_core.iter().all(|&n| n > 0),
        "SO_REUSEPORT spread: {per_core:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_connections_get_disjoint_ranges() {
    let s = server(4);
    let addr = s.lease_addr();
    let mut tasks = Vec::new();
    for t in 0..64u32 {
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::connect(addr).await;
            let mut got = Vec::new();
            for i in 0..200u32 {
                c.request(Request::Lease {
                    request_id: i,
                    count: 1 + (t * 37 + i * 11) % 4096,
                })
                .await;
                match c.response().await {
                    Some(Response::Leased {
                        first_id, count, ..
                    }) => got.push((first_id, count)),
                    other => panic!("unexpected {other:?}"),
                }
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort_unstable();
    for w in all.windows(2) {
        assert!(
            w[0].0 + u64::from(w[0].1) <= w[1].0,
            "overlap {:?} {:?}",
            w[0],
            w[1]
        );
    }
    assert_eq!(all.len(), 64 * 200);
}

#[tokio::test]
async fn past_the_connection_cap_a_client_gets_overloaded() {
    let mut config = ServerConfig::for_tests(5);
    config.max_connections = 2;
    let s = start(config).expect("start");
    let mut a = Raw::connect(s.lease_addr()).await;
    let mut b = Raw::connect(s.lease_addr()).await;
    for c in [&mut a, &mut b] {
        c.request(Request::Ping { nonce: 2 }).await;
        assert_eq!(c.response().await, Some(Response::Pong { nonce: 2 }));
    }
    let mut over = Raw::connect(s.lease_addr()).await;
    let Some(Response::Error { code, message, .. }) = over.response().await else {
        panic!("no error")
    };
    assert_eq!(code, ErrorCode::OVERLOADED);
    assert!(message.contains("limit of 2 connections"), "{message}");
    assert!(over.closed().await);
    // The others keep being served, and a freed slot is reused.
    drop(a);
    b.request(Request::Ping { nonce: 3 }).await;
    assert_eq!(b.response().await, Some(Response::Pong { nonce: 3 }));
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let mut c = Raw::connect(s.lease_addr()).await;
        c.request(Request::Ping { nonce: 4 }).await;
        match c.response().await {
            Some(Response::Pong { nonce: 4 }) => break,
            // The server may not have seen the first close yet.
            Some(Response::Error {
                code: ErrorCode::OVERLOADED,
                ..
            }) => {
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::task::yield_now().await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_silent_half_frame_is_closed_after_the_idle_timeout() {
    let mut config = ServerConfig::for_tests(6);
    config.idle_timeout = Duration::from_millis(200);
    let s = start(config).expect("start");
    let mut c = Raw::connect(s.lease_addr()).await;
    c.send(&[0, 0, 0, 9, 0x02, 0]).await;
    assert_eq!(
        c.response().await,
        Some(Response::GoAway {
            reason: wire::goaway::IDLE_TIMEOUT
        })
    );
    assert!(c.closed().await);
}

#[tokio::test]
async fn shutdown_answers_what_was_read_then_sends_goaway() {
    let s = server(8);
    let mut c = Raw::connect(s.lease_addr()).await;
    c.request(Request::Ping { nonce: 9 }).await;
    assert_eq!(c.response().await, Some(Response::Pong { nonce: 9 }));
    let stopper = std::thread::spawn(move || s.shutdown());
    assert_eq!(
        c.response().await,
        Some(Response::GoAway {
            reason: wire::goaway::SHUTDOWN
        })
    );
    assert!(c.closed().await);
    stopper.join().expect("shutdown returns");
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    tokio::time::timeout(TIMEOUT, s.read_to_string(&mut out))
        .await
        .expect("timely")
        .expect("read");
    let status = out[9..12].parse().expect("status code");
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_metrics_and_ids() {
    let s = server(9);
    let a = s.admin_addr();
    assert_eq!(http_get(a, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(http_get(a, "/readyz").await, (200, "ready\n".into()));

    let (status, body) = http_get(a, "/generate-id").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let id = v["id"].as_u64().expect("numeric id");
    assert_eq!(v["id_str"], id.to_string());
    assert_eq!(Layout::DEFAULT.decompose(id).worker, 9);

    let (status, body) = http_get(a, "/generate-id?count=5").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let ids: Vec<u64> = v["ids"]
        .as_array()
        .expect("list")
        .iter()
        .map(|x| x.as_u64().expect("u64"))
        .collect();
    assert_eq!(ids.len(), 5);
    assert!(ids.windows(2).all(|w| w[0] < w[1]) && ids[0] > id);
    let (status, body) = http_get(a, "/generate-id?count=0").await;
    assert_eq!(status, 400);
    assert!(body.contains("1..=4096"), "{body}");

    let (status, metrics) = http_get(a, "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "snowlease_ids_issued_total 6\n",
        "snowlease_info{worker_id=\"9\",layout=\"41/10/12\"",
        "snowlease_leases_total{outcome=\"full\"}",
        "snowlease_connections_open 0\n",
        "snowlease_frame_errors_total{code=\"MALFORMED\"} 0\n",
        "snowlease_ticks_borrowed_total",
        "snowlease_lead_ms",
        "snowlease_clock_steps_total{direction=\"back\"}",
        "snowlease_generator_waits_total{reason=\"lead\"}",
        "snowlease_lifetime_remaining_seconds",
    ] {
        assert!(metrics.contains(needle), "missing {needle:?} in\n{metrics}");
    }
    let (_, info) = http_get(a, "/info").await;
    let v: serde_json::Value = serde_json::from_str(&info).expect("json");
    assert_eq!(v["worker_id"], 9);
    assert_eq!(v["max_lease"], 4096);
    assert_eq!(v["tls"], false);
    assert_eq!(v["token_required"], false);
    assert_eq!(http_get(a, "/nope").await.0, 404);
}

#[tokio::test]
async fn http_and_tcp_ids_never_collide() {
    let s = server(10);
    let mut seen = HashSet::new();
    let mut c = Raw::connect(s.lease_addr()).await;
    for i in 0..50 {
        c.request(Request::Lease {
            request_id: i,
            count: 100,
        })
        .await;
        let Some(Response::Leased {
            first_id, count, ..
        }) = c.response().await
        else {
            panic!()
        };
        for id in first_id..first_id + u64::from(count) {
            assert!(seen.insert(id));
        }
        let (_, body) = http_get(s.admin_addr(), "/generate-id?count=100").await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        for id in v["ids"].as_array().expect("ids") {
            assert!(seen.insert(id.as_u64().expect("u64")));
        }
    }
}

#[tokio::test]
async fn with_a_token_only_a_hello_carrying_it_is_served() {
    let dir = std::env::temp_dir().join(format!("snowlease-token-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("token");
    std::fs::write(&path, "s3cret\n").expect("write token");
    let mut config = ServerConfig::for_tests(11);
    config.token_file = Some(path.clone());
    let s = start(config).expect("start");

    let mut c = Raw::connect(s.lease_addr()).await;
    c.request(Request::Lease {
        request_id: 1,
        count: 1,
    })
    .await;
    let Some(Response::Error { code, message, .. }) = c.response().await else {
        panic!("no error")
    };
    assert_eq!(code, ErrorCode::UNAUTHORIZED);
    assert_eq!(
        message,
        "this server requires HELLO with a token as the first frame"
    );
    assert!(c.closed().await);

    let mut c = Raw::connect(s.lease_addr()).await;
    c.request(Request::Hello {
        version: 1,
        token: "wrong".into(),
    })
    .await;
    assert!(matches!(
        c.response().await,
        Some(Response::Error {
            code: ErrorCode::UNAUTHORIZED,
            ..
        })
    ));
    assert!(c.closed().await);

    let mut good = Raw::connect(s.lease_addr()).await;
    good.request(Request::Hello {
        version: 1,
        token: "s3cret".into(),
    })
    .await;
    assert!(matches!(good.response().await, Some(Response::Welcome(_))));

    // Rotate the token: the authenticated connection stays, new ones need the new token.
    std::fs::write(&path, "n3w").expect("rotate");
    let store = s.shared().token.as_ref().expect("token store");
    // Reload now, as SIGHUP would. The server's own mtime watcher may get there first (it
    // checks once a second), and then this reload finds nothing new and returns false; so
    // what is checked is the outcome, whoever reloaded: the store holds the new token.
    store.reload_if_changed(true).expect("reload");
    assert!(store.check(b"n3w"), "the rotated token is the current one");
    good.request(Request::Lease {
        request_id: 2,
        count: 3,
    })
    .await;
    assert!(matches!(
        good.response().await,
        Some(Response::Leased {
            request_id: 2,
            count: 3,
            ..
        })
    ));
    let mut old = Raw::connect(s.lease_addr()).await;
    old.request(Request::Hello {
        version: 1,
        token: "s3cret".into(),
    })
    .await;
    assert!(matches!(
        old.response().await,
        Some(Response::Error {
            code: ErrorCode::UNAUTHORIZED,
            ..
        })
    ));

    // The admin port wants the token as a bearer header for IDs, not for health.
    assert_eq!(http_get(s.admin_addr(), "/generate-id").await.0, 401);
    assert_eq!(http_get(s.admin_addr(), "/healthz").await.0, 200);
    let mut h = TcpStream::connect(s.admin_addr()).await.expect("admin");
    h.write_all(b"GET /generate-id HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer n3w\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    h.read_to_string(&mut out).await.expect("read");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}
