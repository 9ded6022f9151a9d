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
# shellcheck source=lib.sh
source "$KUBE_DIR/lib.sh" monitoring-test
SERVER_BIN=${SNOWLEASE_SERVER_BIN:-$TARGET_DIR/release/snowlease-server}
BENCH=
parse_args --server-bin=SERVER_BIN --bench=BENCH -- "$@"
need_server_and_bench

make_work_dir monitoring
STARTED=$(date +%s)
teardown() {
    stop_pids 100 0.1 "${PIDS[@]}"
    if [[ $1 -ne 0 ]]; then
        echo "--- server log (last 5 lines)"; tail -5 "$WORK/server.log" 2>/dev/null
        echo "--- prometheus log (last 10 lines)"; tail -10 "$WORK/prometheus.log" 2>/dev/null
    fi
}
check() { python3 "$KUBE_DIR/monitoring_check.py" "$@"; }

ensure_prometheus() {
    if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
        log "installing prometheus (and promtool) from Debian"
        apt_install prometheus
    fi
    python3 -c 'import yaml' 2>/dev/null || timeout 300 python3 -m pip install -q pyyaml
    log "$(prometheus --version 2>&1 | head -1)"
}

# Prometheus's port (it was given port 0), read back from the kernel's socket table, once
# /-/ready answers on it.
prometheus_ready() {
    PROM_PORT=$(ss -Hltnp 2>/dev/null | awk -v p="pid=$1," 'index($0, p) { split($4, a, ":"); print a[length(a)]; exit }')
    [[ -n $PROM_PORT ]] && answers "http://127.0.0.1:$PROM_PORT/-/ready"
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
    local pid=$!
    PIDS+=("$pid")
    if ! wait_for 200 0.1 "$pid" prometheus_ready "$pid"; then
        gone "$pid" && fail "prometheus exited at start"
        fail "prometheus was not ready within 20 s"
    fi
    PROM=http://127.0.0.1:$PROM_PORT
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
start_server 3
log "server $SERVER_BIN: lease $LEASE, admin $ADMIN"
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
