"""The bit layout of an ID: pure arithmetic, no I/O.

A :class:`Layout` comes from a server's WELCOME (or :data:`Layout.DEFAULT`), is validated
once, and then composes ``(tick, worker, sequence)`` into an ID or takes an ID apart into
:class:`Parts` with the tick turned back into Unix milliseconds::

     63 62                                          22 21          12 11              0
    +--+----------------------------------------------+--------------+-----------------+
    |0 |  timestamp: ms since the epoch (41 bits)     | worker (10)  | sequence (12)   |
    +--+----------------------------------------------+--------------+-----------------+
      4,096 IDs per ms per worker = 4,096,000 IDs/s; 1,024 workers; about 69.7 years

Keeping the widths in a value rather than in globals means an ID minted under a custom layout
is never decoded with the default one by accident.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import ClassVar

from .errors import ConfigError

#: 2024-01-01T00:00:00Z in Unix milliseconds: the default epoch.
DEFAULT_EPOCH_UNIX_MS = 1_704_067_200_000
#: Bits for the three fields; the sign bit stays 0 so IDs are positive signed 64-bit ints too.
ID_BITS = 63

_UNIX_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


class LayoutError(ConfigError):
    """A layout whose widths do not add up to 63 or exceed what the wire can carry."""


def unix_ms_to_datetime(unix_ms: int) -> _dt.datetime:
    """Unix milliseconds as an aware UTC datetime (``OverflowError`` past the year 9999)."""
    return _UNIX_EPOCH + _dt.timedelta(milliseconds=unix_ms)


def format_unix_ms(unix_ms: int) -> str:
    """RFC 3339 UTC with milliseconds, as protocol.md writes times:
    ``2025-11-28T00:00:00.000Z``. Times past the year 9999 are written as ``<n> ms``."""
    try:
        t = unix_ms_to_datetime(unix_ms)
    except OverflowError:
        return f"{unix_ms} ms"
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{unix_ms % 1000:03d}Z"


@dataclass(frozen=True)
class Parts:
    """An ID taken apart."""

    #: Wall-clock time the ID's tick stands for, Unix milliseconds.
    unix_ms: int
    #: Milliseconds since the layout's epoch (the raw timestamp field).
    tick: int
    #: Worker that issued it.
    worker: int
    #: Position inside the tick.
    sequence: int

    @property
    def time(self) -> _dt.datetime:
        """The tick as an aware UTC datetime (millisecond precision)."""
        return unix_ms_to_datetime(self.unix_ms)

    def __str__(self) -> str:
        return f"{format_unix_ms(self.unix_ms)} worker {self.worker} sequence {self.sequence}"


@dataclass(frozen=True)
class Layout:
    """Widths of the three ID fields and the epoch their timestamps count from.

    Construction checks the rules of protocol.md section 8: the widths add up to 63, each is
    at least 1, ``sequence_bits`` at most 31 and ``worker_bits`` at most 16.
    """

    epoch_unix_ms: int = DEFAULT_EPOCH_UNIX_MS
    timestamp_bits: int = 41
    worker_bits: int = 10
    sequence_bits: int = 12

    #: Twitter's 41/10/12 split with the 2024-01-01 epoch (set below the class).
    DEFAULT: ClassVar[Layout]

    def __post_init__(self) -> None:
        t, w, s = self.timestamp_bits, self.worker_bits, self.sequence_bits
        if t + w + s != ID_BITS:
            raise LayoutError(
                f"timestamp_bits + worker_bits + sequence_bits must be 63, "
                f"got {t} + {w} + {s} = {t + w + s}"
            )
        for name, bits in (("timestamp_bits", t), ("worker_bits", w), ("sequence_bits", s)):
            if bits < 1:
                raise LayoutError(f"{name} must be at least 1 bit wide")
        if s > 31:
            raise LayoutError(f"sequence_bits must be at most 31, got {s}")
        if w > 16:
            raise LayoutError(f"worker_bits must be at most 16, got {w}")
        if not 0 <= self.epoch_unix_ms < 1 << 64:
            raise LayoutError(f"epoch_unix_ms {self.epoch_unix_ms} is not a u64")

    @property
    def max_worker(self) -> int:
        """Highest worker id the layout holds (1023 by default)."""
        return (1 << self.worker_bits) - 1

    @property
    def max_lease(self) -> int:
        """IDs per tick per worker, also the largest LEASE (4096 by default)."""
        return 1 << self.sequence_bits

    @property
    def max_tick(self) -> int:
        """Highest tick the timestamp field holds."""
        return (1 << self.timestamp_bits) - 1

    @property
    def end_of_life_unix_ms(self) -> int:
        """The last Unix millisecond an ID can carry (2093-09-06 for the default)."""
        return self.epoch_unix_ms + self.max_tick

    def compose(self, tick: int, worker: int, sequence: int) -> int:
        """Puts an ID together; raises ``ValueError`` for a field out of its range."""
        if not 0 <= tick <= self.max_tick:
            raise ValueError(f"tick {tick} does not fit {self.timestamp_bits} bits")
        if not 0 <= worker <= self.max_worker:
            raise ValueError(f"worker {worker} does not fit {self.worker_bits} bits")
        if not 0 <= sequence < self.max_lease:
            raise ValueError(f"sequence {sequence} does not fit {self.sequence_bits} bits")
        return (
            (tick << (self.worker_bits + self.sequence_bits))
            | (worker << self.sequence_bits)
            | sequence
        )

    def decompose(self, id: int) -> Parts:
        """Takes an ID apart (bits above the 63 are ignored, as the Rust client does)."""
        tick = (id >> (self.worker_bits + self.sequence_bits)) & self.max_tick
        worker = (id >> self.sequence_bits) & self.max_worker
        sequence = id & (self.max_lease - 1)
        return Parts(self.epoch_unix_ms + tick, tick, worker, sequence)

    def decode(self, id: int) -> Parts:
        """Same as :meth:`decompose`: time (``.time``, ``.unix_ms``), worker and sequence."""
        return self.decompose(id)

    def __str__(self) -> str:
        return (
            f"{self.timestamp_bits}/{self.worker_bits}/{self.sequence_bits} "
            f"epoch {format_unix_ms(self.epoch_unix_ms)}"
        )


#: Twitter's 41/10/12 split with the 2024-01-01 epoch.
DEFAULT = Layout()
Layout.DEFAULT = DEFAULT
