"""The driver's pure decisions: reply checks, refill sizing, the rate estimate, and the
refill decision around lagging connections (issue 16)."""

from __future__ import annotations

import random
import threading

from typing import Dict

import pytest

from snowlease import Backoff, ProtocolError
from snowlease import _policy as policy
from snowlease._driver import DirectLease
from snowlease.layout import DEFAULT
from snowlease.wire import Leased, Welcome


def welcome(**changes: int) -> Welcome:
    fields = dict(version=1, worker_id=7, epoch_unix_ms=DEFAULT.epoch_unix_ms, timestamp_bits=41,
                  worker_bits=10, sequence_bits=12, max_lease=4096, server_unix_ms=0)
    fields.update(changes)
    return Welcome(**fields)


def test_a_well_formed_welcome_yields_its_layout() -> None:
    assert policy.check_welcome(welcome(), None) == DEFAULT
    assert policy.check_welcome(welcome(), DEFAULT) == DEFAULT


@pytest.mark.parametrize("changes, message", [
    (dict(version=2), "version 2"),
    (dict(sequence_bits=13), "invalid layout"),
    (dict(worker_id=1024), "does not fit"),
    (dict(max_lease=0), "max_lease 0"),
    (dict(max_lease=4097), "max_lease 4097"),
    (dict(epoch_unix_ms=1), "differs from"),
])
def test_welcomes_with_bad_fields_or_another_layout_are_refused(changes: Dict[str, int], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        policy.check_welcome(welcome(**changes), DEFAULT)


def check(prev: object, reply: Leased, asked: object = (1, 100)) -> int:
    return policy.check_leased(DEFAULT, 7, asked, prev, reply)  # type: ignore[arg-type]


def test_a_good_reply_returns_the_end_of_its_range() -> None:
    first = DEFAULT.compose(1000, 7, 5)
    assert check(None, Leased(1, first, 100)) == first + 100
    assert check(first, Leased(1, first, 1)) == first + 1


@pytest.mark.parametrize("reply, asked, prev, message", [
    (Leased(2, DEFAULT.compose(1000, 7, 0), 10), (1, 100), None, "oldest outstanding is 1"),
    (Leased(1, DEFAULT.compose(1000, 7, 0), 101), (1, 100), None, "for a LEASE of 100"),
    (Leased(1, DEFAULT.compose(1000, 7, 0), 0), (1, 100), None, "carries 0 IDs"),
    (Leased(1, DEFAULT.compose(1000, 8, 0), 10), (1, 100), None, "belongs to worker 8"),
    (Leased(1, DEFAULT.compose(1000, 7, 4090), 10), (1, 100), None, "crosses a tick"),
    (Leased(1, (1 << 63) - 5, 10), (1, 100), None, "63-bit"),
    (Leased(1, DEFAULT.compose(1000, 7, 40), 10), (1, 100), DEFAULT.compose(1000, 7, 49),
     "previous range"),
    (Leased(1, DEFAULT.compose(1000, 7, 0), 10), None, None, "no LEASE outstanding"),
])
def test_replies_that_break_the_contract_are_violations(
        reply: Leased, asked: object, prev: object, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        check(prev, reply, asked)


def test_refills_follow_the_rate_between_low_water_and_capacity() -> None:
    assert policy.plan(0.0, 4096, 262_144) == policy.Plan(4096, 4096)
    busy = policy.plan(1_000_000.0, 4096, 262_144)
    assert busy == policy.Plan(50_000, 100_000)
    assert policy.plan(1e12, 4096, 262_144).fill_to == 262_144
    assert policy.plan(float("nan"), 0, 10).low_mark == 1
    assert policy.plan(float("inf"), 0, 10).fill_to == 10


def test_the_rate_estimate_rises_fast_and_falls_slowly() -> None:
    r = policy.RateEstimator(0.0)
    t = 0.0
    for _ in range(500):
        t += 0.001
        r.observe(1000, t)
    assert abs(r.rate - 1_000_000) < 10_000
    for _ in range(100):
        t += 0.001
        r.observe(0, t)
    assert r.rate > 750_000
    r2 = policy.RateEstimator(0.0)
    for i in range(1, 5):
        assert r2.observe(4096, i * 0.00001) == 0.0  # short windows accumulate


def load(**kw: object) -> policy.ConnLoad:
    base: Dict[str, object] = dict(usable=True, lagging=False, outstanding=0, buffered_ids=0,
                                   max_lease=4096)
    base.update(kw)
    return policy.ConnLoad(**base)  # type: ignore[arg-type]


def test_an_empty_buffer_leases_whole_leases_spread_over_idle_connections() -> None:
    conns = [load(), load()]
    sends, wake, cursor = policy.plan_refill(0, conns, policy.Plan(8192, 16384), 262_144, 16, 0)
    assert sends == [(0, 4096), (1, 4096), (0, 4096), (1, 4096)]
    assert wake == 0  # on hand + on the way is not above the low mark: replies will wake us


def test_requests_on_a_lagging_connection_do_not_count_as_ids_on_the_way() -> None:
    # Issue 16: a silent server holding 16 x 4096 requests must not stop refills.
    silent = load(lagging=True, outstanding=16, buffered_ids=16 * 4096)
    healthy = load()
    sends, _, _ = policy.plan_refill(1000, [silent, healthy], policy.Plan(50_000, 100_000),
                                     262_144, 16, 0)
    assert sends and all(i == 1 for i, _ in sends), "demand goes to the healthy connection"
    assert sum(c for _, c in sends) == 16 * 4096  # up to max_in_flight on the healthy one
    # Without the lag mark the same requests would be counted and nothing sent.
    silent.lagging = False
    silent.buffered_ids = 16 * 4096
    sends, _, _ = policy.plan_refill(1000, [silent, load()], policy.Plan(50_000, 100_000),
                                     262_144, 16, 0)
    assert sends == []


def test_draining_full_or_lagging_connections_get_no_new_requests() -> None:
    conns = [load(usable=False), load(outstanding=16), load(lagging=True)]
    assert policy.pick(conns, 16, 0) is None
    assert policy.plan_refill(0, conns, policy.Plan(10, 20), 100, 16, 0)[0] == []


def test_the_lag_limit_follows_the_usual_latency_above_a_floor() -> None:
    lat = policy.Latency()
    assert lat.lag_limit(2.0) == policy.LAG_FLOOR
    for _ in range(50):
        lat.sample(0.0002)
    assert lat.lag_limit(2.0) == policy.LAG_FLOOR
    for _ in range(50):
        lat.sample(0.080)  # a server that answers in 80 ms is slow, not silent
    assert 0.080 <= lat.lag_limit(2.0) < 0.2
    assert lat.lag_limit(0.05) == 0.05


def test_degraded_names_are_resolved_again_within_two_seconds() -> None:
    delays = [policy.degraded_resolve_delay(i, 0.05) for i in range(10)]
    assert delays[0] == 0.05 and delays == sorted(delays)
    assert max(delays) == policy.DEGRADED_RESOLVE_MAX == 2.0


def test_backoff_doubles_with_jitter_between_half_and_all_of_each_step() -> None:
    b = Backoff(0.05, 5.0)
    rng = random.Random(3)
    for attempt, step in [(0, 0.05), (1, 0.1), (3, 0.4), (20, 5.0), (60, 5.0)]:
        for _ in range(100):
            assert step / 2 <= b.delay(attempt, rng) <= step


def test_a_direct_lease_is_delivered_once_and_handed_back_if_abandoned_after() -> None:
    done = threading.Event()
    lease = DirectLease(10, done.set)
    assert lease.deliver(100, 10) and done.is_set()
    assert not lease.deliver(200, 10), "a hedged second reply goes to the buffer"
    assert lease.abandon() == (100, 10), "delivered but unclaimed: hand it back"
    lease2 = DirectLease(10, lambda: None)
    assert lease2.abandon() is None
    assert not lease2.deliver(100, 10), "the caller is gone: buffer the range"
    lease3 = DirectLease(10, lambda: None)
    assert lease3.deliver(1, 1) and lease3.claim() == (1, 1) and lease3.abandon() is None
