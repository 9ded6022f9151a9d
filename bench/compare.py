"""bench/compare.sh's helper: reads the output of other tools (redis-benchmark, wrk,
/proc, the Prometheus text of /metrics, Redis INFO) and snowlease-bench's JSON reports, keeps
one JSON record per load and round in results.jsonl, and prints the final table.

Nothing here speaks snowlease's wire protocol or knows the ID layout: that is
snowlease-bench's job (its `serve`, `startup`, `idle-conns` and `verify-ranges`
subcommands). Every sub-command prints one result or appends one JSON record:

    compare.py freeport | wait-tcp HOST PORT SECONDS
    compare.py serving SERVE_JSON                 -> "pid lease_addr admin_addr"
    compare.py bench|redis|wrk RESULTS KEY RUN FILE
    compare.py record-json RESULTS KEY RUN KIND FILE
    compare.py snap KIND PID ADDR | cpu RESULTS KEY RUN KIND PID ADDR U0 S0 OPS0
    compare.py redis-rate CALIBRATION_CSV | redis-n RATE SECONDS
    compare.py median-run RESULTS KEY | report RESULTS RUNS DURATION PIN NICE OUT_DIR
"""
import json
import os
import re
import socket
import statistics
import sys
import time

def freeport():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])

def wait_tcp(host, port, timeout):
    end = time.monotonic() + float(timeout)
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing listens on {host}:{port} after {timeout} s")

def record(path, rec):
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")

def rec_bench(out, key, run, path):
    r = json.load(open(path))
    l = r["latency"]
    rec = {"key": key, "run": int(run), "kind": "bench",
           "ids_per_sec": r["ids_per_sec"], "leases_per_sec": r["leases_per_sec"],
           "ceiling": r["ceiling_ids_per_sec"], "share": r["ceiling_share"],
           "mean_us": l["mean_us"], "p50_us": l["p50_us"], "p99_us": l["p99_us"],
           "p999_us": l["p999_us"], "max_us": l["max_us"], "errors": r["errors"],
           "verified": (r.get("verify") or {}).get("overlaps", 0) == 0}
    probe = r.get("probe")
    if probe:
        pl = probe["latency"]
        rec.update({"probe_sent": probe["sent"], "probe_served": probe["served"],
                    "probe_overloaded": probe["overloaded"], "probe_failed": probe["failed"],
                    "probe_p50_us": pl["p50_us"], "probe_p99_us": pl["p99_us"],
                    "probe_max_us": pl["max_us"]})
        if r["settings"]["mode"] == "peer-cap":
            # Refused probes are what this row measures; only other failures are errors.
            rec["errors"] = probe["failed"]
    record(out, rec)


def record_json(out, key, run, kind, path):
    """Appends the JSON object a snowlease-bench subcommand printed, tagged."""
    rec = json.loads(open(path).read())
    rec.update({"key": key, "run": int(run), "kind": kind})
    record(out, rec)


def serving(path):
    """The pid and addresses from `snowlease-bench serve`'s line, for bash `read`."""
    v = json.loads(open(path).readline())
    print(v["pid"], v["lease_addr"], v["admin_addr"])


def redis_rate(path):
    """INCR requests/s from a redis-benchmark --csv calibration run (10000 if none)."""
    rows = [l for l in open(path) if l.startswith('"INCR')]
    print(rows[0].split('","')[1] if rows else 10000)


def redis_n(rate, seconds):
    """Requests for a redis-benchmark run of about `seconds` at `rate`."""
    print(max(10000, int(float(rate) * float(seconds))))


def rec_redis(out, key, run, path):
    rows = [l.strip().strip('"').split('","') for l in open(path) if l.strip()]
    head, vals = rows[0], rows[-1]
    d = dict(zip(head, vals))
    ms = lambda k: float(d[k]) * 1000.0
    record(out, {"key": key, "run": int(run), "kind": "redis", "ops_per_sec": float(d["rps"]),
                 "mean_us": ms("avg_latency_ms"), "p50_us": ms("p50_latency_ms"),
                 "p99_us": ms("p99_latency_ms"), "max_us": ms("max_latency_ms")})
    print(float(d["rps"]))

def us(text):
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1.0, "ms": 1000.0, "s": 1e6}[unit]

def rec_wrk(out, key, run, path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", text, re.M))
    errors = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    record(out, {"key": key, "run": int(run), "kind": "wrk", "ops_per_sec": rps,
                 "p50_us": us(pct["50"]), "p99_us": us(pct["99"]), "errors": errors})

def metric(admin, name):
    host, port = admin.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(f"GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    total = 0.0
    for line in data.decode(errors="replace").splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total

def cpu_ticks(pid):
    """(user, system) clock ticks of every thread of pid."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])

def redis_commands(port):
    with socket.create_connection(("127.0.0.1", int(port)), timeout=2) as s:
        s.sendall(b"INFO stats\r\n")
        data = b""
        end = time.monotonic() + 2
        while b"total_commands_processed" not in data or not data.endswith(b"\r\n"):
            if time.monotonic() > end:
                break
            data += s.recv(65536)
    m = re.search(rb"total_commands_processed:(\d+)", data)
    return int(m.group(1))

def server_ops(kind, addr):
    """What the server counted so far: Redis commands, HTTP requests, IDs issued (`ids`,
    every worker, LEASE and BULK_LEASE alike) or leases."""
    if kind == "redis":
        return redis_commands(addr)
    if kind == "http":
        return metric(addr, "snowlease_http_requests_total")
    if kind == "ids":
        return metric(addr, "snowlease_ids_issued_total")
    return metric(addr, "snowlease_leases_total")

def snap(kind, pid, addr):
    """Server CPU ticks and operations served so far, for CPU time per operation."""
    user, system = cpu_ticks(pid)
    print(user, system, int(server_ops(kind, addr)))

def rec_cpu(out, key, run, kind, pid, addr, user0, system0, ops0):
    user, system = cpu_ticks(pid)
    hz = os.sysconf("SC_CLK_TCK")
    user, system = (user - int(user0)) / hz, (system - int(system0)) / hz
    ops = server_ops(kind, addr) - int(ops0)
    if ops > 0:
        rec = {"key": key, "run": int(run), "kind": "cpu", "server_ops": ops,
               "server_cpu_s": user + system,
               "server_cpu_us_per_op": (user + system) * 1e6 / ops,
               "server_user_us_per_op": user * 1e6 / ops,
               "server_sys_us_per_op": system * 1e6 / ops}
        if kind == "ids":
            # Row 9: milliseconds of server CPU per million IDs issued (= us per op x 1000).
            rec.update({"server_ids": ops,
                        "server_cpu_ms_per_mid": (user + system) * 1e9 / ops,
                        "server_user_ms_per_mid": user * 1e9 / ops,
                        "server_sys_ms_per_mid": system * 1e9 / ops})
        record(out, rec)

# ---- the table -----------------------------------------------------------------------------

def fmt_int(v):
    return f"{v:,.0f}"

def fmt_us(v):
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} us"

def med(recs, key, field):
    vals = [r[field] for r in recs if r["key"] == key and field in r]
    return (statistics.median(vals), vals) if vals else (None, [])

def pf(ok):
    return "n/a" if ok is None else ("PASS" if ok else "**MISS**")


class Table:
    """The records of a run and the table being built from them: `rows` (the targets),
    `detail` (the per-round spread behind each median) and `summary` (summary.json)."""

    def __init__(self, recs, runs):
        self.recs, self.runs = recs, runs
        self.rows, self.detail, self.summary = [], [], {}

    def med(self, key, field):
        return med(self.recs, key, field)

    def row(self, num, what, ours, peer, ratio, goal, verdict, key=None):
        self.rows.append((num, what, ours, peer, ratio, goal, verdict))
        if key:
            self.summary[key] = {"ours": ours, "peer": peer, "ratio": ratio, "goal": goal,
                                 "result": verdict}

    def spread(self, name, key, field, f):
        """The median of `field` over the rounds of `key`, with a detail line of each round."""
        m, vals = self.med(key, field)
        if vals:
            self.detail.append(f"| {name} | {' / '.join(f(v) for v in vals)} | {f(m)} |")
        return m

    def paired(self, ours_k, ours_f, peer_k, peer_f):
        """Per round, ours over the peer's, both measured in that round."""
        out = []
        for r in range(1, self.runs + 1):
            a = [x for x in self.recs if x["key"] == ours_k and x["run"] == r and ours_f in x]
            b = [x for x in self.recs if x["key"] == peer_k and x["run"] == r and peer_f in x]
            if a and b and b[0][peer_f] > 0:
                out.append(a[0][ours_f] / b[0][peer_f])
        return out

    def paired_row(self, name, ratios):
        """The median of per-round ratios, with a detail line of each round."""
        if ratios:
            self.detail.append(f"| {name} | {' / '.join(f'{x:.2f}x' for x in ratios)} | "
                               f"{statistics.median(ratios):.2f}x |")
        return statistics.median(ratios) if ratios else None


def rows_ceiling(t):
    """1. Per-worker ceiling."""
    for key, what, goal in [("b4096", "B=4096 raw leases, IDs/s vs the layout ceiling", 0.99),
                            ("client4", "client next_id(), 4 tasks, IDs/s vs the ceiling", 0.95)]:
        ids = t.spread(f"{key} IDs/s", key, "ids_per_sec", fmt_int)
        ceiling, _ = t.med(key, "ceiling")
        if ids is None:
            t.row("1", what, "no result", "", "", f">= {goal:.0%}", "**MISS**", key)
            continue
        share = ids / ceiling
        t.row("1", what, fmt_int(ids), f"ceiling {fmt_int(ceiling)}", f"{share:.1%}",
              f">= {goal:.0%}", pf(share >= goal), key)


def rows_redis(t, depth):
    """2. Small requests against Redis INCR. Each round ran both loads one after the other,
    so the headline ratio is the median of the per-round ratios (paired), not a ratio of
    medians taken at different moments of a noisy machine."""
    ours_k, redis_k = f"n1_d{depth}", f"redis_p{depth}"
    ours = t.spread(f"LEASE n=1 depth {depth} leases/s", ours_k, "leases_per_sec", fmt_int)
    peer = t.spread(f"Redis INCR -P {depth} ops/s", redis_k, "ops_per_sec", fmt_int)
    rate_x = t.paired_row(f"depth {depth} ops/s ratio per round",
                          t.paired(ours_k, "leases_per_sec", redis_k, "ops_per_sec"))
    o99 = t.spread(f"LEASE n=1 depth {depth} p99", ours_k, "p99_us", fmt_us)
    r99 = t.spread(f"Redis INCR -P {depth} p99", redis_k, "p99_us", fmt_us)
    p99_x = t.paired_row(f"depth {depth} p99 ratio per round",
                         t.paired(ours_k, "p99_us", redis_k, "p99_us"))
    o50, _ = t.med(ours_k, "p50_us")
    r50, _ = t.med(redis_k, "p50_us")
    if None in (ours, peer, o99, r99, rate_x, p99_x):
        t.row("2", f"50 conns depth {depth}", "no result", "", "", "", "**MISS**", ours_k)
        return
    t.row("2", f"LEASE count=1, 50 conns, depth {depth}: ops/s vs Redis INCR -P {depth}",
          fmt_int(ours), fmt_int(peer), f"{rate_x:.2f}x", ">= 1.5x", pf(rate_x >= 1.5),
          f"{ours_k}_rate")
    t.row("2", "... p99 latency (p50 in brackets)", f"{fmt_us(o99)} ({fmt_us(o50)})",
          f"{fmt_us(r99)} ({fmt_us(r50)})", f"{p99_x:.2f}x", "<= 1.0x", pf(p99_x <= 1.0),
          f"{ours_k}_p99")
    rows_redis_cpu(t, depth, ours_k, redis_k)


def rows_redis_cpu(t, depth, ours_k, redis_k):
    """2. ... server CPU time per request, snowlease against Redis."""
    cpu = {}
    for k, who in ((ours_k, "LEASE n=1"), (redis_k, "Redis INCR")):
        for f, what in (("server_cpu_us_per_op", "server CPU/op"),
                        ("server_user_us_per_op", "server user CPU/op"),
                        ("server_sys_us_per_op", "server kernel CPU/op")):
            cpu[k, f] = t.spread(f"{who} depth {depth} {what}", k, f, lambda v: f"{v:.2f} us")
    if not (cpu[ours_k, "server_cpu_us_per_op"] and cpu[redis_k, "server_cpu_us_per_op"]):
        return
    cpu_x = t.paired_row(f"depth {depth} server CPU/op ratio per round",
                         t.paired(ours_k, "server_cpu_us_per_op", redis_k,
                                  "server_cpu_us_per_op"))

    def show(k):
        user = cpu[k, "server_user_us_per_op"]
        total = f"{cpu[k, 'server_cpu_us_per_op']:.2f} us"
        return total if user is None else f"{total} (user {user:.2f})"
    t.row("2", "... server CPU time per request, user part in brackets (lower is better)",
          show(ours_k), show(redis_k), f"{cpu_x:.2f}x", "reported", "info", f"{ours_k}_cpu")


def rows_http(t):
    """3. HTTP beside TCP."""
    http = t.spread("HTTP /generate-id req/s", "http", "ops_per_sec", fmt_int)
    h99 = t.spread("HTTP /generate-id p99", "http", "p99_us", fmt_us)
    tcp, _ = t.med("n1_d1", "leases_per_sec")
    big, _ = t.med("b4096", "ids_per_sec")
    if http is None:
        return
    t.row("3", "HTTP GET /generate-id (1 ID/request), wrk -c 64 -t 1: IDs/s vs TCP n=1 depth 1",
          f"{fmt_int(http)} (p99 {fmt_us(h99)})",
          f"TCP {fmt_int(tcp)}" if tcp else "", f"{http / tcp:.2f}x" if tcp else "",
          "reported", "info", "http")
    hcpu = t.spread("HTTP /generate-id server CPU/req", "http", "server_cpu_us_per_op",
                    lambda v: f"{v:.2f} us")
    tcpu, _ = t.med("n1_d1", "server_cpu_us_per_op")
    if hcpu and tcpu:
        t.row("3", "... server CPU time per ID: HTTP vs TCP n=1 depth 1", f"{hcpu:.2f} us",
              f"{tcpu:.2f} us", f"{hcpu / tcpu:.2f}x", "reported", "info")
    if big:
        t.row("3", "... TCP B=4096 IDs/s vs HTTP IDs/s", fmt_int(big), fmt_int(http),
              f"{big / http:,.0f}x", "reported", "info")


def rows_memory(t):
    """4. Memory."""
    mem = [r for r in t.recs if r["kind"] == "mem"]
    if not mem:
        t.row("4", "memory", "no result", "", "", "", "**MISS**", "rss_idle")
        return
    m = mem[0]
    idle, conns = m["rss_idle_kib"] / 1024, m["rss_conns_kib"] / 1024
    t.row("4", f"RSS idle ({m['threads']} threads)", f"{idle:.1f} MiB", "", "",
          "<= 16 MiB", pf(idle <= 16), "rss_idle")
    t.row("4", f"RSS with {m['connections']:,} idle connections (all welcomed: "
          f"{m['welcomed'] == m['connections']})", f"{conns:.1f} MiB",
          f"{(m['rss_conns_kib'] - m['rss_idle_kib']) * 1024 / m['connections']:,.0f} B/conn",
          "", "<= 64 MiB", pf(conns <= 64 and m["welcomed"] == m["connections"]), "rss_conns")


def rows_startup(t):
    """5. Start-up."""
    st = [r for r in t.recs if r["kind"] == "startup"]
    if not st:
        t.row("5", "start-up", "no result", "", "", "", "**MISS**", "startup")
        return
    ms = st[0]["ms"]
    m = statistics.median(ms)
    t.detail.append(f"| start-up to /readyz 200 | {' / '.join(f'{x:.1f}' for x in ms)} ms | "
                    f"{m:.1f} ms |")
    t.row("5", f"process start to /readyz 200 (median of {len(ms)})", f"{m:.1f} ms",
          f"max {max(ms):.1f} ms", "", "< 100 ms", pf(m < 100), "startup")


def probe_cell(t, key, p99):
    """A probe row's result: the count=1 probe's p99 (p50, max; probes served) beside the
    load's IDs/s."""
    p50, _ = t.med(key, "probe_p50_us")
    mx, _ = t.med(key, "probe_max_us")
    ids, _ = t.med(key, "ids_per_sec")
    served, _ = t.med(key, "probe_served")
    return (f"{fmt_us(p99)} ({fmt_us(p50)}, max {fmt_us(mx)}; {served:.0f} probes), "
            f"{fmt_int(ids)} IDs/s")


def builds(t, num, load, missing, field):
    """The (key, who) of this build's `load` and the baseline build's (`{load}_base`) that
    have a `field`; without it, this build's gets a MISS row named `missing` and the baseline
    build's none."""
    for key, who in ((load, "this build"), (f"{load}_base", "baseline build")):
        if t.med(key, field)[0] is not None:
            yield key, who
        elif key == load:
            t.row(num, missing, "no result", "", "", "", "**MISS**", key)


def vs_reference(t, key, load, p99):
    """A probe row's peer and ratio cells: for this build's row, the probe's p99 with the
    reference load `{load}_ref` (a detail line of each round) and ours over it; blank for the
    baseline build's."""
    ref = t.spread(f"{load}_ref probe p99", f"{load}_ref", "probe_p99_us", fmt_us) \
        if key == load else None
    return (f"p99 {fmt_us(ref)}" if ref else "",
            f"{p99 / ref:.1f}x" if ref and p99 is not None else "")


def rows_fairness(t):
    """7. Fairness at the ceiling (issue 11): a count=1 LEASE on an idle connection beside
    500 connections draining whole ticks."""
    for key, who in builds(t, "7", "fairness", "fairness at the ceiling", "probe_p99_us"):
        p99 = t.spread(f"{key} probe p99", key, "probe_p99_us", fmt_us)
        t.row("7", f"fairness, {who}: LEASE count=1 on an idle connection beside 500 "
              "connections x 1 x 4096: p99 (p50, max); reference: beside 1 connection",
              probe_cell(t, key, p99), *vs_reference(t, key, "fairness", p99), "p99 <= 5 ms",
              pf(p99 <= 5000), key)


def rows_peer_cap(t):
    """8. One peer over its cap (issue 11): another peer's fresh connections."""
    for key, who in builds(t, "8", "peer_cap", "one peer over its cap", "probe_sent"):
        sent, _ = t.med(key, "probe_sent")
        served, _ = t.med(key, "probe_served")
        over, _ = t.med(key, "probe_overloaded")
        p99 = t.spread(f"{key} probe p99", key, "probe_p99_us", fmt_us) if served else None
        ok = served == sent and p99 is not None and p99 <= 10000
        t.row("8", f"peer cap, {who}: 127.0.0.1 holds 1,100 idle connections; 127.0.0.2 "
              "connects, HELLO, LEASE count=1: p99, served / sent; reference: 400 held",
              f"p99 {fmt_us(p99) if served else 'n/a'}, {served:.0f} / {sent:.0f} served, "
              f"{over:.0f} OVERLOADED", *vs_reference(t, key, "peer_cap", p99),
              "all served, p99 <= 10 ms", pf(ok), key)


def rows_cost(t):
    """9. Server CPU per million IDs at the ceiling (issue 14 section 4): version-1 LEASEs
    of 4096 against BULK_LEASEs, on one server holding 4 workers, in the same round."""
    ms = lambda v: f"{v:.2f} ms"
    v1 = t.spread("cost v1 (LEASE 4096) server CPU per M IDs", "cost_v1",
                  "server_cpu_ms_per_mid", ms)
    bulk = t.spread("cost bulk server CPU per M IDs", "cost_bulk", "server_cpu_ms_per_mid", ms)
    v1_ids = t.spread("cost v1 (LEASE 4096) IDs/s", "cost_v1", "ids_per_sec", fmt_int)
    bulk_ids = t.spread("cost bulk IDs/s", "cost_bulk", "ids_per_sec", fmt_int)
    ratio = t.paired_row("cost v1 / bulk CPU per M IDs, per round",
                         t.paired("cost_v1", "server_cpu_ms_per_mid", "cost_bulk",
                                  "server_cpu_ms_per_mid"))
    if None in (v1, bulk, v1_ids, bulk_ids, ratio):
        t.row("9", "server CPU per million IDs, v1 vs bulk", "no result", "", "", "",
              "**MISS**", "cost")
        return
    t.row("9", "server CPU time per million IDs at the ceiling, server with 4 workers: "
          "BULK_LEASE (ours) vs version-1 LEASE 4096 (peer); IDs/s in brackets",
          f"{ms(bulk)} ({fmt_int(bulk_ids)} IDs/s)", f"{ms(v1)} ({fmt_int(v1_ids)} IDs/s)",
          f"{ratio:.1f}x less", ">= 10x less", pf(ratio >= 10), "cost")


def rows_fairness_bulk(t):
    """10. Fairness with bulk leases (issue 14): the count=1 probe, a version-1 LEASE on its
    own connection, beside 500 connections draining the worker with BULK_LEASEs."""
    p99 = t.spread("fairness_bulk probe p99", "fairness_bulk", "probe_p99_us", fmt_us)
    if p99 is None:
        t.row("10", "fairness with bulk leases", "no result", "", "", "", "**MISS**",
              "fairness_bulk")
        return
    ref, _ = t.med("fairness_ref", "probe_p99_us")
    lease, _ = t.med("fairness", "probe_p99_us")
    peer = ", ".join(x for x in (f"row 7 (LEASE load) p99 {fmt_us(lease)}" if lease else "",
                                 f"1 connection p99 {fmt_us(ref)}" if ref else "") if x)
    t.row("10", "fairness with bulk leases: LEASE count=1 (version 1, own connection) beside "
          "500 connections x 1 BULK_LEASE: p99 (p50, max); reference as row 7",
          probe_cell(t, "fairness_bulk", p99), peer, f"{p99 / ref:.1f}x" if ref else "",
          "p99 <= 2 ms", pf(p99 <= 2000), "fairness_bulk")


def rows_overload(t):
    """Known issue: p99 under overload (and, with --baseline, the same on an older build)."""
    for key, who in (("overload", "this build"), ("overload_base", "baseline build")):
        mean, _ = t.med(key, "mean_us")
        p99 = t.spread(f"{key} 4x8 B=4096 p99", key, "p99_us", fmt_us)
        p50, _ = t.med(key, "p50_us")
        mx, _ = t.med(key, "max_us")
        ids, _ = t.med(key, "ids_per_sec")
        if mean:
            t.row("known", f"overload, {who}: 4 conns x depth 8, B=4096: p99 vs mean latency",
                  f"p99 {fmt_us(p99)}, p50 {fmt_us(p50)}, mean {fmt_us(mean)}, "
                  f"max {fmt_us(mx)}", f"{fmt_int(ids)} IDs/s", f"p99/mean {p99 / mean:.1f}x",
                  "measured, not a target", "info", key)


def render(t, runs, duration, pin):
    """The markdown: the targets, the per-round spread, and any run with errors."""
    bad = [r for r in t.recs if r.get("errors") or r.get("verified") is False]
    text = [f"Medians of {runs} round(s), {duration} s per load; {pin}. Ratios against "
            "Redis are medians of the per-round ratios (both measured in the same round).",
            "",
            "| # | Target | snowlease | Peer / reference | Ratio | Goal | Result |",
            "|---|---|---|---|---|---|---|"]
    text += ["| " + " | ".join(r) + " |" for r in t.rows]
    text += ["", "| Measurement | Per run | Median |", "|---|---|---|"]
    text += t.detail
    if bad:
        text += ["", "Runs with errors or overlapping IDs:"]
        text += [f"- {r['key']} run {r['run']}: errors {r.get('errors')}, "
                 f"verified {r.get('verified')}" for r in bad]
    return "\n".join(text) + "\n"


def report(results, runs, duration, pin, nice, out_dir):
    """Prints the table (and, with out_dir, writes table.md and summary.json)."""
    t = Table([json.loads(l) for l in open(results) if l.strip()], runs)
    rows_ceiling(t)
    for depth in (1, 16):
        rows_redis(t, depth)
    rows_http(t)
    rows_memory(t)
    rows_startup(t)
    rows_fairness(t)
    rows_peer_cap(t)
    rows_cost(t)
    rows_fairness_bulk(t)
    rows_overload(t)
    table = render(t, runs, duration, pin)
    print(table)
    if out_dir:
        open(os.path.join(out_dir, "table.md"), "w").write(table)
        json.dump({"runs": runs, "duration_s": duration, "pinning": pin, "nice": nice,
                   "targets": t.summary}, open(os.path.join(out_dir, "summary.json"), "w"),
                  indent=2)


def median_run(results, key):
    recs = [json.loads(l) for l in open(results) if l.strip()]
    recs = sorted((r for r in recs if r["key"] == key and r["kind"] == "bench"),
                  key=lambda r: r["ids_per_sec"])
    print(recs[len(recs) // 2]["run"] if recs else "")

COMMANDS = {
    "freeport": freeport, "wait-tcp": wait_tcp, "serving": serving,
    "bench": rec_bench, "redis": rec_redis, "wrk": rec_wrk, "record-json": record_json,
    "snap": snap, "cpu": rec_cpu, "redis-rate": redis_rate, "redis-n": redis_n,
    "median-run": median_run,
    "report": lambda res, runs, dur, pin, nice, out: report(res, int(runs), int(dur), pin,
                                                           nice, out),
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
