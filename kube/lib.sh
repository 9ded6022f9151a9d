# shellcheck shell=bash disable=SC2034  # ROOT, TARGET_DIR, SERVER_PID, LEASE, ADMIN: for the sourcing script
# kube/lib.sh: the option parsing and process control the kube test scripts share (image-test.sh,
# registry-test.sh, monitoring-test.sh, pod-cpu.sh). Sourced, never run: a script sets KUBE_DIR,
# then `source "$KUBE_DIR/lib.sh" NAME` (NAME: the script's name without .sh, for its messages),
# reads its options with parse_args, then calls make_work_dir once; its own teardown()
# (optional) stops what it started, and cleanup (the EXIT trap) runs it and removes $WORK.
#
# Every wait here is a condition polled a bounded number of times, never a sleep that stands in
# for one; the callers pass the bounds they document.

SCRIPT=$1
ROOT=$(cd "$KUBE_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# Processes stopped by the scripts' teardown (start_server adds the server).
PIDS=()

log() { echo "[$SCRIPT $(date +%T)] $*"; }
fail() { echo "$SCRIPT.sh: FAIL $*" >&2; exit 1; }
# The script's header comment: its usage.
print_help() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"; }

# parse_args FLAG=VAR... -- ARG...: the script's options. Each `FLAG VALUE` among the ARGs sets
# the variable VAR to VALUE (the last one wins); -h/--help prints the usage and exits 0; any
# other ARG, or a FLAG without its VALUE, is a usage error (exit 2).
parse_args() {
    local flags=() spec
    while [[ $1 != -- ]]; do flags+=("$1"); shift; done
    shift
    while [[ $# -gt 0 ]]; do
        case $1 in -h|--help) print_help; exit 0 ;; esac
        for spec in "${flags[@]}"; do
            if [[ $1 == "${spec%%=*}" ]]; then
                [[ $# -ge 2 ]] || { echo "$SCRIPT.sh: $1 needs a value" >&2; exit 2; }
                printf -v "${spec#*=}" '%s' "$2"
                shift 2
                continue 2
            fi
        done
        echo "$SCRIPT.sh: unknown argument $1" >&2
        exit 2
    done
}

# need_server_and_bench: after parse_args, BENCH defaults to the snowlease-bench beside
# $SERVER_BIN; both must be executables.
need_server_and_bench() {
    BENCH=${BENCH:-$(dirname "$SERVER_BIN")/snowlease-bench}
    need_executables "$SERVER_BIN" "$BENCH"
}

# make_work_dir NAME: a fresh $WORK (/tmp/snowlease-NAME.XXXXXX) removed on any exit.
make_work_dir() {
    WORK=$(mktemp -d "/tmp/snowlease-$1.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# The EXIT trap: the script's teardown (given the exit status) with errors ignored, then $WORK
# goes; the script's exit status is kept.
cleanup() {
    local rc=$?
    set +e
    if declare -F teardown >/dev/null; then teardown "$rc"; fi
    rm -rf "$WORK"
    exit "$rc"
}

# apt_install PACKAGE...: installs Debian packages (bounded: 5 min update, 10 min install).
apt_install() {
    timeout 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "$@" >/dev/null
}

# need_executables FILE...: exits 2 (a usage error) naming the first FILE that is not executable.
need_executables() {
    local bin
    for bin in "$@"; do
        [[ -x $bin ]] || { echo "$SCRIPT.sh: $bin is not an executable (see --help)" >&2; exit 2; }
    done
}

# free_port: a loopback TCP port the kernel just handed out, for a process that cannot bind
# port 0 and report it.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for TRIES STEP PID CMD...: runs CMD until it succeeds, at most TRIES times STEP seconds
# apart. False when the tries run out, or at once when PID (unless empty) has exited.
wait_for() {
    local tries=$1 step=$2 pid=$3 _
    shift 3
    for _ in $(seq 1 "$tries"); do
        "$@" && return 0
        [[ -z $pid ]] || kill -0 "$pid" 2>/dev/null || return 1
        sleep "$step"
    done
    return 1
}

# answers URL: the URL answers 2xx within 1 s.
answers() { curl -fsS -m 1 "$1" >/dev/null 2>&1; }

# gone PID: the process has exited (or was never ours to signal).
gone() { ! kill -0 "$1" 2>/dev/null; }

# stop_pids TRIES STEP PID...: SIGTERM to every PID, then each gets up to TRIES x STEP seconds
# to exit before SIGKILL, and is reaped. For teardown (errors ignored).
stop_pids() {
    local tries=$1 step=$2 pid
    shift 2
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "$@"; do
        wait_for "$tries" "$step" "" gone "$pid"
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
}

# unmount_under DIR: every mount below DIR, deepest first, so that DIR can be deleted (dockerd
# leaves its netns bind mount and, if killed, overlay mounts; buildah's store may hold mounts).
unmount_under() {
    awk -v w="$1" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
}

# serving_addrs LOG: "LEASE ADMIN" from the server's JSON `serving` line (fields flat or under
# "fields"); nothing while the line is not there.
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

# Sets LEASE and ADMIN from the server's log once its serving line is there.
serving() {
    local addrs
    addrs=$(serving_addrs "$WORK/server.log")
    [[ -n $addrs ]] || return 1
    read -r LEASE ADMIN <<<"$addrs"
}

# start_server WORKER [WRAPPER...]: $SERVER_BIN on 127.0.0.1 port 0 (lease and admin), one
# serving thread, worker id WORKER, JSON log in $WORK/server.log, a fresh state dir
# $WORK/state, run behind WRAPPER if given (e.g. `taskset -c 0`, which execs it: the pid is
# the server's). Sets SERVER_PID (also added to PIDS), LEASE and ADMIN once the serving line is
# there; fails if the server exits first or prints no serving line within 10 s.
start_server() {
    local worker=$1
    shift
    mkdir -p "$WORK/state"
    "$@" "$SERVER_BIN" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log-format json \
        --worker-id "$worker" --threads 1 --state-dir "$WORK/state" 2>"$WORK/server.log" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_for 100 0.1 "$SERVER_PID" serving && return
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; fail "the server exited at start"; }
    fail "no serving line from the server within 10 s"
}
