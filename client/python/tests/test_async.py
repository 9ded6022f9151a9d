"""The asyncio client: real server, and cancellation against a server whose replies are held
back until the test opens a gate. (Plain ``asyncio.run``: no pytest plugin needed.)"""

from __future__ import annotations

import asyncio
import threading
from typing import Callable, List, Optional

import pytest

from snowlease import AsyncClient, ClosedError
from snowlease.layout import DEFAULT

from conftest import FAKE_WORKER, FakeServer, Server, assert_unique_and_increasing, leased, \
    tick_now


def test_many_tasks_drawing_through_next_id_and_lease_never_see_a_repeat(
        servers: Callable[..., Server]) -> None:
    srv = servers(2)

    async def main() -> List[List[int]]:
        async with AsyncClient(srv.lease_addr, timeout=5.0) as client:
            async def draw(i: int) -> List[int]:
                out: List[int] = []
                for k in range(20_000):
                    if k % 5000 == 0:
                        out.extend(await client.lease(1 + i))
                    out.append(await client.next_id())
                return out
            results = await asyncio.gather(*(draw(i) for i in range(50)))
            assert client.decode(results[0][0]).worker == 2
        with pytest.raises(ClosedError):
            await client.next_id()
        return list(results)

    results = asyncio.run(main())
    # lease() takes a whole range from a later buffered block while next_id() continues the
    # current one, so only uniqueness holds across the two (as in the Rust client).
    all_ids = [x for r in results for x in r]
    assert len(all_ids) == 50 * 20_000 + sum(4 * (1 + i) for i in range(50))
    assert len(set(all_ids)) == len(all_ids)


class Gated:
    """A fake server answering LEASE number n with tick START + n, once ``gate`` is open."""

    def __init__(self, fake_server: Callable[..., FakeServer]) -> None:
        self.gate = threading.Event()
        self.start = tick_now()
        self.server = fake_server(self.answer)

    def answer(self, n: int, rid: int, count: int) -> Optional[bytes]:
        self.gate.wait(20)
        return leased(rid, self.first(n), count)

    def first(self, n: int) -> int:
        return DEFAULT.compose(self.start + n, FAKE_WORKER, 0)

    def ids(self, n: int, count: int) -> List[int]:
        """The first ``count`` IDs of LEASE number n's answer."""
        return list(range(self.first(n), self.first(n) + count))

    def client(self, **options: float) -> AsyncClient:
        """A client of this server with a 100-ID buffer refilled below 10 IDs."""
        return AsyncClient(self.server.addr, buffer_capacity=100, low_water=10, timeout=10.0,
                           **options)


@pytest.fixture
def gated(fake_server: Callable[..., FakeServer]) -> Gated:
    """A :class:`Gated` fake server, closed by the fake_server fixture at teardown."""
    return Gated(fake_server)


async def settle() -> None:
    """Lets every runnable task reach its next await (a few loop iterations, no timing)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_cancelled_next_id_calls_lose_no_id_and_leave_the_client_usable(gated: Gated) -> None:
    async def main() -> None:
        async with gated.client() as client:
            tasks = [asyncio.ensure_future(client.next_id()) for _ in range(20)]
            await settle()
            assert not any(t.done() for t in tasks), "the buffer is empty: they wait"
            for t in tasks[::2]:
                t.cancel()
            gated.gate.set()
            got = [await t for t in tasks[1::2]]
            for t in tasks[::2]:
                assert t.cancelled()
            more = [await client.next_id() for _ in range(150)]
        # The first block is IDs first(0)..first(0)+99: the ten callers that stayed and the
        # next draws get every one of them, so the cancelled callers took none.
        ids = sorted(got + more)
        assert ids[:100] == gated.ids(0, 100)
        assert_unique_and_increasing([ids])

    asyncio.run(main())


def test_a_cancelled_lease_hands_its_range_back_to_the_buffer(gated: Gated) -> None:
    async def main() -> None:
        async with gated.client(request_timeout=15.0) as client:
            task = asyncio.ensure_future(client.lease(50))  # nothing buffered: a direct LEASE
            await settle()
            while gated.server.received < 2:  # the refill LEASE and the direct one have arrived
                await asyncio.sleep(0.001)
            task.cancel()
            await settle()
            assert task.cancelled()
            gated.gate.set()
            ids = [await client.next_id() for _ in range(150)]
            # LEASE 0 refilled the buffer; LEASE 1 was the cancelled caller's: its 50 IDs
            # went to the buffer and come out next instead of being lost.
            assert ids[:100] == gated.ids(0, 100)
            assert ids[100:150] == gated.ids(1, 50)
            block = await client.lease(10)
            assert len(block) == 10
        assert_unique_and_increasing([ids])

    asyncio.run(main())


def test_a_next_id_cancelled_by_wait_for_times_out_cleanly(gated: Gated) -> None:
    async def main() -> None:
        async with gated.client() as client:
            for _ in range(3):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(client.next_id(), 0.01)
            gated.gate.set()
            ids = [await client.next_id() for _ in range(100)]
            assert ids == gated.ids(0, 100)

    asyncio.run(main())
