#!/usr/bin/env python3
"""The figures of kube/simulate.sh, read from other tools' output.

simulate.sh keeps namespaces, iptables, pinning and process control; the IDs are checked in
Rust (`snowlease-bench sim-load`, `verify-ranges`, `snowcat decode`). This file only reads
what those tools and the kernel wrote and turns it into rows and tables:

  snapshot OUT [--pids-file F] [--pid NAME=PID ...]
      CPU time and resident memory of groups of processes (/proc/PID/stat, status), the
      per-CPU times of /proc/stat (user, system, softirq, idle...) and MemAvailable, as JSON.
  row --bench J --before S --after S ... ROWS
      one scale row from a sim-load report and two snapshots taken around its window,
      appended as a JSON line to ROWS. Exit 1 when IDs repeated, came from unexpected
      workers or a call failed; 3 when only the throughput goal was missed.
  table ROWS [--json FILE]
      the scale rows as a markdown table (stdout) and, with --json, as a JSON array.
  bench-line J
      "ids ids_per_s disjoint workers errors | problems" for the fault scenario's clients.
  partition --bench J --events E [--json FILE]
      before/during/after, the worst windows and the time until a healed pod is used again.

Nothing here knows the ID layout: worker ids, the ceiling and the uniqueness verdict come
decoded from sim-load's report.
"""

import argparse
import json
import os
import statistics
import sys


# ---------------------------------------------------------------- /proc

def proc_times(pid):
    """(utime + stime ticks, VmRSS kB) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        rss = 0
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        # After the name, field 3 (state) is index 0: utime (14) is 11, stime (15) is 12.
        return int(fields[11]) + int(fields[12]), rss
    except (OSError, IndexError, ValueError):
        return None


def cpu_stat():
    """Per-CPU times in ticks from /proc/stat: {"cpu0": {"user": n, ...}, "cpu": {...}}."""
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    out = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if line.startswith("cpu"):
                parts = line.split()
                out[parts[0]] = dict(zip(names, map(int, parts[1:9])))
    return out


def mem_available_kb():
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def cmd_snapshot(args):
    groups = {}
    pids = {}
    if args.pids_file:
        with open(args.pids_file, encoding="ascii") as f:
            pids["servers"] = [int(p) for p in f.read().split()]
    for item in args.pid:
        name, _, pid = item.partition("=")
        pids.setdefault(name, []).extend(int(p) for p in pid.split(",") if p)
    for name, members in pids.items():
        ticks = rss = alive = 0
        for pid in members:
            got = proc_times(pid)
            if got:
                ticks += got[0]
                rss += got[1]
                alive += 1
        groups[name] = {"ticks": ticks, "rss_kb": rss, "alive": alive, "n": len(members)}
    snap = {"cpu": cpu_stat(), "groups": groups, "mem_available_kb": mem_available_kb(),
            "ticks_per_s": os.sysconf("SC_CLK_TCK")}
    with open(args.out, "w", encoding="ascii") as f:
        json.dump(snap, f)


def profile(before, after, seconds):
    """CPU shares over a window: process groups, and softirq/system/user/idle per CPU."""
    hz = after["ticks_per_s"]
    out = {}
    for name, g in after["groups"].items():
        b = before["groups"].get(name, {"ticks": 0})
        out[f"{name}_cpu_s"] = round((g["ticks"] - b["ticks"]) / hz, 2)
    for cpu, t in after["cpu"].items():
        if cpu == "cpu":
            continue
        b = before["cpu"][cpu]
        d = {k: (t[k] - b[k]) / hz for k in t}
        total = sum(d.values()) or 1
        out[cpu] = {k: round(v / total * 100, 1) for k, v in d.items()
                    if k in ("user", "system", "softirq", "idle", "iowait")}
    out["window_s"] = round(seconds, 2)
    return out


# ---------------------------------------------------------------- scale rows

def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def cmd_row(args):
    r = load(args.bench)
    before, after = load(args.before), load(args.after)
    row = {
        "row": args.row,
        "via": args.via,
        "workers": r["expect_workers"],
        "pods": args.pods,
        "workers_per_pod": args.k,
        "nodes": args.nodes,
        "seconds": r["seconds"],
        "ids": r["ids"],
        "ids_per_s": round(r["ids_per_s"]),
        "ceiling": round(r["ceiling"]),
        "share": round(r["share"], 4),
        "goal": args.goal,
        "met": None if args.goal is None else r["share"] >= args.goal,
        "disjoint": bool(r["verify"]["ok"]),
        "client_errors": r["client_errors"] + r["warmup_errors"],
        "workers_seen": r["workers_seen"],
        "verified_ids": r["verify"]["ids"],
        "verified_runs": r["verify"]["runs"],
        "warmup_s": round(r["warmup_s"], 2),
        "setup_s": args.setup_s,
        "ready_s": args.ready_s,
        "clients": r["clients"],
        "client_cpu_s": round(r["cpu_s"], 2),
        "client_max_rss_mb": round(r["max_rss_kb"] / 1024, 1),
        "profile": profile(before, after, r["seconds"]),
    }
    if args.mem_before:
        m0, m1 = load(args.mem_before), load(args.mem_ready)
        row["servers_rss_mb"] = round(m1["groups"]["servers"]["rss_kb"] / 1024, 1)
        row["mem_used_mb"] = round((m0["mem_available_kb"] - m1["mem_available_kb"]) / 1024, 1)
    with open(args.rows, "a", encoding="ascii") as f:
        f.write(json.dumps(row) + "\n")
    status = "" if row["met"] is None else (" goal met" if row["met"] else " goal MISSED")
    print(f"{row['row']}: {row['ids_per_s']:,} IDs/s = {row['share'] * 100:.2f} % of "
          f"{row['ceiling']:,}, workers {row['workers_seen']}/{row['workers']}, disjoint "
          f"{'yes' if row['disjoint'] else 'NO'}, {row['client_errors']} client errors{status}")
    if not row["disjoint"] or row["client_errors"] or not row["ids"]:
        return 1
    return 3 if row["met"] is False else 0


def read_rows(path):
    rows = []
    with open(path, encoding="ascii") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def cmd_table(args):
    rows = read_rows(args.rows) if os.path.exists(args.rows) else []
    if args.json:
        with open(args.json, "w", encoding="ascii") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")
    print("| workers | pods x workers/pod | nodes | via | seconds | IDs/s | ceiling | share | goal |"
          " disjoint | client errors | workers answering |")
    print("|---:|---|---:|---|---:|---:|---:|---:|---|:---:|---:|---:|")
    for r in rows:
        goal = "reported" if r["goal"] is None else (
            f"{r['goal'] * 100:.0f} %: {'met' if r['met'] else 'MISSED'}")
        print(f"| {r['workers']:,} | {r['pods']:,} x {r['workers_per_pod']} | {r['nodes']} | "
              f"{r['via']} | {r['seconds']:g} | {r['ids_per_s']:,} | {r['ceiling']:,} | "
              f"{r['share'] * 100:.2f} % | {goal} | {'yes' if r['disjoint'] else 'NO'} | "
              f"{r['client_errors']} | {r['workers_seen']:,} / {r['workers']:,} |")
    print()
    print("| row | setup s | ready s | servers RSS MB | memory used MB | client CPU s | client RSS MB |"
          " servers CPU s | controller CPU s | cpu0 usr/sys/softirq/idle % | cpu1 usr/sys/softirq/idle % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        p = r["profile"]

        def cpu(name):
            c = p.get(name)
            return "-" if not c else f"{c['user']}/{c['system']}/{c['softirq']}/{c['idle']}"
        reused = "reused" if r.get("setup_s") is None else None
        print(f"| {r['row']} | {reused or r['setup_s']} | {reused or r['ready_s']} | "
              f"{r.get('servers_rss_mb', '-')} | {r.get('mem_used_mb', '-')} | "
              f"{r['client_cpu_s']} | {r['client_max_rss_mb']} | {p.get('servers_cpu_s', '-')} | "
              f"{p.get('controller_cpu_s', '-')} | {cpu('cpu0')} | {cpu('cpu1')} |")


# ---------------------------------------------------------------- fault scenario clients

def cmd_bench_line(args):
    r = load(args.bench)
    v = r["verify"]
    workers = [str(w) for w, n in enumerate(r["per_worker_ids"]) if n]
    problems = []
    if not v["ok"]:
        problems.append(f"uniqueness check: {v}")
    errors = r["client_errors"] + r["warmup_errors"]
    if errors:
        problems.append(f"{errors} client errors surfaced: {r['error_kinds']}")
    if not r["ids"]:
        problems.append("no IDs")
    print(r["ids"], round(r["ids_per_s"]), "yes" if v["ok"] else "NO",
          ",".join(workers) or "-", errors, "|", "; ".join(problems))


# ---------------------------------------------------------------- partition

def read_events(path):
    events = []
    with open(path, encoding="ascii") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                events.append((int(parts[0]), parts[1], parts[2:]))
    return sorted(events, key=lambda e: e[0])


class Series:
    """The bench's buckets on the Unix-millisecond axis."""

    def __init__(self, r):
        self.t0 = r["started_unix_ms"]
        self.ms = r["bucket_ms"]
        self.total = r["series"]
        self.workers = {int(w): s for w, s in (r.get("worker_series") or {}).items()}
        self.per_worker_capacity = r["ceiling"] / r["expect_workers"]

    def index(self, unix_ms):
        return max(0, min(len(self.total), (unix_ms - self.t0) // self.ms))

    def rate(self, start_ms, end_ms):
        a, b = self.index(start_ms), self.index(end_ms)
        if b <= a:
            return None
        return sum(self.total[a:b]) / ((b - a) * self.ms / 1000)

    def worst(self, start_ms, end_ms, width_ms):
        """Lowest IDs/s over any window of width_ms inside [start, end)."""
        n = max(1, width_ms // self.ms)
        a, b = self.index(start_ms), self.index(end_ms)
        if b - a < n:
            return None
        return min(sum(self.total[i:i + n]) for i in range(a, b - n + 1)) / (n * self.ms / 1000)

    def median(self, start_ms, end_ms, width_ms):
        n = max(1, width_ms // self.ms)
        a, b = self.index(start_ms), self.index(end_ms)
        sums = [sum(self.total[i:i + n]) / (n * self.ms / 1000) for i in range(a, b - n + 1, n)]
        return statistics.median(sums) if sums else None

    def first_use(self, worker, from_ms):
        """Seconds from from_ms to the start of the first bucket with IDs of worker."""
        s = self.workers.get(worker, [])
        for i in range(self.index(from_ms), len(s)):
            if s[i]:
                return max(0.0, (self.t0 + i * self.ms - from_ms) / 1000)
        return None


def cmd_partition(args):
    r = load(args.bench)
    s = Series(r)
    events = read_events(args.events)
    cap = s.per_worker_capacity
    pods = r["expect_workers"]
    marks = [e for e in events if e[1] != "endpoints"]
    start = next(t for t, k, _ in marks if k == "start")
    first_fault = next(t for t, k, _ in marks if k in ("drop", "leave"))
    healthy = s.rate(start, first_fault)
    healthy_250 = s.median(start, first_fault, 250)
    phases = []
    for i, (t, kind, rest) in enumerate(marks):
        if kind not in ("drop", "leave"):
            continue
        victims = [int(v) for v in rest]
        heal = next(e for e in marks[i + 1:] if e[1] in ("heal", "rejoin"))
        nxt = next((e for e in marks[marks.index(heal) + 1:]), (s.t0 + len(s.total) * s.ms, "end", []))
        back = heal[0]
        if kind == "leave":
            # Healed when the pod is back in the headless name's records.
            back = next((et for et, ek, ea in events if ek == "endpoints" and et >= heal[0]
                         and all(str(v) in ea for v in victims)), heal[0])
        remaining = (pods - len(victims)) * cap
        worst_1s = s.worst(t, heal[0], 1000)
        worst_250 = s.worst(t, heal[0], 250)
        uses = [s.first_use(v, back) for v in victims]
        phase = {
            "fault": f"{'silent drop' if kind == 'drop' else 'left the endpoints'} of "
                     f"{len(victims)} of {pods} (pod{'s' if len(victims) > 1 else ''} "
                     f"{', '.join(map(str, victims))})",
            "seconds": round((heal[0] - t) / 1000, 1),
            "before": s.rate(t - 2000, t),
            "during": s.rate(t, heal[0]),
            "after": s.rate(max(back, nxt[0] - 2000), nxt[0]),
            "remaining_capacity": remaining,
            "worst_1s": worst_1s,
            "worst_1s_share": None if worst_1s is None else worst_1s / remaining,
            "worst_250ms": worst_250,
            "worst_250ms_vs_healthy_median": None if worst_250 is None or not healthy_250
            else worst_250 / healthy_250,
            "back_in_dns_after_s": round((back - heal[0]) / 1000, 2) if kind == "leave" else None,
            "used_again_after_s": None if None in uses else max(uses),
        }
        phases.append(phase)
    out = {"healthy_ids_per_s": healthy, "healthy_median_250ms": healthy_250,
           "per_worker_capacity": cap, "phases": phases,
           "client_errors": r["client_errors"] + r["warmup_errors"],
           "disjoint": bool(r["verify"]["ok"]), "ids": r["ids"], "verified_ids": r["verify"]["ids"]}
    if args.json:
        with open(args.json, "w", encoding="ascii") as f:
            json.dump(out, f, indent=1)

    def m(v):
        return "-" if v is None else f"{v / 1e6:.2f} M"

    def pct(v):
        return "-" if v is None else f"{v * 100:.0f} %"
    print(f"healthy: {m(healthy)} IDs/s (median 250 ms window {m(healthy_250)} IDs/s); "
          f"{out['client_errors']} client errors; disjoint {'yes' if out['disjoint'] else 'NO'} "
          f"({out['verified_ids']:,} IDs checked)")
    print()
    print("| fault | s | before IDs/s | during | after | remaining capacity | worst 1 s "
          "(share of remaining) | worst 250 ms / healthy median | back in DNS | used again after |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in phases:
        dns = "-" if p["back_in_dns_after_s"] is None else f"{p['back_in_dns_after_s']:.2f} s"
        used = "never" if p["used_again_after_s"] is None else f"{p['used_again_after_s']:.2f} s"
        print(f"| {p['fault']} | {p['seconds']:g} | {m(p['before'])} | {m(p['during'])} | "
              f"{m(p['after'])} | {m(p['remaining_capacity'])} | {m(p['worst_1s'])} "
              f"({pct(p['worst_1s_share'])}) | {pct(p['worst_250ms_vs_healthy_median'])} | "
              f"{dns} | {used} |")
    return 0 if out["disjoint"] and not out["client_errors"] else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("snapshot")
    p.add_argument("out")
    p.add_argument("--pids-file")
    p.add_argument("--pid", action="append", default=[], help="NAME=PID[,PID...]")
    p = sub.add_parser("row")
    p.add_argument("rows")
    p.add_argument("--bench", required=True)
    p.add_argument("--before", required=True)
    p.add_argument("--after", required=True)
    p.add_argument("--row", required=True)
    p.add_argument("--via", required=True)
    p.add_argument("--pods", type=int, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--goal", type=float)
    p.add_argument("--setup-s", type=float)
    p.add_argument("--ready-s", type=float)
    p.add_argument("--mem-before")
    p.add_argument("--mem-ready")
    p = sub.add_parser("table")
    p.add_argument("rows")
    p.add_argument("--json")
    p = sub.add_parser("bench-line")
    p.add_argument("bench")
    p = sub.add_parser("partition")
    p.add_argument("--bench", required=True)
    p.add_argument("--events", required=True)
    p.add_argument("--json")
    args = parser.parse_args()
    return {"snapshot": cmd_snapshot, "row": cmd_row, "table": cmd_table,
            "bench-line": cmd_bench_line, "partition": cmd_partition}[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main())
