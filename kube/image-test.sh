#!/usr/bin/env bash
# Builds the snowlease-server container image and proves it works: a private dockerd (no bridge,
# no iptables, its own socket and state under a temp dir), a static glibc binary built on the
# host, `kube/image-build.sh --builder docker` (kube/Dockerfile --target runtime-prebuilt, FROM
# scratch, registries are not needed; also saves the archive for `k3s ctr images import`), then
# the container is run on loopback ports with the pod's security settings (read-only root, all
# capabilities dropped, uid 65532), IDs are leased with snowcat and decoded, SIGTERM must give
# exit code 0, and the image size is printed.
#
# Usage: kube/image-test.sh [--static-bin PATH] [--snowcat PATH]
#   Without --static-bin the static binary is built with cargo (CARGO_TARGET_DIR respected).
set -euo pipefail

KUBE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$KUBE_DIR/lib.sh" image-test
IMAGE=snowlease-server:0.1.0
WORKER=7
STATIC_BIN=
SNOWCAT=
parse_args --static-bin=STATIC_BIN --snowcat=SNOWCAT -- "$@"

make_work_dir image
SOCK=$WORK/docker.sock
DOCKERD_PID=
CONTAINER=snowlease-image-test-$$

teardown() {
    if [[ -n $DOCKERD_PID ]]; then
        timeout 20 "$DOCKER" -H "unix://$SOCK" rm -f "$CONTAINER" >/dev/null 2>&1
        stop_pids 100 0.2 "$DOCKERD_PID"
    fi
    # dockerd leaves its netns bind mount (and, if killed, overlay mounts) behind.
    unmount_under "$WORK"
}

install_docker() {
    if ! command -v dockerd >/dev/null || [[ ! -x /usr/bin/docker ]]; then
        log "installing docker.io from Debian"
        apt_install docker.io
    fi
    # Debian's CLI: it builds with BuildKit without the buildx plugin.
    DOCKER=/usr/bin/docker
}

docker_up() { timeout 5 "$DOCKER" -H "unix://$SOCK" info >/dev/null 2>&1; }

start_dockerd() {
    log "starting a private dockerd (bridge none, no iptables) in $WORK"
    dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false \
        --userland-proxy=false --data-root "$WORK/data" --exec-root "$WORK/exec" \
        -H "unix://$SOCK" -p "$WORK/docker.pid" >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    if wait_for 120 0.5 "$DOCKERD_PID" docker_up; then return; fi
    tail -20 "$WORK/dockerd.log"
    echo "image-test.sh: dockerd did not come up within 60 s" >&2
    exit 1
}

build_binaries() {
    if [[ -z $STATIC_BIN ]]; then
        log "building the static snowlease-server (crt-static, x86_64-unknown-linux-gnu)"
        (cd "$ROOT" && RUSTFLAGS='-C target-feature=+crt-static' timeout 1800 cargo build --release \
            --target x86_64-unknown-linux-gnu -p snowlease-server)
        STATIC_BIN=$TARGET_DIR/x86_64-unknown-linux-gnu/release/snowlease-server
    fi
    if [[ -z $SNOWCAT ]]; then
        log "building snowcat"
        (cd "$ROOT" && timeout 1800 cargo build --release --bin snowcat)
        SNOWCAT=$TARGET_DIR/release/snowcat
    fi
    # FROM scratch has no libc: the binary must not need a dynamic loader.
    if readelf -l "$STATIC_BIN" | grep 'INTERP' >/dev/null; then
        echo "image-test.sh: $STATIC_BIN is dynamically linked; FROM scratch needs a static binary" >&2
        exit 1
    fi
}

build_image() {
    # The documented Docker path of kube/README.md: image-build.sh --builder docker, which strips
    # the binary and builds kube/Dockerfile's runtime-prebuilt target; and its archive for
    # `k3s ctr images import`.
    DOCKER=$DOCKER DOCKER_HOST="unix://$SOCK" "$KUBE_DIR/image-build.sh" --builder docker \
        --static-bin "$STATIC_BIN" --image "$IMAGE" --archive "$WORK/snowlease.tar"
    tar -xOf "$WORK/snowlease.tar" manifest.json | grep -q "\"$IMAGE\"" \
        || { echo "image-test.sh: the archive does not name $IMAGE" >&2; exit 1; }
}

run_container() {
    LEASE_PORT=$(free_port)
    ADMIN_PORT=$(free_port)
    while [[ $ADMIN_PORT == "$LEASE_PORT" ]]; do ADMIN_PORT=$(free_port); done
    log "docker run on 127.0.0.1:$LEASE_PORT (lease) and 127.0.0.1:$ADMIN_PORT (admin)"
    # The StatefulSet's security settings: read-only root, no capabilities, uid 65532, the state
    # dir on a writable volume (here a tmpfs owned by that uid).
    timeout 60 "$DOCKER" -H "unix://$SOCK" run -d --name "$CONTAINER" --network host \
        --read-only --cap-drop ALL --security-opt no-new-privileges \
        --tmpfs /var/lib/snowlease:uid=65532,gid=65532,mode=0700 \
        -e POD_NAME=snowlease-$WORKER -e SNOWLEASE_STATE_DIR=/var/lib/snowlease \
        -e SNOWLEASE_LOG_FORMAT=json -e SNOWLEASE_DRAIN_TIMEOUT_MS=10000 \
        "$IMAGE" --listen "127.0.0.1:$LEASE_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" >/dev/null
    if wait_for 100 0.2 "" answers "http://127.0.0.1:$ADMIN_PORT/readyz"; then
        log "ready: /readyz answers 200"
        return
    fi
    timeout 10 "$DOCKER" -H "unix://$SOCK" logs "$CONTAINER" 2>&1 | tail -20
    echo "image-test.sh: the container was not ready within 20 s" >&2
    exit 1
}

lease_and_decode() {
    local out=$WORK/ids.txt
    timeout 30 "$SNOWCAT" --addr "127.0.0.1:$LEASE_PORT" lease 100000 >"$out"
    python3 - "$out" "$WORKER" <<'EOF'
import sys
ids = [int(line) for line in open(sys.argv[1])]
worker = int(sys.argv[2])
workers = {(i >> 12) & 1023 for i in ids}
assert len(ids) == 100000, f"expected 100000 IDs, got {len(ids)}"
assert len(set(ids)) == len(ids), "duplicate IDs"
assert workers == {worker}, f"IDs decode to workers {sorted(workers)}, expected {worker}"
assert ids == sorted(ids), "IDs from one connection are not increasing"
print(f"[image-test] leased {len(ids)} distinct, increasing IDs, all worker {worker}")
EOF
    curl -fsS -m 2 "http://127.0.0.1:$ADMIN_PORT/generate-id" | grep '"id"' >/dev/null \
        || { echo "image-test.sh: /generate-id did not answer" >&2; exit 1; }
    log "/generate-id answers"
}

stop_container() {
    local started code
    started=$(date +%s%N)
    log "docker stop (SIGTERM to PID 1, no init in the image)"
    timeout 60 "$DOCKER" -H "unix://$SOCK" stop -t 20 "$CONTAINER" >/dev/null
    code=$(timeout 10 "$DOCKER" -H "unix://$SOCK" inspect -f '{{.State.ExitCode}}' "$CONTAINER")
    log "stopped in $(( ($(date +%s%N) - started) / 1000000 )) ms with exit code $code"
    if [[ $code != 0 ]]; then
        timeout 10 "$DOCKER" -H "unix://$SOCK" logs "$CONTAINER" 2>&1 | tail -20
        echo "image-test.sh: exit code $code after SIGTERM, expected 0" >&2
        exit 1
    fi
    # To a file first: `grep -q` stopping early would SIGPIPE docker and fail the pipeline.
    timeout 10 "$DOCKER" -H "unix://$SOCK" logs "$CONTAINER" >"$WORK/container.log" 2>&1
    grep -q '"message":"draining","signal":"SIGTERM"' "$WORK/container.log" \
        || { tail -5 "$WORK/container.log"; echo "image-test.sh: no drain on SIGTERM in the logs" >&2; exit 1; }
}

report_size() {
    local bytes
    bytes=$(timeout 10 "$DOCKER" -H "unix://$SOCK" image inspect -f '{{.Size}}' "$IMAGE")
    log "image $IMAGE: $bytes bytes ($(( (bytes + 524288) / 1048576 )) MiB), layers:"
    timeout 10 "$DOCKER" -H "unix://$SOCK" history --format '  {{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-110
}

install_docker
build_binaries
start_dockerd
build_image
run_container
lease_and_decode
stop_container
report_size
log "image test passed"
