#!/usr/bin/env bash
# A simulated cluster on one machine. Nodes are network namespaces, each with its own bridge
# for its pods (a Linux bridge holds at most 1,023 ports, and a real node's bridge only its own
# pods), joined by a "cluster network" namespace (one switch, one port per node) and routed to
# each other: node n owns the pod range 10.244.n.0/24 and every node has a route to every other
# node's range, as a cluster without an overlay does. Every pod is a namespace on its node's
# bridge running the real snowlease-server (POD_NAME=snowlease-N, --threads 1, its own state
# directory, ports 7609/7610). sim_controller.py, in node 0, plays the kubelets' readiness
# probes, the endpoints controller, kube-proxy (iptables random DNAT for a Service IP and a
# NodePort) and the headless Service's DNS. Clients run in a "client" namespace whose gateway
# is node 0; nothing talks to a namespace address from the root namespace.
#
# Scenarios (each also alone with its flag):
#   faults     4 pods on 2 nodes: clients through the Service IP, the NodePort and the headless
#              name; kill -9 of a pod and its restart with the clock 10 s behind (libfaketime);
#              scale 4 -> 6 -> 3. No ID may repeat, no client error may surface.
#   partition  4 pods on 2 nodes, the client crate through the headless name: silent drop
#              (iptables DROP both ways in the pod's node) of 1, 2 and 3 pods, and a pod leaving
#              the endpoints (veth down, out of DNS) and rejoining. IDs/s before, during and
#              after, the worst 1 s and 250 ms windows, the time until a healed pod is used.
#   scale      the seed's table (issue 14): rows of pods x workers per pod, the client crate
#              (snowlease-bench sim-load) against the headless name, verified disjoint by runs.
#
# Usage: kube/simulate.sh [--quick] [--faults] [--partition] [--scale] [--rows LIST]
#                         [--duration S] [--json FILE] [--md FILE] [--artifacts DIR]
#                         [--perf DIR] [--require-goals]
#                         [--server-bin P] [--snowcat P] [--bench P]
#   (no scenario flag)  every scenario, every row
#   --quick        CI: faults, a short partition, rows 4, 32 and 32svc for 4 s each
#   --rows LIST    scale rows, comma-separated, from: 4 32 32svc 1024x32 256 1024
#                  (name: workers; 32svc: the 32-pod row through the Service IP;
#                  1024x32: 32 pods x 32 workers per pod)
#   --duration S   measured seconds of each scale row (default 10, --quick 4)
#   --json FILE    the scale rows as a JSON array, one object per row
#   --md FILE      the tables (markdown) written here too (they always go to stdout)
#   --artifacts DIR  keep the loads' JSON reports, the snapshots and the event logs there
#   --perf DIR     record each scale row's window with `perf record -a -g` into DIR/ROW.data,
#                  and summarise it (by CPU, by command, by symbol) in DIR/ROW.txt
#   --require-goals  exit 1 when a row misses its throughput goal (default: report it; only
#                  correctness fails the run, since throughput on a shared machine is no test)
#   Binaries default to a release build of the workspace (CARGO_TARGET_DIR respected); the server
#   must be dynamically linked, or libfaketime cannot shift its clock.
set -euo pipefail

KUBE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$KUBE_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
QUICK=0
DO_FAULTS=0
DO_PARTITION=0
DO_SCALE=0
ROWS=
DURATION=
JSON_OUT=
MD_OUT=
ARTIFACTS=
PERF_DIR=
REQUIRE_GOALS=0
SERVER=
SNOWCAT=
BENCH=
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) QUICK=1; shift ;;
        --faults) DO_FAULTS=1; shift ;;
        --partition) DO_PARTITION=1; shift ;;
        --scale) DO_SCALE=1; shift ;;
        --rows) ROWS=${2//,/ }; DO_SCALE=1; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --json) JSON_OUT=$(realpath -m "$2"); shift 2 ;;
        --md) MD_OUT=$(realpath -m "$2"); shift 2 ;;
        --artifacts) ARTIFACTS=$(realpath -m "$2"); shift 2 ;;
        --perf) PERF_DIR=$(realpath -m "$2"); mkdir -p "$PERF_DIR"; shift 2 ;;
        --require-goals) REQUIRE_GOALS=1; shift ;;
        --server-bin) SERVER=$2; shift 2 ;;
        --snowcat) SNOWCAT=$2; shift 2 ;;
        --bench) BENCH=$2; shift 2 ;;
        -h|--help) sed -n '2,44p' "$0"; exit 0 ;;
        *) echo "simulate.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [[ $DO_FAULTS$DO_PARTITION$DO_SCALE == 000 ]]; then
    DO_FAULTS=1; DO_PARTITION=1; DO_SCALE=1
fi
if [[ -z $ROWS ]]; then
    if [[ $QUICK -eq 1 ]]; then ROWS="4 32 32svc"; else ROWS="4 32 32svc 1024x32 256 1024"; fi
fi
if [[ -z $DURATION ]]; then
    if [[ $QUICK -eq 1 ]]; then DURATION=4; else DURATION=10; fi
fi
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 600 ]] \
    || { echo "simulate.sh: --duration takes whole seconds 1..600" >&2; exit 2; }

# The scale rows: pods, workers per pod, nodes, goal (share of the ceiling; "-" = reported
# only), and how the client reaches the pods. Pods are spread over the nodes round-robin.
declare -A ROW_PODS=([4]=4 [32]=32 [32svc]=32 [1024x32]=32 [256]=256 [1024]=1024)
declare -A ROW_K=([4]=1 [32]=1 [32svc]=1 [1024x32]=32 [256]=1 [1024]=1)
declare -A ROW_NODES=([4]=2 [32]=4 [32svc]=4 [1024x32]=4 [256]=8 [1024]=32)
declare -A ROW_GOAL=([4]=0.99 [32]=0.99 [32svc]=- [1024x32]=0.99 [256]=0.90 [1024]=-)
declare -A ROW_VIA=([4]=headless [32]=headless [32svc]=service [1024x32]=headless [256]=headless [1024]=headless)
# The client's buffer in milliseconds of the ceiling (sim-load --buffer-ms). 50 ms is what the
# client's docs advise. At 1,024 pods every refill waits for 1,024 servers taking turns on one
# core, so more IDs must come per round trip: measured on 1,024 x 1, 50 ms gave 45.8 % of the
# ceiling, 200 ms 66.1 %, 400 ms 65.5 % (both cores busy from 200 ms on).
declare -A ROW_BUFFER_MS=([4]=50 [32]=50 [32svc]=50 [1024x32]=50 [256]=50 [1024]=200)
for row in $ROWS; do
    [[ -n ${ROW_PODS[$row]:-} ]] || { echo "simulate.sh: unknown row $row (4 32 32svc 1024x32 256 1024)" >&2; exit 2; }
done

# Addresses: all inside namespaces this script creates.
NODE_IP=10.250.0.1      # node 0's address on the client's link (NodePort, the client's gateway)
CLIENT_IP=10.250.0.2
SVC_IP=10.96.0.10       # ClusterIP of Service "snowlease"
NODE_PORT=30609
HEADLESS=snowlease-headless.snowlease.svc.cluster.local
FAKETIME_LIB=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
# Clients through the Service IP: each has one connection to the pod kube-proxy picked at
# random, so 4 per pod leave a pod unreached with probability (31/32)^128 = 1.7 % at 32 pods.
SVC_CLIENTS_PER_POD=4

PREFIX=slsim$$
NET=$PREFIX-net
CLIENT=$PREFIX-client
WORK=$(mktemp -d /tmp/snowlease-sim.XXXXXX)
# State directories on tmpfs: in a cluster each pod has its own volume; here up to 1,024 pods
# would share one disk's fsyncs, which no cluster does.
STATE=$(mktemp -d /dev/shm/snowlease-sim-state.XXXXXX)
CTL=$WORK/ctl
ETC_CLIENT=/etc/netns/$CLIENT
FABRIC_NODES=0
NODES=1                 # nodes the current pods are spread over
declare -A POD_PID=()   # ordinal -> server pid
declare -A POD_SANDBOX=() # ordinal -> pid of the process holding the pod's network namespace
declare -A POD_IP=()    # ordinal -> address
declare -A POD_LIVE=()  # ordinal -> 1 while the pod exists and is not terminating
CLUSTER_SHAPE=
CONTROLLER_PID=
BG_PIDS=()
FAILURES=()
MISSES=()
SCENARIO_LINES=()
PARTITION_TABLE=
ROWS_FILE=$WORK/rows.jsonl

log() { echo "[sim $(date +%T)] $*"; }
failed() { FAILURES+=("$*"); echo "[sim $(date +%T)] FAIL: $*"; }
die() { echo "simulate.sh: $*" >&2; exit 1; }
now_ms() { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
secs_since() { local d=$(( $(now_ms) - $1 )); printf '%d.%02d' $(( d / 1000 )) $(( d % 1000 / 10 )); }
# group 1234567 -> 1,234,567
group() {
    local n=$1 out=
    while [[ ${#n} -gt 3 ]]; do out=",${n: -3}$out"; n=${n:0:${#n}-3}; done
    echo "$n$out"
}

any_alive() {
    local pid
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 0; done
    return 1
}

cleanup() {
    local rc=$? pid ns
    set +e
    mkdir -p "$CTL" && touch "$CTL/stop"
    for pid in "${BG_PIDS[@]}" $CONTROLLER_PID; do kill -TERM "$pid" 2>/dev/null; done
    for _ in $(seq 1 20); do
        any_alive "${BG_PIDS[@]}" $CONTROLLER_PID || break
        sleep 0.1
    done
    for pid in "${BG_PIDS[@]}" $CONTROLLER_PID "${POD_PID[@]}" "${POD_SANDBOX[@]}"; do
        kill -KILL "$pid" 2>/dev/null
    done
    for pid in "${BG_PIDS[@]}" $CONTROLLER_PID "${POD_PID[@]}" "${POD_SANDBOX[@]}"; do
        wait "$pid" 2>/dev/null
    done
    for ns in $(ip netns list | awk -v p="$PREFIX-" 'index($1, p) == 1 { print $1 }'); do
        # Only processes this script started can live in its namespaces.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        echo "netns del $ns"
    done | ip -force -batch - 2>/dev/null
    rm -rf "$ETC_CLIENT" "$STATE"
    if [[ -n $ARTIFACTS && -d $WORK ]]; then
        mkdir -p "$ARTIFACTS"
        cp "$WORK"/*.json "$WORK"/*.jsonl "$WORK"/partition-events "$WORK/logs/controller.log" \
            "$ARTIFACTS"/ 2>/dev/null
    fi
    if [[ $rc -ne 0 && -d $WORK/logs ]]; then
        echo "simulate.sh failed; last log lines:" >&2
        tail -n 5 "$WORK"/logs/controller.log "$WORK"/logs/load-*.log >&2 2>/dev/null
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
    [[ $(nproc) -ge 2 ]] || die "needs 2 CPUs (servers pinned to CPU 0, the client to CPU 1)"
    local missing=()
    command -v iptables-restore >/dev/null || missing+=(iptables)
    [[ -e $FAKETIME_LIB ]] || missing+=(faketime)
    command -v bridge >/dev/null || missing+=(iproute2)
    command -v taskset >/dev/null || missing+=(util-linux)
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "installing ${missing[*]} from Debian"
        timeout 300 apt-get update -qq
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    PYTHONPYCACHEPREFIX="$WORK/pycache" python3 -m py_compile "$KUBE_DIR/sim_controller.py" \
        "$KUBE_DIR/sim_report.py"
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

report_py() { python3 "$KUBE_DIR/sim_report.py" "$@"; }

# ---------------------------------------------------------------- the cluster network

node_ns() { echo "$PREFIX-node$1"; }
node_link_ip() { echo "10.251.0.$(( $1 + 1 ))"; }   # node n on the cluster network
node_br_ip() { echo "10.244.$1.1"; }                 # node n's bridge, its pods' gateway
# Pod I lives on node I % NODES (round-robin, as a spreading scheduler places them) with the
# address 10.244.NODE.(I / NODES + 10) and MAC 02:00:00:00:I (create_pods writes them inline).
pod_node() { echo $(( $1 % NODES )); }
pod_ip() { echo "${POD_IP[$1]}"; }
# Fixed MAC addresses, so every neighbour entry can be written up front (see create_pods).
node_br_mac() { printf '02:01:00:00:00:%02x' "$1"; }
node_link_mac() { printf '02:02:00:00:00:%02x' "$1"; }
in_client() { ip netns exec "$CLIENT" "$@"; }
in_pod() { local i=$1; shift; nsenter -t "${POD_SANDBOX[$i]}" -n "$@"; }

# setup_fabric N: the cluster network, N nodes on it routed to each other, and the client
# namespace behind node 0 (its own link, so the client's traffic is routed by node 0, where
# kube-proxy's rules are, and never bridged past them).
setup_fabric() {
    local n=$1 i j ns started
    started=$(now_ms)
    FABRIC_NODES=$n
    log "cluster network $NET with $n nodes, client namespace $CLIENT behind node 0"
    ip netns add "$NET"
    printf 'link set lo up\nlink add sw0 type bridge\nlink set sw0 up\n' | ip -n "$NET" -batch -
    for i in $(seq 0 $(( n - 1 ))); do echo "netns add $(node_ns "$i")"; done | ip -batch -
    for i in $(seq 0 $(( n - 1 ))); do
        ns=$(node_ns "$i")
        printf 'link add n%d type veth peer name uplink address %s netns %s\nlink set n%d master sw0\nlink set n%d up\n' \
            "$i" "$(node_link_mac "$i")" "$ns" "$i" "$i"
    done | ip -n "$NET" -batch -
    for i in $(seq 0 $(( n - 1 ))); do
        ns=$(node_ns "$i")
        {
            printf 'link set lo up\nlink add br0 address %s type bridge\n' "$(node_br_mac "$i")"
            printf 'addr add %s/24 dev br0\nlink set br0 up\n' "$(node_br_ip "$i")"
            printf 'addr add %s/24 dev uplink\nlink set uplink up\n' "$(node_link_ip "$i")"
            for j in $(seq 0 $(( n - 1 ))); do
                [[ $j -ne $i ]] || continue
                printf 'route add 10.244.%d.0/24 via %s\n' "$j" "$(node_link_ip "$j")"
                printf 'neigh replace %s lladdr %s dev uplink nud permanent\n' \
                    "$(node_link_ip "$j")" "$(node_link_mac "$j")"
            done
            [[ $i -eq 0 ]] || printf 'route add 10.250.0.0/24 via %s\n' "$(node_link_ip 0)"
        } | ip -n "$ns" -batch -
        ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
        # The partition scenario's silent drops live in mangle FORWARD (the controller owns the
        # nat and filter tables). Traffic from or to the cluster network's node addresses is
        # the kubelet probing its pods, which a partition between client and pod leaves alone.
        ip netns exec "$ns" iptables -w 5 -t mangle -N SIM-PARTITION
        ip netns exec "$ns" iptables -w 5 -t mangle -A SIM-PARTITION -s 10.251.0.0/24 -j RETURN
        ip netns exec "$ns" iptables -w 5 -t mangle -A SIM-PARTITION -d 10.251.0.0/24 -j RETURN
        ip netns exec "$ns" iptables -w 5 -t mangle -A FORWARD -j SIM-PARTITION
    done
    ip netns add "$CLIENT"
    ip -n "$CLIENT" link set lo up
    ip -n "$(node_ns 0)" link add cl type veth peer name eth0 netns "$CLIENT"
    ip -n "$(node_ns 0)" addr add "$NODE_IP/24" dev cl
    ip -n "$(node_ns 0)" link set cl up
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
    FABRIC_MS=$(( $(now_ms) - started ))
}

start_controller() {
    mkdir -p "$CTL" "$WORK/logs"
    publish_pods
    : >"$CTL/events"
    ip netns exec "$(node_ns 0)" taskset -c 0 python3 "$KUBE_DIR/sim_controller.py" --ctl "$CTL" \
        --svc-ip "$SVC_IP" --node-ip "$NODE_IP" --node-port "$NODE_PORT" \
        --hosts-file "$ETC_CLIENT/hosts" --headless-name "$HEADLESS" --deadline-s 3600 \
        >"$WORK/logs/controller.log" 2>&1 &
    CONTROLLER_PID=$!
}

# probe_periods SECONDS [READY_SECONDS]: how often the "kubelets" probe pods that are not
# ready, and ready ones.
probe_periods() {
    echo "$1" >"$CTL/period"
    echo "${2:-$1}" >"$CTL/ready_period"
}

# The pods that exist and are not terminating, for the controller (replaced atomically).
publish_pods() {
    local i
    for i in "${!POD_LIVE[@]}"; do echo "$i ${POD_IP[$i]}"; done >"$CTL/pods.tmp"
    mv "$CTL/pods.tmp" "$CTL/pods"
}

# create_pods I..: each pod's sandbox (a process holding a new network namespace, as a pod's
# pause container does: the server may restart inside it), a veth from it to its node's bridge,
# its address and route. Sandboxes are processes, not `ip netns add` names: a named namespace is
# a mount, and with a thousand of them every further mount, `ip netns exec` and unmount slows
# down (measured: 85 s to create 1,024 named pods, 67 s to delete them). The neighbour entries
# (pod <-> gateway) are written as permanent: the kernel's neighbour table is shared by all
# namespaces and holds gc_thresh3 (1,024) learned entries, fewer than 1,024 pods need, and
# permanent ones do not count (measured: 543 of 1,024 pods unreachable with learned entries).
create_pods() {
    local i node root deadline ip mac
    local -a links=() hairpins=()
    root=$(readlink /proc/self/ns/net)
    # Bounded: the sandbox outlives no run by more than two hours even if cleanup never ran.
    for i in "$@"; do
        unshare --net sleep 7200 &
        POD_SANDBOX[$i]=$!
    done
    # Until every sandbox has entered its own namespace: a veth sent to a pid still in the
    # root namespace would land there.
    deadline=$(( SECONDS + 30 + $# / 20 ))
    for i in "$@"; do
        while [[ $(readlink "/proc/${POD_SANDBOX[$i]}/ns/net" 2>/dev/null) == "$root" ]]; do
            [[ $SECONDS -lt $deadline ]] || die "pod $i's sandbox did not enter its namespace"
            sleep 0.01
        done
        kill -0 "${POD_SANDBOX[$i]}" 2>/dev/null || die "pod $i's sandbox exited"
    done
    # No command substitutions or other processes per pod below: a thousand pods make each
    # one count.
    local -a dirs=()
    for i in "$@"; do dirs+=("$STATE/$i"); done
    mkdir -p "${dirs[@]}"
    for i in "$@"; do
        node=$(( i % NODES ))
        ip=10.244.$node.$(( i / NODES + 10 ))
        POD_IP[$i]=$ip
        printf -v mac '02:00:00:00:%02x:%02x' $(( i >> 8 )) $(( i & 255 ))
        links[node]+="link add p$i type veth peer name eth0 address $mac netns ${POD_SANDBOX[$i]}
link set p$i master br0
link set p$i up
neigh replace $ip lladdr $mac dev br0 nud permanent
"
        # Hairpin, as kubelet sets it: a pod may reach itself through the Service IP.
        hairpins[node]+="link set dev p$i hairpin on
"
    done
    for node in "${!links[@]}"; do
        printf '%s' "${links[node]}" | ip -n "$PREFIX-node$node" -batch -
        printf '%s' "${hairpins[node]}" | bridge -n "$PREFIX-node$node" -batch -
    done
    for i in "$@"; do
        node=$(( i % NODES ))
        printf 'link set lo up\naddr add %s/24 dev eth0\nlink set eth0 up\nroute add default via 10.244.%d.1\nneigh replace 10.244.%d.1 lladdr 02:01:00:00:00:%02x dev eth0 nud permanent\n' \
            "${POD_IP[$i]}" "$node" "$node" "$node" \
            | nsenter -t "${POD_SANDBOX[$i]}" -n ip -batch -
    done
}

# start_server I [CLOCK_OFFSET]: the container of pod I, pinned to CPU 0 with every other pod
# (the client gets CPU 1). One serving thread each, as a pod with a 1-CPU limit would have.
start_server() {
    local i=$1 offset=${2:-} preload=
    [[ -d $STATE/$i ]] || mkdir -p "$STATE/$i"
    # With an offset: what `faketime -f OFFSET` does, but exec'd in place so $! is the server.
    [[ -z $offset ]] || preload=$FAKETIME_LIB
    # nsenter, taskset and the server exec one another, so $! is the server (a shell function
    # here would put a subshell in between).
    POD_NAME="snowlease-$i" SNOWLEASE_STATE_DIR="$STATE/$i" \
        SNOWLEASE_WORKERS_PER_POD="${WORKERS_PER_POD:-1}" SNOWLEASE_LOG_FORMAT=json \
        SNOWLEASE_DRAIN_TIMEOUT_MS=10000 SNOWLEASE_THREADS=1 LD_PRELOAD=$preload FAKETIME=$offset \
        nsenter -t "${POD_SANDBOX[$i]}" -n taskset -c 0 "$SERVER" >>"$WORK/logs/pod$i.log" 2>&1 &
    POD_PID[$i]=$!
    POD_LIVE[$i]=1
}

# scale_up I..: new pods (namespace, server), visible to the controller at once.
scale_up() {
    local i
    create_pods "$@"
    for i in "$@"; do start_server "$i"; done
    publish_pods
}

# remove_pods I..: each pod's veth (from the node side first: that is synchronous, while the
# pair going away with the namespace happens later in the kernel's cleanup, and a quick
# scale-up would then find "pI" still there) and its sandbox, which takes the namespace along.
remove_pods() {
    local i node
    local -a links=()
    for i in "$@"; do links[i % NODES]+="link del p$i
"; done
    for node in "${!links[@]}"; do
        printf '%s' "${links[node]}" | ip -force -n "$PREFIX-node$node" -batch - 2>/dev/null || true
    done
    for i in "$@"; do kill -KILL "${POD_SANDBOX[$i]}" 2>/dev/null || true; done
    for i in "$@"; do
        wait "${POD_SANDBOX[$i]}" 2>/dev/null || true
        unset "POD_SANDBOX[$i]"
    done
}

# scale_down I..: as the StatefulSet controller does with Parallel pod management: every pod
# leaves the endpoints at once, the preStop pause (shortened to 1 s) lets the change spread,
# then SIGTERM; each must drain and exit 0 within the grace period. Volumes are kept.
scale_down() {
    local i rc deadline
    for i in "$@"; do unset "POD_LIVE[$i]"; done
    publish_pods
    sleep 1
    for i in "$@"; do kill -TERM "${POD_PID[$i]}"; done
    deadline=$(( SECONDS + 30 ))
    for i in "$@"; do
        rc=0
        wait_pid_exit "${POD_PID[$i]}" $(( deadline - SECONDS )) || rc=$?
        [[ $rc -eq 0 ]] || failed "pod $i exited with $rc after SIGTERM (want 0)"
        unset "POD_PID[$i]"
    done
    remove_pods "$@"
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
    die "endpoints are [${have:0:200}] after $2 s, expected [${want:0:200}]"
}

teardown_pods() {
    local i
    if [[ ${#POD_PID[@]} -gt 0 ]]; then scale_down "${!POD_PID[@]}"; fi
    for i in "${!POD_LIVE[@]}"; do unset "POD_LIVE[$i]"; done
    publish_pods
    wait_endpoints "" 10
    rm -rf "${STATE:?}"/*
    CLUSTER_SHAPE=
}

# cluster PODS K NODES: exactly these pods running and ready; returns at once if they already
# are (the 32svc row measures the 32 row's pods). Sets SETUP_S (namespaces and servers started)
# and READY_S (until every pod was in the endpoints), or "reused".
cluster() {
    local pods=$1 k=$2 nodes=$3 started
    if [[ $CLUSTER_SHAPE == "$pods $k $nodes" ]]; then
        SETUP_S=reused; READY_S=reused
        return
    fi
    [[ -z $CLUSTER_SHAPE && ${#POD_PID[@]} -eq 0 ]] || teardown_pods
    report_py snapshot "$WORK/mem-before.json"
    NODES=$nodes
    WORKERS_PER_POD=$k
    # Probing ready pods stays near 64 probes/s however many pods there are: see
    # sim_controller.py.
    probe_periods 0.25 "$(( pods > 128 ? pods / 64 : 2 ))"
    started=$(now_ms)
    create_pods $(seq 0 $(( pods - 1 )))
    local i
    for i in $(seq 0 $(( pods - 1 ))); do start_server "$i"; done
    publish_pods
    SETUP_S=$(secs_since "$started")
    wait_endpoints "$(seq 0 $(( pods - 1 )) | xargs)" $(( 30 + pods / 4 ))
    READY_S=$(secs_since "$started")
    CLUSTER_SHAPE="$pods $k $nodes"
    printf '%s\n' "${POD_PID[@]}" >"$WORK/server.pids"
    report_py snapshot "$WORK/mem-ready.json" --pids-file "$WORK/server.pids"
    log "$pods pods x $k workers on $nodes nodes: namespaces and servers started in $SETUP_S s, all ready after $READY_S s"
}

# ---------------------------------------------------------------- clients and checks

# snowcat_ranges ADDR COUNT OUT: one connection, COUNT IDs, "first count" lines appended to OUT.
snowcat_ranges() {
    in_client timeout 15 "$SNOWCAT" --addr "$1" --timeout-ms 5000 lease "$2" --ranges >>"$3"
}

# spread ADDR CONNECTIONS OUT WHAT: many one-shot connections; reports which workers answered.
spread() {
    local addr=$1 n=$2 out=$3 what=$4 tmp=$WORK/spread.txt i
    : >"$tmp"
    for i in $(seq 1 "$n"); do snowcat_ranges "$addr" 16 "$tmp" || failed "snowcat via $what failed"; done
    cat "$tmp" >>"$out"
    SPREAD=$("$BENCH" verify-ranges --format workers "$tmp" || true)
    log "$n connections via $what reached workers (worker:IDs) $SPREAD"
}

# expect_workers "SPREAD" "0 1 2": the set of workers seen must be exactly this.
expect_workers() {
    local seen
    seen=$(tr ' ' '\n' <<<"$1" | cut -d: -f1 | sort -n | xargs)
    [[ $seen == "$2" ]] || failed "$3: workers [$seen], expected [$2]"
}

# worker_of ID: the worker field of an ID, decoded by snowcat with the default layout.
worker_of() {
    local word worker
    read -r _ _ word worker _ <<<"$("$SNOWCAT" decode "$1")"
    [[ $word == worker ]] || die "snowcat decode $1 printed an unexpected line"
    echo "$worker"
}

# vip_backend: the ordinal of the pod serving a connection the client namespace has open to the
# Service IP (matched by the client's source port, which ClusterIP DNAT keeps), polled up to 5 s.
vip_backend() {
    local ports i port
    for _ in $(seq 1 50); do
        ports=$(in_client ss -tnH state established dst "$SVC_IP:7609" | awk '{split($3, a, ":"); print a[2]}')
        for i in "${!POD_LIVE[@]}"; do
            for port in $ports; do
                if in_pod "$i" ss -tnH state established sport = :7609 \
                    | awk '{print $4}' | grep -x "$CLIENT_IP:$port" >/dev/null; then
                    echo "$i"; return 0
                fi
            done
        done
        sleep 0.1
    done
    return 1
}

# run_load NAME ADDR WORKERS SECONDS [sim-load args...]: the client crate (snowlease-bench
# sim-load) from the client namespace, pinned to CPU 1, in the background; its report goes to
# $WORK/NAME.json, and $WORK/NAME.ready appears when its measurement starts. Sets LOAD_PID.
run_load() {
    local name=$1 addr=$2 workers=$3 seconds=$4
    shift 4
    rm -f "$WORK/$name.ready"
    # Not through in_client: $! must be the load itself, not a subshell.
    ip netns exec "$CLIENT" taskset -c 1 "$BENCH" sim-load --addr "$addr" --expect-workers "$workers" \
        --duration "$seconds" --json "$WORK/$name.json" --ready-file "$WORK/$name.ready" "$@" \
        >"$WORK/logs/load-$name.log" 2>&1 &
    LOAD_PID=$!
    BG_PIDS+=("$LOAD_PID")
}

# wait_ready NAME PID SECONDS: until the load's measurement started (its ready file), bounded.
wait_ready() {
    local deadline=$(( SECONDS + $3 ))
    while [[ ! -s $WORK/$1.ready ]]; do
        kill -0 "$2" 2>/dev/null || die "load $1 exited before measuring: $(tail -n 3 "$WORK/logs/load-$1.log" | tr '\n' ' ')"
        [[ $SECONDS -lt $deadline ]] || die "load $1 did not start measuring within $3 s"
        sleep 0.1
    done
}

# wait_load NAME PID SECONDS: waits for the load (killing it after SECONDS); 0 if it left a report.
wait_load() {
    local name=$1 pid=$2 rc=0 p rest=()
    wait_pid_exit "$pid" "$3" || rc=$?
    # Reaped: forget the pid so cleanup can never signal a recycled one.
    for p in "${BG_PIDS[@]}"; do [[ $p == "$pid" ]] || rest+=("$p"); done
    BG_PIDS=("${rest[@]}")
    if [[ ! -s $WORK/$name.json ]]; then
        failed "load $name exited $rc without a report: $(tail -n 3 "$WORK/logs/load-$name.log" | tr '\n' ' ')"
        return 1
    fi
    [[ $rc -le 1 ]] || failed "load $name exited $rc"
    return 0
}

# load_line NAME: checks a finished fault-scenario load; sets LOAD_LINE to
# "ids ids_per_s disjoint workers errors".
load_line() {
    local line
    line=$(report_py bench-line "$WORK/$1.json")
    LOAD_LINE=${line%% |*}
    [[ -z ${line#*| } ]] || failed "load $1: ${line#*| }"
}

describe_load() {
    local ids rate disjoint workers errors
    read -r ids rate disjoint workers errors <<<"$LOAD_LINE"
    echo "$(group "$ids") IDs at $(group "$rate") IDs/s, disjoint $disjoint, workers $workers, $errors client errors"
}

# ---------------------------------------------------------------- scenario: faults

scenario_faults() {
    local ranges=$WORK/snowcat-ranges.txt before after pid_s pid_h victim seconds=24 i verdict
    log "=== faults: 4 pods on 2 nodes; Service IP, NodePort and headless clients; kill -9, clock -10 s, scale 4 -> 6 -> 3"
    : >"$ranges"
    NODES=2 WORKERS_PER_POD=1
    probe_periods 0.25
    scale_up 0 1 2 3
    wait_endpoints "0 1 2 3" 20
    spread "$SVC_IP:7609" 40 "$ranges" "Service IP $SVC_IP"; expect_workers "$SPREAD" "0 1 2 3" "Service IP, 4 pods"
    spread "$NODE_IP:$NODE_PORT" 40 "$ranges" "NodePort $NODE_IP:$NODE_PORT"; expect_workers "$SPREAD" "0 1 2 3" "NodePort, 4 pods"
    for i in 0 1 2 3; do
        snowcat_ranges "$(pod_ip "$i"):7609" 4096 "$ranges" || failed "snowcat to pod $i"
    done
    SCENARIO_LINES+=("4 pods on 2 nodes: 40 connections each via Service IP and NodePort reached workers 0-3 (kube-proxy random DNAT on node 0, pods on both nodes); each pod address answered with its own worker id")

    log "clients through the client crate for ${seconds} s: one via the Service IP, one via the headless name"
    # Workers 4 and 5 join later: no warm-up wait, measure from the start.
    run_load svc "$SVC_IP:7609" 6 "$seconds" --warmup-max 0 --settle 0; pid_s=$LOAD_PID
    run_load headless "$HEADLESS:7609" 6 "$seconds" --warmup-max 0 --settle 0; pid_h=$LOAD_PID
    wait_ready svc "$pid_s" 30
    wait_ready headless "$pid_h" 30
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
    if [[ $after -gt $before && $(worker_of "$after") -eq $victim ]]; then
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
    if wait_load svc "$pid_s" 60; then
        load_line svc
        log "client crate via Service IP: $(describe_load)"
        SCENARIO_LINES+=("client crate via the Service IP, ${seconds} s through all of the above: $(describe_load)")
    fi
    if wait_load headless "$pid_h" 60; then
        load_line headless
        log "client crate via headless name: $(describe_load)"
        SCENARIO_LINES+=("client crate via the headless name, ${seconds} s through all of the above: $(describe_load)")
    fi

    if verdict=$("$BENCH" verify-ranges --workers "0-5" --format text "$ranges"); then
        log "snowcat IDs (Service IP, NodePort, pod addresses): $verdict"
    else
        failed "snowcat IDs: $verdict"
    fi
    SCENARIO_LINES+=("snowcat one-shot connections across all phases: $verdict")
    teardown_pods
}

# ---------------------------------------------------------------- scenario: partition

# partition_drop ADD|DEL I..: silently drop every packet to and from these pods in their node
# (except the node's own probes: the kubelet is on the pod's side of such a partition).
partition_drop() {
    local op=$1 i ns
    shift
    for i in "$@"; do
        ns=$(node_ns "$(pod_node "$i")")
        ip netns exec "$ns" iptables -w 5 -t mangle "-$op" SIM-PARTITION -d "$(pod_ip "$i")/32" -j DROP
        ip netns exec "$ns" iptables -w 5 -t mangle "-$op" SIM-PARTITION -s "$(pod_ip "$i")/32" -j DROP
    done
}

event() { echo "$(now_ms) $*" >>"$WORK/partition-events"; log "partition: $*"; }

scenario_partition() {
    local base drop heal leave back drops total pid k victims
    if [[ $QUICK -eq 1 ]]; then
        base=3 drop=3 heal=6 leave=3 back=6 drops="2"
    else
        base=5 drop=5 heal=8 leave=5 back=8 drops="1 2 3"
    fi
    total=$(( base + $(wc -w <<<"$drops") * (drop + heal) + leave + back ))
    log "=== partition: 4 pods on 2 nodes, silent drop of ${drops// /, } pods, a pod leaving and rejoining; $total s"
    cluster 4 1 2
    probe_periods 0.25
    : >"$WORK/partition-events"
    run_load partition "$HEADLESS:7609" 4 "$total" --per-worker-series --bucket-ms 50
    pid=$LOAD_PID
    wait_ready partition "$pid" 60
    event start
    sleep "$base"
    for k in $drops; do
        # Pods 1 and 3 are on node 1, 0 and 2 on node 0: one silent pod is on the far node.
        case $k in 1) victims="1" ;; 2) victims="0 1" ;; 3) victims="0 1 2" ;; esac
        partition_drop A $victims
        event drop $victims
        sleep "$drop"
        partition_drop D $victims
        event heal $victims
        sleep "$heal"
    done
    # Pod 3 leaves: its veth goes down and it leaves the endpoints (and so the DNS records).
    unset "POD_LIVE[3]"; publish_pods
    ip -n "$(node_ns "$(pod_node 3)")" link set p3 down
    event leave 3
    sleep "$leave"
    ip -n "$(node_ns "$(pod_node 3)")" link set p3 up
    POD_LIVE[3]=1; publish_pods
    event rejoin 3
    sleep "$back"
    wait_load partition "$pid" 60 || return 0
    cat "$CTL/events" >>"$WORK/partition-events"
    if PARTITION_TABLE=$(report_py partition --bench "$WORK/partition.json" \
        --events "$WORK/partition-events" --json "$WORK/partition-summary.json"); then
        log "partition figures:"
    else
        failed "partition: IDs repeated or a client error surfaced (see the figures)"
    fi
    echo "$PARTITION_TABLE"
    teardown_pods
}

# ---------------------------------------------------------------- scenario: scale

# scale_row NAME: one row of the seed's table.
scale_row() {
    local row=$1 pods=${ROW_PODS[$1]} k=${ROW_K[$1]} nodes=${ROW_NODES[$1]} goal=${ROW_GOAL[$1]}
    local via=${ROW_VIA[$1]} workers pid addr args=() warm rc=0 goal_args=()
    workers=$(( pods * k ))
    log "=== row $row: $workers workers = $pods pods x $k on $nodes nodes, via the $via, $DURATION s"
    cluster "$pods" "$k" "$nodes"
    # Long warm-up bound: with hundreds of pods the client connects to all and every worker
    # must have answered before the measurement starts.
    warm=$(( 20 + pods / 16 ))
    if [[ $via == service ]]; then
        addr="$SVC_IP:7609"
        # Random DNAT may leave a pod unreached: do not wait for all of them.
        args=(--clients $(( pods * SVC_CLIENTS_PER_POD )) --warmup-max 5)
    else
        addr="$HEADLESS:7609"
        args=(--warmup-max "$warm")
    fi
    args+=(--buffer-ms "${ROW_BUFFER_MS[$row]}")
    run_load "row$row" "$addr" "$workers" "$DURATION" "${args[@]}"
    pid=$LOAD_PID
    wait_ready "row$row" "$pid" $(( warm + 60 ))
    # The client's own CPU time comes from its report: it may exit right at the window's end.
    report_py snapshot "$WORK/row$row-before.json" --pids-file "$WORK/server.pids" \
        --pid "controller=$CONTROLLER_PID"
    if [[ -n $PERF_DIR ]]; then
        # cpu-clock: in a VM without a PMU the default event samples one CPU only.
        perf record -a -g -e cpu-clock -F 199 -o "$PERF_DIR/row$row.data" -- sleep "$DURATION" \
            >"$WORK/logs/perf-$row.log" 2>&1 || log "perf record failed: $(tail -n 1 "$WORK/logs/perf-$row.log")"
    else
        sleep "$DURATION"
    fi
    report_py snapshot "$WORK/row$row-after.json" --pids-file "$WORK/server.pids" \
        --pid "controller=$CONTROLLER_PID"
    wait_load "row$row" "$pid" 60 || return 0
    if [[ -n $PERF_DIR && -s $PERF_DIR/row$row.data ]]; then
        for sort in cpu comm dso,sym; do
            echo "## perf report --sort $sort"
            perf report -i "$PERF_DIR/row$row.data" --stdio --no-children --sort "$sort" -g none \
                2>/dev/null | grep -v -e '^#' -e '^$' | sed -n '1,30p'  # not head: SIGPIPE under pipefail
        done >"$PERF_DIR/row$row.txt"
    fi
    [[ $goal == - ]] || goal_args=(--goal "$goal")
    local mem_args=()
    [[ $SETUP_S == reused ]] || mem_args=(--setup-s "$SETUP_S" --ready-s "$READY_S" \
        --mem-before "$WORK/mem-before.json" --mem-ready "$WORK/mem-ready.json")
    report_py row "$ROWS_FILE" --bench "$WORK/row$row.json" --before "$WORK/row$row-before.json" \
        --after "$WORK/row$row-after.json" --row "$row" --via "$via" --pods "$pods" --k "$k" \
        --nodes "$nodes" "${goal_args[@]}" "${mem_args[@]}" || rc=$?
    case $rc in
        0) ;;
        3) MISSES+=("row $row: below its goal of $goal of the ceiling") ;;
        *) failed "row $row: IDs repeated, came from unexpected workers, or a client error surfaced" ;;
    esac
}

# ---------------------------------------------------------------- results

write_results() {
    local out
    out=$(
        echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1048576 )) GiB; load average before the run: $LOAD_BEFORE; servers pinned to CPU 0, the client to CPU 1; fabric of $FABRIC_NODES nodes set up in ${FABRIC_MS} ms."
        if [[ -s $ROWS_FILE ]]; then
            echo
            echo "## Scale rows"
            echo
            report_py table "$ROWS_FILE" ${JSON_OUT:+--json "$JSON_OUT"}
        fi
        if [[ -n $PARTITION_TABLE ]]; then
            echo
            echo "## Partition"
            echo
            echo "$PARTITION_TABLE"
        fi
        if [[ ${#SCENARIO_LINES[@]} -gt 0 ]]; then
            echo
            echo "## Faults and scaling"
            echo
            printf -- '- %s\n' "${SCENARIO_LINES[@]}"
        fi
        if [[ ${#MISSES[@]} -gt 0 ]]; then
            echo
            echo "## Goals missed"
            echo
            printf -- '- %s\n' "${MISSES[@]}"
        fi
        if [[ ${#FAILURES[@]} -gt 0 ]]; then
            echo
            echo "## FAILURES"
            echo
            printf -- '- %s\n' "${FAILURES[@]}"
        fi
    )
    echo
    echo "$out"
    [[ -z $MD_OUT ]] || echo "$out" >"$MD_OUT"
}

max_nodes() {
    local n=0 row
    [[ $DO_FAULTS$DO_PARTITION == 00 ]] || n=2
    if [[ $DO_SCALE -eq 1 ]]; then
        for row in $ROWS; do [[ ${ROW_NODES[$row]} -le $n ]] || n=${ROW_NODES[$row]}; done
    fi
    echo "$n"
}

main() {
    LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
    install_tools
    build_binaries
    setup_fabric "$(max_nodes)"
    start_controller
    if [[ $DO_FAULTS -eq 1 ]]; then scenario_faults; fi
    if [[ $DO_PARTITION -eq 1 ]]; then scenario_partition; fi
    if [[ $DO_SCALE -eq 1 ]]; then
        local row
        for row in $ROWS; do scale_row "$row"; done
        teardown_pods
    fi
    write_results
    if [[ ${#FAILURES[@]} -gt 0 ]]; then
        printf 'FAIL %s\n' "${FAILURES[@]}"
        echo "kube/simulate.sh: ${#FAILURES[@]} check(s) failed"
        exit 1
    fi
    if [[ $REQUIRE_GOALS -eq 1 && ${#MISSES[@]} -gt 0 ]]; then
        echo "kube/simulate.sh: ${#MISSES[@]} goal(s) missed (--require-goals)"
        exit 1
    fi
    echo "kube/simulate.sh: all checks passed${MISSES:+ (${#MISSES[@]} goal(s) missed, see above)}"
}

main
