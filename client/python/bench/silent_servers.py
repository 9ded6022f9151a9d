"""Issue 16 figure: next_id() throughput in 250 ms windows while 2 of 4 servers are stopped
(SIGSTOP: connections open, nothing answers), and the longest single next_id() call.

    python3 bench/silent_servers.py SERVER_BIN [--seconds-per-phase 2]

Prints JSON: per phase (healthy, two stopped, continued) the IDs of every 250 ms window, the
worst window against the healthy median, and the slowest call.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
from typing import Dict, List

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
os.environ.setdefault("SNOWLEASE_SERVER_BIN", sys.argv[1] if len(sys.argv) > 1 else "")

from conftest import Server  # noqa: E402

import snowlease  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("server_bin")
    ap.add_argument("--seconds-per-phase", type=float, default=2.0)
    args = ap.parse_args()
    servers = [Server(w) for w in (1, 2, 3, 4)]
    try:
        client = snowlease.Client([s.lease_addr for s in servers], request_timeout=30.0)
        counts: List[int] = []
        worst = [0.0]
        stop = threading.Event()

        def draw() -> None:
            take, clock = client.next_id, time.perf_counter
            n, window_end = 0, clock() + 0.25
            while not stop.is_set():
                t0 = clock()
                take()
                dt = clock() - t0
                if dt > worst[0]:
                    worst[0] = dt
                n += 1
                if t0 >= window_end:
                    counts.append(n)
                    n, window_end = 0, window_end + 0.25

        t = threading.Thread(target=draw)
        t.start()
        phases: Dict[str, Dict[str, object]] = {}
        for name, action in (("healthy", None), ("two_of_four_stopped", signal.SIGSTOP),
                             ("continued", signal.SIGCONT)):
            if action is not None:
                for s in servers[:2]:
                    s.signal(action)
            start, worst[0] = len(counts), 0.0
            time.sleep(args.seconds_per_phase)
            windows = counts[start:]
            phases[name] = {"ids_per_250ms": windows, "slowest_call_ms": round(worst[0] * 1000, 2)}
        stop.set()
        t.join()
        client.close()
        healthy = statistics.median(phases["healthy"]["ids_per_250ms"])  # type: ignore[arg-type]
        stopped = phases["two_of_four_stopped"]["ids_per_250ms"]
        phases["worst_stopped_window_vs_healthy_median"] = {
            "ratio": round(min(stopped) / healthy, 3)}  # type: ignore[type-var,arg-type]
        print(json.dumps(phases))
    finally:
        for s in servers:
            s.signal(signal.SIGCONT)
            s.kill()


if __name__ == "__main__":
    main()
