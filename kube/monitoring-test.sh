#!/usr/bin/env bash
# Tests the monitoring component (kube/components/monitoring) against the real thing: a real
# snowlease-server on loopback under a little load, scraped by a real Prometheus (Debian's 2.42)
# every second, loading the PrometheusRule's rules.
#   1. waits until Prometheus has scraped the server (`up` is 1: a condition, bounded), then
#      until the load is visible in a rate;
#   2. runs every dashboard expression and every alert expression through /api/v1/query: each
#      must parse and evaluate, each dashboard expression must return data; every rule must be
#      loaded and healthy;
#   3. `promtool check rules`, `promtool test rules` (kube/components/monitoring/rules-test.yaml:
#      each alert fires on a synthetic series and stays quiet on a healthy one), and a
#      self-test: each alert made to never fire, then to always fire, must fail those tests.
#
# Usage: kube/monitoring-test.sh [--server-bin PATH] [--bench PATH]
#   Server: --server-bin, else $SNOWLEASE_SERVER_BIN, else $CARGO_TARGET_DIR/release or
#   target/release. Load: snowlease-bench beside the server unless --bench.
#   Needs prometheus and promtool (Debian package `prometheus`; installed here only if missing).
#   Traffic stays on 127.0.0.1; both processes are stopped on any exit.
set -euo pipefail

KUBE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$KUBE_DIR/.." && pwd)
SERVER_BIN=${SNOWLEASE_SERVER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/snowlease-server}
BENCH=
while [[ $# -gt 0 ]]; do
    case $1 in
        --server-bin) SERVER_BIN=$2; shift 2 ;;
        --bench) BENCH=$2; shift 2 ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"; exit 0 ;;
        *) echo "monitoring-test.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
BENCH=${BENCH:-$(dirname "$SERVER_BIN")/snowlease-bench}
for bin in "$SERVER_BIN" "$BENCH"; do
    [[ -x $bin ]] || { echo "monitoring-test.sh: $bin is not an executable (see --help)" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/snowlease-monitoring.XXXXXX)
PIDS=()
STARTED=$(date +%s)
log() { echo "[monitoring-test $(date +%T)] $*"; }
cleanup() {
    local rc=$? pid
    set +e
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [[ $rc -ne 0 ]]; then
        echo "--- server log (last 5 lines)"; tail -5 "$WORK/server.log" 2>/dev/null
        echo "--- prometheus log (last 10 lines)"; tail -10 "$WORK/prometheus.log" 2>/dev/null
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "monitoring-test.sh: FAIL $*" >&2; exit 1; }
check() { python3 "$KUBE_DIR/monitoring_check.py" "$@"; }

ensure_prometheus() {
    if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
        log "installing prometheus (and promtool) from Debian"
        timeout 300 apt-get update -qq
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq prometheus >/dev/null
    fi
    python3 -c 'import yaml' 2>/dev/null || timeout 300 python3 -m pip install -q pyyaml
    log "$(prometheus --version 2>&1 | head -1)"
}

# serving_addrs LOG: "LEASE ADMIN" from the JSON serving line (fields flat or under "fields").
serving_addrs() {
    python3 - "$1" <<'EOF'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    try:
        rec = json.loads(line)
    except ValueError:
        continue
    fields = {**rec, **(rec.get("fields") or {})}
    if fields.get("message") == "serving":
        print(fields["lease_addr"], fields["admin_addr"])
        break
EOF
}

start_server() {
    mkdir -p "$WORK/state"
    "$SERVER_BIN" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log-format json \
        --worker-id 3 --threads 1 --state-dir "$WORK/state" 2>"$WORK/server.log" &
    PIDS+=($!)
    local addrs=
    for _ in $(seq 1 100); do
        addrs=$(serving_addrs "$WORK/server.log")
        [[ -n $addrs ]] && break
        kill -0 "${PIDS[0]}" 2>/dev/null || fail "the server exited at start"
        sleep 0.1
    done
    [[ -n $addrs ]] || fail "no serving line from the server within 10 s"
    read -r LEASE ADMIN <<<"$addrs"
    log "server $SERVER_BIN: lease $LEASE, admin $ADMIN"
}

start_prometheus() {
    check rules "$WORK/rules"
    cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $WORK/rules/snowlease-rules-full.yml
scrape_configs:
  # job="snowlease", as the PodMonitor's jobLabel gives in a cluster.
  - job_name: snowlease
    metrics_path: /metrics
    static_configs:
      - targets: ["$ADMIN"]
EOF
    prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
        --web.listen-address=127.0.0.1:0 --log.level=warn >"$WORK/prometheus.log" 2>&1 &
    local pid=$! port=
    PIDS+=("$pid")
    # Port 0: read the port Prometheus got back from the kernel's socket table.
    for _ in $(seq 1 200); do
        port=$(ss -Hltnp 2>/dev/null | awk -v p="pid=$pid," 'index($0, p) { split($4, a, ":"); print a[length(a)]; exit }')
        [[ -n $port ]] && curl -fsS -m 1 "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || fail "prometheus exited at start"
        port=
        sleep 0.1
    done
    [[ -n $port ]] || fail "prometheus was not ready within 20 s"
    PROM=http://127.0.0.1:$port
    log "prometheus on $PROM, scraping $ADMIN every second"
}

load() {
    # A little load: 3 s of pipelined leases, so the counters move between scrapes.
    timeout 60 "$BENCH" --addr "$LEASE" --mode raw --connections 2 --depth 4 --batch 4096 \
        --duration 3 --quiet --no-verify >"$WORK/bench.txt" 2>&1 \
        || { cat "$WORK/bench.txt"; fail "snowlease-bench failed"; }
    log "load: $(grep -E '^IDs/s' "$WORK/bench.txt" | tr -s ' ')"
}

ensure_prometheus
start_server
start_prometheus
check wait "$PROM" 'up{job="snowlease"} == 1' 60 || fail "Prometheus did not scrape the server within 60 s"
log "first scrape: up == 1"
load
# Rates need two samples that differ: wait until the load shows in one (a condition, bounded).
check wait "$PROM" 'rate(snowlease_ids_issued_total{job="snowlease"}[1m]) > 0' 30 \
    || fail "the load did not show in rate(snowlease_ids_issued_total) within 30 s"
log "the load is visible in rate(snowlease_ids_issued_total[1m])"
check query "$PROM" || fail "expressions above"
log "promtool check rules"
promtool check rules "$WORK/rules/snowlease-rules-full.yml"
log "promtool test rules ($(grep -c '^  - name:' "$KUBE_DIR/components/monitoring/rules-test.yaml") tests)"
(cd "$WORK/rules" && promtool test rules rules-test.yaml)
log "self-test: every alert made to never fire and to always fire must fail its tests"
check mutants "$WORK/rules" || fail "the unit tests miss an alert (above)"
log "monitoring test passed in $(( $(date +%s) - STARTED )) s"
