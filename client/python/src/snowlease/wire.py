"""The wire format: a pure codec for every frame of protocol.md, no sockets, no clocks.

Bytes flow in through :func:`decode_response` / :func:`decode_request` (or a
:class:`FrameReader` fed from a socket). Each looks at the 4-byte length prefix, checks it
against :data:`MAX_FRAME_LEN` *before* looking further, checks that the body has exactly the
size its opcode requires, and only then reads fields. They return ``None`` while the frame is
incomplete and raise :class:`~snowlease.errors.ProtocolError` when the stream is corrupt (the
caller closes the connection). Typed frames flow out through :func:`encode`.

Version 1 is what protocol.md describes and what :class:`~snowlease.Client` speaks. The codec
also knows the version-2 frames (a WELCOME whose ``version`` is 2 carries the worker set and
``max_bulk``; BULK_LEASE and BULK_LEASED), so it decodes whatever a server of either version
may send; deciding what is *allowed* on a connection is the client's job, not the codec's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

from .errors import ProtocolError

#: Protocol version the client sends in HELLO (section 9.2): every server version serves it.
VERSION = 1
#: Highest version whose frames this codec decodes.
MAX_VERSION = 2
#: Bytes of the length prefix.
LEN_PREFIX = 4
#: Largest value the length prefix may carry (opcode + body), in either direction.
MAX_FRAME_LEN = 1024
#: Longest HELLO token: its length travels in one byte.
MAX_TOKEN_LEN = 255
#: Longest ERROR message: a maximal frame less opcode, request id, code and message length.
MAX_ERROR_MESSAGE = MAX_FRAME_LEN - 1 - 4 - 2 - 2
#: Most runs in one BULK_LEASED: (1024 - 1 - 6) // 12, so the frame fits the length limit.
MAX_BULK_RUNS = (MAX_FRAME_LEN - 1 - 6) // 12
#: WELCOME body size of each version.
WELCOME_BODY = {1: 27, 2: 35}


class Opcode:
    """Opcodes. Requests are 0x01..=0x7F; a reply is its request's opcode with the top bit set."""

    HELLO = 0x01
    LEASE = 0x02
    PING = 0x03
    BULK_LEASE = 0x04
    WELCOME = 0x81
    LEASED = 0x82
    PONG = 0x83
    BULK_LEASED = 0x84
    GOAWAY = 0x8E
    ERROR = 0x8F

    #: Name of every opcode, as protocol.md writes it.
    NAMES: Dict[int, str] = {
        0x01: "HELLO",
        0x02: "LEASE",
        0x03: "PING",
        0x04: "BULK_LEASE",
        0x81: "WELCOME",
        0x82: "LEASED",
        0x83: "PONG",
        0x84: "BULK_LEASED",
        0x8E: "GOAWAY",
        0x8F: "ERROR",
    }


@dataclass(frozen=True)
class ErrorCodeInfo:
    """One row of protocol.md's error table."""

    code: int
    name: str
    closes_connection: bool
    retryable: bool
    description: str


class ErrorCode:
    """ERROR codes (protocol.md section 6). Codes are plain ints so that a code from a newer
    server still decodes; :meth:`info` describes any code, unknown ones as closing and not
    retryable, as section 6 requires."""

    MALFORMED = 1
    UNSUPPORTED_VERSION = 2
    INVALID_COUNT = 3
    UNAUTHORIZED = 4
    UNAVAILABLE = 5
    OVERLOADED = 6
    INTERNAL = 7

    #: Every code this version defines, in table order: the one definition of each code.
    ALL: Tuple[ErrorCodeInfo, ...] = (
        ErrorCodeInfo(1, "MALFORMED", True, False, "frame is malformed"),
        ErrorCodeInfo(2, "UNSUPPORTED_VERSION", True, False, "protocol version not supported"),
        ErrorCodeInfo(
            3, "INVALID_COUNT", False, False, "lease count must be between 1 and max_lease"
        ),
        ErrorCodeInfo(4, "UNAUTHORIZED", True, False, "a valid token is required"),
        ErrorCodeInfo(5, "UNAVAILABLE", False, True, "server cannot issue IDs right now"),
        ErrorCodeInfo(6, "OVERLOADED", True, True, "server is at its connection limit"),
        ErrorCodeInfo(7, "INTERNAL", True, True, "internal server error"),
    )

    @classmethod
    def info(cls, code: int) -> ErrorCodeInfo:
        """The table row of ``code``; an unknown code closes and is not retryable."""
        for row in cls.ALL:
            if row.code == code:
                return row
        return ErrorCodeInfo(code, "UNKNOWN", True, False, "unknown error code")

    @classmethod
    def name(cls, code: int) -> str:
        """The code's name, ``UNKNOWN`` for codes this version does not define."""
        return cls.info(code).name


class GoAwayReason:
    """GOAWAY reasons (protocol.md section 7); an unknown reason means SHUTDOWN."""

    SHUTDOWN = 0
    IDLE_TIMEOUT = 1
    WRITE_TIMEOUT = 2

    NAMES: Dict[int, str] = {0: "SHUTDOWN", 1: "IDLE_TIMEOUT", 2: "WRITE_TIMEOUT"}

    @classmethod
    def name(cls, reason: int) -> str:
        """The reason's name, ``UNKNOWN`` for reasons this version does not define."""
        return cls.NAMES.get(reason, "UNKNOWN")


# ---------------------------------------------------------------------------------------------
# Frames. Field names are protocol.md's; every integer is unsigned and checked on encode.


@dataclass(frozen=True)
class Hello:
    """HELLO (0x01): the highest version the client speaks and an optional token."""

    version: int = VERSION
    token: bytes = b""


@dataclass(frozen=True)
class Lease:
    """LEASE (0x02): ask for ``count`` consecutive IDs of one tick."""

    request_id: int
    count: int


@dataclass(frozen=True)
class Ping:
    """PING (0x03): echo ``nonce``."""

    nonce: int


@dataclass(frozen=True)
class BulkLease:
    """BULK_LEASE (0x04, version 2 only): ask for up to ``count`` IDs as runs."""

    request_id: int
    count: int


@dataclass(frozen=True)
class Welcome:
    """WELCOME (0x81): the version spoken from now on, the worker id and the ID layout.

    ``first_worker``, ``worker_count`` and ``max_bulk`` exist only when ``version`` is 2 (a
    35-byte body) and are ``None`` in a version-1 WELCOME (27 bytes).
    """

    version: int
    worker_id: int
    epoch_unix_ms: int
    timestamp_bits: int
    worker_bits: int
    sequence_bits: int
    max_lease: int
    server_unix_ms: int
    first_worker: Optional[int] = None
    worker_count: Optional[int] = None
    max_bulk: Optional[int] = None


@dataclass(frozen=True)
class Leased:
    """LEASED (0x82): IDs ``first_id .. first_id + count - 1`` answer ``request_id``."""

    request_id: int
    first_id: int
    count: int


@dataclass(frozen=True)
class Pong:
    """PONG (0x83): the PING's nonce."""

    nonce: int


@dataclass(frozen=True)
class Run:
    """One run of a BULK_LEASED: ``count`` IDs of first_id's worker at consecutive positions."""

    first_id: int
    count: int


@dataclass(frozen=True)
class BulkLeased:
    """BULK_LEASED (0x84, version 2): 1 to 84 runs answering ``request_id``."""

    request_id: int
    runs: Tuple[Run, ...]


@dataclass(frozen=True)
class GoAway:
    """GOAWAY (0x8E): the server closes the connection after this frame."""

    reason: int


@dataclass(frozen=True)
class Error:
    """ERROR (0x8F): a request failed (``request_id``), or the connection is refused (0)."""

    request_id: int
    code: int
    message: str


Request = Union[Hello, Lease, Ping, BulkLease]
Response = Union[Welcome, Leased, Pong, BulkLeased, GoAway, Error]
Frame = Union[Request, Response]

_U8, _U16, _U32, _U64 = 0xFF, 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF


def _check(frame: str, field: str, value: int, limit: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ValueError(f"{frame} {field} = {value!r} does not fit its field (0..={limit})")


def _header(body_len: int, opcode: int) -> bytes:
    return struct.pack(">IB", 1 + body_len, opcode)


def encode(frame: Frame) -> bytes:
    """The frame as bytes, length prefix included.

    Raises ``ValueError`` for a field out of its range or a frame too long for the protocol
    (a token over 255 bytes, more than 84 runs). An ERROR message over 1,015 bytes is cut at a
    character boundary, as the server does.
    """
    if isinstance(frame, (Lease, BulkLease)):
        name, op = ("LEASE", Opcode.LEASE) if isinstance(frame, Lease) else (
            "BULK_LEASE", Opcode.BULK_LEASE)
        _check(name, "request_id", frame.request_id, _U32)
        _check(name, "count", frame.count, _U32)
        return _header(8, op) + struct.pack(">II", frame.request_id, frame.count)
    if isinstance(frame, Leased):
        _check("LEASED", "request_id", frame.request_id, _U32)
        _check("LEASED", "first_id", frame.first_id, _U64)
        _check("LEASED", "count", frame.count, _U32)
        return _header(16, Opcode.LEASED) + struct.pack(
            ">IQI", frame.request_id, frame.first_id, frame.count
        )
    if isinstance(frame, Hello):
        _check("HELLO", "version", frame.version, _U16)
        token = bytes(frame.token)
        if len(token) > MAX_TOKEN_LEN:
            raise ValueError(f"HELLO token is {len(token)} bytes, the limit is {MAX_TOKEN_LEN}")
        return _header(3 + len(token), Opcode.HELLO) + struct.pack(
            ">HB", frame.version, len(token)
        ) + token
    if isinstance(frame, (Ping, Pong)):
        name, op = ("PING", Opcode.PING) if isinstance(frame, Ping) else ("PONG", Opcode.PONG)
        _check(name, "nonce", frame.nonce, _U64)
        return _header(8, op) + struct.pack(">Q", frame.nonce)
    if isinstance(frame, Welcome):
        return _encode_welcome(frame)
    if isinstance(frame, BulkLeased):
        _check("BULK_LEASED", "request_id", frame.request_id, _U32)
        if not 1 <= len(frame.runs) <= MAX_BULK_RUNS:
            raise ValueError(f"BULK_LEASED carries {len(frame.runs)} runs, 1..={MAX_BULK_RUNS}")
        out = bytearray(_header(6 + 12 * len(frame.runs), Opcode.BULK_LEASED))
        out += struct.pack(">IH", frame.request_id, len(frame.runs))
        for run in frame.runs:
            _check("BULK_LEASED", "first_id", run.first_id, _U64)
            _check("BULK_LEASED", "count", run.count, _U32)
            out += struct.pack(">QI", run.first_id, run.count)
        return bytes(out)
    if isinstance(frame, GoAway):
        _check("GOAWAY", "reason", frame.reason, _U16)
        return _header(2, Opcode.GOAWAY) + struct.pack(">H", frame.reason)
    if isinstance(frame, Error):
        _check("ERROR", "request_id", frame.request_id, _U32)
        _check("ERROR", "code", frame.code, _U16)
        message = frame.message.encode("utf-8")
        if len(message) > MAX_ERROR_MESSAGE:
            message = message[:MAX_ERROR_MESSAGE].decode("utf-8", "ignore").encode("utf-8")
        return _header(8 + len(message), Opcode.ERROR) + struct.pack(
            ">IHH", frame.request_id, frame.code, len(message)
        ) + message
    raise TypeError(f"not a snowlease frame: {frame!r}")


def _encode_welcome(w: Welcome) -> bytes:
    for field, value, limit in (
        ("version", w.version, _U16),
        ("worker_id", w.worker_id, _U16),
        ("epoch_unix_ms", w.epoch_unix_ms, _U64),
        ("timestamp_bits", w.timestamp_bits, _U8),
        ("worker_bits", w.worker_bits, _U8),
        ("sequence_bits", w.sequence_bits, _U8),
        ("max_lease", w.max_lease, _U32),
        ("server_unix_ms", w.server_unix_ms, _U64),
    ):
        _check("WELCOME", field, value, limit)
    v2 = (w.first_worker, w.worker_count, w.max_bulk)
    size = WELCOME_BODY.get(w.version)
    if size is None:
        raise ValueError(f"WELCOME version {w.version} has no known layout (1 or 2)")
    if (size == WELCOME_BODY[2]) != all(v is not None for v in v2) or (
        size == WELCOME_BODY[1] and any(v is not None for v in v2)
    ):
        raise ValueError(
            "WELCOME first_worker, worker_count and max_bulk are present exactly when version is 2"
        )
    body = struct.pack(
        ">HHQBBBIQ",
        w.version,
        w.worker_id,
        w.epoch_unix_ms,
        w.timestamp_bits,
        w.worker_bits,
        w.sequence_bits,
        w.max_lease,
        w.server_unix_ms,
    )
    if w.first_worker is not None and w.worker_count is not None and w.max_bulk is not None:
        _check("WELCOME", "first_worker", w.first_worker, _U16)
        _check("WELCOME", "worker_count", w.worker_count, _U16)
        _check("WELCOME", "max_bulk", w.max_bulk, _U32)
        body += struct.pack(">HHI", w.first_worker, w.worker_count, w.max_bulk)
    return _header(len(body), Opcode.WELCOME) + body


# ---------------------------------------------------------------------------------------------
# Decoding. `Buf` is anything indexable as bytes; nothing is copied until a frame is complete.

Buf = Union[bytes, bytearray, memoryview]


class _Framed(NamedTuple):
    """Where the complete frame at some offset lies."""

    #: Bytes the frame takes, length prefix included.
    total: int
    opcode: int
    #: Index of the body's first byte in the buffer.
    start: int
    #: Body bytes (the frame less prefix and opcode).
    size: int


def _frame_at(buf: Buf, offset: int) -> Optional[_Framed]:
    """The frame at ``offset`` once it is complete, ``None`` before; the length prefix is
    checked against :data:`MAX_FRAME_LEN` before anything else is read."""
    if len(buf) - offset < LEN_PREFIX:
        return None
    (length,) = struct.unpack_from(">I", buf, offset)
    if length == 0:
        raise ProtocolError("frame length 0 (a frame needs at least an opcode)")
    if length > MAX_FRAME_LEN:
        raise ProtocolError(f"frame length {length} exceeds the limit of {MAX_FRAME_LEN}")
    total: int = LEN_PREFIX + length
    if len(buf) - offset < total:
        return None
    return _Framed(total, buf[offset + LEN_PREFIX], offset + LEN_PREFIX + 1, length - 1)


def _body_size(name: str, got: int, expected: int) -> None:
    if got != expected:
        raise ProtocolError(f"{name} body must be {expected} bytes, got {got}")


def decode_request(buf: Buf, offset: int = 0) -> Optional[Tuple[Request, int]]:
    """Decodes the request frame at ``offset``: ``(frame, bytes it took)``, ``None`` if the
    frame is incomplete. Raises :class:`ProtocolError` if the bytes are not a request."""
    framed = _frame_at(buf, offset)
    if framed is None:
        return None
    total, op, start, size = framed
    if op == Opcode.HELLO:
        expected = 3 if size < 3 else 3 + buf[start + 2]
        _body_size("HELLO", size, expected)
        (version,) = struct.unpack_from(">H", buf, start)
        return Hello(version, bytes(buf[start + 3 : offset + total])), total
    if op in (Opcode.LEASE, Opcode.BULK_LEASE):
        name = "LEASE" if op == Opcode.LEASE else "BULK_LEASE"
        _body_size(name, size, 8)
        request_id, count = struct.unpack_from(">II", buf, start)
        cls = Lease if op == Opcode.LEASE else BulkLease
        return cls(request_id, count), total
    if op == Opcode.PING:
        _body_size("PING", size, 8)
        return Ping(struct.unpack_from(">Q", buf, start)[0]), total
    raise ProtocolError(f"unknown opcode 0x{op:02x}")


def decode_response(buf: Buf, offset: int = 0) -> Optional[Tuple[Response, int]]:
    """Decodes the server frame at ``offset``: ``(frame, bytes it took)``, ``None`` if the
    frame is incomplete. Raises :class:`ProtocolError` if the bytes are not a server frame."""
    framed = _frame_at(buf, offset)
    if framed is None:
        return None
    total, op, start, size = framed
    if op == Opcode.LEASED:
        _body_size("LEASED", size, 16)
        request_id, first_id, count = struct.unpack_from(">IQI", buf, start)
        return Leased(request_id, first_id, count), total
    if op == Opcode.WELCOME:
        return _decode_welcome(buf, start, size), total
    if op == Opcode.PONG:
        _body_size("PONG", size, 8)
        return Pong(struct.unpack_from(">Q", buf, start)[0]), total
    if op == Opcode.GOAWAY:
        _body_size("GOAWAY", size, 2)
        return GoAway(struct.unpack_from(">H", buf, start)[0]), total
    if op == Opcode.ERROR:
        declared = struct.unpack_from(">H", buf, start + 6)[0] if size >= 8 else 0
        _body_size("ERROR", size, 8 + declared)
        request_id, code = struct.unpack_from(">IH", buf, start)
        try:
            message = bytes(buf[start + 8 : offset + total]).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("ERROR message is not valid UTF-8") from None
        return Error(request_id, code, message), total
    if op == Opcode.BULK_LEASED:
        return _decode_bulk_leased(buf, start, size), total
    raise ProtocolError(f"unknown opcode 0x{op:02x}")


def _decode_welcome(buf: Buf, start: int, size: int) -> Welcome:
    if size < 2:
        _body_size("WELCOME", size, WELCOME_BODY[1])
    (version,) = struct.unpack_from(">H", buf, start)
    expected = WELCOME_BODY.get(version)
    if expected is None:
        raise ProtocolError(f"WELCOME announces version {version}; this codec knows 1 and 2")
    _body_size(f"WELCOME version {version}" if version != 1 else "WELCOME", size, expected)
    v, worker, epoch, t_bits, w_bits, s_bits, max_lease, now = struct.unpack_from(
        ">HHQBBBIQ", buf, start)
    welcome = Welcome(v, worker, epoch, t_bits, w_bits, s_bits, max_lease, now)
    if version == 1:
        return welcome
    first_worker, worker_count, max_bulk = struct.unpack_from(">HHI", buf, start + 27)
    return Welcome(v, worker, epoch, t_bits, w_bits, s_bits, max_lease, now,
                   first_worker, worker_count, max_bulk)


def _decode_bulk_leased(buf: Buf, start: int, size: int) -> BulkLeased:
    if size < 6:
        _body_size("BULK_LEASED", size, 6 + 12)
    request_id, run_count = struct.unpack_from(">IH", buf, start)
    if not 1 <= run_count <= MAX_BULK_RUNS:
        raise ProtocolError(f"BULK_LEASED run_count {run_count} is outside 1..={MAX_BULK_RUNS}")
    _body_size("BULK_LEASED", size, 6 + 12 * run_count)
    runs = tuple(
        Run(*struct.unpack_from(">QI", buf, start + 6 + 12 * i)) for i in range(run_count)
    )
    return BulkLeased(request_id, runs)


class FrameReader:
    """Reassembles server frames from a byte stream read in arbitrary pieces.

    ``feed(data)`` returns every frame completed so far, in order; a corrupt stream raises
    :class:`ProtocolError`, after which the reader must not be used again (close the
    connection). At most one incomplete frame (<= 1,028 bytes) is ever kept.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> List[Response]:
        """Adds ``data`` and returns the frames it completed."""
        buf = self._buf
        buf += data
        frames: List[Response] = []
        pos = 0
        while True:
            got = decode_response(buf, pos)
            if got is None:
                break
            frames.append(got[0])
            pos += got[1]
        if pos:
            del buf[:pos]
        return frames

    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)
