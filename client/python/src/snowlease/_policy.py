"""The driver's decisions, kept free of I/O and clocks so every rule has a unit test.

- :func:`check_welcome` and :func:`check_leased` verify what servers send; a failed check
  drops the connection and its IDs are never handed out.
- :class:`RateEstimator` and :func:`plan` size the buffer to the draw rate.
- :class:`Latency` learns each connection's usual reply time; :func:`plan_refill` is the
  refill decision. It counts a connection's outstanding LEASEs as "IDs on the way" only while
  the oldest of them is younger than that connection's lag limit, and never sends to a
  lagging connection, so demand a silent server cannot serve moves to the servers that answer
  (issue 16) instead of waiting out the 2 s request timeout.
- :func:`degraded_resolve_delay` schedules the early re-resolution of a name after a lost or
  silent connection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .errors import ProtocolError
from .layout import Layout
from .wire import VERSION, Leased, Welcome

#: IDs kept on hand, as time at the current draw rate: 100 ms (the Rust client uses 50 ms).
#: Refills start when half of it is left, so a reply has 50 ms to arrive. The Python driver
#: shares the GIL with the callers: each blocking call it makes (select, recv, send) can wait
#: a switch interval (5 ms) for a caller thread drawing flat out. Measured (bench_client.py,
#: server pinned to one core at its 4.096 M IDs/s ceiling): the slowest LEASE reply was
#: 24-48 ms, and callers drew at the ceiling with this horizon. At 1 M IDs/s it is 100,000
#: IDs, well under the 262,144 capacity.
REFILL_HORIZON = 0.100

#: Shortest window turned into a rate sample: 5 ms. The driver may look many times per
#: millisecond while replies stream in; a window of microseconds holding one 4,096-ID take
#: would read as billions per second.
RATE_MIN_WINDOW = 0.005
#: Rate time constant while demand grows: 20 ms, so the estimate reaches 92 % of a new rate
#: (2.5 time constants) before the refill horizon's worth runs out.
RATE_TAU_RISE = 0.020
#: Rate time constant while demand shrinks: 500 ms, so short lulls do not shrink the buffer
#: and a real drop is followed within about a second, before max_age throws IDs away.
RATE_TAU_FALL = 0.500

#: Smallest lag limit: 25 ms. A connection whose oldest LEASE is older than
#: ``max(LAG_FLOOR, srtt + 4 * rttvar)`` is *lagging*: its requests stop counting as IDs on
#: the way and it gets no new ones. 25 ms is half the 50 ms a refill has before the buffer
#: runs dry (REFILL_HORIZON / 2), leaving a healthy server the other half to answer. A busy
#: but healthy server can exceed it (replies of 24-48 ms were measured at one worker's
#: ceiling): that only moves demand to other servers, which is what a saturated server wants.
#: Measured with 2 of 4 servers stopped (bench/silent_servers.py): the worst 250 ms window
#: kept 63 % of the healthy median and the slowest next_id() call took 12 ms.
LAG_FLOOR = 0.025

#: Early re-resolution after a lost or lagging connection starts at the backoff's first step
#: and doubles up to 2 s, so a pod that comes back (same or new address) is found within
#: about 2 s plus a connect, not a ``resolve_interval`` (30 s) later; while degraded that is
#: at most one DNS query per name per 2 s.
DEGRADED_RESOLVE_MAX = 2.0

#: A name that resolves to fewer addresses than it once did stays "degraded" (re-resolved
#: every <= 2 s, hoping the missing pods return) for 10 minutes; after that the smaller set
#: is taken as a scale-down and the periodic interval applies again.
DEGRADED_FORGET = 600.0


def check_welcome(w: Welcome, established: Optional[Layout]) -> Layout:
    """Validates a WELCOME and returns its layout. ``established`` is the layout of the first
    server this client accepted: every server must agree with it, or IDs handed out by one
    client could not all be decoded the same way."""
    if w.version != VERSION:
        raise ProtocolError(
            f"WELCOME speaks version {w.version}, this client speaks {VERSION}"
        )
    try:
        layout = Layout(w.epoch_unix_ms, w.timestamp_bits, w.worker_bits, w.sequence_bits)
    except ValueError as e:
        raise ProtocolError(f"WELCOME announces an invalid layout: {e}") from None
    if w.worker_id > layout.max_worker:
        raise ProtocolError(
            f"WELCOME worker id {w.worker_id} does not fit {w.worker_bits} worker bits"
        )
    if not 1 <= w.max_lease <= layout.max_lease:
        raise ProtocolError(
            f"WELCOME max_lease {w.max_lease} is outside 1..={layout.max_lease}"
        )
    if established is not None and established != layout:
        raise ProtocolError(
            f"layout {layout} differs from {established} announced by an earlier server; "
            "servers behind one client must share a layout"
        )
    return layout


def check_leased(
    layout: Layout,
    worker: int,
    asked: Optional[Tuple[int, int]],
    prev_end: Optional[int],
    reply: Leased,
) -> int:
    """Validates a LEASED from the server announcing ``worker`` and returns the end
    (exclusive) of its range.

    ``asked`` is ``(request_id, count)`` of the oldest outstanding LEASE: replies come in
    request order. The reply may carry fewer IDs than asked but never none or more. The range
    must be IDs of that worker within one tick (so it cannot spill into another worker's IDs),
    and it must start at or above ``prev_end``, the end of the last range accepted from that
    worker on any connection: a range below it means the server's generator went backwards (a
    restart without its state, a duplicated worker id) and its IDs may repeat.
    """
    if asked is None:
        raise ProtocolError(f"LEASED for request {reply.request_id} with no LEASE outstanding")
    request_id, count = asked
    if reply.request_id != request_id:
        raise ProtocolError(
            f"LEASED answers request {reply.request_id}, but the oldest outstanding is "
            f"{request_id} (replies must come in order)"
        )
    if not 1 <= reply.count <= count:
        raise ProtocolError(f"LEASED carries {reply.count} IDs for a LEASE of {count}")
    end = reply.first_id + reply.count
    if end > 1 << 63:
        raise ProtocolError(
            f"range {reply.first_id}+{reply.count} runs past the 63-bit ID space"
        )
    parts = layout.decompose(reply.first_id)
    if parts.worker != worker:
        raise ProtocolError(
            f"range {reply.first_id} belongs to worker {parts.worker}, but the server "
            f"announced worker {worker}"
        )
    if parts.sequence + reply.count > layout.max_lease:
        raise ProtocolError(
            f"range {reply.first_id}+{reply.count} crosses a tick boundary (sequence "
            f"{parts.sequence} + {reply.count} > {layout.max_lease})"
        )
    if prev_end is not None and reply.first_id < prev_end:
        raise ProtocolError(
            f"range starts at {reply.first_id}, below the end {prev_end} of worker {worker}'s "
            "previous range; its IDs could repeat"
        )
    return end


@dataclass(frozen=True)
class Plan:
    """Refill thresholds for one draw rate."""

    #: Below this many IDs (on hand plus on the way) the driver leases more ...
    low_mark: int
    #: ... until on hand plus on the way reaches this.
    fill_to: int


def plan(rate: float, low_water: int, capacity: int) -> Plan:
    """Aims for :data:`REFILL_HORIZON` of IDs at ``rate`` per second, at least ``low_water``
    and at most ``capacity``; refills when half of that is gone. ``low_mark`` is at least 1,
    so an empty buffer with nothing on the way always triggers a lease."""
    if not math.isfinite(rate) or rate < 0:
        rate = 0.0 if math.isnan(rate) or rate < 0 else float(capacity) / REFILL_HORIZON
    horizon = math.ceil(rate * REFILL_HORIZON)
    target = max(min(horizon, capacity), min(low_water, capacity))
    low_mark = max(target // 2, low_water, 1)
    return Plan(low_mark, max(target, low_mark))


class RateEstimator:
    """Draw rate in IDs per second: windows of at least :data:`RATE_MIN_WINDOW` feed an
    exponentially weighted average that rises fast and falls slowly (running dry costs
    callers a round trip; holding a little too much only costs IDs that expire)."""

    def __init__(self, now: float) -> None:
        self.rate = 0.0
        self._start = now
        self._drawn = 0

    def observe(self, drawn: int, now: float) -> float:
        """Records ``drawn`` more IDs taken by ``now``; returns the estimate."""
        self._drawn += max(drawn, 0)
        dt = now - self._start
        if dt < RATE_MIN_WINDOW:
            return self.rate
        sample = self._drawn / dt
        tau = RATE_TAU_RISE if sample > self.rate else RATE_TAU_FALL
        self.rate += (1.0 - math.exp(-dt / tau)) * (sample - self.rate)
        self._start = now
        self._drawn = 0
        return self.rate


class Latency:
    """A connection's usual LEASE reply time, RFC 6298 style: smoothed ``srtt`` and
    variation ``rttvar``. The lag limit is ``max(LAG_FLOOR, srtt + 4 * rttvar)``, capped by
    the request timeout (past which the connection is dropped anyway)."""

    __slots__ = ("srtt", "rttvar")

    def __init__(self) -> None:
        self.srtt: Optional[float] = None
        self.rttvar = 0.0

    def sample(self, seconds: float) -> None:
        """Adds one reply time."""
        if self.srtt is None:
            self.srtt, self.rttvar = seconds, seconds / 2
            return
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - seconds)
        self.srtt = 0.875 * self.srtt + 0.125 * seconds

    def lag_limit(self, ceiling: float) -> float:
        """Age of the oldest outstanding LEASE past which the connection counts as lagging."""
        usual = 0.0 if self.srtt is None else self.srtt + 4 * self.rttvar
        return min(max(LAG_FLOOR, usual), ceiling)


@dataclass
class ConnLoad:
    """What the refill decision needs to know about one connection."""

    #: Greeted (WELCOME seen) and not draining after a GOAWAY.
    usable: bool
    #: Its oldest outstanding LEASE is older than its lag limit.
    lagging: bool
    #: LEASEs outstanding (to the buffer and to callers).
    outstanding: int
    #: IDs asked by outstanding LEASEs whose range goes to the buffer.
    buffered_ids: int
    #: Largest LEASE the server accepts (from WELCOME).
    max_lease: int


def on_the_way(conns: Sequence[ConnLoad]) -> int:
    """IDs expected soon: outstanding buffer LEASEs of connections that are not lagging."""
    return sum(c.buffered_ids for c in conns if not c.lagging)


def pick(conns: Sequence[ConnLoad], max_in_flight: int, cursor: int) -> Optional[int]:
    """The usable, non-lagging connection with the fewest LEASEs outstanding and room for one
    more; ties go to the first at or after ``cursor``, so idle servers share the load."""
    n = len(conns)
    best: Optional[Tuple[int, int]] = None
    for k in range(n):
        i = (cursor + k) % n
        c = conns[i]
        if c.usable and not c.lagging and c.outstanding < max_in_flight:
            if best is None or c.outstanding < best[0]:
                best = (c.outstanding, i)
    return None if best is None else best[1]


def plan_refill(
    available: int,
    conns: List[ConnLoad],
    target: Plan,
    capacity: int,
    max_in_flight: int,
    cursor: int,
) -> Tuple[List[Tuple[int, int]], int, int]:
    """The refill decision: which connections get a LEASE of how many IDs.

    Returns ``(sends, wake_below, cursor)``: ``sends`` lists ``(connection index, count)``
    (``conns`` is updated as if they were sent), ``wake_below`` is the level under which a
    caller taking IDs wakes the driver (0: replies are coming or no server is up, and those
    wake it anyway), and ``cursor`` is where the next search starts.
    """
    in_flight = on_the_way(conns)
    sends: List[Tuple[int, int]] = []
    if available + in_flight < target.low_mark:
        while available + in_flight < target.fill_to:
            room = capacity - (available + in_flight)
            index = pick(conns, max_in_flight, cursor) if room > 0 else None
            if index is None:
                break
            c = conns[index]
            count = max(1, min(room, c.max_lease))
            sends.append((index, count))
            c.outstanding += 1
            c.buffered_ids += count
            in_flight += count
            cursor = index + 1
    wake_below = (
        target.low_mark - in_flight if available + in_flight >= target.low_mark else 0
    )
    return sends, max(wake_below, 0), cursor


def degraded_resolve_delay(attempt: int, initial: float) -> float:
    """Delay before early re-resolution number ``attempt`` of a degraded name: doubling from
    the backoff's first step up to :data:`DEGRADED_RESOLVE_MAX`, without jitter below it
    (resolutions are per client, not a thundering herd on one server)."""
    return min(initial * (1 << min(max(attempt, 0), 20)), DEGRADED_RESOLVE_MAX)
