"""The shared ID buffer: verified ranges that callers take from and the driver adds to.

Data flow::

    driver thread: verified LEASED --push--> queue of ranges (oldest first)
    callers:       next(buf.it)  <-- the current range's iterator (the fast path)
                   StopIteration --> take_locked(): install the next range's iterator

**Why the fast path is thread-safe without a lock.** ``buf.it`` is a ``range`` iterator.
With the GIL, one ``next()`` on it is a single C call (``rangeiter_next``) that advances the
iterator's index before it returns, and runs no Python code, so the GIL cannot pass to another
thread in the middle: two threads calling ``next()`` on the same iterator never get the same
value. Each range is turned into an iterator exactly once, and replacing ``buf.it`` is one
atomic attribute store, so a caller that read the old iterator just before it was replaced
draws from that old range, which nobody else is given. Everything else (installing the next
range, ``lease()``, expiry, accounting) happens under ``lock``. On a free-threaded build (no
GIL) that argument does not hold, and the client takes the lock on every call instead
(:data:`ATOMIC_NEXT`).

Ranges older than ``max_age`` are dropped by the driver (every ``max_age / 8``) and are never
installed by a caller; an ID can still be drawn from the current range for as long as the
driver takes to notice (its timer plus a GIL hand-off, a few milliseconds).
"""

from __future__ import annotations

import asyncio
import operator
import sys
import threading
import time
from collections import deque
from typing import Callable, Deque, Iterator, List, Optional, Tuple

from .layout import Layout

#: Whether ``next()`` on a shared range iterator is atomic: true unless the GIL is disabled.
ATOMIC_NEXT: bool = bool(getattr(sys, "_is_gil_enabled", lambda: True)())

_EXHAUSTED: Iterator[int] = iter(())

# (next id, end exclusive, monotonic time the reply arrived)
_Range = Tuple[int, int, float]


def _wake_future(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


class Buffer:
    """See the module docs. The driver writes everything but ``it``'s consumption; callers
    only take."""

    def __init__(self, max_age: float) -> None:
        #: The current range's iterator; ``next(buf.it)`` is the whole fast path.
        self.it: Iterator[int] = _EXHAUSTED
        self.lock = threading.Lock()
        #: Signalled (under ``lock``) when IDs arrive, the first WELCOME, a fatal error, close.
        self.changed = threading.Condition(self.lock)
        self.max_age = max_age
        self._it_received = 0.0
        self._queue: Deque[_Range] = deque()
        self._queued = 0
        #: IDs ever added / dropped unused (expiry, close); the draw rate is derived from them.
        self.pushed = 0
        self.dropped = 0
        #: A take that leaves fewer queued IDs than this wakes the driver, once per arming.
        self.wake_below = 1
        self._wake_sent = False
        #: Wakes the driver; set by the driver, safe to call from any thread.
        self.poke: Callable[[], None] = lambda: None
        self._async_waiters: List[Tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]] = []
        #: Set once: the layout of the first accepted WELCOME.
        self.layout: Optional[Layout] = None
        #: Set while every server refused the client for a reason waiting cannot fix.
        self.fatal: Optional[BaseException] = None
        #: The most recent failure, reported to callers that time out.
        self.last_error: Optional[BaseException] = None
        self.closed = False

    # -- callers (hold ``lock``) ---------------------------------------------------------

    def take_locked(self) -> Tuple[Optional[int], bool]:
        """One ID for a caller whose ``next(buf.it)`` ran out: ``(id or None, wake)``.
        ``wake`` asks the caller to poke the driver after releasing the lock."""
        while True:
            try:
                return next(self.it), False
            except StopIteration:
                pass
            if not self._queue:
                self.it = _EXHAUSTED
                return None, self._arm_fired(force=True)
            first, end, received = self._queue.popleft()
            self._queued -= end - first
            if time.monotonic() - received >= self.max_age:
                self.dropped += end - first
                continue
            self._it_received = received
            self.it = iter(range(first, end))
            wake = self._arm_fired(force=False)
            try:
                return next(self.it), wake
            except StopIteration:  # another thread cannot be drawing yet; defensive
                continue

    def take_range_locked(self, n: int) -> Tuple[Optional[Tuple[int, int]], bool]:
        """``n`` consecutive IDs ``(first, n)`` from the oldest queued range that still has
        them, or ``None``; the current range is not split (callers draw from it unlocked)."""
        now = time.monotonic()
        for i, (first, end, received) in enumerate(self._queue):
            if end - first >= n and now - received < self.max_age:
                if end - first == n:
                    del self._queue[i]
                else:
                    self._queue[i] = (first + n, end, received)
                self._queued -= n
                return (first, n), self._arm_fired(force=False)
        return None, self._arm_fired(force=True)

    def _arm_fired(self, force: bool) -> bool:
        if self._wake_sent:
            return False
        if force or self._queued < self.wake_below:
            self._wake_sent = True
            return True
        return False

    def add_async_waiter(self, loop: asyncio.AbstractEventLoop) -> "asyncio.Future[None]":
        """A future set when the buffer changes (under ``lock``, after a failed take)."""
        fut: "asyncio.Future[None]" = loop.create_future()
        self._async_waiters.append((loop, fut))
        return fut

    # -- the driver (holds ``lock``) ----------------------------------------------------------

    def push_locked(self, first: int, end: int, received: float) -> None:
        """Adds a verified range, keeping the queue ordered by arrival (a range handed back
        by a cancelled caller may be older than the newest)."""
        if end <= first:
            return
        q = self._queue
        if not q or q[-1][2] <= received:
            q.append((first, end, received))
        else:
            i = len(q)
            while i > 0 and q[i - 1][2] > received:
                i -= 1
            q.insert(i, (first, end, received))
        self._queued += end - first
        self.pushed += end - first

    def expire_locked(self, cutoff: float) -> int:
        """Drops ranges that arrived at or before ``cutoff``; returns IDs dropped."""
        dropped = 0
        if self.it is not _EXHAUSTED and self._it_received <= cutoff:
            dropped += operator.length_hint(self.it)
            self.it = _EXHAUSTED
        q = self._queue
        while q and q[0][2] <= cutoff:
            first, end, _ = q.popleft()
            dropped += end - first
        self.dropped += dropped
        self._recount()
        return dropped

    def _recount(self) -> None:
        self._queued = sum(end - first for first, end, _ in self._queue)

    def available_locked(self) -> int:
        """IDs on hand: queued plus what is left of the current range."""
        return self._queued + operator.length_hint(self.it)

    def drawn_locked(self) -> int:
        """IDs ever taken by callers (approximate by the few drawn during an expiry)."""
        return self.pushed - self.dropped - self.available_locked()

    def arm_locked(self, wake_below: int) -> None:
        """Sets the low-water trigger and re-arms it."""
        self.wake_below = wake_below
        self._wake_sent = False

    def notify_locked(self) -> None:
        """Wakes every waiting caller, threads and coroutines."""
        self.changed.notify_all()
        waiters, self._async_waiters = self._async_waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_wake_future, fut)
            except RuntimeError:  # that caller's loop is closed: nobody is waiting
                pass

    def close_locked(self, why: BaseException) -> None:
        """Drops everything and wakes every waiter (the client is closing)."""
        self.closed = True
        self.dropped += self.available_locked()
        self.it = _EXHAUSTED
        self._queue.clear()
        self._queued = 0
        self.last_error = why
        self.notify_locked()
