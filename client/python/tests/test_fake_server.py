"""Fake servers that break the protocol on purpose: malformed frames, replies that do not
answer the request, more IDs than asked, another worker's IDs, a block crossing a tick,
ranges going backwards or overlapping. The client must raise a clear exception (or drop the
connection and use another server) and never hand out an ID it did not verify. And a fake
server that greets and then never answers, beside a healthy one (issue 16)."""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import pytest

import snowlease
from snowlease import Client, ProtocolError, wire
from snowlease.layout import DEFAULT

from conftest import (FAKE_WORKER, FakeServer, Server, assert_unique_and_increasing, leased,
                      run_threads, tick_now, welcome_frame)

STRICT = dict(buffer_capacity=100, low_water=10, timeout=0.4, backoff=(0.01, 0.1))


def drain(client: Client) -> Tuple[List[int], snowlease.Error]:
    """Draws until the client gives up; returns what it handed out and the error."""
    ids: List[int] = []
    for _ in range(100_000):
        try:
            ids.append(client.next_id())
        except snowlease.Error as e:
            return ids, e
    raise AssertionError("the client never ran dry")


def text(err: BaseException) -> str:
    cause = getattr(err, "cause", None)
    return f"{err} | {cause}"


START = tick_now()
GOOD = DEFAULT.compose(START, FAKE_WORKER, 0)


@pytest.mark.parametrize("answer, message", [
    (lambda n, rid, count: leased(rid, GOOD + 4096 * 4096 * n, count + 1), "for a LEASE of"),
    (lambda n, rid, count: leased(rid + 1, GOOD, count), "oldest outstanding"),
    (lambda n, rid, count: leased(rid, DEFAULT.compose(START, FAKE_WORKER + 1, 0), count),
     "belongs to worker 6"),
    (lambda n, rid, count: leased(rid, DEFAULT.compose(START, FAKE_WORKER, 4090), count),
     "crosses a tick"),
    (lambda n, rid, count: b"\x00\x00\x00\x05\x82abcd", "LEASED body must be 16 bytes, got 4"),
    (lambda n, rid, count: b"\x00\x00\x00\x00", "frame length 0"),
    (lambda n, rid, count: b"\x00\x00\x00\x01\x42", "unknown opcode 0x42"),
    (lambda n, rid, count: wire.encode(wire.BulkLeased(rid, (wire.Run(GOOD, count),))),
     "BULK_LEASED on a version-1 connection"),
    (lambda n, rid, count: wire.encode(wire.Welcome(1, 5, 0, 41, 10, 12, 4096, 0)),
     "second WELCOME"),
])
def test_a_bad_reply_is_never_handed_out_and_raises_a_clear_error(
        fake_server: Callable[..., FakeServer], answer: Callable[[int, int, int], bytes],
        message: str) -> None:
    f = fake_server(answer)
    with Client(f.addr, **STRICT) as client:
        ids, err = drain(client)
    assert ids == [], f"handed out {ids[:5]}"
    # The violation itself, or Unavailable naming it (the server greets again after each
    # reconnect, so the client keeps trying it until the callers' timeout).
    violation = err if isinstance(err, ProtocolError) else getattr(err, "cause", None)
    assert isinstance(violation, ProtocolError), text(err)
    assert "protocol violation" in str(violation) and message in str(violation), text(err)
    assert not violation.retryable


def test_a_range_below_the_previous_one_is_rejected_even_after_a_reconnect(
        fake_server: Callable[..., FakeServer]) -> None:
    # The first LEASE gets a good range; every later one, on any connection, a range from an
    # earlier tick, as a server restarted without its state behind a stepped-back clock would.
    f = fake_server(lambda n, rid, count: leased(
        rid, DEFAULT.compose(START if n == 0 else START - 10, FAKE_WORKER, 0), count))
    with Client(f.addr, **STRICT) as client:
        ids, err = drain(client)
    assert ids == list(range(GOOD, GOOD + 100))
    assert "previous range" in text(err)


@pytest.mark.parametrize("second_sequence", [0, 50, 99])
def test_an_overlapping_reply_is_rejected(fake_server: Callable[..., FakeServer],
                                          second_sequence: int) -> None:
    f = fake_server(lambda n, rid, count: leased(
        rid, DEFAULT.compose(START, FAKE_WORKER, 0 if n == 0 else second_sequence), count))
    with Client(f.addr, **STRICT) as client:
        ids, err = drain(client)
    assert ids == list(range(GOOD, GOOD + 100))
    assert "previous range" in text(err)


@pytest.mark.parametrize("greeting, message", [
    (lambda: welcome_frame(sequence_bits=13), "invalid layout"),
    (lambda: welcome_frame(version=2, first_worker=5, worker_count=1, max_bulk=4096),
     "speaks version 2"),
    (lambda: welcome_frame(worker=2000), "does not fit"),
    (lambda: leased(0, GOOD, 1), "LEASED before WELCOME"),
    (lambda: b"\x00\x00\x10\x00", "exceeds the limit of 1024"),
    (lambda: wire.encode(wire.Error(0, 99, "a future error")), "ERROR UNKNOWN (99)"),
])
def test_a_bad_greeting_fails_construction_with_the_reason(
        fake_server: Callable[..., FakeServer], greeting: Callable[[], bytes],
        message: str) -> None:
    f = fake_server(lambda n, rid, count: None, greeting=greeting)
    with pytest.raises(snowlease.Error, match=message.replace("(", r"\(").replace(")", r"\)")):
        Client(f.addr, **STRICT)


def test_a_bad_server_beside_a_good_one_costs_nothing(
        servers: Callable[..., Server], fake_server: Callable[..., FakeServer]) -> None:
    f = fake_server(lambda n, rid, count: leased(rid, GOOD, count + 1))
    srv = servers(3)
    with Client([f.addr, srv.lease_addr], timeout=5.0, backoff=(0.01, 0.1)) as client:
        ids = [client.next_id() for _ in range(300_000)]
    assert {client.decode(i).worker for i in ids} == {3}
    assert_unique_and_increasing([ids])


def test_a_server_that_greets_and_never_answers_does_not_stall_callers(
        servers: Callable[..., Server], fake_server: Callable[..., FakeServer]) -> None:
    # Issue 16: the silent server's requests would never be answered; request_timeout is far
    # above the callers' timeout, so only moving the demand to the healthy server passes.
    silent = fake_server(lambda n, rid, count: None, greeting=lambda: welcome_frame(worker=9))
    srv = servers(3)
    client = Client([silent.addr, srv.lease_addr], timeout=5.0, request_timeout=60.0,
                    backoff=(0.01, 0.1))
    per_thread: List[List[int]] = [[], []]

    def draw(out: List[int]) -> None:
        take = client.next_id
        while len(out) < 500_000 or silent.leases == 0:
            out.append(take())
            if len(out) > 5_000_000:
                raise AssertionError("the silent server was never asked")

    errors = run_threads(draw, per_thread)
    client.close()
    assert not errors, errors
    assert silent.leases > 0, "the silent server was asked for IDs"
    assert {(x >> 12) & 1023 for o in per_thread for x in o[::997]} == {3}
    assert_unique_and_increasing(per_thread)


def test_a_lease_waiting_on_a_silent_server_is_answered_by_a_healthy_one(
        servers: Callable[..., Server], fake_server: Callable[..., FakeServer]) -> None:
    silent = fake_server(lambda n, rid, count: None, greeting=lambda: welcome_frame(worker=9))
    srv = servers(3)
    with Client([silent.addr, srv.lease_addr], timeout=5.0, request_timeout=60.0,
                buffer_capacity=100, low_water=10, backoff=(0.01, 0.1)) as client:
        blocks = [client.lease(4096) for _ in range(50)]
    assert all(client.decode(b.first).worker == 3 for b in blocks)
    assert_unique_and_increasing([[i for b in blocks for i in b]])


def test_an_unanswered_request_past_the_request_timeout_drops_the_connection(
        fake_server: Callable[..., FakeServer]) -> None:
    f = fake_server(lambda n, rid, count: None)
    with Client(f.addr, request_timeout=0.2, timeout=1.0, backoff=(0.01, 0.05)) as client:
        ids, err = drain(client)
    assert ids == []
    assert "did not answer a LEASE within 0.2 s" in text(err)
    assert f.connections >= 2, "the client reconnected"


def test_ids_answering_a_lease_are_exactly_the_server_s_when_it_behaves(
        fake_server: Callable[..., FakeServer]) -> None:
    def answer(n: int, rid: int, count: int) -> Optional[bytes]:
        return leased(rid, DEFAULT.compose(START + n, FAKE_WORKER, 0), min(count, 7))

    f = fake_server(answer)
    with Client(f.addr, **STRICT) as client:
        ids = [client.next_id() for _ in range(70)]
    assert all(client.decode(i).worker == FAKE_WORKER for i in ids)
    assert_unique_and_increasing([ids])
