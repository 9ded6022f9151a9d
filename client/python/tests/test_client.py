"""The thread client against the real server on 127.0.0.1:0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Callable, Dict, List

import pytest

import snowlease
from snowlease import Block, Client, ClosedError, ConfigError, Unauthorized, Unavailable

from conftest import Server, assert_unique_and_increasing, run_threads, wait_until

QUICK = dict(timeout=5.0, backoff=(0.01, 0.1))


def test_next_id_lease_and_decode_work_against_a_real_server(servers: Callable[..., Server]) -> None:
    srv = servers(3)
    with Client(srv.lease_addr, **QUICK) as client:
        a, b = client.next_id(), client.next_id()
        assert b > a
        parts = client.decode(a)
        assert parts.worker == 3 and parts.sequence >= 0
        assert abs(parts.unix_ms / 1000 - time.time()) < 60
        assert client.layout == snowlease.Layout.DEFAULT
        block = client.lease(100)
        assert isinstance(block, Block) and 1 <= len(block) <= 100
        assert list(block) == list(range(block.first, block.end))
        assert a not in block and block.first in block
        big = client.lease(10_000)
        assert 1 <= len(big) <= 4096, "cut to max_lease; a server may return the tick's rest"
        with pytest.raises(ConfigError):
            client.lease(0)
    with pytest.raises(ClosedError):
        client.next_id()
    with pytest.raises(ClosedError):
        client.lease(1)


def test_sixteen_threads_taking_a_million_ids_each_never_see_a_repeat(
        servers: Callable[..., Server]) -> None:
    threads, per_thread = 16, 1_000_000
    srv = servers(1)
    client = Client(srv.lease_addr, **QUICK)
    results: List[array[int]] = [array("q") for _ in range(threads)]

    def draw(out: array[int]) -> None:
        take, add = client.next_id, out.append
        for _ in range(per_thread):
            add(take())

    errors = run_threads(draw, results)
    client.close()
    assert not errors, errors[:3]
    assert all(len(r) == per_thread for r in results)
    assert {(x >> 12) & 1023 for r in results for x in (r[0], r[-1])} == {1}
    assert assert_unique_and_increasing(results) == threads * per_thread


def test_a_wrong_or_missing_token_fails_at_once_and_the_right_one_works(
        servers: Callable[..., Server], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret")
    srv = servers(4, "--token-file", str(token_file))
    with Client(srv.lease_addr, token="s3cret", **QUICK) as client:
        assert client.decode(client.next_id()).worker == 4
    start = time.monotonic()
    for token in ("wrong", None):
        with pytest.raises(Unauthorized, match="UNAUTHORIZED") as info:
            Client(srv.lease_addr, token=token, **QUICK)
        assert not info.value.retryable
    assert time.monotonic() - start < 4.0, "refused for good: no waiting out the timeout"


def test_ids_older_than_max_age_are_dropped_not_handed_out(servers: Callable[..., Server]) -> None:
    srv = servers(5)
    with Client(srv.lease_addr, max_age=0.05, **QUICK) as client:
        first = client.next_id()
        time.sleep(0.3)  # the scenario: IDs sit unused for six times max_age
        before_ms = time.time() * 1000
        later = client.next_id()
        assert later != first + 1, "the rest of the old block was handed out"
        age_ms = before_ms - client.decode(later).unix_ms
        # The ID's tick is at most max_age (plus clock granularity and a driver wakeup)
        # older than the moment it was handed out.
        assert age_ms <= 50 + 30, f"an ID {age_ms:.0f} ms old was handed out"


def test_connecting_to_nothing_fails_after_the_timeout_with_the_cause() -> None:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    addr = "127.0.0.1:%d" % s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(Unavailable, match="cannot connect") as info:
        Client(addr, timeout=0.3, backoff=(0.01, 0.05))
    assert info.value.cause is not None and info.value.retryable


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_age=0.001), "max_age"),
    (dict(low_water=10, buffer_capacity=5), "low_water"),
    (dict(token="x" * 256), "token"),
    (dict(timeout=0), "timeout"),
    (dict(max_in_flight=0), "max_in_flight"),
    (dict(tls=snowlease.TLSOptions(ca_file="/nonexistent/ca.pem")), "/nonexistent/ca.pem"),
])
def test_bad_settings_are_refused_before_connecting(kwargs: Dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Client("127.0.0.1:1", **kwargs)


@pytest.mark.parametrize("endpoint, message", [
    ("", "at least one endpoint"), ("ids:http", "port must be"), (":80", "no host"),
    ("ids:0", "port must be"), ("[::1", "valid address"), ("ids:80:90", "valid address"),
])
def test_bad_endpoints_are_refused_with_the_reason(endpoint: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Client(endpoint)


def test_endpoints_parse_in_every_documented_form() -> None:
    from snowlease.config import Target, parse_endpoint
    assert parse_endpoint("127.0.0.1:9") == Target("127.0.0.1", 9, True)
    assert parse_endpoint("[::1]:9") == Target("::1", 9, True)
    assert parse_endpoint(" 10.0.0.1 ") == Target("10.0.0.1", 7609, True)
    assert parse_endpoint("::1") == Target("::1", 7609, True)
    assert parse_endpoint("ids.svc:80") == Target("ids.svc", 80, False)
    assert parse_endpoint("ids") == Target("ids", 7609, False)


def test_a_name_connects_to_every_address_behind_it(servers: Callable[..., Server]) -> None:
    # "localhost" may resolve to ::1 and 127.0.0.1; the server listens on 127.0.0.1 only,
    # so the client must keep using whichever address answers.
    srv = servers(6)
    with Client(f"localhost:{srv.port}", **QUICK) as client:
        assert client.decode(client.next_id()).worker == 6


def test_the_package_byte_compiles() -> None:
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(root)], check=True,
                   stdout=subprocess.DEVNULL)
