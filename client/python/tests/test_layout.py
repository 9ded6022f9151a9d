"""ID layout arithmetic and the rules a WELCOME's layout must follow."""

from __future__ import annotations

import datetime as dt

from typing import Tuple

import pytest

from snowlease import Layout
from snowlease.layout import DEFAULT, LayoutError, format_unix_ms


def test_the_documented_id_decodes_to_its_time_worker_and_sequence() -> None:
    parts = DEFAULT.decode(252584342327423976)
    assert (parts.worker, parts.sequence, parts.unix_ms) == (7, 1000, 1764288000001)
    assert parts.time == dt.datetime(2025, 11, 28, 0, 0, 0, 1000, tzinfo=dt.timezone.utc)
    assert str(parts) == "2025-11-28T00:00:00.001Z worker 7 sequence 1000"


def test_compose_and_decompose_are_inverse_at_the_field_limits() -> None:
    for layout in (DEFAULT, Layout(0, 30, 10, 23), Layout(5, 31, 16, 16), Layout(0, 61, 1, 1)):
        for tick in (0, 1, layout.max_tick):
            for worker in (0, layout.max_worker):
                for seq in (0, layout.max_lease - 1):
                    id = layout.compose(tick, worker, seq)
                    assert 0 <= id < 1 << 63
                    p = layout.decompose(id)
                    assert (p.tick, p.worker, p.sequence) == (tick, worker, seq)


@pytest.mark.parametrize("widths, message", [
    ((41, 10, 11), "must be 63"),
    ((0, 31, 32), "must be at least 1"),
    ((31, 0, 32), "worker_bits must be at least 1"),
    ((20, 11, 32), "sequence_bits must be at most 31"),
    ((30, 17, 16), "worker_bits must be at most 16"),
])
def test_invalid_layouts_are_refused_with_the_reason(widths: Tuple[int, int, int], message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        Layout(0, *widths)


def test_fields_out_of_range_are_refused_on_compose() -> None:
    with pytest.raises(ValueError, match="worker 1024"):
        DEFAULT.compose(0, 1024, 0)


def test_times_format_as_rfc3339_with_milliseconds() -> None:
    assert format_unix_ms(DEFAULT.end_of_life_unix_ms) == "2093-09-06T15:47:35.551Z"
    assert format_unix_ms(1 << 62) == f"{1 << 62} ms"
    assert str(DEFAULT) == "41/10/12 epoch 2024-01-01T00:00:00.000Z"
