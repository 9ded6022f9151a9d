#!/usr/bin/env bash
# bench/compare.sh: snowlease measured against its performance targets and against Redis,
# side by side on this machine, ending in one markdown table with ratios and PASS/MISS.
#
# Flow: check tools -> build release binaries -> start snowlease-server and redis-server on
# loopback (pinned to one CPU) -> for each of --runs rounds, run every load one after the
# other from the other CPU (snowlease bench, redis-benchmark, wrk), so both sides of each
# ratio see the same machine state; the fairness and peer-cap rows of issue 11; the bulk
# lease rows of issue 14 (server CPU per million IDs, v1 against bulk, on a server holding 4
# workers; fairness beside bulk leases) -> idle
# memory with 10,000 connections -> start-up time -> medians -> table. Everything started is
# stopped on exit (trap), every load has a duration and every wait a bound.
#
# Who does what: this script pins and starts and stops processes; snowlease-bench starts the
# server (`serve`, the harness the tests use), drives every snowlease load and measures
# memory and start-up (`idle-conns`, `startup`); bench/compare.py parses the other tools'
# output and /proc, and prints the table; bench/prio.py gives each process its session.
#
# Usage: bench/compare.sh [--quick] [--runs N] [--duration S] [--out DIR] [--no-build]
#                         [--nice N] [--criterion] [--keep] [--baseline BIN]
# The numbers and how to read them: bench/BENCHMARKS.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=3
DURATION=10
WARMUP=1
STARTUP_RUNS=10
IDLE_CONNS=10000
OUT=""
BUILD=1
NICE=""
CRITERION=0
KEEP=0
BASELINE=""

usage() {
    cat <<'EOF'
Usage: bench/compare.sh [options]

Runs every performance target of snowlease and the Redis INCR comparison side by side on
this machine, and prints one markdown table (medians of --runs rounds) with PASS/MISS.

  --quick         smoke version: 1 round of 2 s loads, 3 start-ups (about 1 minute)
  --runs N        rounds of every load (default 3; the table shows medians)
  --duration S    seconds per load (default 10; whole seconds)
  --out DIR       keep results there: table.md, summary.json, results.jsonl, the B=4096
                  run's chart (b4096.svg) and report (b4096.json)
  --no-build      use the binaries already built
  --nice N        run both servers and all load generators at this nice level (e.g. -5 on a
                  machine busy with other work); the same for snowlease and Redis
  --criterion     also run the generator's criterion benches (slow to compile)
  --baseline BIN  also run the overload, fairness and peer-cap rows against this
                  snowlease-server binary (a build of an earlier commit), for a before/after
  --keep          keep the scratch directory (logs, raw outputs)

Needs cargo, redis-server, redis-benchmark, wrk, curl, python3 and taskset. Installs nothing.
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) RUNS=1; DURATION=2; WARMUP=0.5; STARTUP_RUNS=3 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift ;;
        --out) OUT=${2:?--out needs a directory}; shift ;;
        --no-build) BUILD=0 ;;
        --nice) NICE=${2:?--nice needs a level}; shift ;;
        --criterion) CRITERION=1 ;;
        --keep) KEEP=1 ;;
        --baseline) BASELINE=${2:?--baseline needs a server binary}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
case "$RUNS$DURATION" in *[!0-9]*) echo "compare.sh: --runs and --duration take whole numbers" >&2; exit 2 ;; esac
if [ "$RUNS" -lt 1 ] || [ "$RUNS" -gt 20 ] || [ "$DURATION" -lt 1 ] || [ "$DURATION" -gt 120 ]; then
    echo "compare.sh: --runs must be 1..20 and --duration 1..120" >&2
    exit 2
fi
if [ -n "$NICE" ] && ! { [[ "$NICE" =~ ^-?[0-9]+$ ]] && [ "$NICE" -ge -20 ] && [ "$NICE" -le 19 ]; }; then
    echo "compare.sh: --nice takes a level from -20 to 19, not $NICE" >&2
    exit 2
fi

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- tools -------------------------------------------------------------------------------
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("  $1: $2"); }
need cargo "install Rust (https://rustup.rs) or: apt-get install -y cargo"
need redis-server "apt-get install -y redis-server"
need redis-benchmark "apt-get install -y redis-tools"
need wrk "apt-get install -y wrk"
need curl "apt-get install -y curl"
need python3 "apt-get install -y python3"
need taskset "apt-get install -y util-linux"
need timeout "apt-get install -y coreutils"
if [ ${#missing[@]} -gt 0 ]; then
    echo "compare.sh: missing tools:" >&2
    printf '%s\n' "${missing[@]}" >&2
    exit 2
fi

WORK=$(mktemp -d /tmp/snowlease-compare.XXXXXX)
PIDS=()
stop_pid() {
    local pid=$1 _
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 80); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [ "$KEEP" = 1 ]; then log "scratch kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- helpers ------------------------------------------------------------------------------
py() { python3 "$ROOT/bench/compare.py" "$@"; }
RESULTS=$WORK/results.jsonl
: >"$RESULTS"

# ---- build -------------------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER_BIN=$TARGET_DIR/release/snowlease-server
BENCH_BIN=$TARGET_DIR/release/snowlease-bench
if [ "$BUILD" = 1 ]; then
    log "building release binaries into $TARGET_DIR (cargo build --release -p snowlease-server -p snowlease-bench)"
    (cd "$ROOT" && cargo build --release -q -p snowlease-server -p snowlease-bench)
fi
for bin in "$SERVER_BIN" "$BENCH_BIN" ${BASELINE:+"$BASELINE"}; do
    [ -x "$bin" ] || { echo "compare.sh: $bin not built (drop --no-build)" >&2; exit 2; }
done

# ---- scheduling: own session per process, optional autogroup nice, CPU pinning ------------
# With the kernel's autogroup scheduling (sched_autogroup_enabled=1, as here) CPU time is
# shared between *sessions* first, so a plain `nice` does nothing against other people's
# builds. Every server and load generator therefore starts in a session of its own (one
# scheduling group each, like any other build on the machine), and --nice sets that group's
# nice value. Redis and snowlease get exactly the same treatment.
read -r FIRST_CPU LAST_CPU < <(python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); print(c[0], c[-1])')
PRIO_CMD=(python3 "$ROOT/bench/prio.py" "$NICE")
if [ "$FIRST_CPU" != "$LAST_CPU" ]; then
    PIN_SERVER=("${PRIO_CMD[@]}" taskset -c "$FIRST_CPU")
    PIN_LOAD=("${PRIO_CMD[@]}" taskset -c "$LAST_CPU")
    PIN_TEXT="servers pinned to CPU $FIRST_CPU, load generators to CPU $LAST_CPU (taskset)"
else
    PIN_SERVER=("${PRIO_CMD[@]}")
    PIN_LOAD=("${PRIO_CMD[@]}")
    PIN_TEXT="one CPU only: nothing pinned, server and load share it"
fi
PIN_TEXT="$PIN_TEXT; each in its own session (autogroup)${NICE:+ at nice $NICE}"
log "$PIN_TEXT"

# Each connection is a file descriptor: the 10,000-connection test needs room on both sides.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- servers -----------------------------------------------------------------------------
# start_snowlease NAME PIN(0|1) ARGS...: starts $SERVER_BIN through `snowlease-bench serve`
# (loopback ports, a fresh state directory, its log in $WORK/NAME.log); sets SL_SUP (the
# supervising serve process: SIGTERM to it stops the server gracefully), SL_PID (the server
# itself, for /proc), SL_LEASE, SL_ADMIN. Pinning and the session are inherited.
start_snowlease() {
    local name=$1 pin=$2 _
    shift 2
    local out=$WORK/$name.serving
    local pre=("${PRIO_CMD[@]}")
    [ "$pin" = 1 ] && pre=("${PIN_SERVER[@]}")
    "${pre[@]}" "$BENCH_BIN" serve --server-bin "$SERVER_BIN" --server-log "$WORK/$name.log" \
        -- --worker-id 1 "$@" >"$out" 2>>"$WORK/$name.serve.log" &
    SL_SUP=$!
    PIDS+=("$SL_SUP")
    SL_PID="" SL_LEASE="" SL_ADMIN=""
    # Bounded: serve itself gives up after 15 s without a `serving` line.
    for _ in $(seq 1 200); do
        if grep -q '}' "$out" 2>/dev/null; then
            read -r SL_PID SL_LEASE SL_ADMIN < <(py serving "$out")
            PIDS+=("$SL_PID")
            return 0
        fi
        kill -0 "$SL_SUP" 2>/dev/null || break
        sleep 0.1
    done
    echo "compare.sh: snowlease-server did not start; its log:" >&2
    cat "$WORK/$name.serve.log" "$WORK/$name.log" >&2 2>/dev/null
    exit 1
}

# stop_snowlease: stops the server started last (through its supervisor).
stop_snowlease() {
    stop_pid "$SL_SUP"
    stop_pid "$SL_PID"
}

start_redis() {
    REDIS_PORT=$(py freeport)
    "${PIN_SERVER[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
        --appendonly no --daemonize no --logfile "$WORK/redis.log" >/dev/null 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    py wait-tcp 127.0.0.1 "$REDIS_PORT" 10
}

# ---- loads -------------------------------------------------------------------------------
LOAD_BOUND=$((DURATION * 3 + 60))

# bench KEY RUN ARGS...: one snowlease-bench run against the pinned server; the server's CPU
# time is divided by the leases it counted.
bench() { bench_per lease "$@"; }

# bench_per KIND KEY RUN ARGS...: the same, the server's CPU time divided by what KIND
# counts (lease: snowlease_leases_total; ids: snowlease_ids_issued_total).
bench_per() {
    local kind=$1 key=$2 run=$3 u0 s0 o0
    shift 3
    local out=$WORK/$key.$run
    read -r u0 s0 o0 < <(py snap "$kind" "$SL_PID" "$SL_ADMIN")
    if timeout "$LOAD_BOUND" "${PIN_LOAD[@]}" "$BENCH_BIN" --addr "$SL_LEASE" --quiet \
        --duration "$DURATION" --warmup "$WARMUP" --json "$out.json" --svg "$out.svg" "$@" \
        >"$out.txt" 2>&1; then
        py bench "$RESULTS" "$key" "$run" "$out.json"
        py cpu "$RESULTS" "$key" "$run" "$kind" "$SL_PID" "$SL_ADMIN" "$u0" "$s0" "$o0"
    else
        log "MISS: $key run $run failed: $(tail -n 3 "$out.txt" | tr '\n' ' ')"
    fi
}

declare -A REDIS_RATE=()
# redis KEY RUN PIPELINE: redis-benchmark INCR from 50 connections for about DURATION s.
redis() {
    local key=$1 run=$2 p=$3 rate n u0 s0 o0
    local out=$WORK/$key.$run.csv
    rate=${REDIS_RATE[$key]:-}
    if [ -z "$rate" ]; then
        # A short calibration run sets -n so that the real run lasts about DURATION seconds.
        timeout 60 "${PIN_LOAD[@]}" redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c 50 \
            -P "$p" -t incr -n $((20000 * p)) --csv >"$out.cal" 2>&1 || true
        rate=$(py redis-rate "$out.cal")
    fi
    n=$(py redis-n "$rate" "$DURATION")
    read -r u0 s0 o0 < <(py snap redis "$REDIS_PID" "$REDIS_PORT")
    if timeout "$LOAD_BOUND" "${PIN_LOAD[@]}" redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" \
        -c 50 -P "$p" -t incr -n "$n" --csv >"$out" 2>&1; then
        REDIS_RATE[$key]=$(py redis "$RESULTS" "$key" "$run" "$out")
        py cpu "$RESULTS" "$key" "$run" redis "$REDIS_PID" "$REDIS_PORT" "$u0" "$s0" "$o0"
    else
        log "MISS: $key run $run failed or ran past ${LOAD_BOUND} s"
    fi
}

http_load() {
    local run=$1 out=$WORK/http.$1.txt u0 s0 o0
    read -r u0 s0 o0 < <(py snap http "$SL_PID" "$SL_ADMIN")
    if timeout "$LOAD_BOUND" "${PIN_LOAD[@]}" wrk -c 64 -t 1 -d "${DURATION}s" --latency \
        "http://$SL_ADMIN/generate-id" >"$out" 2>&1; then
        py wrk "$RESULTS" http "$run" "$out"
        py cpu "$RESULTS" http "$run" http "$SL_PID" "$SL_ADMIN" "$u0" "$s0" "$o0"
    else
        log "MISS: wrk run $run failed"
    fi
}

# use_server BIN NAME ARGS...: another pinned server for some rows (the one before keeps
# running, idle); main_server stops it and points the loads back at the one before. Nests.
SERVERS=()
use_server() {
    local bin=$1 name=$2
    shift 2
    SERVERS+=("$SL_SUP|$SL_PID|$SL_LEASE|$SL_ADMIN|$SERVER_BIN")
    SERVER_BIN=$bin
    start_snowlease "$name" 1 "$@"
}
main_server() {
    stop_snowlease
    IFS='|' read -r SL_SUP SL_PID SL_LEASE SL_ADMIN SERVER_BIN <<<"${SERVERS[-1]}"
    unset 'SERVERS[-1]'
}

# peer_cap_args BIN: the server flags of the peer-cap row. A global cap of 1,000 that the
# held connections (1,100) exceed, and, on a build that has it, a per-peer cap of 500 that
# they exceed too: before the per-peer cap the other peer finds the server full.
peer_cap_args() {
    echo --threads 1 --max-connections 1000
    if "$1" --help 2>/dev/null | grep -q -- '--max-connections-per-peer'; then
        echo --max-connections-per-peer 500
    fi
}

# rows_of_issue_11 SUFFIX RUN: fairness against the current server, then peer cap on a
# server of its own from the same binary.
rows_of_issue_11() {
    local suffix=$1 run=$2
    log "round $run/$RUNS: fairness: 500 connections x 1 x 4096, an idle connection's count=1 timed${suffix:+ (baseline)}"
    bench "fairness$suffix" "$run" --mode fairness --connections 500 --depth 1 --batch 4096
    if [ -z "$suffix" ]; then
        # The same probe beside one load connection: what this machine gives a lone request
        # right now, the reference the fairness p99 is read against.
        bench fairness_ref "$run" --mode fairness --connections 1 --depth 1 --batch 4096
    fi
    log "round $run/$RUNS: peer cap: 127.0.0.1 holds 1,100 connections, 127.0.0.2 leases${suffix:+ (baseline)}"
    # shellcheck disable=SC2046 # the flags are words
    use_server "$SERVER_BIN" "peer_cap$suffix.$run" $(peer_cap_args "$SERVER_BIN")
    bench "peer_cap$suffix" "$run" --mode peer-cap --connections 1100
    if [ -z "$suffix" ]; then
        # The same probes while the first peer holds 400, under every cap: the reference.
        bench peer_cap_ref "$run" --mode peer-cap --connections 400
    fi
    main_server
}

# Row 9 (issue 14 section 4): server CPU per million IDs at the ceiling, version 1 against
# bulk leases, on one server holding 4 workers (so a bulk lease can take more than one worker)
# with one thread, pinned like the others. Version 1 is row 1's load (1 connection x depth 4 x
# 4096: one worker, its home, at its ceiling); bulk is 1 connection x depth 2 x BULK_LEASE of
# BULK_COST IDs. BULK_COST: 2^20 is a quarter of max_bulk and above what the 4 workers hold
# ahead at once (4 x 100 ms x 4,096 = 1,638,400 IDs at the default --max-lead-ms 100 are
# handed out as they open, so each reply carries many ticks of every worker); see
# BENCHMARKS.md for the measurement behind the choice. The two loads alternate which goes
# first by round.
BULK_COST=1048576
# Row 10 (issue 14): fairness beside bulk leases. 500 connections x 1 BULK_LEASE of
# BULK_FAIR IDs on the row-7 server (one worker): 4 ticks per request, so every request spans
# ticks, and 500 x 16,384 IDs is 2 s of the worker's ceiling queued, inside the bench's 5 s
# reply timeout (2^20 per request would queue 128 s and time out).
BULK_FAIR=16384
rows_of_issue_14() {
    local run=$1 order=(v1 bulk) which
    [ $((run % 2)) = 0 ] && order=(bulk v1)
    use_server "$SERVER_BIN" "cost.$run" --threads 1 --worker-ids 0-3
    for which in "${order[@]}"; do
        if [ "$which" = v1 ]; then
            log "round $run/$RUNS: cost: version 1, 1 x 4 x LEASE 4096, server with workers 0-3"
            bench_per ids cost_v1 "$run" --mode raw --connections 1 --depth 4 --batch 4096
        else
            log "round $run/$RUNS: cost: bulk, 1 x 2 x BULK_LEASE $BULK_COST, server with workers 0-3"
            bench_per ids cost_bulk "$run" --mode raw --connections 1 --depth 2 --bulk "$BULK_COST"
        fi
    done
    main_server
    log "round $run/$RUNS: fairness with bulk: 500 connections x 1 x BULK_LEASE $BULK_FAIR, an idle version-1 connection's count=1 timed"
    bench fairness_bulk "$run" --mode fairness --connections 500 --depth 1 --bulk "$BULK_FAIR"
}

started=$(date +%s)
start_snowlease lease 1 --threads 1
log "snowlease-server pid $SL_PID on $SL_LEASE (admin $SL_ADMIN), 1 thread"
curl -fsS --max-time 5 "http://$SL_ADMIN/readyz" >/dev/null
start_redis
log "redis-server pid $REDIS_PID on 127.0.0.1:$REDIS_PORT ($(redis-server --version | cut -d' ' -f3))"

for run in $(seq 1 "$RUNS"); do
    log "round $run/$RUNS: B=4096 ceiling"
    bench b4096 "$run" --mode raw --connections 1 --depth 4 --batch 4096
    log "round $run/$RUNS: client next_id() x 4 tasks"
    bench client4 "$run" --mode client --tasks 4
    for depth in 1 16; do
        log "round $run/$RUNS: LEASE n=1, 50 connections, depth $depth, then Redis INCR -P $depth"
        bench "n1_d$depth" "$run" --mode raw --connections 50 --depth "$depth" --batch 1
        redis "redis_p$depth" "$run" "$depth"
    done
    log "round $run/$RUNS: HTTP /generate-id with wrk"
    http_load "$run"
    log "round $run/$RUNS: overload (4 connections x depth 8, B=4096)"
    bench overload "$run" --mode raw --connections 4 --depth 8 --batch 4096
    rows_of_issue_11 "" "$run"
    rows_of_issue_14 "$run"
    if [ -n "$BASELINE" ]; then
        log "round $run/$RUNS: overload against the baseline $BASELINE"
        use_server "$BASELINE" "baseline.$run" --threads 1
        bench overload_base "$run" --mode raw --connections 4 --depth 8 --batch 4096
        rows_of_issue_11 _base "$run"
        main_server
    fi
done
stop_snowlease
stop_pid "$REDIS_PID"

log "memory: idle, then $IDLE_CONNS idle connections (server unpinned, default threads)"
start_snowlease mem 0
if "$BENCH_BIN" idle-conns --addr "$SL_LEASE" --admin "$SL_ADMIN" --pid "$SL_PID" \
    --connections "$IDLE_CONNS" >"$WORK/mem.json" 2>"$WORK/mem.err"; then
    py record-json "$RESULTS" mem 1 mem "$WORK/mem.json"
else
    log "MISS: the memory measurement failed: $(tail -n 3 "$WORK/mem.err" | tr '\n' ' ')"
fi
stop_snowlease

log "start-up: $STARTUP_RUNS starts, process spawn to /readyz 200"
if "${PRIO_CMD[@]}" "$BENCH_BIN" startup --server-bin "$SERVER_BIN" --runs "$STARTUP_RUNS" \
    -- --worker-id 1 >"$WORK/startup.json" 2>"$WORK/startup.err"; then
    py record-json "$RESULTS" startup 1 startup "$WORK/startup.json"
else
    log "MISS: start-up measurement failed: $(tail -n 3 "$WORK/startup.err" | tr '\n' ' ')"
fi

log "loads took $(($(date +%s) - started)) s"
if [ -n "$OUT" ]; then
    mkdir -p "$OUT"
    cp "$RESULTS" "$OUT/results.jsonl"
    mid=$(py median-run "$RESULTS" b4096)
    if [ -n "$mid" ]; then
        cp "$WORK/b4096.$mid.svg" "$OUT/b4096.svg"
        cp "$WORK/b4096.$mid.json" "$OUT/b4096.json"
    fi
fi
py report "$RESULTS" "$RUNS" "$DURATION" "$PIN_TEXT" "$NICE" "$OUT"

if [ "$CRITERION" = 1 ]; then
    log "criterion: cargo bench -p snowlease-server --bench generator"
    if ! (cd "$ROOT" && timeout 1800 "${PRIO_CMD[@]}" cargo bench -p snowlease-server \
        --bench generator -- --warm-up-time 2 --measurement-time 5 2>&1 |
        grep -E '^lease/|time:'); then
        log "criterion: no results (build failed or timed out)"
    fi
fi
