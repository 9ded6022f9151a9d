#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests in kube/: render base and every overlay with
# `kubectl kustomize`, validate against the Kubernetes 1.32 schemas (strict: unknown fields
# fail), lint the YAML, run the project checks of check_manifests.py (env names, ports, probe
# paths, replicas, grace period ...), and prove those checks bite by feeding them broken copies.
#
# Usage: kube/check.sh [--server-bin PATH]
#   The server facts (env names, default ports, drain timeout) come from `PATH --help`; without
#   it, from $SNOWLEASE_SERVER_BIN, then $CARGO_TARGET_DIR/release/snowlease-server or
#   target/release/snowlease-server if built, else from the server sources.
set -euo pipefail

KUBE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$KUBE_DIR/.." && pwd)
K8S_VERSION=1.32.0
SERVER_BIN=${SNOWLEASE_SERVER_BIN:-}
while [[ $# -gt 0 ]]; do
    case $1 in
        --server-bin) SERVER_BIN=$2; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "check.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

WORK=$(mktemp -d /tmp/snowlease-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
FAILED=0
fail() { echo "FAIL $*"; FAILED=1; }

ensure_tools() {
    command -v kubectl >/dev/null || { echo "check.sh: kubectl (with kustomize) is required" >&2; exit 1; }
    local missing=()
    command -v kubernetes-validate >/dev/null || missing+=(kubernetes-validate)
    command -v yamllint >/dev/null || missing+=(yamllint)
    python3 -c 'import yaml' 2>/dev/null || missing+=(pyyaml)
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "installing ${missing[*]} from PyPI"
        timeout 300 python3 -m pip install -q "${missing[@]}"
    fi
}

find_server_bin() {
    [[ -n $SERVER_BIN ]] && return
    local candidate
    for candidate in "${CARGO_TARGET_DIR:-$ROOT/target}/release/snowlease-server" \
        "$ROOT/target/release/snowlease-server"; do
        if [[ -x $candidate ]]; then SERVER_BIN=$candidate; return; fi
    done
}

# validate NAME FILE: strict schema validation; a WARN line (e.g. a removed apiVersion) fails too.
validate() {
    local name=$1 file=$2 out rc=0
    out=$(timeout 120 kubernetes-validate --strict -k "$K8S_VERSION" - <"$file" 2>&1) || rc=$?
    if [[ $rc -ne 0 ]] || grep -q '^WARN' <<<"$out"; then
        fail "$name: kubernetes-validate (rc $rc)"
        grep -v '^INFO' <<<"$out" | sed 's/^/    /'
        return 1
    fi
    echo "ok $name: $(grep -c '^INFO - passed' <<<"$out") resources valid against Kubernetes $K8S_VERSION (strict)"
}

project_checks() {
    local name=$1 file=$2
    local args=("$file" --label "$name")
    [[ -n $SERVER_BIN ]] && args+=(--server-bin "$SERVER_BIN")
    timeout 60 python3 "$KUBE_DIR/check_manifests.py" "${args[@]}"
}

check_targets() {
    local dir name file
    for dir in "$KUBE_DIR/base" "$KUBE_DIR"/overlays/*/; do
        name=${dir#"$KUBE_DIR"/}; name=${name%/}
        file="$WORK/${name//\//_}.yaml"
        if ! timeout 60 kubectl kustomize "$dir" >"$file"; then
            fail "$name: kubectl kustomize failed"; continue
        fi
        validate "$name" "$file" || true
        project_checks "$name" "$file" || FAILED=1
    done
}

# expect_rejected WHAT SED_EXPR CHECK: a mutated copy of the base must fail CHECK.
expect_rejected() {
    local what=$1 expr=$2 check=$3 file="$WORK/mutant.yaml"
    sed -e "$expr" "$WORK/base.yaml" >"$file"
    if cmp -s "$file" "$WORK/base.yaml"; then fail "self-test '$what': mutation matched nothing"; return; fi
    # In a subshell: the check failing is the expected outcome and must not mark this run failed.
    if ( $check mutant "$file" ) >/dev/null 2>&1; then
        fail "self-test: a manifest with $what was accepted"
    else
        echo "ok self-test: a manifest with $what is rejected"
    fi
}

self_test() {
    expect_rejected "an unknown field" 's/^  serviceName:/  servicename:/' validate
    expect_rejected "readiness on /ready" 's#path: /readyz#path: /ready#' project_checks
    expect_rejected "an env var the server does not read" 's/SNOWLEASE_LOG_FORMAT$/SNOWLEASE_LOGFORMAT/' project_checks
    expect_rejected "a wrong container port" 's/containerPort: 7609/containerPort: 7600/' project_checks
    expect_rejected "replicas 2000" 's/^  replicas: 3/  replicas: 2000/' project_checks
    expect_rejected "Service type Nodeport" 's/type: ClusterIP/type: Nodeport/' project_checks
    expect_rejected "a grace period below the drain" 's/terminationGracePeriodSeconds: 30/terminationGracePeriodSeconds: 10/' project_checks
    expect_rejected "SNOWLEASE_THREADS set" 's/- name: SNOWLEASE_LOG_FORMAT/- name: SNOWLEASE_THREADS/' project_checks
}

lint() {
    if timeout 60 yamllint -s -c "$KUBE_DIR/yamllint.yaml" "$KUBE_DIR"; then
        echo "ok yamllint: kube/ is clean"
    else
        fail "yamllint"
    fi
    local script
    for script in "$KUBE_DIR"/*.sh; do
        bash -n "$script" || fail "bash -n $script"
    done
    if command -v shellcheck >/dev/null; then
        shellcheck -S warning "$KUBE_DIR"/*.sh && echo "ok shellcheck: kube/*.sh" || fail "shellcheck"
    fi
}

ensure_tools
find_server_bin
echo "server facts from: ${SERVER_BIN:-server sources (no binary given or built)}"
check_targets
lint
self_test
if [[ $FAILED -ne 0 ]]; then
    echo "kube/check.sh: FAILED"
    exit 1
fi
echo "kube/check.sh: all checks passed"
