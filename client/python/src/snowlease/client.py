"""The buffered clients: IDs come from a local buffer that a background thread keeps full.

Data flow::

    callers (threads / coroutines)        driver thread (asyncio loop)        servers
    next_id: next(buf.it) --pop-->  [ Buffer: verified ranges ]  <--push--  LEASED replies
       | range used up: install the next one; below the low mark: poke --> pipelined LEASEs
       '-- lease(n) bigger than any buffered range: DirectLease ---------> one LEASE

:class:`Client` (threads) and :class:`AsyncClient` (asyncio) share one implementation,
``_Core``: the buffer (``_buffer``), and the driver (``_driver``) running on its own daemon
thread, so a busy event loop or a busy thread never delays refills, and the fast path is a
memory operation (``next()`` on a range iterator; see ``_buffer`` for why that is
thread-safe). Only an empty buffer makes a caller wait, up to ``timeout``, for the driver.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from ._buffer import ATOMIC_NEXT, Buffer
from ._driver import DirectLease, Driver
from .config import (
    DEFAULT_BACKOFF,
    DEFAULT_BUFFER_CAPACITY,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_LOW_WATER,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RESOLVE_INTERVAL,
    DEFAULT_TIMEOUT,
    Backoff,
    ClientConfig,
    TLSArg,
    tls_options,
    token_bytes,
)
from .errors import ClosedError, ConfigError, Unavailable
from .layout import DEFAULT, Layout, Parts


class Block:
    """``count`` consecutive IDs starting at ``first``, all from one server and one tick.

    Iterable (``for id in block``), sized (``len(block)``), and ``id in block`` works.
    """

    __slots__ = ("first", "count")

    def __init__(self, first: int, count: int) -> None:
        #: The first ID.
        self.first = first
        #: How many IDs; at least 1.
        self.count = count

    @property
    def end(self) -> int:
        """One past the last ID."""
        return self.first + self.count

    @property
    def ids(self) -> range:
        """The IDs as a ``range``."""
        return range(self.first, self.first + self.count)

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __len__(self) -> int:
        return self.count

    def __contains__(self, id: object) -> bool:
        return isinstance(id, int) and self.first <= id < self.first + self.count

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Block) and (self.first, self.count) == (other.first, other.count)

    def __hash__(self) -> int:
        return hash((self.first, self.count))

    def __repr__(self) -> str:
        return f"Block(first={self.first}, count={self.count})"


def _stop(loop: asyncio.AbstractEventLoop, driver: Driver, thread: threading.Thread) -> None:
    """Stops the driver and its thread; safe to call more than once and from a finalizer."""
    if loop.is_closed():
        return

    async def shutdown() -> None:
        driver.close()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let aborted transports report connection_lost

    try:
        done = asyncio.run_coroutine_threadsafe(shutdown(), loop)
    except RuntimeError:
        return
    try:
        done.result(5.0)
    except Exception:  # pragma: no cover - a stuck shutdown still stops the loop below
        pass
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5.0)
    if not thread.is_alive() and not loop.is_closed():
        loop.close()


class _Core:
    """The buffer, the driver and its thread; shared by the sync and async front ends."""

    def __init__(self, addrs: Union[str, Iterable[str]], kwargs: Dict[str, Any]) -> None:
        config = _config(addrs, **kwargs)
        targets, ctx = config.validate()
        self.config = config
        self.timeout = config.timeout
        self.buf = Buffer(config.max_age)
        self.loop = asyncio.new_event_loop()
        self.driver = Driver(config, targets, ctx, self.buf, self.loop)
        self.loop.call_soon(self.driver.start)
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="snowlease-driver", daemon=True)
        self.thread.start()
        self.finalizer = weakref.finalize(self, _stop, self.loop, self.driver, self.thread)

    def close(self) -> None:
        with self.buf.lock:
            self.buf.closed = True
        self.finalizer()

    @property
    def layout(self) -> Layout:
        return self.buf.layout or DEFAULT

    def check_usable_locked(self) -> None:
        if self.buf.closed:
            raise ClosedError("the client is closed")
        if self.buf.fatal is not None:
            raise self.buf.fatal

    def unavailable(self, waited: float) -> Unavailable:
        cause = self.buf.last_error
        text = str(cause) if cause is not None else "no server answered yet"
        err = Unavailable(f"no IDs within {waited:.3f} s; last problem: {text}", cause=cause)
        err.__cause__ = cause
        return err

    def push_back(self, got: Tuple[int, int]) -> None:
        """Returns a range a caller received but did not use to the buffer."""
        first, count = got
        with self.buf.lock:
            if not self.buf.closed:
                self.buf.push_locked(first, first + count, time.monotonic())
                self.buf.notify_locked()

    def take_range_or_direct(self, n: int, on_done: Any) -> Tuple[Optional[Block], Optional[DirectLease]]:
        """A range from the buffer, or a direct lease submitted to the driver."""
        if n < 1:
            raise ConfigError("lease count must be at least 1")
        count = min(n, self.layout.max_lease)
        with self.buf.lock:
            self.check_usable_locked()
            got, wake = self.buf.take_range_locked(count)
        if wake:
            self.driver.poke_threadsafe()
        if got is not None:
            return Block(*got), None
        lease = DirectLease(count, on_done)
        self.driver.submit_threadsafe(lease)
        return None, lease

    def finish_direct(self, lease: DirectLease, got: Optional[Tuple[int, int]]) -> Block:
        """The block a direct lease delivered (``got``, or one that arrived since), else the
        reason there is none: the client closed or failed, or no server answered in time."""
        if got is None:
            got = lease.abandon()
        if got is None:
            with self.buf.lock:
                self.check_usable_locked()
            raise self.unavailable(self.timeout)
        return Block(*got)


def _config(
    addrs: Union[str, Iterable[str]],
    *,
    token: Union[None, str, bytes] = None,
    tls: TLSArg = None,
    max_age: float = DEFAULT_MAX_AGE,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    buffer_capacity: int = DEFAULT_BUFFER_CAPACITY,
    low_water: int = DEFAULT_LOW_WATER,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    backoff: Union[Backoff, Tuple[float, float]] = DEFAULT_BACKOFF,
    resolve_interval: float = DEFAULT_RESOLVE_INTERVAL,
) -> ClientConfig:
    if not isinstance(backoff, Backoff):
        backoff = Backoff(*backoff)
    return ClientConfig(
        endpoints=ClientConfig.endpoints_from(addrs),
        token=token_bytes(token),
        tls=tls_options(tls),
        max_age=float(max_age),
        timeout=float(timeout),
        connect_timeout=float(connect_timeout),
        request_timeout=float(request_timeout),
        buffer_capacity=int(buffer_capacity),
        low_water=int(low_water),
        max_in_flight=int(max_in_flight),
        backoff=backoff,
        resolve_interval=float(resolve_interval),
    )


_DOC_ARGS = """
    ``addrs`` is one endpoint or several: ``host:port``, ``ip:port``, ``[ipv6]:port`` or a
    bare host (port 7609). A name is resolved to every address behind it (a Kubernetes
    headless Service gives every pod) and the client connects to all of them.

    Keyword arguments: ``token`` (str or bytes, sent in HELLO), ``tls`` (an
    ``ssl.SSLContext`` or :class:`~snowlease.TLSOptions`), ``max_age`` (seconds an ID may sit
    in the buffer, default 1.0), ``timeout`` (seconds a call waits for IDs before
    :class:`~snowlease.Unavailable`, 5.0), ``connect_timeout`` (2.0), ``request_timeout``
    (a LEASE unanswered this long drops its connection, 2.0), ``buffer_capacity`` (262,144),
    ``low_water`` (4,096), ``max_in_flight`` (16 LEASEs per connection), ``backoff``
    (``(initial, max)`` seconds, (0.05, 5.0)), ``resolve_interval`` (30.0).
"""


class Client:
    """A thread-safe client: ``next_id()`` hands out IDs from a local buffer that a
    background thread keeps full.

    ``Client(...)`` returns once a server has sent WELCOME; it raises at once if every server
    refuses the client for good (a wrong token, TLS trust, not a snowlease server), and
    :class:`~snowlease.Unavailable` if none answers within ``timeout``.
    """

    __doc__ = (__doc__ or "") + _DOC_ARGS

    def __init__(self, addrs: Union[str, Iterable[str]], **kwargs: Any) -> None:
        self._core = core = _Core(addrs, kwargs)
        self._buf = core.buf
        try:
            self._wait_for_welcome()
        except BaseException:
            core.close()
            raise

    def _wait_for_welcome(self) -> None:
        core, buf = self._core, self._buf
        deadline = time.monotonic() + core.timeout
        with buf.lock:
            while buf.layout is None:
                core.check_usable_locked()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise core.unavailable(core.timeout)
                buf.changed.wait(left)

    def next_id(self) -> int:
        """One ID. A memory operation while the buffer holds IDs; otherwise waits up to
        ``timeout`` for a refill, then raises :class:`~snowlease.Unavailable`."""
        if ATOMIC_NEXT:
            try:
                return next(self._buf.it)
            except StopIteration:
                pass
        return self._next_slow()

    def _next_slow(self) -> int:
        core, buf = self._core, self._buf
        start = time.monotonic()
        deadline = start + core.timeout
        pushed = -1
        with buf.lock:
            while True:
                got, wake = buf.take_locked()
                if wake:
                    core.driver.poke_threadsafe()
                if got is not None:
                    return got
                core.check_usable_locked()
                now = time.monotonic()
                if pushed != -1 and buf.pushed != pushed:
                    # IDs arrived (others took them): servers are reachable, keep waiting.
                    deadline = now + core.timeout
                pushed = buf.pushed
                if now >= deadline:
                    raise core.unavailable(now - start)
                buf.changed.wait(deadline - now)

    def lease(self, n: int) -> Block:
        """Up to ``n`` consecutive IDs as a :class:`Block`: from the buffer if one leased
        range still holds ``min(n, max_lease)``, otherwise straight from a server (which may
        return fewer, up to the end of its current tick). ``n`` above the server's
        ``max_lease`` (4,096 by default) is reduced to it."""
        done = threading.Event()
        block, lease = self._core.take_range_or_direct(n, done.set)
        if block is not None:
            return block
        assert lease is not None
        done.wait(self._core.timeout)
        return self._core.finish_direct(lease, lease.claim())

    @property
    def layout(self) -> Layout:
        """The layout the servers announced in WELCOME."""
        return self._core.layout

    def decode(self, id: int) -> Parts:
        """Takes an ID apart with the servers' layout: ``.time`` (UTC datetime), ``.unix_ms``,
        ``.worker``, ``.sequence``."""
        return self._core.layout.decompose(id)

    def close(self) -> None:
        """Closes every connection and drops the buffered IDs; later calls raise
        :class:`~snowlease.ClosedError`. Returns once the driver thread has stopped."""
        self._core.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        with self._buf.lock:
            available = self._buf.available_locked()
        return f"<snowlease.Client layout={self._buf.layout} available={available} " \
               f"closed={self._buf.closed}>"


class AsyncClient:
    """The asyncio client: ``await next_id()``, ``await lease(n)``, ``async with``.

    The refill runs on the same kind of background thread as :class:`Client`'s, so a busy
    event loop never delays it. Constructing one starts connecting; ``async with`` (or
    ``await client.wait_ready()``, or ``await AsyncClient.connect(...)``) waits for a
    server's WELCOME. Cancelling any ``await`` is safe: an ID is taken from the buffer only
    in the same step that returns it, and a range a direct lease delivered to a cancelled
    caller goes back to the buffer, so nothing is lost or handed out twice, and the client
    stays usable.
    """

    __doc__ = (__doc__ or "") + _DOC_ARGS

    def __init__(self, addrs: Union[str, Iterable[str]], **kwargs: Any) -> None:
        self._core = _Core(addrs, kwargs)
        self._buf = self._core.buf

    @classmethod
    async def connect(cls, addrs: Union[str, Iterable[str]], **kwargs: Any) -> AsyncClient:
        """Creates a client and waits for a server's WELCOME."""
        client = cls(addrs, **kwargs)
        try:
            await client.wait_ready()
        except BaseException:
            await client.close()
            raise
        return client

    async def wait_ready(self) -> None:
        """Waits until a server has sent WELCOME; raises like :class:`Client` does."""
        core, buf = self._core, self._buf
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + core.timeout
        while True:
            with buf.lock:
                if buf.layout is not None:
                    return
                core.check_usable_locked()
                fut = buf.add_async_waiter(loop)
            left = deadline - time.monotonic()
            if left <= 0:
                raise core.unavailable(core.timeout)
            await asyncio.wait((fut,), timeout=left)

    async def next_id(self) -> int:
        """One ID; waits (without blocking the loop) up to ``timeout`` for a refill when the
        buffer is empty."""
        if ATOMIC_NEXT:
            try:
                return next(self._buf.it)
            except StopIteration:
                pass
        return await self._next_slow()

    async def _next_slow(self) -> int:
        core, buf = self._core, self._buf
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        deadline = start + core.timeout
        pushed = -1
        while True:
            # Taking and registering the waiter happen under one lock, so a refill between
            # them cannot be missed; the ID is returned in the same step it is taken.
            with buf.lock:
                got, wake = buf.take_locked()
                if got is None:
                    core.check_usable_locked()
                    fut = buf.add_async_waiter(loop)
                    now_pushed = buf.pushed
            if wake:
                core.driver.poke_threadsafe()
            if got is not None:
                return got
            now = time.monotonic()
            if pushed != -1 and now_pushed != pushed:
                deadline = now + core.timeout
            pushed = now_pushed
            if now >= deadline:
                raise core.unavailable(now - start)
            await asyncio.wait((fut,), timeout=deadline - now)

    async def lease(self, n: int) -> Block:
        """Like :meth:`Client.lease`, without blocking the loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        def on_done() -> None:
            try:
                loop.call_soon_threadsafe(wake)
            except RuntimeError:
                pass

        block, lease = self._core.take_range_or_direct(n, on_done)
        if block is not None:
            return block
        assert lease is not None
        try:
            await asyncio.wait((fut,), timeout=self._core.timeout)
            got = lease.claim()
        except BaseException:
            # Cancelled (or the loop is going away): a range that already arrived goes back
            # to the buffer instead of being lost.
            back = lease.abandon()
            if back is not None:
                self._core.push_back(back)
            raise
        return self._core.finish_direct(lease, got)

    @property
    def layout(self) -> Layout:
        """The layout the servers announced in WELCOME."""
        return self._core.layout

    def decode(self, id: int) -> Parts:
        """Takes an ID apart with the servers' layout (see :meth:`Client.decode`)."""
        return self._core.layout.decompose(id)

    async def close(self) -> None:
        """Closes every connection and drops the buffered IDs (waits for the driver thread
        in an executor, so the loop is not blocked)."""
        await asyncio.get_running_loop().run_in_executor(None, self._core.close)

    async def __aenter__(self) -> AsyncClient:
        try:
            await self.wait_ready()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<snowlease.AsyncClient layout={self._buf.layout} closed={self._buf.closed}>"


__all__: List[str] = ["Block", "Client", "AsyncClient"]
