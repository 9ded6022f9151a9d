#!/usr/bin/env bash
# What a Go or Python team runs today against what snowlease gives them in their own language,
# side by side in one run (issue 13's speed rows): the seed's Go and Python HTTP services and
# snowlease's /generate-id under `wrk -t1 -c64`, and the buffered clients' next_id() (Rust,
# Python sync and asyncio, Go) against one snowlease worker. Every server is pinned to the first
# CPU, every load and client to the last; the rounds alternate the systems, and the table shows
# medians with the ratio to the seed's service in the same language.
#
# Usage: bench/languages.sh [--rounds N] [--seconds S] [--out FILE]
#   Needs a release build (cargo build --release -p snowlease-server -p snowlease-bench), go,
#   wrk, taskset, curl, python3 with venv. The seed's Python service needs its PyPI requirements
#   (fastapi, uvicorn, snowflake-id): they go into a venv under the scratch directory, once; on a
#   machine without network the seed Python row is skipped and says so.
#   The seed services are ../shared/peers (SEED_PEERS overrides).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REL=${CARGO_TARGET_DIR:-$ROOT/target}/release
PEERS=${SEED_PEERS:-$ROOT/../shared/peers}
ROUNDS=3
SECS=5
OUT=
while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --seconds) SECS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "languages.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for tool in go wrk taskset curl python3; do
    command -v "$tool" >/dev/null || { echo "languages.sh: needs $tool" >&2; exit 2; }
done
for bin in snowlease-server snowlease-bench; do
    [[ -x $REL/$bin ]] || { echo "languages.sh: no $REL/$bin: cargo build --release -p snowlease-server -p snowlease-bench" >&2; exit 2; }
done
[[ -d $PEERS/go && -d $PEERS/python ]] || { echo "languages.sh: no seed services at $PEERS (set SEED_PEERS)" >&2; exit 2; }

read -r SERVER_CPU LOAD_CPU < <(python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); print(c[0], c[-1])')
WORK=$(mktemp -d /tmp/snowlease-languages.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
log() { printf '[languages %s] %s\n' "$(date +%T)" "$*" >&2; }

# The tools, built once.
export GOFLAGS=-mod=mod GOPROXY=off GOCACHE=${GOCACHE:-$WORK/gocache}
(cd "$PEERS/go" && go build -o "$WORK/seed-go" .)
(cd "$ROOT/client/go" && go build -o "$WORK/gobench" ./cmd/snowlease-gobench)
SEED_PY=0
if python3 -m venv "$WORK/seedvenv" >/dev/null 2>&1 &&
    "$WORK/seedvenv/bin/pip" install -q -r "$PEERS/python/requirements.txt" >"$WORK/pip.log" 2>&1; then
    SEED_PY=1
else
    log "seed Python service skipped: its requirements did not install (see pip's output below)"
    tail -n 3 "$WORK/pip.log" >&2 || true
fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Waits until an HTTP path answers 200, at most 10 s.
wait_http() {
    local deadline=$((SECONDS + 10))
    until curl -fs "http://127.0.0.1:$1$2" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { log "nothing answered 127.0.0.1:$1$2 within 10 s"; return 1; }
        sleep 0.05
    done
}
wrk_rate() {
    taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${SECS}s" "http://127.0.0.1:$1/generate-id" 2>/dev/null |
        awk '/Requests\/sec/ {print $2}'
}
record() { echo "$1 $2" >>"$WORK/results"; }
stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# One snowlease server (one worker, one serving thread) for the snowlease rows of a round;
# sets LEASE_ADDR, ADMIN_PORT and SERVER_PID.
start_snowlease() {
    local state=$WORK/state.$1 logf=$WORK/server.$1.log
    taskset -c "$SERVER_CPU" "$REL/snowlease-server" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --worker-id 1 --threads 1 --log-format json --state-dir "$state" 2>"$logf" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    local deadline=$((SECONDS + 10))
    until grep -q '"serving"' "$logf"; do
        ((SECONDS < deadline)) || { log "the server did not serve within 10 s"; cat "$logf" >&2; exit 1; }
        sleep 0.05
    done
    LEASE_ADDR=$(grep -o '"lease_addr":"[^"]*"' "$logf" | head -n 1 | cut -d'"' -f4)
    local admin
    admin=$(grep -o '"admin_addr":"[^"]*"' "$logf" | head -n 1 | cut -d'"' -f4)
    ADMIN_PORT=${admin##*:}
}

for r in $(seq "$ROUNDS"); do
    log "round $r/$ROUNDS: seed Go net/http /generate-id"
    port=$(free_port)
    ADDR=127.0.0.1:$port POD_NAME=id-generator-1 taskset -c "$SERVER_CPU" "$WORK/seed-go" >/dev/null 2>&1 &
    pid=$!; PIDS+=("$pid")
    wait_http "$port" /generate-id && record seed_go "$(wrk_rate "$port")"
    stop "$pid"
    if ((SEED_PY)); then
        log "round $r/$ROUNDS: seed Python FastAPI /generate-id"
        port=$(free_port)
        POD_NAME=id-generator-1 taskset -c "$SERVER_CPU" "$WORK/seedvenv/bin/uvicorn" app:app \
            --app-dir "$PEERS/python" --host 127.0.0.1 --port "$port" --no-access-log >/dev/null 2>&1 &
        pid=$!; PIDS+=("$pid")
        wait_http "$port" /generate-id && record seed_python "$(wrk_rate "$port")"
        stop "$pid"
    fi

    start_snowlease "$r"
    log "round $r/$ROUNDS: snowlease /generate-id"
    record snowlease_http "$(wrk_rate "$ADMIN_PORT")"
    log "round $r/$ROUNDS: Rust client next_id(), 4 tasks"
    taskset -c "$LOAD_CPU" "$REL/snowlease-bench" --addr "$LEASE_ADDR" --mode client --tasks 4 \
        --duration "$SECS" --json "$WORK/rust.json" >/dev/null
    record rust_4_tasks "$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["ids_per_sec"])' "$WORK/rust.json")"
    log "round $r/$ROUNDS: Python client next_id(): 1 thread, 4 threads, asyncio"
    PYTHONPATH=$ROOT/client/python/src taskset -c "$LOAD_CPU" python3 \
        "$ROOT/client/python/bench/bench_client.py" --addr "$LEASE_ADDR" --seconds "$SECS" --rounds 1 |
        python3 -c '
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    for k in ("sync_1_thread", "sync_4_threads", "async_1_loop"):
        if k in d:
            print("python_" + k, d[k]["ids_per_s"])' >>"$WORK/results"
    log "round $r/$ROUNDS: Go client NextID(): 1 and 4 goroutines"
    taskset -c "$LOAD_CPU" "$WORK/gobench" -addr "$LEASE_ADDR" -goroutines 1,4 -rounds 1 \
        -duration "${SECS}s" | python3 -c '
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    if "goroutines" in d:
        print("go_%d_goroutines" % d["goroutines"], d["ids_per_sec"])' >>"$WORK/results"
    stop "$SERVER_PID"
done

python3 - "$WORK/results" "$ROUNDS" "$SECS" "$(uptime)" <<'EOF' | tee ${OUT:+"$OUT"}
import statistics, sys
path, rounds, secs, load = sys.argv[1:]
runs = {}
for line in open(path):
    key, value = line.split()
    runs.setdefault(key, []).append(float(value))
med = {k: statistics.median(v) for k, v in runs.items()}
rows = [
    ("seed Go: net/http + bwmarrin-style generator, GET /generate-id (wrk -c64)", "seed_go", None),
    ("seed Python: FastAPI + uvicorn + snowflake-id, GET /generate-id (wrk -c64)", "seed_python", None),
    ("snowlease GET /generate-id (wrk -c64)", "snowlease_http", "seed_go"),
    ("Rust client next_id(), 4 tasks", "rust_4_tasks", "seed_go"),
    ("Python Client.next_id(), 1 thread", "python_sync_1_thread", "seed_python"),
    ("Python Client.next_id(), 4 threads", "python_sync_4_threads", "seed_python"),
    ("Python AsyncClient.next_id(), 1 event loop", "python_async_1_loop", "seed_python"),
    ("Go NextID(), 1 goroutine", "go_1_goroutines", "seed_go"),
    ("Go NextID(), 4 goroutines", "go_4_goroutines", "seed_go"),
]
print(f"{rounds} rounds of {secs} s, alternating; servers on one CPU, load on another; {load.strip()}")
print()
print("| system | IDs/s (median) | rounds | vs the seed in that language | share of 4,096,000 |")
print("|---|---:|---|---:|---:|")
for name, key, base in rows:
    if key not in med:
        print(f"| {name} | not run | | | |")
        continue
    each = " / ".join(f"{v:,.0f}" for v in runs[key])
    r = med[key] / med[base] if base and med.get(base) else None
    ratio = "" if r is None else (f"{r:.1f}x" if r < 10 else f"{r:,.0f}x")
    share = f"{med[key] / 4_096_000:.1%}" if med[key] > 100_000 else ""
    print(f"| {name} | {med[key]:,.0f} | {each} | {ratio} | {share} |")
EOF
