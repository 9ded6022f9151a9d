//! The admin HTTP port: health, readiness, Prometheus metrics, a JSON info page and
//! `/generate-id`, the drop-in for teams that call an HTTP endpoint per ID today.
//!
//! Requests arrive on the admin thread's runtime through hyper's HTTP/1 server; [`route`] maps
//! each to a response built from the shared state. `/generate-id` leases through the same
//! `lease::Leaser` as the TCP port (waiting for time and for the disk the same way, under the
//! same deadline: past it, 503 with `Retry-After`), so IDs from both ports never collide. IDs go
//! out as numbers and as strings: JavaScript loses precision above 2^53.
//!
//! Liveness never depends on the disk or on busy clients: `/healthz` answers from memory, and
//! past [`MAX_ADMIN_CONNECTIONS`] up to [`PROBE_CONNECTIONS`] more connections get a quick look
//! at their request line (at most [`PROBE_READ_TIMEOUT`]): `/healthz` and `/readyz` are still
//! answered, anything else gets 503 and the socket is closed, so a flood of slow
//! `/generate-id` calls cannot make the kubelet restart a pod. `/readyz` is 503 whenever a lease could not be granted now, with the
//! reason in the body (see `health`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::lease::{LeaseError, Waits};
use crate::metrics::{self, CoreMetrics, Gauges, Outcome, Wait, WorkerGauges};
use crate::shared::Shared;

/// Largest `count` one `/generate-id` call may ask for: the IDs of one tick, which keeps the
/// JSON reply under ~100 KiB.
pub const MAX_HTTP_COUNT: u32 = 4096;

/// Admin connections served at once. Probes and scrapes need a handful; the cap keeps a
/// client that opens connections and never finishes a request from using up the descriptors
/// the lease port needs. Past it a connection gets `BUSY` (a 503) and is closed at once.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Time a client has to send a request's headers, counted from the connection's start or
/// the end of the previous response, so idle keep-alive connections end too (a half-sent
/// request or an idle connection cannot hold one of the [`MAX_ADMIN_CONNECTIONS`] for long).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections past [`MAX_ADMIN_CONNECTIONS`] whose request line is read to answer a probe: the
/// kubelet's two probes plus room for retries, so a cap full of slow `/generate-id` calls never
/// fails a liveness probe. Each holds a descriptor for at most [`PROBE_READ_TIMEOUT`].
pub const PROBE_CONNECTIONS: usize = 16;

/// How long a connection past the cap has to send its request line. The kubelet sends its
/// probe right after the handshake; a second is far more than loopback or a node network
/// needs, and bounds what 16 silent sockets can hold.
pub const PROBE_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The whole reply to a connection past [`MAX_ADMIN_CONNECTIONS`].
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 32\r\nconnection: close\r\n\r\ntoo many admin connections open\n";

/// Serves the admin port until `stop` is cancelled.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let tracker = TaskTracker::new();
    let limiter = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let probes = Arc::new(Semaphore::new(PROBE_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limiter.clone().try_acquire_owned() else {
            match probes.clone().try_acquire_owned() {
                Ok(p) => {
                    let shared = shared.clone();
                    tracker.spawn(async move {
                        probe_only(stream, &shared).await;
                        drop(p);
                    });
                }
                Err(_) => {
                    shared.metrics.admin().http_rejected();
                    // Best effort and never waits: the socket is closed right after.
                    let _ = stream.try_write(BUSY);
                }
            }
            continue;
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
}

/// A connection past the cap: reads its request line (briefly) and answers it if it is a
/// health probe, else 503; then closes. Never hands the socket to hyper.
async fn probe_only(mut stream: tokio::net::TcpStream, shared: &Shared) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut line = Vec::with_capacity(128);
    let read = tokio::time::timeout(PROBE_READ_TIMEOUT, async {
        let mut chunk = [0u8; 128];
        while !line.windows(2).any(|w| w == b"\r\n") && line.len() < 256 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => line.extend_from_slice(&chunk[..n]),
            }
        }
    });
    let _ = read.await;
    let text = String::from_utf8_lossy(&line);
    let mut words = text.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let answer = match (method, path) {
        ("GET" | "HEAD", "/healthz") => Some((200, "ok\n".to_owned())),
        ("GET" | "HEAD", "/readyz") => Some(readiness_text(shared)),
        _ => None,
    };
    let bytes = match answer {
        Some((status, body)) => {
            shared.metrics.admin().http_request();
            let reason = if status == 200 {
                "OK"
            } else {
                "Service Unavailable"
            };
            format!("HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).into_bytes()
        }
        None => {
            shared.metrics.admin().http_rejected();
            BUSY.to_vec()
        }
    };
    let _ = tokio::time::timeout(PROBE_READ_TIMEOUT, stream.write_all(&bytes)).await;
}

/// `/readyz`'s status and body.
fn readiness_text(shared: &Shared) -> (u16, String) {
    let reasons = shared.readiness();
    if reasons.is_empty() {
        return (200, "ready\n".to_owned());
    }
    let text: Vec<String> = reasons
        .iter()
        .map(|(r, why)| format!("not ready: {}: {why}\n", r.label()))
        .collect();
    (503, text.concat())
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, content_type.parse().expect("static header"));
    r.headers_mut()
        .insert(CACHE_CONTROL, "no-store".parse().expect("static header"));
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", value.to_string())
}

/// Maps one request to its response.
pub async fn route(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    shared.metrics.admin().http_request();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "only GET is supported"}),
        );
    }
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => match readiness_text(shared) {
            (200, body) => reply(StatusCode::OK, "text/plain", body),
            (_, body) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body),
        },
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics::render(&shared.metrics, &gauges(shared)),
        ),
        "/info" => json(StatusCode::OK, info(shared)),
        "/generate-id" => {
            if !bearer_ok(shared, &req) {
                return json(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({"error": "this server requires Authorization: Bearer <token>"}),
                );
            }
            generate(shared, req.uri().query()).await
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found", "paths": ["/healthz", "/readyz", "/metrics", "/info", "/generate-id?count=N"]}),
        ),
    }
}

/// Whether the request carries the server's token as a bearer token (always, without one).
fn bearer_ok(shared: &Shared, req: &Request<Incoming>) -> bool {
    let Some(store) = &shared.token else {
        return true;
    };
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|t| store.check(t))
}

fn parse_count(query: Option<&str>) -> Result<Option<u32>, String> {
    let Some(q) = query else { return Ok(None) };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("count=") {
            return match v.parse::<u32>() {
                Ok(n) if (1..=MAX_HTTP_COUNT).contains(&n) => Ok(Some(n)),
                _ => Err(format!(
                    "count must be a whole number in 1..={MAX_HTTP_COUNT}, got {v:?}"
                )),
            };
        }
    }
    Ok(None)
}

/// Counts the admin port's waits; there is nothing to flush.
struct AdminWaits<'a>(&'a CoreMetrics);

impl Waits for AdminWaits<'_> {
    async fn before_wait(&mut self, why: Wait) -> std::io::Result<()> {
        self.0.waited(why);
        Ok(())
    }
}

async fn generate(shared: &Shared, query: Option<&str>) -> Response<Full<Bytes>> {
    let count = match parse_count(query) {
        Ok(c) => c,
        Err(e) => return json(StatusCode::BAD_REQUEST, serde_json::json!({"error": e})),
    };
    if !shared.health.is_serving() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "not ready"}),
        );
    }
    let want = count.unwrap_or(1);
    let metrics = shared.metrics.admin();
    let home = shared.leaser.assign_home();
    let mut ids = Vec::with_capacity(want as usize);
    while (ids.len() as u32) < want {
        let ask = want - ids.len() as u32;
        match shared
            .leaser
            .lease(home, ask, &mut AdminWaits(metrics))
            .await
        {
            Ok(l) => {
                let outcome = if l.count == ask {
                    Outcome::Full
                } else {
                    Outcome::Partial
                };
                metrics.lease_from(outcome, home, u64::from(l.count));
                ids.extend((0..u64::from(l.count)).map(|i| l.first_id + i));
            }
            Err(e) => return unavailable(metrics, &e),
        }
    }
    let body = match count {
        None => serde_json::json!({"id": ids[0], "id_str": ids[0].to_string()}),
        Some(_) => serde_json::json!({
            "ids": ids,
            "ids_str": ids.iter().map(u64::to_string).collect::<Vec<_>>(),
        }),
    };
    json(StatusCode::OK, body)
}

/// 503 for a lease the leaser could not grant; `Retry-After` when waiting can help (the disk),
/// not when the layout is used up. IDs taken before the failure (a `count` spanning ticks) are
/// dropped: they are unique, only unused.
fn unavailable(metrics: &CoreMetrics, e: &LeaseError) -> Response<Full<Bytes>> {
    metrics.lease(Outcome::Unavailable, 0);
    let mut r = json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"error": e.to_string()}),
    );
    if matches!(e, LeaseError::NotDurable) {
        r.headers_mut()
            .insert(RETRY_AFTER, "1".parse().expect("static header"));
    }
    r
}

/// The gauges `/metrics` reports beside the counters.
pub fn gauges(shared: &Shared) -> Gauges {
    let leaser = &shared.leaser;
    let first = leaser.first();
    let layout = first.layout();
    let now_unix = snowlease_proto::layout::unix_ms_now();
    let wall_tick = layout.tick_at(now_unix).unwrap_or(0) as i64;
    let now_tick = first.now_tick();
    let with_state = shared.state.is_some();
    let workers: Vec<WorkerGauges> = leaser
        .workers()
        .iter()
        .map(|g| WorkerGauges {
            worker_id: g.worker(),
            lead_ms: g.lead_ms(),
            reserved_ahead_ms: with_state.then(|| {
                let from = g.next_tick().max(now_tick);
                g.durable_limit().saturating_sub(from) as i64
            }),
        })
        .collect();
    let reasons = shared.readiness();
    Gauges {
        worker_id: first.worker(),
        layout: format!(
            "{}/{}/{}",
            layout.timestamp_bits(),
            layout.worker_bits(),
            layout.sequence_bits()
        ),
        epoch: snowlease_proto::layout::format_unix_ms(layout.epoch_unix_ms()),
        capacity_ids_per_second: workers.len() as u64 * u64::from(layout.max_lease()) * 1000,
        borrowed_ticks: leaser.workers().iter().map(|g| g.borrowed_ticks()).sum(),
        lead_ms: workers.iter().map(|w| w.lead_ms).max().unwrap_or(0),
        wall_lead_ms: leaser
            .workers()
            .iter()
            .map(|g| g.next_tick() as i64 - wall_tick)
            .max()
            .unwrap_or(0)
            .max(0),
        clock_steps: shared.clock.steps(),
        clock_forward_held_ms: shared.clock.forward_held_ms(),
        lifetime_seconds: layout.end_of_life_unix_ms().saturating_sub(now_unix) / 1000,
        reserved_ahead_ms: workers.iter().filter_map(|w| w.reserved_ahead_ms).min(),
        state_writes: shared.state.as_ref().map_or(0, |s| s.writes()),
        state_write_errors: shared.state_health.errors(),
        state_writable: with_state.then(|| shared.state_health.writable()),
        ready: reasons.is_empty(),
        not_ready: crate::health::Reason::ALL
            .iter()
            .map(|r| (r.label(), reasons.iter().any(|(x, _)| x == r)))
            .collect(),
        threads: shared.config.threads,
        workers,
    }
}

fn info(shared: &Shared) -> serde_json::Value {
    let leaser = &shared.leaser;
    let g = leaser.first();
    let layout = g.layout();
    let reasons: Vec<String> = shared
        .readiness()
        .iter()
        .map(|(r, why)| format!("{}: {why}", r.label()))
        .collect();
    let workers: Vec<serde_json::Value> = leaser
        .workers()
        .iter()
        .enumerate()
        .map(|(i, w)| {
            serde_json::json!({
                "worker_id": w.worker(),
                "lead_ms": w.lead_ms(),
                "ids_issued": shared.metrics.ids_issued_by(i),
            })
        })
        .collect();
    serde_json::json!({
        "worker_id": g.worker(),
        "workers": workers,
        "workers_per_pod": shared.config.workers_per_pod,
        "version": env!("CARGO_PKG_VERSION"),
        "protocol_version": snowlease_proto::wire::MAX_VERSION,
        "epoch_unix_ms": layout.epoch_unix_ms(),
        "epoch": snowlease_proto::layout::format_unix_ms(layout.epoch_unix_ms()),
        "timestamp_bits": layout.timestamp_bits(),
        "worker_bits": layout.worker_bits(),
        "sequence_bits": layout.sequence_bits(),
        "max_lease": layout.max_lease(),
        "max_bulk": snowlease_proto::wire::MAX_BULK,
        "end_of_life": snowlease_proto::layout::format_unix_ms(layout.end_of_life_unix_ms()),
        "max_lead_ms": g.max_lead(),
        "lead_ms": leaser.workers().iter().map(|w| w.lead_ms()).max().unwrap_or(0),
        "ids_issued": shared.metrics.ids_issued(),
        "connections_open": shared.metrics.open_connections(),
        "ready": reasons.is_empty(),
        "not_ready": reasons,
        "threads": shared.config.threads,
        "state_dir": shared.config.state_dir.as_ref().map(|p| p.display().to_string()),
        "state_dir_writable": shared.state.as_ref().map(|_| shared.state_health.writable()),
        "token_required": shared.token.is_some(),
        "tls": shared.tls.is_some(),
        "mutual_tls": shared.tls.as_ref().is_some_and(|t| t.paths().client_ca.is_some()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_outside_the_limit_are_refused_with_a_reason() {
        assert_eq!(parse_count(None), Ok(None));
        assert_eq!(parse_count(Some("count=5")), Ok(Some(5)));
        assert_eq!(parse_count(Some("x=1&count=4096")), Ok(Some(4096)));
        assert!(parse_count(Some("count=0"))
            .unwrap_err()
            .contains("1..=4096"));
        assert!(parse_count(Some("count=4097")).is_err());
        assert!(parse_count(Some("count=abc")).is_err());
    }
}
