#!/usr/bin/env bash
# A simulated cluster on one machine: every pod is a network namespace running the real
# snowlease-server (POD_NAME=snowlease-N, its own --state-dir, ports 7609/7610 inside its
# namespace), wired to a bridge in a "node" namespace. sim_controller.py plays kubelet probes,
# endpoints controller, kube-proxy (iptables random DNAT for a Service IP and a NodePort) and the
# headless Service's DNS. Clients run in a "client" namespace; nothing talks to a namespace
# address from the root namespace.
#
# Scenario N=4: clients through the Service IP, the NodePort and the headless name/pod addresses;
#   every ID must decode to a worker that exists; kill -9 of pod 1 mid-run and a restart with its
#   clock 10 s behind (libfaketime); scale 4 -> 6 -> 3; no ID may repeat, no client error surface.
# Scenario N=32 (and N=256 with --big): sustained IDs/s through the client crate
#   (snowlease-bench --mode client-lease) against all pods, verified disjoint; the table goes to
#   stdout and kube/sim-results.md.
#
# Usage: kube/simulate.sh [--quick] [--big] [--skip-faults] [--duration S]
#                         [--server-bin P] [--snowcat P] [--bench P]
#   --quick        CI: the N=4 scenario and N=32 for 4 s (under a minute with binaries built)
#   --big          also N=256
#   --skip-faults  only the throughput scenarios
#   --duration S   seconds of each throughput run (default 15, --quick 4)
#   Binaries default to a release build of the workspace (CARGO_TARGET_DIR respected); the server
#   must be dynamically linked, or libfaketime cannot shift its clock.
set -euo pipefail

KUBE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$KUBE_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
QUICK=0
BIG=0
SKIP_FAULTS=0
DURATION=
SERVER=
SNOWCAT=
BENCH=
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) QUICK=1; shift ;;
        --big) BIG=1; shift ;;
        --skip-faults) SKIP_FAULTS=1; shift ;;
        --duration) DURATION=$2; shift 2 ;;
        --server-bin) SERVER=$2; shift 2 ;;
        --snowcat) SNOWCAT=$2; shift 2 ;;
        --bench) BENCH=$2; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "simulate.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [[ -z $DURATION ]]; then
    if [[ $QUICK -eq 1 ]]; then DURATION=4; else DURATION=15; fi
fi

# Addresses: all inside namespaces this script creates.
POD_CIDR_PREFIX=10.244
NODE_BR_IP=10.244.0.1
NODE_IP=10.250.0.1      # the node's address as clients see it (NodePort)
CLIENT_IP=10.250.0.2
SVC_IP=10.96.0.10       # ClusterIP of Service "snowlease"
NODE_PORT=30609
HEADLESS=snowlease-headless.snowlease.svc.cluster.local
FAKETIME_LIB=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1

PREFIX=slsim$$
NODE=$PREFIX-node
CLIENT=$PREFIX-client
WORK=$(mktemp -d /tmp/snowlease-sim.XXXXXX)
CTL=$WORK/ctl
ETC_CLIENT=/etc/netns/$CLIENT
declare -A POD_PID=()   # ordinal -> server pid
declare -A POD_LIVE=()  # ordinal -> 1 while the pod exists and is not terminating
CONTROLLER_PID=
BG_PIDS=()
FAILURES=()
RESULT_ROWS=()
SCENARIO_LINES=()

log() { echo "[sim $(date +%T)] $*"; }
failed() { FAILURES+=("$*"); echo "[sim $(date +%T)] FAIL: $*"; }
die() { echo "simulate.sh: $*" >&2; exit 1; }

any_alive() {
    local pid
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 0; done
    return 1
}

cleanup() {
    local rc=$? pid ns
    set +e
    mkdir -p "$CTL" && touch "$CTL/stop"
    # TERM first: `timeout` passes it on to the client it wraps; KILL what is left.
    for pid in "${BG_PIDS[@]}" $CONTROLLER_PID; do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq 1 20); do
        any_alive "${BG_PIDS[@]}" $CONTROLLER_PID || break
        sleep 0.1
    done
    for pid in "${BG_PIDS[@]}" $CONTROLLER_PID "${POD_PID[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    for pid in "${BG_PIDS[@]}" $CONTROLLER_PID "${POD_PID[@]}"; do wait "$pid" 2>/dev/null; done
    for ns in $(ip netns list | awk -v p="$PREFIX-" 'index($1, p) == 1 { print $1 }'); do
        # Only processes this script started can live in its namespaces.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        ip netns del "$ns"
    done
    rm -rf "$ETC_CLIENT"
    if [[ $rc -ne 0 && -d $WORK/logs ]]; then
        echo "simulate.sh failed; last log lines:" >&2
        tail -n 5 "$WORK"/logs/controller.log "$WORK"/logs/bench-*.log >&2 2>/dev/null
        grep -h -e '"level":"ERROR"' -e '"level":"WARN"' "$WORK"/logs/pod*.log 2>/dev/null | tail -n 10 >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- prerequisites

install_tools() {
    [[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, iptables)"
    local missing=()
    command -v iptables-restore >/dev/null || missing+=(iptables)
    [[ -e $FAKETIME_LIB ]] || missing+=(faketime)
    command -v bridge >/dev/null || missing+=(iproute2)
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "installing ${missing[*]} from Debian"
        timeout 300 apt-get update -qq
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

build_binaries() {
    if [[ -z $SERVER || -z $SNOWCAT || -z $BENCH ]]; then
        log "building snowlease-server, snowcat and snowlease-bench (release)"
        (cd "$ROOT" && timeout 1800 cargo build --release -p snowlease-server -p snowlease \
            -p snowlease-bench)
    fi
    SERVER=${SERVER:-$TARGET_DIR/release/snowlease-server}
    SNOWCAT=${SNOWCAT:-$TARGET_DIR/release/snowcat}
    BENCH=${BENCH:-$TARGET_DIR/release/snowlease-bench}
    local bin
    for bin in "$SERVER" "$SNOWCAT" "$BENCH"; do [[ -x $bin ]] || die "missing binary $bin"; done
    readelf -l "$SERVER" | grep INTERP >/dev/null \
        || die "$SERVER is statically linked: libfaketime cannot shift its clock; use a normal build"
}

# ---------------------------------------------------------------- the cluster

pod_ns() { echo "$PREFIX-pod$1"; }
pod_ip() { echo "$POD_CIDR_PREFIX.$(( $1 / 200 + 1 )).$(( $1 % 200 + 10 ))"; }
in_client() { ip netns exec "$CLIENT" "$@"; }

setup_node_and_client() {
    log "node namespace $NODE (bridge, forwarding) and client namespace $CLIENT"
    ip netns add "$NODE"
    ip -n "$NODE" link set lo up
    ip -n "$NODE" link add br0 type bridge
    ip -n "$NODE" addr add "$NODE_BR_IP/16" dev br0
    ip -n "$NODE" link set br0 up
    ip netns exec "$NODE" sysctl -qw net.ipv4.ip_forward=1
    ip netns add "$CLIENT"
    ip -n "$CLIENT" link set lo up
    ip -n "$NODE" link add cl type veth peer name eth0 netns "$CLIENT"
    ip -n "$NODE" addr add "$NODE_IP/24" dev cl
    ip -n "$NODE" link set cl up
    ip -n "$CLIENT" addr add "$CLIENT_IP/24" dev eth0
    ip -n "$CLIENT" link set eth0 up
    ip -n "$CLIENT" route add default via "$NODE_IP"
    # The client namespace's resolver: files only (the controller keeps the headless name's
    # lines current), and a loopback nameserver so nothing could ever leave for a real one.
    mkdir -p "$ETC_CLIENT"
    printf '127.0.0.1 localhost\n' >"$ETC_CLIENT/hosts"
    printf 'hosts: files\n' >"$ETC_CLIENT/nsswitch.conf"
    printf 'nameserver 127.0.0.1\n' >"$ETC_CLIENT/resolv.conf"
    printf 'multi on\n' >"$ETC_CLIENT/host.conf"
}

start_controller() {
    mkdir -p "$CTL" "$WORK/logs"
    publish_pods
    ip netns exec "$NODE" python3 "$KUBE_DIR/sim_controller.py" --ctl "$CTL" --svc-ip "$SVC_IP" \
        --node-ip "$NODE_IP" --node-port "$NODE_PORT" --hosts-file "$ETC_CLIENT/hosts" \
        --headless-name "$HEADLESS" --deadline-s 1500 >"$WORK/logs/controller.log" 2>&1 &
    CONTROLLER_PID=$!
}

# The pods that exist and are not terminating, for the controller (replaced atomically).
publish_pods() {
    local i
    for i in "${!POD_LIVE[@]}"; do echo "$i $(pod_ip "$i")"; done >"$CTL/pods.tmp"
    mv "$CTL/pods.tmp" "$CTL/pods"
}

create_pod_netns() {
    local i=$1 ns ip
    ns=$(pod_ns "$i"); ip=$(pod_ip "$i")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$NODE" link del "p$i" 2>/dev/null || true
    ip -n "$NODE" link add "p$i" type veth peer name eth0 netns "$ns"
    ip -n "$NODE" link set "p$i" master br0
    ip -n "$NODE" link set "p$i" up
    bridge -n "$NODE" link set dev "p$i" hairpin on
    ip -n "$ns" addr add "$ip/16" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$NODE_BR_IP"
}

# start_server I [CLOCK_OFFSET]: the container of pod I. One serving thread each: the pods share
# two cores here, as pods with a 1-CPU limit would (the server would read that from its cgroup).
start_server() {
    local i=$1 offset=${2:-} preload=()
    mkdir -p "$WORK/state/$i"
    if [[ -n $offset ]]; then
        # What `faketime -f OFFSET` does, but exec'd in place so $! is the server itself.
        preload=(LD_PRELOAD="$FAKETIME_LIB" FAKETIME="$offset")
    fi
    ip netns exec "$(pod_ns "$i")" env POD_NAME="snowlease-$i" SNOWLEASE_STATE_DIR="$WORK/state/$i" \
        SNOWLEASE_LOG_FORMAT=json SNOWLEASE_DRAIN_TIMEOUT_MS=10000 SNOWLEASE_THREADS=1 \
        "${preload[@]}" "$SERVER" >>"$WORK/logs/pod$i.log" 2>&1 &
    POD_PID[$i]=$!
    POD_LIVE[$i]=1
}

# scale_up I..: new pods (namespace, server), visible to the controller at once.
scale_up() {
    local i
    for i in "$@"; do create_pod_netns "$i"; start_server "$i"; done
    publish_pods
}

# scale_down I..: as the StatefulSet controller does with Parallel pod management: every pod
# leaves the endpoints at once, the preStop pause (shortened to 1 s) lets the change spread,
# then SIGTERM; each must drain and exit 0 within the grace period. Volumes are kept.
scale_down() {
    local i rc
    for i in "$@"; do unset "POD_LIVE[$i]"; done
    publish_pods
    sleep 1
    for i in "$@"; do kill -TERM "${POD_PID[$i]}"; done
    for i in "$@"; do
        rc=0
        wait_pid_exit "${POD_PID[$i]}" 30 || rc=$?
        [[ $rc -eq 0 ]] || failed "pod $i exited with $rc after SIGTERM (want 0)"
        unset "POD_PID[$i]"
        # Delete the veth pair from the node side first: that is synchronous, while the pair
        # going away with the namespace happens later in the kernel's netns cleanup, and a
        # quick scale-up would then find "p$i" still there (RTNETLINK: File exists).
        ip -n "$NODE" link del "p$i" 2>/dev/null || true
        ip netns del "$(pod_ns "$i")"
    done
}

# wait_pid_exit PID SECONDS: waits for a child, killing it at the deadline; returns its status.
wait_pid_exit() {
    local pid=$1 deadline=$(( SECONDS + $2 ))
    while kill -0 "$pid" 2>/dev/null && [[ $SECONDS -lt $deadline ]]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        return 124
    fi
    wait "$pid"
}

# wait_endpoints "0 1 2" SECONDS: until the ready endpoints are exactly these ordinals.
wait_endpoints() {
    local want=$1 deadline=$(( SECONDS + $2 )) have=
    while [[ $SECONDS -lt $deadline ]]; do
        have=$({ awk '{print $1}' "$CTL/endpoints" 2>/dev/null || true; } | sort -n | xargs)
        [[ $have == "$want" ]] && return 0
        sleep 0.1
    done
    die "endpoints are [$have] after $2 s, expected [$want]"
}

teardown_pods() {
    local i
    if [[ ${#POD_PID[@]} -gt 0 ]]; then scale_down "${!POD_PID[@]}"; fi
    for i in "${!POD_LIVE[@]}"; do unset "POD_LIVE[$i]"; done
    publish_pods
    wait_endpoints "" 10
}

# ---------------------------------------------------------------- clients and checks

# snowcat_ranges ADDR COUNT OUT: one connection, COUNT IDs, "first count" lines appended to OUT.
snowcat_ranges() {
    in_client timeout 15 "$SNOWCAT" --addr "$1" --timeout-ms 5000 lease "$2" --ranges >>"$3"
}

# workers_of FILE: "worker:IDs" for the ranges in FILE.
workers_of() {
    python3 - "$1" <<'EOF'
import sys, collections
seen = collections.Counter()
for line in open(sys.argv[1]):
    first, count = map(int, line.split())
    seen[(first >> 12) & 1023] += count
print(" ".join(f"{w}:{n}" for w, n in sorted(seen.items())))
EOF
}

# spread ADDR CONNECTIONS OUT WHAT: many one-shot connections; reports which workers answered.
spread() {
    local addr=$1 n=$2 out=$3 what=$4 tmp=$WORK/spread.txt i
    : >"$tmp"
    for i in $(seq 1 "$n"); do snowcat_ranges "$addr" 16 "$tmp" || failed "snowcat via $what failed"; done
    cat "$tmp" >>"$out"
    SPREAD=$(workers_of "$tmp")
    log "$n connections via $what reached workers (worker:IDs) $SPREAD"
}

# expect_workers "SPREAD" "0 1 2": the set of workers seen must be exactly this.
expect_workers() {
    local seen
    seen=$(tr ' ' '\n' <<<"$1" | cut -d: -f1 | sort -n | xargs)
    [[ $seen == "$2" ]] || failed "$3: workers [$seen], expected [$2]"
}

# verify_disjoint WORKERS FILE...: every range decodes to one of WORKERS and no two overlap.
verify_disjoint() {
    local workers=$1; shift
    python3 - "$workers" "$@" <<'EOF'
import sys
allowed = {int(w) for w in sys.argv[1].split()}
blocks = []
for path in sys.argv[2:]:
    for line in open(path):
        first, count = map(int, line.split())
        blocks.append((first, count))
blocks.sort()
bad_worker = [b for b in blocks if (b[0] >> 12) & 1023 not in allowed]
overlaps, end = 0, 0
for first, count in blocks:
    if first < end:
        overlaps += 1
    end = max(end, first + count)
crosses = [b for b in blocks if (b[0] & 4095) + b[1] > 4096]
ids = sum(c for _, c in blocks)
print(f"{len(blocks)} blocks, {ids} IDs, {overlaps} overlapping, "
      f"{len(bad_worker)} from unexpected workers, {len(crosses)} crossing a tick")
sys.exit(1 if overlaps or bad_worker or crosses or not blocks else 0)
EOF
}

# vip_backend: the ordinal of the pod serving a connection the client namespace has open to the
# Service IP (matched by the client's source port, which ClusterIP DNAT keeps), polled up to 5 s.
vip_backend() {
    local ports i port
    for _ in $(seq 1 50); do
        ports=$(in_client ss -tnH state established dst "$SVC_IP:7609" | awk '{split($3, a, ":"); print a[2]}')
        for i in "${!POD_LIVE[@]}"; do
            for port in $ports; do
                if ip netns exec "$(pod_ns "$i")" ss -tnH state established sport = :7609 \
                    | awk '{print $4}' | grep -x "$CLIENT_IP:$port" >/dev/null; then
                    echo "$i"; return 0
                fi
            done
        done
        sleep 0.1
    done
    return 1
}

# run_bench NAME ADDR SECONDS: snowlease-bench client-lease (the client crate) from the client
# namespace, in the background; its JSON report goes to $WORK/NAME.json.
run_bench() {
    local name=$1 addr=$2 seconds=$3
    in_client timeout $(( ${seconds%.*} + 60 )) "$BENCH" --mode client-lease --addr "$addr" \
        --duration "$seconds" --tasks 4 --timeout-ms 5000 --quiet --json "$WORK/$name.json" \
        >"$WORK/logs/bench-$name.log" 2>&1 &
    BENCH_PID=$!
    BG_PIDS+=("$BENCH_PID")
}

# bench_result NAME ALLOWED_WORKERS: checks a finished bench report; prints
# "ids ids_per_sec share disjoint workers errors" for the table.
bench_result() {
    python3 - "$WORK/$1.json" "$2" <<'EOF_PY'
import json, sys
r = json.load(open(sys.argv[1]))
allowed = {int(w) for w in sys.argv[2].split()}
verdict = r.get("verify") or {}
disjoint = bool(verdict) and verdict.get("overlaps", 1) == 0 and verdict.get("empty", 1) == 0
workers = sorted(r.get("workers", []))
problems = []
if not disjoint:
    problems.append(f"overlap check: {verdict}")
if r.get("errors", 0):
    problems.append(f"{r['errors']} client errors surfaced: {r.get('error_kinds')}")
if not set(workers) <= allowed:
    problems.append(f"IDs from workers {sorted(set(workers) - allowed)}")
if not r.get("ids"):
    problems.append("no IDs")
print(r["ids"], round(r["ids_per_sec"]), "yes" if disjoint else "NO",
      ",".join(map(str, workers)) or "-", r.get("errors", 0), "|", "; ".join(problems))
EOF_PY
}

# wait_bench NAME PID ALLOWED_WORKERS: waits (bounded by run_bench's timeout) and checks it.
wait_bench() {
    local name=$1 pid=$2 allowed=$3 rc=0 line p rest=()
    wait "$pid" || rc=$?
    # Reaped: forget the pid so cleanup can never signal a recycled one.
    for p in "${BG_PIDS[@]}"; do [[ $p == "$pid" ]] || rest+=("$p"); done
    BG_PIDS=("${rest[@]}")
    if [[ ! -s $WORK/$name.json ]]; then
        failed "bench $name exited $rc without a report: $(tail -n 3 "$WORK/logs/bench-$name.log" | tr '\n' ' ')"
        BENCH_LINE="0 0 NO - ?"
        return
    fi
    line=$(bench_result "$name" "$allowed")
    BENCH_LINE=${line%% |*}
    [[ $rc -eq 0 ]] || failed "bench $name exited $rc"
    [[ -z ${line#*| } ]] || failed "bench $name: ${line#*| }"
}

describe_bench() {
    local ids rate disjoint workers errors
    read -r ids rate disjoint workers errors <<<"$BENCH_LINE"
    echo "$(group "$ids") IDs at $(group "$rate") IDs/s, disjoint $disjoint, workers $workers, $errors client errors"
}

# ---------------------------------------------------------------- scenarios

scenario_small() {
    local ranges=$WORK/snowcat-ranges.txt before after pid_s pid_h victim seconds=24
    log "=== scenario N=4: Service IP, NodePort and headless clients; kill -9, clock -10 s, scale 4 -> 6 -> 3"
    : >"$ranges"
    scale_up 0 1 2 3
    wait_endpoints "0 1 2 3" 20
    spread "$SVC_IP:7609" 40 "$ranges" "Service IP $SVC_IP"; expect_workers "$SPREAD" "0 1 2 3" "Service IP, 4 pods"
    spread "$NODE_IP:$NODE_PORT" 40 "$ranges" "NodePort $NODE_IP:$NODE_PORT"; expect_workers "$SPREAD" "0 1 2 3" "NodePort, 4 pods"
    for i in 0 1 2 3; do
        snowcat_ranges "$(pod_ip "$i"):7609" 4096 "$ranges" || failed "snowcat to pod $i"
    done
    SCENARIO_LINES+=("4 pods: 40 connections each via Service IP and NodePort reached workers 0-3 (kube-proxy random DNAT); each pod address answered with its own worker id")

    log "clients through the client crate for ${seconds} s: one via the Service IP, one via the headless name"
    run_bench svc "$SVC_IP:7609" "$seconds"; pid_s=$BENCH_PID
    run_bench headless "$HEADLESS:7609" "$seconds"; pid_h=$BENCH_PID
    sleep 3

    # The victim is the pod behind the Service-IP client's connection, so that client (and the
    # headless one, connected to every pod) both lose a server mid-run.
    victim=$(vip_backend) || die "cannot tell which pod serves the Service-IP client"
    before=$(in_client "$SNOWCAT" --addr "$(pod_ip "$victim"):7609" lease 1) || die "snowcat to pod $victim"
    log "kill -9 pod $victim, the one serving the Service-IP client (last ID seen from it: $before)"
    kill -KILL "${POD_PID[$victim]}"; wait "${POD_PID[$victim]}" 2>/dev/null || true
    wait_endpoints "$(tr -d "$victim" <<<"0 1 2 3" | xargs)" 10
    log "restart pod $victim with its clock 10 s behind (libfaketime FAKETIME=-10s)"
    start_server "$victim" -10s
    wait_endpoints "0 1 2 3" 20
    after=$(in_client "$SNOWCAT" --addr "$(pod_ip "$victim"):7609" lease 1) || die "snowcat to restarted pod $victim"
    if [[ $after -gt $before && $(( (after >> 12) & 1023 )) -eq $victim ]]; then
        log "pod $victim after restart with clock -10 s: first ID $after > last ID before the kill $before"
    else
        failed "pod $victim after restart handed out $after, not above $before"
    fi
    grep -q 'behind the persisted high-water mark' "$WORK/logs/pod$victim.log" \
        || failed "pod $victim's log does not show it started with its clock behind the state file"
    SCENARIO_LINES+=("kill -9 of pod $victim (serving the Service-IP client) under load, restart with its clock 10 s behind: it served from its persisted mark, first ID after > last ID before ($after > $before)")
    sleep 2

    log "scale 4 -> 6"
    scale_up 4 5
    wait_endpoints "0 1 2 3 4 5" 20
    spread "$SVC_IP:7609" 60 "$ranges" "Service IP, 6 pods"; expect_workers "$SPREAD" "0 1 2 3 4 5" "Service IP, 6 pods"
    sleep 2

    log "scale 6 -> 3 (pods 5, 4, 3 leave the endpoints, get SIGTERM, must exit 0)"
    scale_down 5 4 3
    wait_endpoints "0 1 2" 10
    spread "$SVC_IP:7609" 40 "$ranges" "Service IP, 3 pods"; expect_workers "$SPREAD" "0 1 2" "Service IP, 3 pods"
    spread "$NODE_IP:$NODE_PORT" 40 "$ranges" "NodePort, 3 pods"; expect_workers "$SPREAD" "0 1 2" "NodePort, 3 pods"
    SCENARIO_LINES+=("scale 4 -> 6: new workers 4 and 5 answer through the Service IP; 6 -> 3: pods 3-5 drained on SIGTERM with exit 0, then only workers 0-2 answer")

    log "waiting for the client-crate clients to finish"
    wait_bench svc "$pid_s" "0 1 2 3 4 5"
    log "client crate via Service IP: $(describe_bench)"
    SCENARIO_LINES+=("client crate via the Service IP, ${seconds} s through all of the above: $(describe_bench)")
    wait_bench headless "$pid_h" "0 1 2 3 4 5"
    log "client crate via headless name: $(describe_bench)"
    SCENARIO_LINES+=("client crate via the headless name, ${seconds} s through all of the above: $(describe_bench)")

    local verdict
    if verdict=$(verify_disjoint "0 1 2 3 4 5" "$ranges"); then
        log "snowcat IDs (Service IP, NodePort, pod addresses): $verdict"
    else
        failed "snowcat IDs: $verdict"
    fi
    SCENARIO_LINES+=("snowcat one-shot connections across all phases: $verdict")
    teardown_pods
}

# group 1234567 -> 1,234,567
group() { python3 -c "print(f'{int(\"$1\"):,}')" 2>/dev/null || echo "$1"; }

# scenario_load N SECONDS: N pods, the client crate against all of them, aggregate IDs/s.
scenario_load() {
    local n=$1 seconds=$2 last=$(( $1 - 1 )) addr want started
    log "=== scenario N=$n: sustained IDs/s through the client crate for $seconds s"
    echo 0.25 >"$CTL/period" # fast while the pods come up
    for i in "${!POD_PID[@]}"; do unset "POD_PID[$i]"; done
    rm -rf "$WORK/state"
    started=$SECONDS
    scale_up $(seq 0 "$last")
    want=$(seq 0 "$last" | xargs)
    wait_endpoints "$want" $(( 30 + n / 4 ))
    log "$n pods ready in $(( SECONDS - started )) s"
    echo 2 >"$CTL/period" # the manifest's readiness periodSeconds while measuring
    # The client crate connects to every address a name resolves to: the headless name is how
    # applications reach all pods. A comma list of pod addresses works too if the bench takes one.
    if "$BENCH" --help 2>/dev/null | grep -iE 'comma|separated' >/dev/null; then
        addr=$(for i in $(seq 0 "$last"); do printf '%s:7609,' "$(pod_ip "$i")"; done)
        addr=${addr%,}
    else
        addr="$HEADLESS:7609"
    fi
    run_bench "load$n" "$addr" "$seconds"
    wait_bench "load$n" "$BENCH_PID" "$want"
    echo 0.25 >"$CTL/period"
    read -r ids rate disjoint workers errors <<<"$BENCH_LINE"
    local nworkers ceiling share
    nworkers=$(tr ',' '\n' <<<"$workers" | grep -c .)
    ceiling=$(( n * 4096000 ))
    share=$(python3 -c "print(f'{$rate / $ceiling * 100:.2f} %')")
    RESULT_ROWS+=("| $n | $seconds | $(group "$ids") | $(group "$rate") | $(group "$ceiling") | $share | $nworkers / $n | $disjoint | $errors |")
    log "N=$n: $rate IDs/s = $share of $n x 4,096,000, workers answering $nworkers/$n, disjoint $disjoint, errors $errors"
    teardown_pods
}

write_results() {
    local file=$KUBE_DIR/sim-results.md mode=full table
    [[ $QUICK -eq 1 ]] && mode=quick
    table=$(printf '%s\n' "| N pods | seconds | IDs | IDs/s | ceiling N x 4,096,000/s | share | workers answering | disjoint | client errors |" \
        "|---:|---:|---:|---:|---:|---:|---:|:---:|---:|" "${RESULT_ROWS[@]}")
    echo
    echo "$table"
    {
        echo "# Simulated cluster results"
        echo
        echo "Written by \`kube/simulate.sh\` ($mode mode) on $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores."
        echo "Pods are network namespaces running the real \`snowlease-server\` with one serving thread"
        echo "each; kube-proxy is reproduced with iptables random DNAT; the client is \`snowlease-bench"
        echo "--mode client-lease\` (the client crate, 4 tasks, 1 runtime thread) in a client namespace."
        echo "Servers, client and control plane share the machine's cores, so IDs/s measures this"
        echo "machine's CPU, not a cluster's capacity; the ceiling is what N workers could mint."
        echo
        echo "## Sustained throughput"
        echo
        echo "$table"
        echo
        echo "How to read it: a share near 100 % means every worker hands out all 4,096 IDs of every"
        echo "millisecond, the layout's limit; it can go slightly above, because each worker may run up"
        echo "to max_lead_ms (100 ms) ahead of its clock, worth at most 0.1 s / duration extra. A share far"
        echo "below means the machine ran out of CPU first: servers, client, the control plane and the"
        echo "veth/bridge/NAT softirq work all share its cores."
        echo
        echo "## Scenario N=4 (faults and scaling)"
        echo
        printf -- '- %s\n' "${SCENARIO_LINES[@]}"
        if [[ ${#FAILURES[@]} -gt 0 ]]; then
            echo
            echo "## FAILURES"
            echo
            printf -- '- %s\n' "${FAILURES[@]}"
        fi
    } >"$file"
    log "results written to kube/sim-results.md"
}

main() {
    install_tools
    build_binaries
    setup_node_and_client
    start_controller
    if [[ $SKIP_FAULTS -eq 0 ]]; then scenario_small; fi
    scenario_load 32 "$DURATION"
    if [[ $BIG -eq 1 ]]; then scenario_load 256 "$DURATION"; fi
    write_results
    if [[ ${#FAILURES[@]} -gt 0 ]]; then
        printf 'FAIL %s\n' "${FAILURES[@]}"
        echo "kube/simulate.sh: ${#FAILURES[@]} check(s) failed"
        exit 1
    fi
    echo "kube/simulate.sh: all checks passed"
}

main
