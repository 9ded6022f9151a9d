#!/usr/bin/env bash
# Side by side on one machine: the Python client's next_id() (bench_client.py) against the
# seed's Python HTTP service (FastAPI + uvicorn + snowflake-id), servers pinned to CPU 0 and
# load to CPU 1, alternating rounds.
#
#   bench/run_bench.sh [SERVER_BIN] [ROUNDS] [SECONDS]
#
# Needs: taskset; wrk (Debian) and a venv with the seed's requirements at $SEED_VENV
# (python3 -m venv V && V/bin/pip install -r shared/peers/python/requirements.txt) for the
# seed rows, which are skipped otherwise. Prints JSON lines, then the medians and the ratio.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-${SNOWLEASE_SERVER_BIN:-$here/../../target/release/snowlease-server}}
rounds=${2:-3}
secs=${3:-5}
seed_app=${SEED_APP:-$here/../../../shared/peers/python}
[ -d "$seed_app" ] || seed_app=/work/shared/peers/python
py=${PYTHON:-python3}
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

taskset -c 0 "$bin" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log-format json \
    --worker-id 3 --threads 1 --state-dir "$tmp/state" 2>"$tmp/server.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '"serving"' "$tmp/server.log" && break; sleep 0.05; done
addr=$(grep -o '"lease_addr":"[^"]*"' "$tmp/server.log" | head -1 | cut -d'"' -f4)

seed_port=""
if [ -n "${SEED_VENV:-}" ] && command -v wrk >/dev/null; then
    seed_port=$($py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    POD_NAME=id-generator-1 taskset -c 0 "$SEED_VENV/bin/uvicorn" app:app --app-dir "$seed_app" \
        --host 127.0.0.1 --port "$seed_port" --no-access-log 2>"$tmp/seed.log" &
    pids+=($!)
    for _ in $(seq 100); do curl -sf "127.0.0.1:$seed_port/generate-id" >/dev/null && break; sleep 0.1; done
fi

for r in $(seq "$rounds"); do
    PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" taskset -c 1 $py "$here/bench/bench_client.py" \
        --addr "$addr" --seconds "$secs" --rounds 1 | head -1 | sed "s/\"round\": 1/\"round\": $r/"
    if [ -n "$seed_port" ]; then
        rps=$(taskset -c 1 wrk -t1 -c64 -d"${secs}s" "http://127.0.0.1:$seed_port/generate-id" \
              | awk '/Requests\/sec/ {print $2}')
        echo "{\"round\": $r, \"seed_python_http_ids_per_s\": $rps}"
    fi
done
