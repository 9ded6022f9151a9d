#!/usr/bin/env python3
"""Writes the seed corpus: hand-made inputs that reach every frame and every error path, so a
short CI run starts from the interesting states instead of rediscovering the framing.

Input layout of the stream targets (see fuzz/src/lib.rs `split`): mode byte, cut count, cuts as
big-endian u16 offsets, then the byte stream. The roundtrip target reads the same header, then
recipes (fuzz/src/roundtrip.rs): opcode, body length (u16), stretch, body.
Run from anywhere: python3 fuzz/seeds/make_seeds.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN = b"fuzz-token"  # fuzz_targets/connection.rs TOKEN


def frame(opcode, body):
    return struct.pack(">IB", 1 + len(body), opcode) + body


def hello(version=1, token=b""):
    return frame(0x01, struct.pack(">HB", version, len(token)) + token)


def lease(rid, count):
    return frame(0x02, struct.pack(">II", rid, count))


def ping(nonce):
    return frame(0x03, struct.pack(">Q", nonce))


def bulk_lease(rid, count):
    """Protocol version 2 (COMMON.md; in the codec once the lead lands it)."""
    return frame(0x04, struct.pack(">II", rid, count))


def bulk_leased(rid, runs):
    return frame(0x84, struct.pack(">IH", rid, len(runs))
                 + b"".join(struct.pack(">QI", first, count) for first, count in runs))


def welcome_v2(first_worker=8, worker_count=4, max_bulk=1 << 22):
    return frame(0x81, struct.pack(">HHQBBBIQHHI", 2, 9, 1704067200000, 41, 10, 12, 4096,
                                   1764288000000, first_worker, worker_count, max_bulk))


def welcome():
    return frame(0x81, struct.pack(">HHQBBBIQ", 1, 7, 1704067200000, 41, 10, 12, 4096, 1764288000000))


def leased(rid, first, count):
    return frame(0x82, struct.pack(">IQI", rid, first, count))


def pong(nonce):
    return frame(0x83, struct.pack(">Q", nonce))


def goaway(reason):
    return frame(0x8E, struct.pack(">H", reason))


def error(rid, code, msg):
    m = msg.encode()
    return frame(0x8F, struct.pack(">IHH", rid, code, len(m)) + m)


def stream_input(stream, mode=0, cuts=()):
    head = bytes([mode, len(cuts)]) + b"".join(struct.pack(">H", c) for c in cuts)
    return head + stream


REQUESTS = {
    "pipeline": hello() + lease(1, 4096) + ping(7) + lease(2, 1),
    "lease_bounds": lease(1, 0) + lease(2, 4097) + lease(3, 4096) + lease(4, 0xFFFFFFFF),
    "hello_255": hello(1, bytes(range(255))) + lease(9, 10),
    "hello_v0": hello(0) + lease(1, 1),
    "len_zero": lease(1, 1) + b"\x00\x00\x00\x00",
    "len_4gib": b"\xff\xff\xff\xff" + lease(1, 1),
    "unknown_opcode": ping(1) + frame(0x42, b""),
    "reply_opcode": frame(0x82, bytes(16)),
    "short_lease": frame(0x02, bytes(4)),
    "hello_bad_len": frame(0x01, b"\x00\x01\x05ab"),
    "partial": lease(1, 5) + lease(2, 5)[:7],
    # Version 2: until the codec knows BULK_LEASE these are unknown opcodes (MALFORMED).
    "v2_bulk": hello(2) + bulk_lease(1, 1 << 22) + bulk_lease(2, 0) + bulk_lease(3, (1 << 22) + 1)
    + lease(4, 4096) + bulk_lease(5, 10000),
    "v1_bulk": hello(1) + bulk_lease(1, 5),
}

RESPONSES = {
    "all": welcome() + leased(7, 252584342323228672, 4096) + pong(1) + goaway(0)
    + error(0, 1, "unknown opcode 0x42"),
    "bad_utf8": frame(0x8F, struct.pack(">IHH", 0, 1, 2) + b"\xc3\x28"),
    "error_len_mismatch": frame(0x8F, struct.pack(">IHH", 0, 1, 9) + b"abc"),
    "max_error": error(0, 7, "x" * 1015),
    "len_4gib": b"\xff\xff\xff\xff",
    "v2": welcome_v2() + bulk_leased(7, [(252584342323228672, 4096), (252584342323232768, 904)])
    + bulk_leased(8, [(1, 1)] * 84),
}


def recipe(frame_bytes, stretch=0):
    """A roundtrip recipe that rebuilds `frame_bytes` (prefix, opcode, body)."""
    opcode, body = frame_bytes[4], frame_bytes[5:]
    return struct.pack(">BHB", opcode, len(body), stretch) + body


def recipes(stream, stretch=0):
    out, i = b"", 0
    while i + 4 <= len(stream):
        n = struct.unpack(">I", stream[i:i + 4])[0]
        if n == 0 or n > 1024 or i + 4 + n > len(stream):
            break
        out += recipe(stream[i:i + 4 + n], stretch)
        i += 4 + n
    return out


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


for name, s in REQUESTS.items():
    write("decode_request", name, stream_input(s, cuts=(3, 6)))
    write("connection", name, stream_input(s))
    write("connection", name + "_split", stream_input(s, mode=0b1100, cuts=(1, 5, 13)))
    write("connection", name + "_token", stream_input(hello(1, TOKEN) + s, mode=1))
    write("connection", name + "_shutdown", stream_input(s, mode=0x12, cuts=(13,)))
write("connection", "token_missing", stream_input(lease(1, 1), mode=1))
write("connection", "token_wrong", stream_input(hello(1, b"fuzz-tokem") + lease(1, 1), mode=1))
for name, s in RESPONSES.items():
    write("decode_response", name, stream_input(s, cuts=(2, 40)))
ROUNDTRIP = {
    "requests": recipes(REQUESTS["pipeline"] + REQUESTS["hello_255"] + ping(2**64 - 1)),
    "responses": recipes(RESPONSES["all"] + RESPONSES["max_error"]),
    "stretched": recipe(hello(1, b"t" * 200), 40) + recipe(error(9, 3, "e" * 1000), 7)
    + recipe(error(1, 1, "\u00e9" * 500), 9) + recipe(lease(1, 1)),
    "v2": recipes(REQUESTS["v2_bulk"] + RESPONSES["v2"]),
}
for name, s in ROUNDTRIP.items():
    write("roundtrip", name, stream_input(s, cuts=(3, 70, 300)))
