"""The codec on its own: split reads, every malformed shape, and garbage that must only ever
raise ProtocolError (never another exception, never a wrong frame)."""

from __future__ import annotations

import random
import struct

from typing import List

import pytest

from snowlease import ProtocolError, wire


def frame(opcode: int, body: bytes) -> bytes:
    return struct.pack(">IB", 1 + len(body), opcode) + body


def test_a_frame_fed_one_byte_at_a_time_comes_out_once_whole() -> None:
    data = wire.encode(wire.Leased(7, 123, 4)) + wire.encode(wire.Pong(9))
    reader = wire.FrameReader()
    got = []
    for b in data:
        got += reader.feed(bytes([b]))
    assert got == [wire.Leased(7, 123, 4), wire.Pong(9)]
    assert reader.pending() == 0


@pytest.mark.parametrize("data, message", [
    (b"\x00\x00\x00\x00", "frame length 0 (a frame needs at least an opcode)"),
    (b"\x00\x00\x13\x88", "frame length 5000 exceeds the limit of 1024"),
    (frame(0x42, b""), "unknown opcode 0x42"),
    (frame(0x02, b"1234"), "unknown opcode 0x02"),  # a request opcode from a server
    (frame(0x82, b"\x00" * 15), "LEASED body must be 16 bytes, got 15"),
    (frame(0x83, b"\x00" * 9), "PONG body must be 8 bytes, got 9"),
    (frame(0x8E, b"\x00"), "GOAWAY body must be 2 bytes, got 1"),
    (frame(0x81, b"\x00\x01" + b"\x00" * 24), "WELCOME body must be 27 bytes, got 26"),
    (frame(0x81, b"\x00\x02" + b"\x00" * 25), "WELCOME version 2 body must be 35 bytes, got 27"),
    (frame(0x81, b"\x00\x03" + b"\x00" * 25), "WELCOME announces version 3"),
    (frame(0x81, b"\x00"), "WELCOME body must be 27 bytes, got 1"),
    (frame(0x8F, b"\x00\x00\x00\x00\x00\x01\x00\x05abc"), "ERROR body must be 13 bytes, got 11"),
    (frame(0x8F, b"\x00\x00\x00\x00\x00\x01\x00\x02\xff\xfe"), "ERROR message is not valid UTF-8"),
    (frame(0x8F, b"\x00\x00"), "ERROR body must be 8 bytes, got 2"),
    (frame(0x84, b"\x00\x00\x00\x01\x00\x00"), "run_count 0 is outside 1..=84"),
    (frame(0x84, b"\x00\x00\x00\x01\x00\x55" + b"\x00" * 12), "run_count 85 is outside"),
    (frame(0x84, b"\x00\x00\x00\x01\x00\x02" + b"\x00" * 12), "BULK_LEASED body must be 30 bytes"),
])
def test_malformed_server_frames_raise_a_clear_protocol_error(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        wire.FrameReader().feed(data)


@pytest.mark.parametrize("data, message", [
    (frame(0x01, b"\x00\x01\x05ab"), "HELLO body must be 8 bytes, got 5"),
    (frame(0x01, b"\x00"), "HELLO body must be 3 bytes, got 1"),
    (frame(0x02, b"1234"), "LEASE body must be 8 bytes, got 4"),
    (frame(0x04, b"123456789"), "BULK_LEASE body must be 8 bytes, got 9"),
    (frame(0x82, b"\x00" * 16), "unknown opcode 0x82"),
])
def test_malformed_requests_raise_a_clear_protocol_error(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        wire.decode_request(data)


def test_the_length_is_checked_before_the_body_arrives() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        wire.decode_response(b"\x7f\xff\xff\xff")
    assert wire.decode_response(b"\x00\x00\x04\x00\x8f") is None  # 1024 is allowed: wait


def test_encoding_refuses_values_that_do_not_fit_their_field() -> None:
    with pytest.raises(ValueError, match="request_id"):
        wire.encode(wire.Lease(1 << 32, 1))
    with pytest.raises(ValueError, match="token"):
        wire.encode(wire.Hello(1, b"x" * 256))
    with pytest.raises(ValueError, match="runs"):
        wire.encode(wire.BulkLeased(1, ()))
    with pytest.raises(ValueError, match="exactly when version is 2"):
        wire.encode(wire.Welcome(1, 0, 0, 41, 10, 12, 4096, 0, first_worker=1, worker_count=1,
                                 max_bulk=1))
    with pytest.raises(ValueError, match="exactly when version is 2"):
        wire.encode(wire.Welcome(2, 0, 0, 41, 10, 12, 4096, 0))


def test_an_overlong_error_message_is_cut_at_a_character_boundary() -> None:
    data = wire.encode(wire.Error(0, 7, "é" * 600))
    assert len(data) == 4 + wire.MAX_FRAME_LEN - 1  # 1015 bytes cut to 1014: a whole "é"
    got = wire.decode_response(data)
    assert got is not None and isinstance(got[0], wire.Error)
    assert got[0].message == "é" * 507


def test_every_frame_round_trips() -> None:
    frames: List[wire.Frame] = [
        wire.Hello(1, b"s3cret"), wire.Lease(1, 4096), wire.Ping(2 ** 64 - 1),
        wire.BulkLease(3, 2 ** 22),
        wire.Welcome(1, 7, 1, 41, 10, 12, 4096, 2),
        wire.Welcome(2, 7, 1, 41, 10, 12, 4096, 2, 4, 4, 2 ** 22),
        wire.Leased(5, 2 ** 63 - 1, 1), wire.Pong(0), wire.GoAway(9),
        wire.Error(0, 99, "unknown code"),
        wire.BulkLeased(6, tuple(wire.Run(i, i + 1) for i in range(wire.MAX_BULK_RUNS))),
    ]
    for f in frames:
        data = wire.encode(f)
        decode = wire.decode_request if isinstance(f, (wire.Hello, wire.Lease, wire.Ping,
                                                       wire.BulkLease)) else wire.decode_response
        assert decode(data + b"\x00\x00") == (f, len(data))


def test_random_bytes_only_ever_raise_protocol_error() -> None:
    rng = random.Random(1)
    valid = [wire.encode(wire.Leased(1, 2, 3)), wire.encode(wire.Error(0, 1, "x")),
             wire.encode(wire.Welcome(2, 7, 1, 41, 10, 12, 4096, 2, 4, 4, 9))]
    for _ in range(20_000):
        if rng.random() < 0.5:
            data = bytearray(rng.choice(valid))
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            data = bytearray(rng.randbytes(rng.randint(0, 40)) if hasattr(rng, "randbytes")
                             else bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))))
        for decode in (wire.decode_response, wire.decode_request):
            try:
                got = decode(bytes(data))
            except ProtocolError:
                continue
            if got is not None:
                assert wire.encode(got[0]) == bytes(data[:got[1]])


def test_error_codes_and_reasons_have_names_and_unknown_ones_are_safe() -> None:
    assert wire.ErrorCode.name(4) == "UNAUTHORIZED"
    unknown = wire.ErrorCode.info(99)
    assert (unknown.name, unknown.closes_connection, unknown.retryable) == ("UNKNOWN", True, False)
    assert wire.GoAwayReason.name(0) == "SHUTDOWN" and wire.GoAwayReason.name(7) == "UNKNOWN"
