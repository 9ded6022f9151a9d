#!/usr/bin/env bash
# Tests the Docker-less image path of kube/README.md end to end, as a k3s host without Docker
# would run it: Debian's buildah builds the image with kube/image-build.sh, which pushes it to
# a throwaway local registry (Debian's docker-registry, the seed's setup, on 127.0.0.1 and a
# free port) and saves the archive for `k3s ctr images import`. Then skopeo reads the image back
# from the registry and the checks prove it is the image the StatefulSet expects: one layer
# holding exactly the stripped static binary (same sha256), user 65532:65532, entrypoint
# /snowlease-server, ports 7609 and 7610; and the archive names docker.io/library/NAME:TAG,
# the reference the kubelet resolves `snowlease-server:0.1.0` to.
#
# Usage: kube/registry-test.sh [--static-bin PATH]
#   Installs buildah, skopeo and docker-registry from Debian if missing. Without --static-bin
#   the static binary is built by image-build.sh (cargo). Leaves nothing behind: the image store,
#   the registry's storage and process live under one temp dir, removed on exit.
set -euo pipefail

KUBE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$KUBE_DIR/lib.sh" registry-test
STATIC_BIN=
IMAGE=snowlease-server:0.1.0
parse_args --static-bin=STATIC_BIN -- "$@"

make_work_dir registry
REGISTRY_PID=
teardown() {
    [[ -z $REGISTRY_PID ]] || stop_pids 50 0.1 "$REGISTRY_PID"
    # buildah's vfs store may hold read-only directories and (rarely) mounts.
    unmount_under "$WORK"
    chmod -R u+w "$WORK" 2>/dev/null
}

install_tools() {
    local need=()
    command -v buildah >/dev/null || need+=(buildah)
    command -v skopeo >/dev/null || need+=(skopeo)
    command -v docker-registry >/dev/null || need+=(docker-registry)
    if [[ ${#need[@]} -gt 0 ]]; then
        log "installing ${need[*]} from Debian"
        apt_install "${need[@]}"
    fi
}

start_registry() {
    PORT=$(free_port)
    # Debian's /etc/docker/registry/config.yml asks for htpasswd auth and listens on :5000;
    # the seed's registry (and kube/README.md's) is open on loopback only.
    cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $WORK/registry-data
http:
  addr: 127.0.0.1:$PORT
EOF
    docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
    REGISTRY_PID=$!
    if wait_for 100 0.1 "$REGISTRY_PID" answers "http://127.0.0.1:$PORT/v2/"; then
        log "docker-registry $(docker-registry --version | awk '{print $NF}') on 127.0.0.1:$PORT"
        return
    fi
    cat "$WORK/registry.log" >&2
    fail "the registry did not answer /v2/ within 10 s"
}

build_and_push() {
    local args=(--builder buildah --store "$WORK/store" --image "$IMAGE"
        --push "127.0.0.1:$PORT" --archive "$WORK/snowlease.tar")
    [[ -n $STATIC_BIN ]] && args+=(--static-bin "$STATIC_BIN")
    "$KUBE_DIR/image-build.sh" "${args[@]}" | tee "$WORK/build.log"
    if [[ -z $STATIC_BIN ]]; then
        STATIC_BIN=$TARGET_DIR/x86_64-unknown-linux-gnu/release/snowlease-server
    fi
}

check_registry_image() {
    local ref="docker://127.0.0.1:$PORT/$IMAGE"
    timeout 60 skopeo inspect --tls-verify=false "$ref" >"$WORK/inspect.json"
    timeout 60 skopeo inspect --tls-verify=false --config "$ref" >"$WORK/config.json"
    timeout 120 skopeo copy -q --src-tls-verify=false "$ref" "dir:$WORK/pulled"
    strip --strip-debug -o "$WORK/expected" "$STATIC_BIN"
    python3 - "$WORK" <<'EOF'
import hashlib, json, os, sys, tarfile
work = sys.argv[1]
inspect = json.load(open(f"{work}/inspect.json"))
config = json.load(open(f"{work}/config.json"))
cfg = config["config"]
problems = []
if cfg.get("User") != "65532:65532":
    problems.append(f"user {cfg.get('User')!r}, expected 65532:65532")
if cfg.get("Entrypoint") != ["/snowlease-server"]:
    problems.append(f"entrypoint {cfg.get('Entrypoint')}")
if set(cfg.get("ExposedPorts", {})) != {"7609/tcp", "7610/tcp"}:
    problems.append(f"exposed ports {sorted(cfg.get('ExposedPorts', {}))}")
if len(inspect["Layers"]) != 1:
    problems.append(f"{len(inspect['Layers'])} layers, expected 1")
manifest = json.load(open(f"{work}/pulled/manifest.json"))
layer = manifest["layers"][0]["digest"].split(":")[1]
with tarfile.open(f"{work}/pulled/{layer}") as tar:
    names = [m.name.lstrip("./") for m in tar.getmembers() if not m.isdir()]
    if names != ["snowlease-server"]:
        problems.append(f"the layer holds {names}, expected only snowlease-server")
    member = tar.getmember(next(m.name for m in tar.getmembers() if m.name.lstrip("./") == "snowlease-server"))
    got = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
    mode = member.mode
want = hashlib.sha256(open(f"{work}/expected", "rb").read()).hexdigest()
if got != want:
    problems.append(f"binary in the image sha256 {got[:16]}.., built {want[:16]}..")
if not mode & 0o001:
    problems.append(f"binary mode {oct(mode)} is not executable by uid 65532")
size = sum(l["size"] for l in manifest["layers"])
if problems:
    sys.exit("registry-test.sh: FAIL " + "; ".join(problems))
print(f"[registry-test] registry image {inspect['Digest']}: 1 layer ({size} bytes compressed) "
      f"holding exactly the stripped binary (sha256 {got[:16]}..), user 65532:65532, "
      f"entrypoint /snowlease-server, ports 7609+7610")
EOF
}

check_archive() {
    local names
    names=$(tar -xOf "$WORK/snowlease.tar" manifest.json | python3 -c \
        'import json, sys; print(" ".join(t for m in json.load(sys.stdin) for t in m["RepoTags"]))')
    [[ " $names " == *" docker.io/library/$IMAGE "* ]] \
        || fail "the archive names $names, not docker.io/library/$IMAGE"
    log "archive for k3s ctr images import: $(stat -c %s "$WORK/snowlease.tar") bytes, tags $names"
}

started=$(date +%s)
install_tools
start_registry
build_and_push
check_registry_image
check_archive
log "registry path passed in $(( $(date +%s) - started )) s"
