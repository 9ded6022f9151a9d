"""Test helpers: the real snowlease-server on port 0, and a fake server that misbehaves.

The server binary comes from ``SNOWLEASE_SERVER_BIN``, else
``$CARGO_TARGET_DIR/release/snowlease-server`` (default ``<repo>/target/release``). Every
server gets a fresh ``--state-dir``; it is started with ``--log-format json`` and its
``"serving"`` line gives the ports. Nothing here sleeps to synchronise: waits are on a
condition with a bounded deadline.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import pytest

from snowlease import ProtocolError, wire
from snowlease.layout import DEFAULT, Layout

REPO = Path(__file__).resolve().parents[3]
_TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
SERVER_BIN = os.environ.get("SNOWLEASE_SERVER_BIN") or str(_TARGET / "release" / "snowlease-server")

#: Bounds every wait in these tests; the events waited for take milliseconds.
DEADLINE = 20.0


T = TypeVar("T")


def run_threads(work: Callable[[T], None], args: Sequence[T]) -> List[BaseException]:
    """Runs ``work(arg)`` on a thread of its own for each of ``args``, waits for them all and
    returns what they raised (empty when every one finished)."""
    errors: List[BaseException] = []

    def guarded(arg: T) -> None:
        try:
            work(arg)
        except BaseException as e:  # pragma: no cover - reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def wait_until(cond: Callable[[], bool], what: str, limit: float = DEADLINE) -> None:
    """Polls ``cond`` until it holds; fails the test after ``limit`` seconds."""
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        time.sleep(0.005)


class Server:
    """One snowlease-server process."""

    def __init__(self, worker_id: int, *args: str, listen: str = "127.0.0.1:0",
                 state_dir: Optional[str] = None) -> None:
        if not os.access(SERVER_BIN, os.X_OK):
            raise AssertionError(
                f"no server binary at {SERVER_BIN}: build it (cargo build --release -p "
                "snowlease-server) or set SNOWLEASE_SERVER_BIN")
        self.worker_id = worker_id
        self.args = args
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="snowlease-py-state-")
        self.lines: List[Dict[str, object]] = []
        ready: "queue.Queue[Optional[Dict[str, object]]]" = queue.Queue()
        self.proc = subprocess.Popen(
            [SERVER_BIN, "--listen", listen, "--admin-listen", "127.0.0.1:0",
             "--log-format", "json", "--worker-id", str(worker_id), "--threads", "1",
             "--state-dir", self.state_dir, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._drain = threading.Thread(target=self._read_log, args=(ready,), daemon=True)
        self._drain.start()
        try:
            serving = ready.get(timeout=DEADLINE)
        except queue.Empty:
            serving = None
        if serving is None:
            self.kill()
            raise AssertionError(f"server did not start: {self.lines[-5:]}")
        self.lease_addr = str(serving["lease_addr"])
        self.admin_addr = str(serving["admin_addr"])

    def _read_log(self, ready: "queue.Queue[Optional[Dict[str, object]]]") -> None:
        assert self.proc.stderr is not None
        told = False
        for raw in self.proc.stderr:  # keep draining so the server never blocks on stderr
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            fields = line.get("fields") if isinstance(line.get("fields"), dict) else {}
            merged = {**line, **fields}
            self.lines.append(merged)
            if not told and merged.get("message") == "serving":
                told = True
                ready.put(merged)
        if not told:
            ready.put(None)

    @property
    def port(self) -> int:
        return int(self.lease_addr.rsplit(":", 1)[1])

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def terminate(self) -> int:
        """SIGTERM (drain with GOAWAY) and wait for the exit code."""
        self.signal(signal.SIGTERM)
        return self.proc.wait(DEADLINE)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(DEADLINE)

    def restart(self) -> "Server":
        """A new process on the same port and state directory (as a restarted pod)."""
        return Server(self.worker_id, *self.args, listen=self.lease_addr,
                      state_dir=self.state_dir)


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    """Starts servers on demand and kills whatever is left at the end of the test."""
    started: List[Server] = []

    def start(worker_id: int, *args: str) -> Server:
        s = Server(worker_id, *args)
        started.append(s)
        return s

    def track(s: Server) -> Server:
        started.append(s)
        return s

    start.track = track  # type: ignore[attr-defined]
    yield start
    for s in started:
        try:
            s.signal(signal.SIGCONT)
        finally:
            s.kill()
    # After every process is gone (a restarted server shares its predecessor's directory).
    for state_dir in {s.state_dir for s in started}:
        shutil.rmtree(state_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# A fake server: greets like a real one, then answers LEASE number n (counted across
# connections) with whatever bytes ``answer(n, request_id, count)`` returns (None: no reply).

FAKE_WORKER = 5


def welcome_frame(worker: int = FAKE_WORKER, **changes: int) -> bytes:
    fields = dict(version=1, worker_id=worker, epoch_unix_ms=DEFAULT.epoch_unix_ms,
                  timestamp_bits=41, worker_bits=10, sequence_bits=12, max_lease=4096,
                  server_unix_ms=int(time.time() * 1000))
    fields.update(changes)
    return wire.encode(wire.Welcome(**fields))


def tick_now() -> int:
    return int(time.time() * 1000) - DEFAULT.epoch_unix_ms


def leased(request_id: int, first_id: int, count: int) -> bytes:
    return wire.encode(wire.Leased(request_id, first_id, count))


class FakeServer:
    def __init__(self, answer: Callable[[int, int, int], Optional[bytes]], *,
                 greeting: Optional[Callable[[], bytes]] = None) -> None:
        self.answer = answer
        self.greeting = greeting or welcome_frame
        self.leases = 0
        #: LEASE frames read (counted before any is answered).
        self.received = 0
        self.connections = 0
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.closed = False
        self.socks: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.socks.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        """Reads and counts frames on this thread; answers them in order on another, so a
        blocked ``answer`` (a gated test) does not stop the reading."""
        frames: "queue.Queue[Optional[wire.Request]]" = queue.Queue()
        threading.Thread(target=self._answer, args=(sock, frames), daemon=True).start()
        buf = bytearray()
        try:
            while not self.closed:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
                while True:
                    got = wire.decode_request(buf)
                    if got is None:
                        break
                    del buf[:got[1]]
                    if isinstance(got[0], wire.Lease):
                        with self.lock:
                            self.received += 1
                    frames.put(got[0])
        except (OSError, ProtocolError):
            return
        finally:
            frames.put(None)

    def _answer(self, sock: socket.socket, frames: "queue.Queue[Optional[wire.Request]]") -> None:
        try:
            while True:
                frame = frames.get()
                if frame is None:
                    return
                reply: Optional[bytes]
                if isinstance(frame, wire.Hello):
                    reply = self.greeting()
                elif isinstance(frame, wire.Lease):
                    with self.lock:
                        n = self.leases
                        self.leases += 1
                    reply = self.answer(n, frame.request_id, frame.count)
                elif isinstance(frame, wire.Ping):
                    reply = wire.encode(wire.Pong(frame.nonce))
                else:
                    reply = None
                if reply:
                    sock.sendall(reply)
        except OSError:
            return
        finally:
            sock.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        with self.lock:
            for s in self.socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    made: List[FakeServer] = []

    def make(answer: Callable[[int, int, int], Optional[bytes]], **kw: object) -> FakeServer:
        f = FakeServer(answer, **kw)  # type: ignore[arg-type]
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def assert_unique_and_increasing(per_caller: Sequence[Sequence[int]], layout: Layout = DEFAULT) -> int:
    """No ID repeats across callers; within each caller, IDs of one worker increase.
    Returns how many IDs were checked.

    Each caller's IDs are compressed into runs of consecutive integers first (a caller draws
    long stretches between GIL switches), so 16 M IDs are checked in seconds."""
    shift, mask = layout.sequence_bits, layout.max_worker
    runs: List[Tuple[int, int]] = []
    total = 0
    for ids in per_caller:
        last: Dict[int, int] = {}
        start = prev = -2
        for x in ids:
            if x == prev + 1:
                prev = x
                continue
            w = (x >> shift) & mask
            p = last.get(w, -1)
            assert x > p and (w != (prev >> shift) & mask or x > prev), \
                f"worker {w}: {x} after {max(p, prev)} in one caller"
            if start >= 0:
                runs.append((start, prev + 1))
                last[(prev >> shift) & mask] = prev
            start = prev = x
        if start >= 0:
            runs.append((start, prev + 1))
        total += len(ids)
    runs.sort()
    for (a0, a1), (b0, b1) in zip(runs, runs[1:]):
        assert b0 >= a1, f"IDs {b0}..{min(a1, b1) - 1} were handed out twice"
    return total


def lease_frame_count(data: bytes) -> int:
    count: int = struct.unpack(">I", data[9:13])[0]
    return count
