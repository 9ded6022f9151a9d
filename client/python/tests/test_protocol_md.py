"""protocol.md checked against the Python codec, so the two cannot drift apart.

Like the Rust test (client/tests/protocol_md.rs), this reads every ``hex:`` block of the
document at test time, checks each field's bytes against its decoded value and its human
reading, builds the frame from the decoded values with ``snowlease.wire``, compares the
encoding byte for byte, and decodes the documented bytes back. A dump whose frame name the
codec does not know fails. The opcode, error code and GOAWAY tables are compared with the
codec's constants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple, Union

import pytest

from snowlease import wire
from snowlease.layout import DEFAULT, format_unix_ms

PROTOCOL_MD = Path(__file__).resolve().parent.parent.parent.parent / "protocol.md"

Value = Union[int, str]


@dataclass
class Field:
    name: str
    value: Value
    comment: str
    data: bytearray


@dataclass
class Dump:
    title: str
    line: int
    fields: List[Field] = field(default_factory=list)

    @property
    def frame(self) -> str:
        return self.title.split()[0] if self.title else ""

    def bytes(self) -> bytes:
        return b"".join(bytes(f.data) for f in self.fields)

    def get(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise AssertionError(f"{self}: no field {name}")

    def int(self, name: str) -> int:
        v = self.get(name).value
        assert isinstance(v, int), f"{self}: {name} is text {v!r}, expected a number"
        return v

    def text(self, name: str) -> str:
        v = self.get(name).value
        assert isinstance(v, str), f"{self}: {name} is the number {v}, expected text"
        return v

    def __str__(self) -> str:
        return f"protocol.md line {self.line} (hex: {self.title})"


_HEX = re.compile(r"^[0-9a-fA-F]{2}$")


def split_line(line: str) -> Tuple[bytearray, str]:
    """The leading hex bytes of a dump line and the annotation after them."""
    data = bytearray()
    rest = line.lstrip()
    while True:
        token = rest.split(None, 1)[0] if rest.split() else ""
        if not _HEX.match(token):
            return data, rest.strip()
        data.append(int(token, 16))
        rest = rest[2:].lstrip()


def parse_annotation(text: str) -> Tuple[str, Value, str]:
    """``name = value (comment)``; value is decimal, ``0x`` hex, or a quoted string."""
    name, eq, rest = text.partition("=")
    if not eq:
        raise AssertionError(f"expected `name = value`, got {text!r}")
    rest = rest.strip()
    value: Value
    if rest.startswith('"'):
        end = rest.rfind('"')
        if end == 0:
            raise AssertionError(f"unterminated string in {text!r}")
        value, comment = rest[1:end], rest[end + 1:]
    else:
        number, _, comment = rest.partition(" ")
        try:
            value = int(number, 16) if number.startswith("0x") else int(number, 10)
        except ValueError:
            raise AssertionError(f"{number!r} is not a number in {text!r}") from None
    comment = comment.strip()
    if comment.startswith("(") and comment.endswith(")"):
        comment = comment[1:-1]
    return name.strip(), value, comment


def dumps(doc: str) -> List[Dump]:
    """Every ``hex:`` block inside the fenced code blocks of ``doc``. A dump ends at a blank
    line, the next marker or the end of its code block."""
    out: List[Dump] = []
    in_fence = is_open = False
    for i, line in enumerate(doc.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_fence, is_open = not in_fence, False
            continue
        if not in_fence:
            continue
        if line.startswith("hex:"):
            out.append(Dump(line[4:].strip(), i))
            is_open = True
            continue
        if not line.strip():
            is_open = False
            continue
        if not is_open:
            continue
        dump = out[-1]
        data, annotation = split_line(line)
        if not annotation:
            assert dump.fields, f"protocol.md line {i}: bytes before any field"
            dump.fields[-1].data += data
        else:
            name, value, comment = parse_annotation(annotation)
            dump.fields.append(Field(name, value, comment, data))
    assert not in_fence, "protocol.md ends inside a code block"
    return out


# The fields each frame's dump must annotate, in wire order. BULK_LEASED's runs repeat
# ``first_id``/``count`` after ``run_count`` and are checked in build().
EXPECTED_FIELDS: Dict[str, List[str]] = {
    "HELLO": ["length", "opcode", "version", "token_len", "token"],
    "LEASE": ["length", "opcode", "request_id", "count"],
    "BULK_LEASE": ["length", "opcode", "request_id", "count"],
    "PING": ["length", "opcode", "nonce"],
    "PONG": ["length", "opcode", "nonce"],
    "WELCOME": ["length", "opcode", "version", "worker_id", "epoch_unix_ms", "timestamp_bits",
                "worker_bits", "sequence_bits", "max_lease", "server_unix_ms"],
    "LEASED": ["length", "opcode", "request_id", "first_id", "count"],
    "BULK_LEASED": ["length", "opcode", "request_id", "run_count"],
    "GOAWAY": ["length", "opcode", "reason"],
    "ERROR": ["length", "opcode", "request_id", "code", "message_len", "message"],
}
WELCOME_V2_FIELDS = ["first_worker", "worker_count", "max_bulk"]

WIDTH = {
    "opcode": 1, "token_len": 1, "timestamp_bits": 1, "worker_bits": 1, "sequence_bits": 1,
    "version": 2, "worker_id": 2, "reason": 2, "code": 2, "message_len": 2, "run_count": 2,
    "first_worker": 2, "worker_count": 2,
    "length": 4, "request_id": 4, "count": 4, "max_lease": 4, "max_bulk": 4,
    "nonce": 8, "epoch_unix_ms": 8, "server_unix_ms": 8, "first_id": 8,
}


def check_fields(d: Dump) -> None:
    names = [f.name for f in d.fields]
    assert d.frame in EXPECTED_FIELDS, f"{d}: the codec knows no frame named {d.frame!r}"
    expected = list(EXPECTED_FIELDS[d.frame])
    if d.frame == "WELCOME" and len(names) > len(expected):
        expected += WELCOME_V2_FIELDS
    if d.frame == "BULK_LEASED":
        expected += ["first_id", "count"] * d.int("run_count")
    assert names == expected, f"{d}: fields"
    for f in d.fields:
        width = WIDTH.get(f.name)
        if isinstance(f.value, int):
            assert width is not None, f"{d}: {f.name} is a number but has no known width"
            assert len(f.data) == width, f"{d}: {f.name} takes {width} bytes"
            assert int.from_bytes(bytes(f.data), "big") == f.value, f"{d}: {f.name} bytes"
            reading = {
                "opcode": lambda v: d.frame,
                "code": wire.ErrorCode.name,
                "reason": wire.GoAwayReason.name,
                "first_id": lambda v: str(DEFAULT.decompose(v)),
                "epoch_unix_ms": format_unix_ms,
                "server_unix_ms": format_unix_ms,
            }.get(f.name)
            if reading is not None:
                assert f.comment == reading(f.value), f"{d}: the reading beside {f.name}"
        else:
            assert width is None, f"{d}: {f.name} should be a number"
            assert bytes(f.data) == f.value.encode("utf-8"), f"{d}: {f.name} bytes are not its text"


def build(d: Dump) -> wire.Frame:
    """The frame the dump's decoded fields describe, built with the codec's types."""
    name = d.frame
    if name == "HELLO":
        return wire.Hello(d.int("version"), d.text("token").encode("utf-8"))
    if name == "LEASE":
        return wire.Lease(d.int("request_id"), d.int("count"))
    if name == "BULK_LEASE":
        return wire.BulkLease(d.int("request_id"), d.int("count"))
    if name == "PING":
        return wire.Ping(d.int("nonce"))
    if name == "PONG":
        return wire.Pong(d.int("nonce"))
    if name == "WELCOME":
        v2 = [d.int(n) for n in WELCOME_V2_FIELDS] if d.int("version") >= 2 else [None] * 3
        return wire.Welcome(
            d.int("version"), d.int("worker_id"), d.int("epoch_unix_ms"),
            d.int("timestamp_bits"), d.int("worker_bits"), d.int("sequence_bits"),
            d.int("max_lease"), d.int("server_unix_ms"), *v2)
    if name == "LEASED":
        return wire.Leased(d.int("request_id"), d.int("first_id"), d.int("count"))
    if name == "BULK_LEASED":
        values = [f.value for f in d.fields[4:]]
        runs = tuple(wire.Run(int(values[i]), int(values[i + 1]))
                     for i in range(0, len(values), 2))
        return wire.BulkLeased(d.int("request_id"), runs)
    if name == "GOAWAY":
        return wire.GoAway(d.int("reason"))
    if name == "ERROR":
        return wire.Error(d.int("request_id"), d.int("code"), d.text("message"))
    raise AssertionError(f"{d}: the codec knows no frame named {name!r}")


def is_request(frame: wire.Frame) -> bool:
    return isinstance(frame, (wire.Hello, wire.Lease, wire.Ping, wire.BulkLease))


def check_dump(d: Dump) -> None:
    check_fields(d)
    frame = build(d)
    documented = d.bytes()
    assert wire.encode(frame).hex(" ") == documented.hex(" "), \
        f"{d}: the codec encodes {frame!r} differently"
    decode = wire.decode_request if is_request(frame) else wire.decode_response
    assert decode(documented) == (frame, len(documented)), f"{d}: decoding the bytes"
    # Every strict prefix is an incomplete frame, never an error.
    for cut in range(len(documented)):
        assert decode(documented[:cut]) is None, f"{d}: {cut} bytes are not a frame yet"


@pytest.fixture(scope="module")
def doc() -> str:
    return PROTOCOL_MD.read_text(encoding="utf-8")


def test_every_hex_dump_is_exactly_what_the_codec_encodes_and_decodes(doc: str) -> None:
    all_dumps = dumps(doc)
    assert len(all_dumps) >= 18, f"only {len(all_dumps)} dumps found"
    for d in all_dumps:
        check_dump(d)


def test_every_frame_error_code_and_goaway_reason_of_version_1_has_a_dump(doc: str) -> None:
    titles = [d.title for d in dumps(doc)]
    assert len(set(titles)) == len(titles), f"duplicate dump titles: {titles}"
    wanted = ["HELLO", "HELLO with token", "LEASE", "PING", "WELCOME", "LEASED", "PONG"]
    wanted += [f"GOAWAY {n}" for n in wire.GoAwayReason.NAMES.values()]
    wanted += [f"ERROR {c.name}" for c in wire.ErrorCode.ALL]
    missing = [t for t in wanted if t not in titles]
    assert not missing, f"protocol.md has no dump for {missing}"


def test_a_dump_of_a_frame_the_codec_does_not_know_fails() -> None:
    text = "```text\nhex: FROB\n00 00 00 01               length = 1\n" \
           "42                        opcode = 0x42 (FROB)\n```\n"
    (d,) = dumps(text)
    with pytest.raises(AssertionError, match="knows no frame named 'FROB'"):
        check_dump(d)


def table(doc: str, header: str) -> List[List[str]]:
    lines = doc.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip() == header), None)
    assert start is not None, f"protocol.md has no table headed {header}"
    rows = []
    for line in lines[start + 2:]:
        if not line.lstrip().startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_the_error_table_lists_every_code_exactly_as_the_codec_defines_it(doc: str) -> None:
    rows = table(doc, "| Code | Name | Closes connection | Retryable | Meaning |")
    yes = {True: "yes", False: "no"}
    assert rows == [
        [str(c.code), c.name, yes[c.closes_connection], yes[c.retryable], c.description]
        for c in wire.ErrorCode.ALL
    ]


def test_the_goaway_and_opcode_tables_match_the_codec(doc: str) -> None:
    reasons = [r[:2] for r in table(doc, "| Reason | Name | Meaning |")]
    assert reasons == [[str(k), v] for k, v in wire.GoAwayReason.NAMES.items()]
    rows = table(doc, "| Opcode | Name | Direction | Body bytes | Meaning |")
    for row in rows:
        code = int(row[0], 16)
        assert wire.Opcode.NAMES.get(code) == row[1], f"opcode table row {row}"
    listed = {int(r[0], 16) for r in rows}
    # Version-1 opcodes must all be documented; version-2 ones once the spec has them.
    v1 = {0x01, 0x02, 0x03, 0x81, 0x82, 0x83, 0x8E, 0x8F}
    assert v1 <= listed


def test_the_limits_quoted_in_protocol_md_are_the_codecs(doc: str) -> None:
    rows = {r[0]: r for r in table(doc, "| Limit | Default | Setting | Notes |")}
    def number(cell: str) -> int:
        m = re.match(r"[\d,]+", cell)
        assert m, cell
        return int(m.group(0).replace(",", ""))

    assert number(rows["Frame length (opcode + body)"][1]) == wire.MAX_FRAME_LEN
    assert number(rows["HELLO token"][1]) == wire.MAX_TOKEN_LEN
    assert number(rows["ERROR message"][1]) == wire.MAX_ERROR_MESSAGE
    assert number(rows["LEASE count (`max_lease`)"][1]) == DEFAULT.max_lease
    for text in ("frame length 0 (a frame needs at least an opcode)",
                 "frame length 5000 exceeds the limit of 1024",
                 "unknown opcode 0x42",
                 "LEASE body must be 8 bytes, got 4"):
        assert f"`{text}`" in doc, f"protocol.md lacks `{text}`"


# Version-2 vectors beside protocol.md's own (which the test above reads), in its dump format
# and through the same parser and checks: the largest BULK_LEASE count (max_bulk) and a
# BULK_LEASED whose runs belong to two workers of one tick.
V2_DUMPS = """
```text
hex: WELCOME version 2
00 00 00 24               length = 36
81                        opcode = 0x81 (WELCOME)
00 02                     version = 2
00 07                     worker_id = 7
00 00 01 8c c2 51 f4 00   epoch_unix_ms = 1704067200000 (2024-01-01T00:00:00.000Z)
29                        timestamp_bits = 41
0a                        worker_bits = 10
0c                        sequence_bits = 12
00 00 10 00               max_lease = 4096
00 00 01 9a c7 c2 70 00   server_unix_ms = 1764288000000 (2025-11-28T00:00:00.000Z)
00 04                     first_worker = 4
00 04                     worker_count = 4
00 40 00 00               max_bulk = 4194304
```

```text
hex: BULK_LEASE
00 00 00 09               length = 9
04                        opcode = 0x04 (BULK_LEASE)
00 00 00 07               request_id = 7
00 40 00 00               count = 4194304
```

```text
hex: BULK_LEASED
00 00 00 1f               length = 31
84                        opcode = 0x84 (BULK_LEASED)
00 00 00 07               request_id = 7
00 02                     run_count = 2
03 81 5c 1f 00 00 70 00   first_id = 252584342323228672 (2025-11-28T00:00:00.000Z worker 7 sequence 0)
00 00 20 00               count = 8192
03 81 5c 1f 00 00 80 00   first_id = 252584342323232768 (2025-11-28T00:00:00.000Z worker 8 sequence 0)
00 00 10 00               count = 4096
```
"""


def test_version_2_frames_round_trip_through_the_same_checks() -> None:
    all_dumps = dumps(V2_DUMPS)
    assert [d.title for d in all_dumps] == ["WELCOME version 2", "BULK_LEASE", "BULK_LEASED"]
    for d in all_dumps:
        check_dump(d)
