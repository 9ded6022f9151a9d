#!/usr/bin/env bash
# Measures what one snowlease pod needs at its ceiling (4,096,000 IDs/s, one worker), to size
# the StatefulSet's CPU and memory requests: the server runs with one serving thread pinned to
# CPU 0, snowlease-bench drives it from CPU 1, and the server's own CPU time (utime + stime from
# /proc/PID/stat) and peak RSS (VmHWM) are read before and after the measured window.
#
# Usage: kube/pod-cpu.sh [--server-bin PATH] [--bench PATH] [--duration S] [--mode raw|client]
#                        [--batch N]
#   Defaults: $SNOWLEASE_SERVER_BIN or target/release/snowlease-server, the bench beside it,
#   10 s, both modes one after the other (raw: 4 connections x depth 8, --batch IDs per LEASE,
#   4096; client: 4 tasks calling Client::next_id()).
# Prints one line per mode: IDs/s, server CPU seconds per wall second (= cores), CPU per
# million IDs, peak RSS. Traffic stays on 127.0.0.1; the server is stopped on any exit.
set -euo pipefail

KUBE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$KUBE_DIR/lib.sh" pod-cpu
SERVER_BIN=${SNOWLEASE_SERVER_BIN:-$TARGET_DIR/release/snowlease-server}
BENCH=
DURATION=10
BATCH=4096
unset MODE  # set only by --mode
parse_args --server-bin=SERVER_BIN --bench=BENCH --duration=DURATION --mode=MODE --batch=BATCH \
    -- "$@"
MODES=(raw client)
[[ ! -v MODE ]] || MODES=("$MODE")
need_server_and_bench
[[ $(nproc) -ge 2 ]] || { echo "pod-cpu.sh: needs 2 CPUs (server on 0, load on 1)" >&2; exit 2; }

make_work_dir podcpu
teardown() { stop_pids 100 0.1 "${PIDS[@]}"; }

CLK_TCK=$(getconf CLK_TCK)
# utime + stime of the server in clock ticks (fields 14 and 15 of /proc/PID/stat, counted after
# the parenthesised command name, which may contain spaces).
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$SERVER_PID/stat"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$SERVER_PID/status"; }
ids_issued() { curl -fsS -m 2 "http://$ADMIN/metrics" | awk '/^snowlease_ids_issued_total/ { s += $2 } END { print s + 0 }'; }

measure() {
    local mode=$1 args t0 t1 c0 c1 i0 i1
    case $mode in
        raw) args=(--mode raw --connections 4 --depth 8 --batch "$BATCH") ;;
        client) args=(--mode client --tasks 4) ;;
        *) echo "pod-cpu.sh: unknown mode $mode" >&2; exit 2 ;;
    esac
    c0=$(cpu_ticks); i0=$(ids_issued); t0=$(date +%s%N)
    taskset -c 1 timeout $((DURATION + 60)) "$BENCH" --addr "$LEASE" "${args[@]}" \
        --duration "$DURATION" --quiet --no-verify >"$WORK/bench-$mode.txt" 2>&1
    c1=$(cpu_ticks); i1=$(ids_issued); t1=$(date +%s%N)
    python3 - "$mode" "$c0" "$c1" "$CLK_TCK" "$i0" "$i1" "$t0" "$t1" "$(hwm_kib)" <<'EOF'
import sys
mode, c0, c1, tck, i0, i1, t0, t1, hwm = sys.argv[1:]
cpu = (int(c1) - int(c0)) / int(tck)
wall = (int(t1) - int(t0)) / 1e9
ids = int(i1) - int(i0)
print(f"{mode:6s}  {ids / wall:13,.0f} IDs/s ({ids / wall / 4.096e6:6.1%} of 4,096,000)  "
      f"server CPU {cpu:5.2f} s in {wall:5.2f} s = {cpu / wall:.2f} cores  "
      f"{cpu / (ids / 1e6) * 1e3 if ids else 0:6.2f} ms CPU per million IDs  peak RSS {int(hwm) / 1024:.1f} MiB")
EOF
    grep -E '^(IDs/s|errors)' "$WORK/bench-$mode.txt" | sed 's/^/        bench: /'
}

start_server 1 taskset -c 0
echo "server $SERVER_BIN (1 thread, CPU 0), bench $BENCH (CPU 1), $DURATION s per mode"
# Idle baseline: two seconds of no traffic (a measurement window, not a synchronisation).
c0=$(cpu_ticks)
sleep 2
echo "idle    server CPU $(( ($(cpu_ticks) - c0) * 1000 / CLK_TCK )) ms over 2 s"
for mode in "${MODES[@]}"; do measure "$mode"; done
