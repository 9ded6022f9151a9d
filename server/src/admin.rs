//! The admin HTTP port: health, readiness, Prometheus metrics, a JSON info page and
//! `/generate-id`, the drop-in for teams that call an HTTP endpoint per ID today.
//!
//! Requests arrive on the admin thread's runtime through hyper's HTTP/1 server; [`route`] maps
//! each to a response built from the shared state. `/generate-id` leases from the same
//! generator as the TCP port (waiting for the next tick the same way), so IDs from both ports
//! never collide. IDs go out as numbers and as strings: JavaScript loses precision above 2^53.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::generator::Refusal;
use crate::metrics::{self, Gauges, Outcome};
use crate::Shared;

/// Largest `count` one `/generate-id` call may ask for: the IDs of one tick, which keeps the
/// JSON reply under ~100 KiB.
pub const MAX_HTTP_COUNT: u32 = 4096;

/// Admin connections served at once. Probes and scrapes need a handful; the cap keeps a
/// client that opens connections and never finishes a request from using up the descriptors
/// the lease port needs. Past it a connection gets [`BUSY`] and is closed at once.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Time a client has to send a request's headers, counted from the connection's start or
/// the end of the previous response, so idle keep-alive connections end too (a half-sent
/// request or an idle connection cannot hold one of the [`MAX_ADMIN_CONNECTIONS`] for long).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole reply to a connection past [`MAX_ADMIN_CONNECTIONS`].
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 32\r\nconnection: close\r\n\r\ntoo many admin connections open\n";

/// Serves the admin port until `stop` is cancelled.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let tracker = TaskTracker::new();
    let limiter = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
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
            shared.metrics.admin().http_rejected();
            // Best effort and never waits: the socket is closed right after.
            let _ = stream.try_write(BUSY);
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
        "/readyz" => {
            if shared.ready.load(Ordering::Acquire) {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
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

async fn generate(shared: &Shared, query: Option<&str>) -> Response<Full<Bytes>> {
    let count = match parse_count(query) {
        Ok(c) => c,
        Err(e) => return json(StatusCode::BAD_REQUEST, serde_json::json!({"error": e})),
    };
    if !shared.ready.load(Ordering::Acquire) {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "not ready"}),
        );
    }
    let want = count.unwrap_or(1);
    let mut ids = Vec::with_capacity(want as usize);
    while (ids.len() as u32) < want {
        match shared.generator.lease(want - ids.len() as u32) {
            Ok(l) => {
                if let Some(at) = l.hold_until_unix_ms {
                    shared.metrics.admin().waited_lead();
                    tokio::time::sleep_until(shared.clock.instant_at(at).into()).await;
                }
                shared
                    .metrics
                    .admin()
                    .lease(Outcome::Full, u64::from(l.count));
                ids.extend((0..u64::from(l.count)).map(|i| l.first_id + i));
            }
            Err(Refusal::Lead { until_unix_ms }) => {
                shared.metrics.admin().waited_lead();
                tokio::time::sleep_until(shared.clock.instant_at(until_unix_ms).into()).await;
            }
            Err(Refusal::NotDurable) => {
                shared.metrics.admin().waited_durable();
                let _ = tokio::time::timeout(
                    std::time::Duration::from_millis(50),
                    shared.durable_raised.notified(),
                )
                .await;
            }
            Err(Refusal::Exhausted) => {
                shared.metrics.admin().lease(Outcome::Unavailable, 0);
                return json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"error": "the layout's timestamp field ran out"}),
                );
            }
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

/// The gauges `/metrics` reports beside the counters.
pub fn gauges(shared: &Shared) -> Gauges {
    let g = &shared.generator;
    let layout = g.layout();
    let wall_tick = layout
        .tick_at(snowlease_proto::layout::unix_ms_now())
        .unwrap_or(0) as i64;
    let last_tick = g.next_tick() as i64;
    let now_unix = snowlease_proto::layout::unix_ms_now();
    Gauges {
        worker_id: g.worker(),
        layout: format!(
            "{}/{}/{}",
            layout.timestamp_bits(),
            layout.worker_bits(),
            layout.sequence_bits()
        ),
        epoch: snowlease_proto::layout::format_unix_ms(layout.epoch_unix_ms()),
        borrowed_ticks: g.borrowed_ticks(),
        lead_ms: g.lead_ms(),
        wall_lead_ms: (last_tick - wall_tick).max(0),
        clock_steps: shared.clock.steps(),
        lifetime_seconds: layout.end_of_life_unix_ms().saturating_sub(now_unix) / 1000,
        reserved_ahead_ms: shared
            .state
            .as_ref()
            .map(|_| g.durable_limit() as i64 - g.next_tick() as i64),
        state_writes: shared.state.as_ref().map_or(0, |s| s.writes()),
        ready: shared.ready.load(Ordering::Acquire),
        threads: shared.config.threads,
    }
}

fn info(shared: &Shared) -> serde_json::Value {
    let g = &shared.generator;
    let layout = g.layout();
    serde_json::json!({
        "worker_id": g.worker(),
        "version": env!("CARGO_PKG_VERSION"),
        "protocol_version": snowlease_proto::wire::VERSION,
        "epoch_unix_ms": layout.epoch_unix_ms(),
        "epoch": snowlease_proto::layout::format_unix_ms(layout.epoch_unix_ms()),
        "timestamp_bits": layout.timestamp_bits(),
        "worker_bits": layout.worker_bits(),
        "sequence_bits": layout.sequence_bits(),
        "max_lease": layout.max_lease(),
        "end_of_life": snowlease_proto::layout::format_unix_ms(layout.end_of_life_unix_ms()),
        "max_lead_ms": g.max_lead(),
        "lead_ms": g.lead_ms(),
        "ids_issued": shared.metrics.ids_issued(),
        "connections_open": shared.metrics.open_connections(),
        "ready": shared.ready.load(Ordering::Acquire),
        "threads": shared.config.threads,
        "state_dir": shared.config.state_dir.as_ref().map(|p| p.display().to_string()),
        "token_required": shared.token.is_some(),
        "tls": shared.tls.is_some(),
        "mutual_tls": shared.tls.as_ref().is_some_and(|t| t.paths().client_ca.is_some()),
    })
}

#[cfg(test)]
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
