#!/usr/bin/env bash
# Builds the snowlease-server image (FROM scratch, static binary, uid 65532) from a static
# binary built on the host, with buildah (no daemon: what a stock k3s node, which has only
# containerd, can run) or with Docker, and hands it on: pushed to a registry (the seed's local
# registry, e.g. localhost:5001) and/or saved as an archive for `k3s ctr images import`.
# Both builders use kube/Dockerfile's `runtime-prebuilt` target, so they make the same image.
#
# Usage: kube/image-build.sh [--builder buildah|docker] [--static-bin PATH] [--image NAME:TAG]
#                            [--push REGISTRY] [--insecure] [--archive FILE] [--store DIR]
#   --builder     buildah (default) or docker (needs a running dockerd; DOCKER_HOST and DOCKER,
#                 the CLI to use, are respected)
#   --static-bin  the static binary; default: build it with cargo (crt-static,
#                 x86_64-unknown-linux-gnu, CARGO_TARGET_DIR respected)
#   --image       image name and tag (default snowlease-server:0.1.0)
#   --push R      push to registry R (host:port) as R/NAME:TAG; plain HTTP without TLS
#                 verification for localhost and 127.x, else only with --insecure
#   --archive F   save a docker-archive tar for `k3s ctr images import F` (on every node)
#   --store DIR   buildah only: keep images under DIR instead of /var/lib/containers
#                 (what the CI test uses, so it leaves nothing behind)
# Prints the image size, its single layer, and the pushed digest.
set -euo pipefail

KUBE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$KUBE_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BUILDER=buildah
STATIC_BIN=
IMAGE=snowlease-server:0.1.0
PUSH=
INSECURE=0
ARCHIVE=
STORE=
DOCKER=${DOCKER:-docker}
while [[ $# -gt 0 ]]; do
    case $1 in
        --builder) BUILDER=$2; shift 2 ;;
        --static-bin) STATIC_BIN=$2; shift 2 ;;
        --image) IMAGE=$2; shift 2 ;;
        --push) PUSH=$2; shift 2 ;;
        --insecure) INSECURE=1; shift ;;
        --archive) ARCHIVE=$2; shift 2 ;;
        --store) STORE=$2; shift 2 ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"; exit 0 ;;
        *) echo "image-build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case $BUILDER in
    buildah|docker) ;;
    *) echo "image-build.sh: --builder must be buildah or docker, not $BUILDER" >&2; exit 2 ;;
esac
[[ $IMAGE == *:* ]] || { echo "image-build.sh: --image wants NAME:TAG, got $IMAGE" >&2; exit 2; }
[[ -z $STORE || $BUILDER == buildah ]] || { echo "image-build.sh: --store is for buildah" >&2; exit 2; }
command -v "$([[ $BUILDER == docker ]] && echo "$DOCKER" || echo buildah)" >/dev/null || {
    echo "image-build.sh: $BUILDER not found (Debian: apt-get install buildah; docker: docker.io)" >&2
    exit 2
}

CTX=$(mktemp -d /tmp/snowlease-image-ctx.XXXXXX)
trap 'rm -rf "$CTX"' EXIT
log() { echo "[image-build $(date +%T)] $*"; }

# buildah's own store and driver (/etc/containers/storage.conf) unless --store: then a private
# store with the vfs driver, which works everywhere, containers included. STORAGE_DRIVER
# overrides the driver either way.
buildah_() {
    local args=()
    if [[ -n $STORE ]]; then
        args+=(--storage-driver "${STORAGE_DRIVER:-vfs}" --root "$STORE/root" --runroot "$STORE/run")
    elif [[ -n ${STORAGE_DRIVER:-} ]]; then
        args+=(--storage-driver "$STORAGE_DRIVER")
    fi
    timeout 300 buildah "${args[@]}" "$@"
}

if [[ -z $STATIC_BIN ]]; then
    log "building the static snowlease-server (crt-static, x86_64-unknown-linux-gnu)"
    (cd "$ROOT" && RUSTFLAGS='-C target-feature=+crt-static' timeout 1800 cargo build --release \
        --target x86_64-unknown-linux-gnu -p snowlease-server)
    STATIC_BIN=$TARGET_DIR/x86_64-unknown-linux-gnu/release/snowlease-server
fi
[[ -x $STATIC_BIN ]] || { echo "image-build.sh: $STATIC_BIN is not an executable" >&2; exit 2; }
# FROM scratch has no libc and no dynamic loader.
if readelf -l "$STATIC_BIN" | grep -q INTERP; then
    echo "image-build.sh: $STATIC_BIN is dynamically linked; FROM scratch needs a static binary" \
        "(RUSTFLAGS='-C target-feature=+crt-static')" >&2
    exit 2
fi
# As the Dockerfile's build stage does: drop debug line tables, keep symbols (panic backtraces
# still name functions). The context holds this one file, nothing else.
strip --strip-debug -o "$CTX/snowlease-server" "$STATIC_BIN"

log "$BUILDER: kube/Dockerfile --target runtime-prebuilt -> $IMAGE"
if [[ $BUILDER == buildah ]]; then
    # --squash: one layer holding the binary (without it buildah adds an empty layer for the
    # runtime-base stage; docker's image has the one layer too). The rust build stage is skipped.
    buildah_ bud --quiet --squash --target runtime-prebuilt -f "$KUBE_DIR/Dockerfile" \
        -t "$IMAGE" "$CTX" >/dev/null
    layers=$(buildah_ inspect --type image -f '{{len .OCIv1.RootFS.DiffIDs}}' "$IMAGE")
    size=$(buildah_ images --noheading --format '{{.Size}}' "$IMAGE" | head -1)
    log "built: $(stat -c %s "$CTX/snowlease-server") byte binary, $layers layer(s), image $size"
else
    DOCKER_BUILDKIT=1 timeout 300 "$DOCKER" build -q --target runtime-prebuilt \
        -f "$KUBE_DIR/Dockerfile" -t "$IMAGE" "$CTX" >/dev/null
    log "built: $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE") bytes," \
        "$("$DOCKER" image inspect -f '{{len .RootFS.Layers}}' "$IMAGE") layer(s)"
fi

if [[ -n $ARCHIVE ]]; then
    rm -f "$ARCHIVE"
    if [[ $BUILDER == buildah ]]; then
        # The tag inside the archive is what containerd records: docker.io/library/NAME:TAG,
        # the name the kubelet looks for when the manifest says NAME:TAG.
        buildah_ push --quiet "$IMAGE" "docker-archive:$ARCHIVE:docker.io/library/$IMAGE"
    else
        timeout 300 "$DOCKER" save -o "$ARCHIVE" "$IMAGE"
    fi
    log "archive $ARCHIVE ($(stat -c %s "$ARCHIVE") bytes): on every node, sudo k3s ctr images import $ARCHIVE"
fi

if [[ -n $PUSH ]]; then
    ref="$PUSH/${IMAGE##*/}"
    tls=()
    case ${PUSH%%:*} in
        localhost|127.*) tls=(--tls-verify=false) ;;
        *) [[ $INSECURE == 1 ]] && tls=(--tls-verify=false) ;;
    esac
    if [[ $BUILDER == buildah ]]; then
        buildah_ push --quiet "${tls[@]}" --digestfile "$CTX/digest" "$IMAGE" "docker://$ref"
        log "pushed $ref@$(cat "$CTX/digest")"
    else
        # dockerd allows plain HTTP to 127.0.0.0/8 on its own; others need its insecure-registries.
        timeout 60 "$DOCKER" tag "$IMAGE" "$ref"
        timeout 300 "$DOCKER" push -q "$ref" >/dev/null
        log "pushed $ref@$("$DOCKER" image inspect -f '{{index .RepoDigests 0}}' "$ref" | sed 's/.*@//')"
    fi
fi
