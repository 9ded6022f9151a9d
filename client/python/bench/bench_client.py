"""Throughput of the Python client's fast path against a running server, as JSON.

    python3 bench/bench_client.py --addr 127.0.0.1:7609 [--seconds 2] [--rounds 3]

Measures, per round: ``Client.next_id()`` from 1 thread and from 4 threads, and
``AsyncClient.next_id()`` from 1 event loop, each for ``--seconds``; prints one JSON object
per round and a summary with the median of each. Pin it to a core of its own, apart from the
server (``taskset -c 1``); see bench/run_bench.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from typing import Dict, List

import snowlease


def worst_reply_ms(client: object) -> float:
    core = getattr(client, "_core")
    return max((s.conn.worst_reply for s in core.driver.slots if s.conn is not None),
               default=0.0) * 1000


def sync_rate(addr: str, threads: int, seconds: float) -> Dict[str, float]:
    with snowlease.Client(addr) as client:
        for _ in range(100_000):  # warm up: the rate estimate and the buffer
            client.next_id()
        counts = [0] * threads
        stop = threading.Event()

        def run(i: int) -> None:
            take = client.next_id
            n = 0
            while not stop.is_set():
                for _ in range(10_000):
                    take()
                n += 10_000
            counts[i] = n

        workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        time.sleep(seconds)
        stop.set()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - start
        return {"ids_per_s": sum(counts) / elapsed, "worst_reply_ms": worst_reply_ms(client)}


async def async_rate(addr: str, seconds: float) -> Dict[str, float]:
    async with snowlease.AsyncClient(addr) as client:
        for _ in range(100_000):
            await client.next_id()
        n = 0
        start = time.perf_counter()
        end = start + seconds
        take = client.next_id
        while time.perf_counter() < end:
            for _ in range(10_000):
                await take()
            n += 10_000
        elapsed = time.perf_counter() - start
        return {"ids_per_s": n / elapsed, "worst_reply_ms": worst_reply_ms(client)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", required=True)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows: Dict[str, List[float]] = {"sync_1_thread": [], "sync_4_threads": [],
                                    "async_1_loop": []}
    for r in range(args.rounds):
        one = sync_rate(args.addr, 1, args.seconds)
        four = sync_rate(args.addr, 4, args.seconds)
        aio = asyncio.run(async_rate(args.addr, args.seconds))
        print(json.dumps({"round": r + 1, "sync_1_thread": one, "sync_4_threads": four,
                          "async_1_loop": aio}), flush=True)
        rows["sync_1_thread"].append(one["ids_per_s"])
        rows["sync_4_threads"].append(four["ids_per_s"])
        rows["async_1_loop"].append(aio["ids_per_s"])
    print(json.dumps({"median_ids_per_s": {k: round(statistics.median(v)) for k, v in
                                           rows.items()}}))


if __name__ == "__main__":
    main()
