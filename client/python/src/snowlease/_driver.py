"""The background driver: one asyncio event loop on one daemon thread per client, owning every
connection. Callers never touch the network.

Each pass (:meth:`Driver._maintain`, run after every batch of socket events, on a caller's
poke, and on a timer) it

1. drops connections whose greeting or oldest LEASE is past its timeout, and marks
   connections *lagging* whose oldest LEASE is older than their usual latency allows
   (``_policy.Latency``): their requests stop counting as IDs on the way, a caller's direct
   lease on them is re-sent elsewhere, and their name is re-resolved early;
2. re-resolves names (periodically, early while degraded, and before a lost address is
   reconnected) and reconnects lost servers whose jittered backoff has passed;
3. sends callers' direct leases, then, if IDs on hand plus on the way are below the low mark,
   pipelines maximal LEASEs to the least-busy healthy connections (at most ``max_in_flight``
   each) until the rate-sized target is covered (``_policy.plan_refill``);
4. writes each connection's requests in one ``write`` and wakes waiting callers.

Frames are verified as they arrive (``_policy.check_welcome`` / ``check_leased``); a violation
drops the connection and its IDs never reach the buffer. All connection state lives on the
loop thread; the only lock it shares with callers is the buffer's, held for a few
instructions at a time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, List, Optional, Tuple

from . import _policy
from ._buffer import Buffer
from .config import ClientConfig, Target
from .errors import (
    ClosedError,
    NetworkError,
    ProtocolError,
    ResolveError,
    ServerError,
    TLSError,
    Unauthorized,
)
from .layout import Layout
from .wire import (
    VERSION,
    BulkLeased,
    Error,
    ErrorCode,
    FrameReader,
    GoAway,
    GoAwayReason,
    Hello,
    Leased,
    Opcode,
    Pong,
    Response,
    Welcome,
    encode,
)

log = logging.getLogger("snowlease")

_LEASE = struct.Struct(">IBII")


class DirectLease:
    """A caller's ``lease(n)`` that the buffer could not serve, sent straight to a server.

    Exactly one of ``deliver`` / ``fail`` / ``abandon`` wins (under a lock): a range the
    caller gave up on goes to the buffer instead, and a range delivered to a caller that then
    gave up is handed back by ``abandon`` so it can be buffered; no ID is lost or given twice.
    """

    PENDING, DELIVERED, FAILED, CLAIMED, ABANDONED = range(5)

    def __init__(self, count: int, on_done: Callable[[], None]) -> None:
        self.count = count
        self._on_done = on_done
        self._lock = threading.Lock()
        self.state = DirectLease.PENDING
        self.result: Optional[Tuple[int, int]] = None
        self.error: Optional[BaseException] = None
        #: Already re-sent on another connection because the first one lagged.
        self.hedged = False

    @property
    def pending(self) -> bool:
        return self.state == DirectLease.PENDING

    def deliver(self, first: int, count: int) -> bool:
        """The driver's range; False if the caller is gone (buffer it instead)."""
        with self._lock:
            if self.state != DirectLease.PENDING:
                return False
            self.state, self.result = DirectLease.DELIVERED, (first, count)
        self._on_done()
        return True

    def fail(self, error: BaseException) -> None:
        """Ends the wait with ``error`` (the client closed)."""
        with self._lock:
            if self.state != DirectLease.PENDING:
                return
            self.state, self.error = DirectLease.FAILED, error
        self._on_done()

    def claim(self) -> Optional[Tuple[int, int]]:
        """The caller takes the result: the range, ``None`` if still pending; raises the
        error if the lease failed."""
        with self._lock:
            if self.state == DirectLease.DELIVERED:
                self.state = DirectLease.CLAIMED
                return self.result
            if self.state == DirectLease.FAILED and self.error is not None:
                raise self.error
            return None

    def abandon(self) -> Optional[Tuple[int, int]]:
        """The caller gives up. Returns a range that was delivered but not claimed, which the
        caller must use or hand back to the buffer."""
        with self._lock:
            state, self.state = self.state, DirectLease.ABANDONED
            if state == DirectLease.DELIVERED:
                return self.result
            if state in (DirectLease.CLAIMED, DirectLease.FAILED):
                self.state = state
            return None


class _Outstanding:
    __slots__ = ("request_id", "count", "sent", "dest")

    def __init__(
        self, request_id: int, count: int, sent: float, dest: Optional[DirectLease]
    ) -> None:
        self.request_id = request_id
        self.count = count
        self.sent = sent
        self.dest = dest


class _Endpoint:
    def __init__(self, target: Target, now: float) -> None:
        self.target = target
        self.resolving = False
        self.resolved_at: Optional[float] = None
        self.next_resolve = now
        self.failures = 0
        #: A connection of this name was lost or lagged since the name last looked healthy.
        self.degraded = False
        self.degraded_attempts = 0
        #: Most addresses the name ever resolved to, and since when it resolves to fewer.
        self.known_max = 0
        self.below_since: Optional[float] = None


class _Slot:
    """One server address and its connection, if any."""

    def __init__(self, host: str, port: int, endpoint: int, now: float) -> None:
        self.host, self.port = host, port
        self.addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.endpoint = endpoint
        self.listed = True
        self.failures = 0
        self.last_error: Optional[BaseException] = None
        self.retry_at = now
        self.conn: Optional[_Conn] = None


class _Conn(asyncio.Protocol):
    """One connection: bytes in and out; every decision is the driver's."""

    def __init__(self, driver: Driver, slot: _Slot, now: float) -> None:
        self.driver = driver
        self.slot = slot
        self.transport: Optional[asyncio.Transport] = None
        self.task: Optional["asyncio.Task[None]"] = None
        self.reader = FrameReader()
        self.dead = False
        self.ready = False
        self.worker = -1
        self.max_lease = 1
        self.draining: Optional[int] = None
        self.deadline = now + driver.config.connect_timeout
        self.outstanding: Deque[_Outstanding] = deque()
        self.buffered_ids = 0
        self.next_request_id = 1
        self.latency = _policy.Latency()
        #: Slowest LEASE reply seen (seconds): a diagnostic the bench reports.
        self.worst_reply = 0.0
        self.lagging = False
        self.wbuf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.dead:
            transport.abort()
            return
        # HELLO first: a server with a token requires it, and WELCOME tells the layout.
        transport.write(self.driver.hello)

    def data_received(self, data: bytes) -> None:
        if self.dead:
            return
        try:
            frames = self.reader.feed(data)
        except ProtocolError as e:
            self.driver.fail(self, ProtocolError(f"protocol violation by {self.slot.addr}: {e}",
                                                 addr=self.slot.addr))
            return
        for frame in frames:
            if self.dead:
                break
            self.driver.on_frame(self, frame)
        self.driver.schedule_soon()

    def eof_received(self) -> Optional[bool]:
        return False

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.dead:
            return
        addr = self.slot.addr
        err: BaseException
        if exc is None:
            err = NetworkError(f"{addr} closed the connection", addr=addr)
        elif isinstance(exc, ssl.SSLError) and not self.ready:
            err = TLSError(f"TLS with {addr} failed: {exc}", addr=addr)
        else:
            err = NetworkError(f"connection to {addr} failed: {exc}", addr=addr)
        self.driver.fail(self, err)


class Driver:
    """See the module docs. Methods without ``_threadsafe`` run on the loop thread."""

    def __init__(
        self,
        config: ClientConfig,
        targets: List[Target],
        ssl_context: Optional[ssl.SSLContext],
        buf: Buffer,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self.buf = buf
        self.loop = loop
        self.hello = encode(Hello(VERSION, config.token))
        now = time.monotonic()
        self.endpoints: List[_Endpoint] = []
        self.slots: List[_Slot] = []
        for target in targets:
            self.endpoints.append(_Endpoint(target, now))
            if target.is_ip and not any(
                (s.host, s.port) == (target.host, target.port) for s in self.slots
            ):
                self.slots.append(_Slot(target.host, target.port, len(self.endpoints) - 1, now))
        self.layout: Optional[Layout] = None
        #: End of the last range accepted from each worker id, across reconnects.
        self.last_end: Dict[int, int] = {}
        self.rate = _policy.RateEstimator(now)
        self.drawn_seen = 0
        self.direct: Deque[DirectLease] = deque()
        self.cursor = 0
        self.delivered = False
        self.closed = False
        #: Expiry and rate period: max_age / 8 within 1..100 ms, so ranges are dropped
        #: between 7/8 and all of max_age.
        self.tick = min(max(config.max_age / 8, 0.001), 0.100)
        self.next_tick = now
        self._soon: Optional[asyncio.Handle] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._tasks: List["asyncio.Task[None]"] = []

    # -- entry points from other threads ------------------------------------------------

    def poke_threadsafe(self) -> None:
        """A caller found the buffer low or empty."""
        try:
            self.loop.call_soon_threadsafe(self.schedule_soon)
        except RuntimeError:  # the loop is closed: the client is closed
            pass

    def submit_threadsafe(self, lease: DirectLease) -> None:
        """A caller's direct lease."""
        def add() -> None:
            if self.closed:
                lease.fail(ClosedError("the client is closed"))
                return
            self.direct.append(lease)
            self.schedule_soon()

        try:
            self.loop.call_soon_threadsafe(add)
        except RuntimeError:
            lease.fail(ClosedError("the client is closed"))

    # -- scheduling ----------------------------------------------------------------------

    def start(self) -> None:
        self.buf.poke = self.poke_threadsafe
        self._maintain()

    def schedule_soon(self) -> None:
        if self._soon is None and not self.closed:
            self._soon = self.loop.call_soon(self._run_soon)

    def _run_soon(self) -> None:
        self._soon = None
        self._maintain()

    def _maintain(self) -> None:
        if self.closed:
            return
        now = time.monotonic()
        self._check_timeouts(now)
        if now >= self.next_tick:
            self.next_tick = now + self.tick
        self._resolve_and_connect(now)
        self._send_direct(now)
        self._refill(now)
        for slot in self.slots:
            c = slot.conn
            if c is not None and c.wbuf and c.transport is not None and not c.dead:
                c.transport.write(bytes(c.wbuf))
                c.wbuf.clear()
        if self.delivered:
            self.delivered = False
            with self.buf.lock:
                self.buf.notify_locked()
        self._arm_timer(now)

    def _arm_timer(self, now: float) -> None:
        when = self.next_tick
        for slot in self.slots:
            c = slot.conn
            if c is None:
                when = min(when, slot.retry_at)
            elif not c.ready:
                when = min(when, c.deadline)
            elif c.outstanding:
                sent = c.outstanding[0].sent
                when = min(when, sent + self.config.request_timeout)
                if not c.lagging:
                    when = min(when, sent + c.latency.lag_limit(self.config.request_timeout))
        for ep in self.endpoints:
            if not ep.target.is_ip and not ep.resolving:
                when = min(when, ep.next_resolve)
        when = max(when, now + 0.0005)
        if self._timer is not None:
            if abs(self._timer.when() - self._loop_time(when)) < 0.0005:
                return
            self._timer.cancel()
        self._timer = self.loop.call_at(self._loop_time(when), self._on_timer)

    def _loop_time(self, monotonic: float) -> float:
        # asyncio's clock is time.monotonic() in CPython; converting keeps that explicit.
        return self.loop.time() + (monotonic - time.monotonic())

    def _on_timer(self) -> None:
        self._timer = None
        self._maintain()

    # -- connections ----------------------------------------------------------------------

    def _connect(self, slot: _Slot, now: float) -> None:
        conn = _Conn(self, slot, now)
        slot.conn = conn
        conn.task = self.loop.create_task(self._open(conn))

    async def _open(self, conn: _Conn) -> None:
        slot, cfg = conn.slot, self.config
        ep = self.endpoints[slot.endpoint]
        ctx, name, handshake = self.ssl_context, None, None
        if ctx is not None:
            tls = cfg.tls
            name = (tls.server_name if tls is not None else None) or ep.target.host
            handshake = cfg.connect_timeout
        try:
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: conn, slot.host, slot.port, ssl=ctx, server_hostname=name,
                    ssl_handshake_timeout=handshake),
                cfg.connect_timeout,
            )
        except asyncio.CancelledError:
            raise
        except ssl.SSLError as e:
            self.fail(conn, TLSError(f"TLS with {slot.addr} failed: {e}", addr=slot.addr))
        except asyncio.TimeoutError:
            self.fail(conn, NetworkError(
                f"connecting to {slot.addr} (TCP, TLS and HELLO/WELCOME) took longer than "
                f"{cfg.connect_timeout} s", addr=slot.addr))
        except OSError as e:
            self.fail(conn, NetworkError(f"cannot connect to {slot.addr}: {e}", addr=slot.addr))

    def fail(self, conn: _Conn, why: BaseException) -> None:
        """Drops a connection, hands its unanswered direct leases to other servers, and
        schedules a reconnect after a jittered backoff."""
        if conn.dead:
            return
        conn.dead = True
        if conn.transport is not None:
            conn.transport.abort()
        if conn.task is not None and not conn.task.done():
            conn.task.cancel()
        now = time.monotonic()
        slot = conn.slot
        if slot.conn is conn:
            slot.conn = None
        for o in reversed(conn.outstanding):
            if o.dest is not None and o.dest.pending:
                self.direct.appendleft(o.dest)
        conn.outstanding.clear()
        delay = self.config.backoff.delay(slot.failures)
        slot.failures += 1
        slot.retry_at = now + delay
        if conn.ready:
            log.warning("snowlease: connection to %s lost: %s; retry in %.3f s", slot.addr, why,
                        delay)
        else:
            log.log(logging.WARNING if slot.failures == 1 else logging.DEBUG,
                    "snowlease: cannot connect to %s: %s; retry in %.3f s", slot.addr, why, delay)
        slot.last_error = why
        with self.buf.lock:
            self.buf.last_error = why
        self._mark_degraded(slot.endpoint, now)
        if not slot.listed and slot in self.slots:
            self.slots.remove(slot)
        self._update_fatal()
        self.schedule_soon()

    def _update_fatal(self) -> None:
        """Publishes a fatal error while no server is usable and every one refused us for a
        reason retrying cannot fix, so calls fail fast on a wrong token or TLS trust."""
        all_resolved = all(e.target.is_ip or e.resolved_at is not None for e in self.endpoints)
        fatal: Optional[BaseException] = None
        if all_resolved and self.slots and all(
            (s.conn is None or not s.conn.ready)
            and s.last_error is not None
            and not getattr(s.last_error, "retryable", True)
            for s in self.slots
        ):
            fatal = self.slots[0].last_error
        with self.buf.lock:
            changed = fatal is not self.buf.fatal
            self.buf.fatal = fatal
            if changed:
                self.buf.notify_locked()

    def _check_timeouts(self, now: float) -> None:
        ceiling = self.config.request_timeout
        for slot in list(self.slots):
            c = slot.conn
            if c is None:
                continue
            if not c.ready:
                if now >= c.deadline:
                    self.fail(c, NetworkError(
                        f"connecting to {slot.addr} (TCP, TLS and HELLO/WELCOME) took longer "
                        f"than {self.config.connect_timeout} s", addr=slot.addr))
                continue
            if not c.outstanding:
                c.lagging = False
                continue
            age = now - c.outstanding[0].sent
            if age > ceiling:
                self.fail(c, NetworkError(
                    f"{slot.addr} did not answer a LEASE within {ceiling} s", addr=slot.addr))
                continue
            lagging = age > c.latency.lag_limit(ceiling)
            if lagging and not c.lagging:
                log.info("snowlease: %s has not answered for %.1f ms; asking other servers",
                         slot.addr, age * 1000)
                self._mark_degraded(slot.endpoint, now)
                for o in c.outstanding:
                    if o.dest is not None and o.dest.pending and not o.dest.hedged:
                        o.dest.hedged = True
                        self.direct.append(o.dest)
            c.lagging = lagging

    # -- names ----------------------------------------------------------------------------

    def _mark_degraded(self, index: int, now: float) -> None:
        ep = self.endpoints[index]
        if ep.target.is_ip:
            return
        ep.degraded = True
        soon = now + _policy.degraded_resolve_delay(
            ep.degraded_attempts, self.config.backoff.initial)
        ep.next_resolve = min(ep.next_resolve, soon)

    def _resolve_and_connect(self, now: float) -> None:
        for i, ep in enumerate(self.endpoints):
            if ep.target.is_ip or ep.resolving:
                continue
            # A slot due to reconnect wants addresses newer than its failure.
            stale_for_slot = any(
                s.endpoint == i and s.conn is None and s.retry_at <= now
                and (ep.resolved_at is None or ep.resolved_at < s.retry_at)
                for s in self.slots
            )
            if now >= ep.next_resolve or stale_for_slot:
                ep.resolving = True
                self._tasks.append(self.loop.create_task(self._resolve(i)))
        for slot in list(self.slots):
            if slot.conn is not None or slot.retry_at > now:
                continue
            ep = self.endpoints[slot.endpoint]
            fresh = ep.target.is_ip or (
                ep.resolved_at is not None and ep.resolved_at >= slot.retry_at)
            if fresh:
                self._connect(slot, now)

    async def _resolve(self, index: int) -> None:
        target = self.endpoints[index].target
        result: object
        try:
            infos = await asyncio.wait_for(
                self.loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM),
                self.config.connect_timeout,
            )
            addrs: List[Tuple[str, int]] = []
            for _family, _type, _proto, _name, sockaddr in infos:
                a = (str(sockaddr[0]), int(sockaddr[1]))
                if a not in addrs:
                    addrs.append(a)
            result = addrs if addrs else ResolveError(f"{target} resolved to no addresses")
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            result = ResolveError(
                f"cannot resolve {target}: no answer within {self.config.connect_timeout} s")
        except OSError as e:
            result = ResolveError(f"cannot resolve {target}: {e}")
        finally:
            self._tasks = [t for t in self._tasks if not t.done()]
        if not self.closed:
            self._on_resolved(index, result)
            self.schedule_soon()

    def _on_resolved(self, index: int, result: object) -> None:
        now = time.monotonic()
        ep = self.endpoints[index]
        ep.resolving = False
        ep.resolved_at = now
        if not isinstance(result, list):
            # Keep the addresses we have: a DNS blip should not cut working servers off.
            assert isinstance(result, BaseException)
            delay = self.config.backoff.delay(ep.failures)
            ep.failures += 1
            ep.next_resolve = now + delay
            log.warning("snowlease: %s; retry in %.3f s", result, delay)
            with self.buf.lock:
                self.buf.last_error = result
            return
        addrs: List[Tuple[str, int]] = result
        ep.failures = 0
        for s in self.slots:
            if s.endpoint == index:
                s.listed = (s.host, s.port) in addrs
        self.slots = [s for s in self.slots if s.listed or s.endpoint != index or s.conn]
        for host, port in addrs:
            if not any((s.host, s.port) == (host, port) for s in self.slots):
                log.debug("snowlease: new server address %s:%s", host, port)
                self.slots.append(_Slot(host, port, index, now))
        self._schedule_next_resolve(ep, index, len(addrs), now)

    def _schedule_next_resolve(self, ep: _Endpoint, index: int, n: int, now: float) -> None:
        if n >= ep.known_max:
            ep.known_max, ep.below_since = n, None
        elif ep.below_since is None:
            ep.below_since = now
        elif now - ep.below_since > _policy.DEGRADED_FORGET:
            ep.known_max, ep.below_since = n, None
        healthy = all(
            s.conn is not None and s.conn.ready and not s.conn.lagging
            for s in self.slots if s.endpoint == index
        )
        if healthy:
            ep.degraded = False
        if ep.degraded or n < ep.known_max:
            ep.next_resolve = now + _policy.degraded_resolve_delay(
                ep.degraded_attempts, self.config.backoff.initial)
            ep.degraded_attempts += 1
        else:
            ep.degraded_attempts = 0
            ep.next_resolve = now + self.config.resolve_interval

    # -- frames ---------------------------------------------------------------------------

    def on_frame(self, conn: _Conn, frame: Response) -> None:
        """Applies one frame; a violation drops the connection."""
        addr = conn.slot.addr
        try:
            if isinstance(frame, Leased):
                self._on_leased(conn, frame)
                if conn.draining is not None and not conn.outstanding:
                    self._goaway_done(conn)
            elif isinstance(frame, Welcome):
                self._on_welcome(conn, frame)
            elif isinstance(frame, Pong):
                pass
            elif isinstance(frame, GoAway):
                conn.draining = frame.reason
                if not conn.outstanding:
                    self._goaway_done(conn)
            elif isinstance(frame, Error):
                info = ErrorCode.info(frame.code)
                cls = Unauthorized if frame.code == ErrorCode.UNAUTHORIZED else ServerError
                self.fail(conn, cls(frame.code, frame.message, addr=addr,
                                    retryable=info.retryable))
            elif isinstance(frame, BulkLeased):
                raise ProtocolError("BULK_LEASED on a version-1 connection")
            else:  # pragma: no cover - FrameReader yields only server frames
                raise ProtocolError(f"unexpected frame {frame!r}")
        except ProtocolError as e:
            self.fail(conn, ProtocolError(f"protocol violation by {addr}: {e}", addr=addr))

    def _goaway_done(self, conn: _Conn) -> None:
        reason = conn.draining if conn.draining is not None else 0
        self.fail(conn, NetworkError(
            f"{conn.slot.addr} sent GOAWAY {GoAwayReason.name(reason)}", addr=conn.slot.addr))

    def _on_welcome(self, conn: _Conn, w: Welcome) -> None:
        if conn.ready:
            raise ProtocolError("second WELCOME on one connection")
        layout = _policy.check_welcome(w, self.layout)
        for s in self.slots:
            other = s.conn
            if other is not None and other is not conn and other.ready \
                    and other.worker == w.worker_id:
                raise ProtocolError(
                    f"worker {w.worker_id} is already connected at {s.addr}; two addresses "
                    "reach the same server, or two servers share a worker id")
        conn.ready, conn.worker, conn.max_lease = True, w.worker_id, w.max_lease
        slot = conn.slot
        slot.failures, slot.last_error = 0, None
        log.info("snowlease: connected to %s, worker %d, layout %s", slot.addr, w.worker_id,
                 layout)
        if self.layout is None:
            self.layout = layout
        with self.buf.lock:
            self.buf.layout = self.layout
            self.buf.fatal = None
            self.buf.notify_locked()

    def _on_leased(self, conn: _Conn, reply: Leased) -> None:
        if not conn.ready or self.layout is None:
            raise ProtocolError("LEASED before WELCOME")
        front = conn.outstanding[0] if conn.outstanding else None
        asked = (front.request_id, front.count) if front is not None else None
        end = _policy.check_leased(
            self.layout, conn.worker, asked, self.last_end.get(conn.worker), reply)
        assert front is not None
        conn.outstanding.popleft()
        now = time.monotonic()
        took = now - front.sent
        conn.latency.sample(took)
        if took > conn.worst_reply:
            conn.worst_reply = took
        if front.dest is None:
            conn.buffered_ids -= front.count
        self.last_end[conn.worker] = end
        if front.dest is not None and front.dest.deliver(reply.first_id, reply.count):
            return
        with self.buf.lock:
            self.buf.push_locked(reply.first_id, end, now)
        self.delivered = True

    # -- sending --------------------------------------------------------------------------

    def _live(self) -> List[_Conn]:
        return [s.conn for s in self.slots if s.conn is not None and not s.conn.dead]

    def _loads(self, conns: List[_Conn]) -> List[_policy.ConnLoad]:
        return [
            _policy.ConnLoad(
                usable=c.ready and c.draining is None,
                lagging=c.lagging,
                outstanding=len(c.outstanding),
                buffered_ids=c.buffered_ids,
                max_lease=c.max_lease,
            )
            for c in conns
        ]

    def _send_lease(self, conn: _Conn, count: int, dest: Optional[DirectLease],
                    now: float) -> int:
        count = max(1, min(count, conn.max_lease))
        rid = conn.next_request_id
        conn.next_request_id = rid % 0xFFFF_FFFF + 1  # 1..=2^32-1: 0 marks connection errors
        conn.wbuf += _LEASE.pack(9, Opcode.LEASE, rid, count)
        conn.outstanding.append(_Outstanding(rid, count, now, dest))
        if dest is None:
            conn.buffered_ids += count
        return count

    def _send_direct(self, now: float) -> None:
        if not self.direct:
            return
        conns = self._live()
        loads = self._loads(conns)
        while self.direct:
            lease = self.direct[0]
            if not lease.pending:
                self.direct.popleft()
                continue
            index = _policy.pick(loads, self.config.max_in_flight, self.cursor)
            if index is None:
                return
            self.direct.popleft()
            self.cursor = index + 1
            loads[index].outstanding += 1
            self._send_lease(conns[index], lease.count, lease, now)

    def _refill(self, now: float) -> None:
        cutoff = now - (self.config.max_age - self.tick)
        with self.buf.lock:
            self.buf.expire_locked(cutoff)
            available = self.buf.available_locked()
            drawn = self.buf.drawn_locked()
        rate = self.rate.observe(drawn - self.drawn_seen, now)
        self.drawn_seen = drawn
        target = _policy.plan(rate, self.config.low_water, self.config.buffer_capacity)
        conns = self._live()
        sends, wake_below, self.cursor = _policy.plan_refill(
            available, self._loads(conns), target, self.config.buffer_capacity,
            self.config.max_in_flight, self.cursor)
        for index, count in sends:
            self._send_lease(conns[index], count, None, now)
        with self.buf.lock:
            self.buf.arm_locked(wake_below)

    # -- shutdown -------------------------------------------------------------------------

    def close(self) -> None:
        """Closes every connection, fails pending direct leases, empties the buffer."""
        if self.closed:
            return
        self.closed = True
        for handle in (self._soon, self._timer):
            if handle is not None:
                handle.cancel()
        for slot in self.slots:
            c = slot.conn
            if c is not None:
                c.dead = True
                if c.transport is not None:
                    c.transport.abort()
                if c.task is not None:
                    c.task.cancel()
                for o in c.outstanding:
                    if o.dest is not None:
                        self.direct.append(o.dest)
        for t in self._tasks:
            t.cancel()
        closed = ClosedError("the client is closed")
        for lease in self.direct:
            lease.fail(closed)
        self.direct.clear()
        with self.buf.lock:
            self.buf.close_locked(closed)
