//! One lease connection: bytes in, replies out, in request order.
//!
//! The loop alternates two phases. *Answer*: decode every complete frame in the read buffer
//! and encode each reply into one write buffer, flushing after every `max_queued_replies`
//! replies (or 16 KiB) so a client that pipelines a million requests is answered in bounded memory and
//! stops being read while its replies are written (backpressure). *Read*: one `read_buf`,
//! raced against the idle deadline (the shorter first-frame deadline until a complete frame
//! has arrived) and the shutdown token. Leases go to `lease::Leaser` on the connection's home
//! worker; when it waits (for the next tick or the disk), the replies already encoded are
//! flushed first ([`Waits`]) and later requests stay queued behind it, so order holds without
//! spinning a core. HELLO negotiates the version: version 2 adds BULK_LEASE, answered with the
//! runs the leaser takes from every worker of the process.
//!
//! Generic over the byte stream so the fuzz target and unit tests drive it through an
//! in-memory duplex pipe.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use snowlease_proto::wire::{self, goaway, ErrorCode, Request, Response, Run, Welcome, WorkerSet};

use crate::lease::{LeaseError, Waits};
use crate::metrics::{CoreMetrics, Outcome, Wait};
use crate::shared::Shared;

/// Room kept free in the read buffer before each read. An idle connection holds only the
/// first, small reservation; a busy one reads up to 4 KiB (315 LEASE frames) per syscall.
const FIRST_READ: usize = 256;
const READ_CHUNK: usize = 4096;
/// Replies encoded before a flush, whatever `max_queued_replies` says: bounds what a client
/// that stops reading pins in user memory (its ERROR replies are 2.6x the size of LEASED).
const FLUSH_BYTES: usize = 16 * 1024;
/// Write buffer a quiet connection may keep: a few replies' worth.
const KEEP_WRITE: usize = 1024;
/// How long a connection closed for a protocol error keeps reading (and discarding) after its
/// last frame, so the kernel does not reset it and lose the ERROR frame.
const LINGER: Duration = Duration::from_millis(500);

/// What to do after answering a frame.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Flush what is queued, then close.
    Close,
}

/// Serves one connection until the peer closes, a protocol error, the idle timeout or
/// shutdown. Never panics on anything the peer sends.
pub async fn serve<S>(
    stream: S,
    shared: &Shared,
    metrics: &CoreMetrics,
    shutdown: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn {
        stream,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        shared,
        metrics,
        authenticated: shared.token.is_none(),
        version: wire::VERSION,
        home: shared.leaser.assign_home(),
    };
    if let Err(e) = conn.run(shutdown).await {
        tracing::debug!(error = %e, "connection ended with an I/O error");
    }
}

struct Conn<'a, S> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    shared: &'a Shared,
    metrics: &'a CoreMetrics,
    /// False until a HELLO with the right token, when the server requires one.
    authenticated: bool,
    /// The negotiated protocol version: 1 until a HELLO asks for more.
    version: u16,
    /// Index of the worker LEASE is answered from, and BULK_LEASE starts at.
    home: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<'_, S> {
    async fn run(&mut self, shutdown: &CancellationToken) -> io::Result<()> {
        let idle = self.shared.config.idle_timeout;
        let first_frame = self.shared.config.first_frame_timeout.map(|t| t.min(idle));
        let mut deadline = Instant::now() + first_frame.unwrap_or(idle);
        let mut heard = false;
        // Grown to READ_CHUNK only after a read fills the buffer: an idle or lightly used
        // connection keeps 256 bytes (10,000 idle connections: 61.8 -> 24.4 MiB measured).
        let mut room = FIRST_READ;
        loop {
            let (answered, flow) = self.answer_buffered().await?;
            if flow == Flow::Close {
                self.flush().await?;
                return self.linger_close().await;
            }
            if answered > 0 {
                deadline = Instant::now() + idle;
                heard = true;
            }
            self.flush().await?;
            if room == FIRST_READ {
                self.shrink_after_burst();
            }

            if self.rbuf.capacity() - self.rbuf.len() < FIRST_READ {
                self.rbuf.reserve(room);
            }
            let free = self.rbuf.capacity() - self.rbuf.len();
            let n = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return self.go_away(goaway::SHUTDOWN).await,
                _ = tokio::time::sleep_until(deadline) => {
                    if !heard && first_frame.is_some() {
                        self.metrics.first_frame_timed_out();
                    }
                    return self.go_away(goaway::IDLE_TIMEOUT).await;
                }
                read = self.stream.read_buf(&mut self.rbuf) => read?,
            };
            if n == 0 {
                // Peer closed; a partial frame left in the buffer can never complete.
                return Ok(());
            }
            room = if n >= free { READ_CHUNK } else { FIRST_READ };
        }
    }

    /// Gives back buffers grown for a burst once the connection is quiet again (its last read
    /// did not fill the buffer), so a connection that once pipelined a thousand requests
    /// costs what an idle one does: 16,384 connections that each had a burst would otherwise
    /// keep ~27 KiB apiece, over 400 MiB. A steady pipeliner keeps filling its reads and
    /// keeps its buffers; a one-request-at-a-time client never grows them.
    fn shrink_after_burst(&mut self) {
        if self.wbuf.is_empty() && self.wbuf.capacity() > KEEP_WRITE {
            self.wbuf = BytesMut::new();
        }
        if self.rbuf.is_empty() {
            // Reclaims the consumed front of the allocation, so `capacity` is its full size.
            self.rbuf.reserve(FIRST_READ);
            if self.rbuf.capacity() > 2 * FIRST_READ {
                self.rbuf = BytesMut::with_capacity(FIRST_READ);
            }
        }
    }

    /// Answers every complete frame in the read buffer. Returns how many were answered.
    async fn answer_buffered(&mut self) -> io::Result<(usize, Flow)> {
        let batch = self.shared.config.max_queued_replies;
        let mut answered = 0;
        loop {
            let request = match wire::decode_request(&mut self.rbuf) {
                Ok(Some(r)) => r,
                Ok(None) => return Ok((answered, Flow::Continue)),
                Err(e) => {
                    self.error(0, ErrorCode::MALFORMED, &e.to_string());
                    return Ok((answered, Flow::Close));
                }
            };
            answered += 1;
            if self.answer(request).await? == Flow::Close {
                return Ok((answered, Flow::Close));
            }
            if answered % batch == 0 || self.wbuf.len() >= FLUSH_BYTES {
                self.flush().await?;
            }
        }
    }

    async fn answer(&mut self, request: Request) -> io::Result<Flow> {
        if !self.authenticated {
            return Ok(self.authenticate(&request));
        }
        if request.min_version() > self.version {
            self.error(
                0,
                ErrorCode::MALFORMED,
                &format!(
                    "this request needs protocol version {}; this connection speaks version {} (send HELLO with version {} first)",
                    request.min_version(),
                    self.version,
                    request.min_version()
                ),
            );
            return Ok(Flow::Close);
        }
        match request {
            Request::Hello { version, token: _ } => Ok(self.hello(version)),
            Request::Lease { request_id, count } => self.lease(request_id, count).await,
            Request::BulkLease { request_id, count } => self.bulk(request_id, count).await,
            Request::Ping { nonce } => {
                Response::Pong { nonce }.encode(&mut self.wbuf);
                Ok(Flow::Continue)
            }
        }
    }

    /// The first frame when a token is required: HELLO with the token, or UNAUTHORIZED and
    /// close. The token is never logged or echoed.
    fn authenticate(&mut self, request: &Request) -> Flow {
        let ok = match (request, &self.shared.token) {
            (Request::Hello { token, .. }, Some(store)) => store.check(token),
            _ => false,
        };
        if !ok {
            let message = match request {
                Request::Hello { .. } => "wrong token",
                _ => "this server requires HELLO with a token as the first frame",
            };
            self.error(0, ErrorCode::UNAUTHORIZED, message);
            return Flow::Close;
        }
        self.authenticated = true;
        match request {
            Request::Hello { version, .. } => self.hello(*version),
            _ => Flow::Close,
        }
    }

    /// Answers HELLO with WELCOME in the highest version both sides speak.
    fn hello(&mut self, version: u16) -> Flow {
        if version < wire::VERSION {
            // A client below the lowest version needs to learn that lowest version.
            self.error(
                0,
                ErrorCode::UNSUPPORTED_VERSION,
                &format!(
                    "version {version} not supported; this server speaks {}",
                    wire::VERSION
                ),
            );
            return Flow::Close;
        }
        self.version = version.min(wire::MAX_VERSION);
        let leaser = &self.shared.leaser;
        let layout = leaser.first().layout();
        let welcome = Welcome::announcing(
            self.version,
            leaser.workers()[self.home].worker(),
            &layout,
            snowlease_proto::layout::unix_ms_now(),
        );
        let response = if self.version >= wire::VERSION_2 {
            Response::WelcomeV2 {
                welcome,
                workers: WorkerSet {
                    first_worker: leaser.first().worker(),
                    worker_count: leaser.workers().len() as u16,
                    max_bulk: wire::MAX_BULK,
                },
            }
        } else {
            Response::Welcome(welcome)
        };
        response.encode(&mut self.wbuf);
        Flow::Continue
    }

    async fn lease(&mut self, request_id: u32, count: u32) -> io::Result<Flow> {
        let max = self.shared.leaser.first().layout().max_lease();
        if count == 0 || count > max {
            self.metrics.lease(Outcome::Invalid, 0);
            self.error(
                request_id,
                ErrorCode::INVALID_COUNT,
                &format!("lease count {count} is outside 1..={max}"),
            );
            return Ok(Flow::Continue);
        }
        let shared = self.shared;
        match shared.leaser.lease(self.home, count, self).await {
            Ok(lease) => {
                let outcome = if lease.count == count {
                    Outcome::Full
                } else {
                    Outcome::Partial
                };
                self.metrics
                    .lease_from(outcome, self.home, u64::from(lease.count));
                wire::encode_leased(&mut self.wbuf, request_id, lease.first_id, lease.count);
                Ok(Flow::Continue)
            }
            Err(e) => self.refused(request_id, e),
        }
    }

    async fn bulk(&mut self, request_id: u32, count: u32) -> io::Result<Flow> {
        if count == 0 || count > wire::MAX_BULK {
            self.metrics.lease(Outcome::Invalid, 0);
            self.error(
                request_id,
                ErrorCode::INVALID_COUNT,
                &format!("bulk lease count {count} is outside 1..={}", wire::MAX_BULK),
            );
            return Ok(Flow::Continue);
        }
        let shared = self.shared;
        match shared.leaser.bulk(self.home, count, self).await {
            Ok(taken) => {
                let mut total = 0u64;
                let runs: Vec<Run> = taken
                    .iter()
                    .map(|(w, run)| {
                        total += u64::from(run.count);
                        self.metrics.issued(*w, u64::from(run.count));
                        Run {
                            first_id: run.first_id,
                            count: run.count,
                        }
                    })
                    .collect();
                let outcome = if total == u64::from(count) {
                    Outcome::Full
                } else {
                    Outcome::Partial
                };
                self.metrics.lease_from(outcome, self.home, 0);
                wire::encode_bulk_leased(&mut self.wbuf, request_id, &runs);
                Ok(Flow::Continue)
            }
            Err(e) => self.refused(request_id, e),
        }
    }

    /// Answers a lease the leaser could not grant: UNAVAILABLE, connection kept.
    fn refused(&mut self, request_id: u32, e: LeaseError) -> io::Result<Flow> {
        if let LeaseError::Io(e) = e {
            return Err(e);
        }
        self.metrics.lease(Outcome::Unavailable, 0);
        self.error(request_id, ErrorCode::UNAVAILABLE, &e.to_string());
        Ok(Flow::Continue)
    }

    fn error(&mut self, request_id: u32, code: ErrorCode, message: &str) {
        self.metrics.frame_error(code);
        wire::encode_error(&mut self.wbuf, request_id, code, message);
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let timeout = self.shared.config.write_timeout;
        // The flush is a no-op on TCP; under TLS it pushes out records rustls still holds
        // when the socket was full, which would otherwise wait for the next write.
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer did not read its replies within the write timeout",
                ))
            }
        }
        self.wbuf.clear();
        Ok(())
    }

    async fn go_away(&mut self, reason: u16) -> io::Result<()> {
        Response::GoAway { reason }.encode(&mut self.wbuf);
        self.flush().await?;
        self.linger_close().await
    }

    /// Half-closes, then reads and discards until the peer closes or [`LINGER`] passes, so
    /// replies already sent are not destroyed by a reset: closing a socket with unread input
    /// makes the kernel send RST, and the peer's kernel then drops replies it has not read.
    async fn linger_close(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + LINGER;
        // Bounded: under TLS the close_notify is a write, which a peer that does not read
        // would block.
        if let Ok(result) = tokio::time::timeout_at(deadline, self.stream.shutdown()).await {
            result?;
        }
        let mut discard = [0u8; 512];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut discard)).await {
                Ok(Ok(n)) if n > 0 => continue,
                _ => return Ok(()),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Waits for Conn<'_, S> {
    /// Counts the wait and sends what is already encoded, so a waiting lease never holds back
    /// the replies before it.
    async fn before_wait(&mut self, why: Wait) -> io::Result<()> {
        self.metrics.waited(why);
        self.flush().await
    }
}

/// Sends OVERLOADED to a connection turned away at the cap and closes it gently (half-close,
/// brief linger), so the frame is not lost to a reset if the client already sent something.
pub async fn turn_away<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, frame: &[u8]) {
    let linger = Duration::from_millis(200);
    let _ = tokio::time::timeout(linger, async {
        stream.write_all(frame).await?;
        stream.flush().await
    })
    .await;
    let _ = tokio::time::timeout(linger, stream.shutdown()).await;
    let mut discard = [0u8; 256];
    let _ = tokio::time::timeout(linger, async {
        while let Ok(n) = stream.read(&mut discard).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// The frame sent to a connection turned away at the per-peer cap.
pub fn peer_overloaded_frame(ip: IpAddr, max: usize) -> BytesMut {
    let mut b = BytesMut::new();
    wire::encode_error(
        &mut b,
        0,
        ErrorCode::OVERLOADED,
        &format!("{ip} is at the limit of {max} connections per peer (--max-connections-per-peer); retry later or elsewhere"),
    );
    b
}

/// The frame sent to a connection turned away at the cap.
pub fn overloaded_frame(max: usize) -> BytesMut {
    let mut b = BytesMut::new();
    wire::encode_error(
        &mut b,
        0,
        ErrorCode::OVERLOADED,
        &format!("server is at its limit of {max} connections; retry later or elsewhere"),
    );
    b
}
