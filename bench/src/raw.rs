//! `--mode raw`: the server measured through the bare wire protocol, no client library.
//!
//! Each connection is one task that owns its socket. It sends HELLO, then `depth` LEASEs of
//! `batch` IDs, then loops: read whatever replies have arrived, decode them all, and for each
//! one send one new LEASE in a single write, so `depth` requests stay in flight until the stop
//! time. Requests are answered in order, so send times live in a FIFO and a reply's latency is
//! its read time minus the send time at the front. After the stop time no more requests go
//! out and the outstanding replies are drained, bounded by the timeout.
//!
//! With `--tls` every connection is a TLS session over the same bytes ([`open`] does the
//! handshake before HELLO). `--mode reconnect` ([`reconnect`]) measures connection setup
//! instead: each task opens a connection (TCP, TLS, HELLO/WELCOME), leases once, closes, and
//! starts over, so its leases/s are connections/s.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use snowlease::wire::{self, goaway, Request, Response, Welcome};

use crate::stats::{self, Counters};
use crate::tls::TlsTarget;
use crate::verify::Block;
use crate::Timeline;

/// A byte stream the load runs over: TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection's stream. Boxed for both plaintext and TLS, so the two measure the same
/// code path apart from TLS itself (one indirect call per read or write).
pub type Stream = Box<dyn Io>;

/// What the raw mode needs to know.
#[derive(Debug, Clone)]
pub struct RawParams {
    /// Server address.
    pub addr: String,
    /// Requests kept in flight per connection.
    pub depth: usize,
    /// IDs asked per LEASE.
    pub batch: u32,
    /// Bound on connecting, on each wait for a reply, and on the final drain.
    pub timeout: Duration,
    /// HELLO token, if the server wants one.
    pub token: Option<String>,
    /// Keep every block for the overlap check.
    pub verify: bool,
}

/// What one connection brings back.
#[derive(Debug)]
pub struct ConnOutcome {
    /// Blocks received (empty without `verify`).
    pub blocks: Vec<Block>,
    /// Request latencies in nanoseconds, for requests sent in the measured window.
    pub latency: Histogram<u64>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
}

/// A connected socket after HELLO/WELCOME.
pub struct Opened {
    pub(crate) stream: Stream,
    pub(crate) buf: BytesMut,
    /// What the server said about itself.
    pub welcome: Welcome,
}

/// Connects, completes the TLS handshake (with `tls`), sends HELLO and waits for WELCOME,
/// all within `timeout`.
pub async fn open(
    addr: &str,
    token: Option<&str>,
    timeout: Duration,
    tls: Option<&TlsTarget>,
) -> Result<Opened, String> {
    let deadline = Instant::now() + timeout;
    let tcp = match timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("cannot connect to {addr}: {e}")),
        Err(_) => return Err(format!("connecting to {addr} timed out after {timeout:?}")),
    };
    greet(tcp, addr, token, deadline, tls).await
}

/// On a connected socket: TLS handshake (with `tls`), HELLO, WELCOME, by `deadline`.
pub async fn greet(
    tcp: TcpStream,
    addr: &str,
    token: Option<&str>,
    deadline: Instant,
    tls: Option<&TlsTarget>,
) -> Result<Opened, String> {
    tcp.set_nodelay(true)
        .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
    let mut stream: Stream = match tls {
        None => Box::new(tcp),
        Some(tls) => match timeout_at(deadline, tls.connect(tcp)).await {
            Ok(Ok(s)) => Box::new(s),
            Ok(Err(e)) => return Err(format!("TLS handshake with {addr} failed: {e}")),
            Err(_) => return Err(format!("TLS handshake with {addr} timed out")),
        },
    };
    let hello = Request::Hello {
        version: wire::VERSION,
        token: Bytes::copy_from_slice(token.unwrap_or_default().as_bytes()),
    };
    write(&mut stream, &hello.to_bytes(), deadline)
        .await
        .map_err(|e| format!("sending HELLO to {addr}: {e}"))?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let welcome = loop {
        match wire::decode_response(&mut buf) {
            Ok(Some(Response::Welcome(w))) => break w,
            Ok(Some(other)) => return Err(format!("{addr} answered HELLO with {other:?}")),
            Err(e) => return Err(format!("{addr} sent a malformed frame: {e}")),
            Ok(None) => {}
        }
        match timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Err(format!("{addr} closed the connection after HELLO")),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("reading WELCOME from {addr}: {e}")),
            Err(_) => return Err(format!("{addr} sent no WELCOME in time")),
        }
    };
    Ok(Opened {
        stream,
        buf,
        welcome,
    })
}

/// Writes and flushes (TLS holds records until a flush; TCP's flush is free).
pub(crate) async fn write(
    stream: &mut Stream,
    bytes: &[u8],
    deadline: Instant,
) -> Result<(), String> {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    match timeout_at(deadline, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("write timed out".into()),
    }
}

/// One request on the wire.
struct Pending {
    request_id: u32,
    asked: u32,
    sent: Instant,
}

/// The state of one driven connection.
struct Driver<'a> {
    params: &'a RawParams,
    timeline: Timeline,
    counters: &'a Counters,
    in_flight: VecDeque<Pending>,
    next_request_id: u32,
    out: BytesMut,
    outcome: ConnOutcome,
    /// The server said GOAWAY: send nothing more.
    going_away: bool,
}

/// Drives one opened connection until the stop time and the drain are over.
pub async fn drive(
    opened: Opened,
    params: Arc<RawParams>,
    timeline: Timeline,
    counters: Arc<Counters>,
) -> ConnOutcome {
    let Opened {
        mut stream,
        mut buf,
        ..
    } = opened;
    let mut driver = Driver {
        params: &params,
        timeline,
        counters: &counters,
        in_flight: VecDeque::with_capacity(params.depth),
        next_request_id: 0,
        out: BytesMut::with_capacity(params.depth * 13),
        outcome: ConnOutcome {
            blocks: Vec::new(),
            latency: stats::histogram(),
            errors: BTreeMap::new(),
        },
        going_away: false,
    };
    if let Err(kind) = driver.run(&mut stream, &mut buf).await {
        driver.error(kind);
    }
    driver.outcome
}

impl Driver<'_> {
    async fn run(&mut self, stream: &mut Stream, buf: &mut BytesMut) -> Result<(), String> {
        let drain_until = self.timeline.stop_at + self.params.timeout;
        self.top_up(Instant::now());
        self.flush(stream).await?;
        // Bounded in time: every wait has a deadline and sending stops at `stop_at`.
        while !self.in_flight.is_empty() {
            let now = Instant::now();
            let deadline = if now < self.timeline.stop_at {
                now + self.params.timeout
            } else {
                drain_until
            };
            match timeout_at(deadline, stream.read_buf(buf)).await {
                Ok(Ok(0)) => return Err("closed".into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("io: {}", e.kind())),
                Err(_) if now >= self.timeline.stop_at => return Err("drain timeout".into()),
                Err(_) => return Err("reply timeout".into()),
            }
            let now = Instant::now();
            self.take_replies(buf, now)?;
            if now < self.timeline.stop_at && !self.going_away {
                self.top_up(now);
                self.flush(stream).await?;
            }
        }
        Ok(())
    }

    /// Encodes LEASEs until `depth` are in flight.
    fn top_up(&mut self, now: Instant) {
        while self.in_flight.len() < self.params.depth {
            self.next_request_id = self.next_request_id.wrapping_add(1);
            wire::Request::Lease {
                request_id: self.next_request_id,
                count: self.params.batch,
            }
            .encode(&mut self.out);
            self.in_flight.push_back(Pending {
                request_id: self.next_request_id,
                asked: self.params.batch,
                sent: now,
            });
        }
    }

    async fn flush(&mut self, stream: &mut Stream) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.params.timeout;
        let result = write(stream, &self.out, deadline).await;
        self.out.clear();
        result.map_err(|e| format!("write: {e}"))
    }

    /// Decodes every complete reply in `buf`, all stamped with the read time `now`.
    fn take_replies(&mut self, buf: &mut BytesMut, now: Instant) -> Result<(), String> {
        let (mut ids, mut leases, mut errors) = (0u64, 0u64, 0u64);
        let counting = now >= self.timeline.measure_from && now < self.timeline.stop_at;
        let result = loop {
            let response = match wire::decode_response(buf) {
                Ok(Some(r)) => r,
                Ok(None) => break Ok(()),
                Err(e) => break Err(format!("malformed reply: {e}")),
            };
            match response {
                Response::Leased {
                    request_id,
                    first_id,
                    count,
                } => {
                    let pending = self.answered(request_id)?;
                    if count == 0 || count > pending.asked {
                        self.error("protocol: LEASED count outside 1..=asked".into());
                        errors += 1;
                    }
                    if self.params.verify {
                        self.outcome.blocks.push(Block {
                            first: first_id,
                            count,
                        });
                    }
                    if pending.sent >= self.timeline.measure_from {
                        stats::record(&mut self.outcome.latency, now - pending.sent);
                    }
                    ids += u64::from(count);
                    leases += 1;
                }
                Response::Error {
                    request_id, code, ..
                } => {
                    self.answered(request_id)?;
                    self.error(format!("ERROR {}", code.name()));
                    errors += 1;
                }
                Response::GoAway { reason } => {
                    self.going_away = true;
                    self.error(format!("GOAWAY {}", goaway::name(reason)));
                    errors += 1;
                }
                other => break Err(format!("protocol: unexpected {other:?}")),
            }
        };
        if counting {
            self.counters.add(ids, leases, errors);
        }
        result
    }

    /// Pops the oldest request, which `request_id` must answer.
    fn answered(&mut self, request_id: u32) -> Result<Pending, String> {
        let pending = self
            .in_flight
            .pop_front()
            .ok_or_else(|| format!("protocol: reply {request_id} with nothing in flight"))?;
        if pending.request_id != request_id {
            return Err(format!(
                "protocol: reply {request_id} out of order (expected {})",
                pending.request_id
            ));
        }
        Ok(pending)
    }

    fn error(&mut self, kind: String) {
        *self.outcome.errors.entry(kind).or_default() += 1;
    }
}

/// `--mode reconnect`: until the stop time, open a connection, lease `batch` once, close.
/// Latency is connect to LEASED; a failure is counted and the loop goes on.
pub async fn reconnect(
    params: Arc<RawParams>,
    tls: Option<Arc<TlsTarget>>,
    timeline: Timeline,
    counters: Arc<Counters>,
) -> ConnOutcome {
    let mut outcome = ConnOutcome {
        blocks: Vec::new(),
        latency: stats::histogram(),
        errors: BTreeMap::new(),
    };
    // Bounded in time: each pass is bounded by the timeout and no pass starts after stop_at.
    while Instant::now() < timeline.stop_at {
        let started = Instant::now();
        let result = once(&params, tls.as_deref()).await;
        let now = Instant::now();
        let counting = started >= timeline.measure_from && now < timeline.stop_at;
        match result {
            Ok(block) => {
                if counting {
                    stats::record(&mut outcome.latency, now - started);
                    counters.add(u64::from(block.count), 1, 0);
                }
                if params.verify {
                    outcome.blocks.push(block);
                }
            }
            Err(kind) => {
                if counting {
                    counters.add(0, 0, 1);
                }
                *outcome.errors.entry(kind).or_default() += 1;
            }
        }
    }
    outcome
}

/// One connection: open, one LEASE, its reply, close.
async fn once(params: &RawParams, tls: Option<&TlsTarget>) -> Result<Block, String> {
    let Opened {
        mut stream,
        mut buf,
        ..
    } = open(&params.addr, params.token.as_deref(), params.timeout, tls).await?;
    let deadline = Instant::now() + params.timeout;
    let lease = Request::Lease {
        request_id: 1,
        count: params.batch,
    };
    write(&mut stream, &lease.to_bytes(), deadline).await?;
    loop {
        match wire::decode_response(&mut buf) {
            Ok(Some(Response::Leased {
                first_id, count, ..
            })) => {
                return Ok(Block {
                    first: first_id,
                    count,
                })
            }
            Ok(Some(other)) => return Err(format!("unexpected {other:?}")),
            Err(e) => return Err(format!("malformed reply: {e}")),
            Ok(None) => {}
        }
        match timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Err("closed".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("io: {}", e.kind())),
            Err(_) => return Err("reply timeout".into()),
        }
    }
}
