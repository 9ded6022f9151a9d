#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests in kube/: render base, every overlay, every overlay
# with all optional components (components/http-route, components/monitoring) and the manifests
# applied on their own (kube/namespace, the k3s Traefik settings) with `kubectl kustomize`;
# validate the built-in kinds against the Kubernetes 1.32 schemas (strict: unknown fields fail)
# and the custom resources (PodMonitor, PrometheusRule, HelmChartConfig) with check_manifests.py's
# structural schemas; lint the YAML; run the project checks of check_manifests.py (env names,
# ports, probe paths, replicas x workers per pod <= 1024, grace period, resources, the Ingress
# routes only /generate-id, NetworkPolicies by label, alerts with runbooks ...); `promtool check
# rules` and checkov when installed; and prove the checks bite by feeding them broken copies.
#
# Usage: kube/check.sh [--server-bin PATH] [--checkov]
#   The server facts (env names, default ports, drain timeout) come from `PATH --help`; without
#   it, from $SNOWLEASE_SERVER_BIN, then $CARGO_TARGET_DIR/release/snowlease-server or
#   target/release/snowlease-server if built, else from the server sources.
#   --checkov: run checkov (a venv under ~/.cache/snowlease, created on first use: ~50 s, 290 MB;
#   without the flag checkov runs only if already there).
set -euo pipefail

KUBE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$KUBE_DIR/.." && pwd)
K8S_VERSION=1.32.0
SERVER_BIN=${SNOWLEASE_SERVER_BIN:-}
CHECKOV=0
CHECKOV_VENV=${SNOWLEASE_CHECKOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/snowlease/checkov-venv}
STARTED=$(date +%s%N)
while [[ $# -gt 0 ]]; do
    case $1 in
        --server-bin) SERVER_BIN=$2; shift 2 ;;
        --checkov) CHECKOV=1; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"; exit 0 ;;
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
    # The interpreter and tools themselves, not version-manager shims: a pyenv shim costs about
    # 0.3 s per call, and this script makes about fifty.
    PYTHON=$(python3 -c 'import sys; print(sys.executable)')
    KUBERNETES_VALIDATE=$(dirname "$PYTHON")/kubernetes-validate
    [[ -x $KUBERNETES_VALIDATE ]] || KUBERNETES_VALIDATE=$(command -v kubernetes-validate)
    YAMLLINT=$(dirname "$PYTHON")/yamllint
    [[ -x $YAMLLINT ]] || YAMLLINT=$(command -v yamllint)
}

find_server_bin() {
    [[ -n $SERVER_BIN ]] && return
    local candidate
    for candidate in "${CARGO_TARGET_DIR:-$ROOT/target}/release/snowlease-server" \
        "$ROOT/target/release/snowlease-server"; do
        if [[ -x $candidate ]]; then SERVER_BIN=$candidate; return; fi
    done
}

# validate NAME FILE: strict schema validation of the built-in kinds; a WARN line (e.g. a
# removed apiVersion) fails too. The custom resources are left to check_manifests.py.
validate() {
    local name=$1 file=$2 out rc=0 builtin=${3:-}
    if [[ -z $builtin ]]; then
        builtin=$WORK/builtin.yaml
        timeout 60 "$PYTHON" "$KUBE_DIR/check_manifests.py" --builtin-only "$file" >"$builtin"
    fi
    out=$(timeout 120 "$KUBERNETES_VALIDATE" --strict -k "$K8S_VERSION" - <"$builtin" 2>&1) || rc=$?
    if [[ $rc -ne 0 ]] || grep -q '^WARN' <<<"$out"; then
        fail "$name: kubernetes-validate (rc $rc)"
        grep -v '^INFO' <<<"$out" | sed 's/^/    /'
        return 1
    fi
    echo "ok $name: $(grep -c '^INFO - passed' <<<"$out") built-in resources valid against Kubernetes" \
        "$K8S_VERSION (strict)"
}

# project_checks NAME FILE [BUILTIN_OUT]: check_manifests.py; also writes the built-in kinds to
# BUILTIN_OUT for validate (one Python start instead of two).
project_checks() {
    local name=$1 file=$2
    local args=("$file" --label "$name")
    [[ -n ${3:-} ]] && args+=(--builtin-out "$3")
    [[ -n $SERVER_BIN ]] && args+=(--server-bin "$SERVER_BIN")
    [[ $name == namespace || $name == *helmchartconfig* ]] && args+=(--standalone)
    timeout 60 "$PYTHON" "$KUBE_DIR/check_manifests.py" "${args[@]}"
}

# with_components OVERLAY_DIR OUT_DIR: a kustomization of the overlay plus every component, as a
# user who uncomments the overlay's `components:` lines gets (kustomize wants relative paths).
with_components() {
    local overlay=$1 out=$2 rel component
    mkdir -p "$out"
    rel=$(realpath --relative-to="$out" "$KUBE_DIR")
    {
        echo "apiVersion: kustomize.config.k8s.io/v1beta1"
        echo "kind: Kustomization"
        echo "resources:"
        echo "  - $rel/${overlay#"$KUBE_DIR"/}"
        echo "components:"
        for component in "$KUBE_DIR"/components/*/; do
            component=${component%/}
            [[ ${component##*/} == workers-per-pod ]] && continue  # changes K: its own overlay
            echo "  - $rel/components/${component##*/}"
        done
    } >"$out/kustomization.yaml"
}

render_and_check() {
    local name=$1 dir=$2 file="$WORK/${1//[\/+]/_}.yaml"
    if ! timeout 60 kubectl kustomize "$dir" >"$file"; then
        fail "$name: kubectl kustomize failed"; return
    fi
    project_checks "$name" "$file" "$file.builtin" || FAILED=1
    validate "$name" "$file" "$file.builtin" || true
    RENDERED+=("$file")
}

check_targets() {
    local dir name
    RENDERED=()
    render_and_check namespace "$KUBE_DIR/namespace"
    for dir in "$KUBE_DIR/base" "$KUBE_DIR"/overlays/*/; do
        dir=${dir%/}
        name=${dir#"$KUBE_DIR"/}
        render_and_check "$name" "$dir"
        [[ $name == base ]] && continue
        with_components "$dir" "$WORK/combo/${name##*/}"
        render_and_check "$name+components" "$WORK/combo/${name##*/}"
    done
    # Applied on its own by k3s users of the HTTP route (not part of any kustomization).
    local traefik=components/http-route/traefik-k3s-helmchartconfig.yaml
    cp "$KUBE_DIR/$traefik" "$WORK/traefik.yaml"
    project_checks "$traefik" "$WORK/traefik.yaml" "$WORK/traefik.builtin" || FAILED=1
    validate "$traefik" "$WORK/traefik.yaml" "$WORK/traefik.builtin" || true
}

# The alerts as Prometheus will load them (kube/monitoring-test.sh runs them for real).
rules_check() {
    if ! command -v promtool >/dev/null; then
        echo "skip promtool check rules: promtool not installed (Debian package prometheus)"
        return
    fi
    timeout 60 "$PYTHON" "$KUBE_DIR/monitoring_check.py" rules "$WORK/rules"
    if timeout 60 promtool check rules "$WORK/rules/snowlease-rules-full.yml" >"$WORK/promtool.txt" 2>&1; then
        echo "ok promtool check rules: $(grep -o '[0-9]* rules found' "$WORK/promtool.txt")"
    else
        sed 's/^/    /' "$WORK/promtool.txt"; fail "promtool check rules"
    fi
}

# checkov's Kubernetes policies on every rendering, offline (unshare -n: it phones home
# otherwise). Skipped by design, for every resource:
#   CKV_K8S_43 image by digest: the k3s path imports or pushes a locally built tag; pin a digest in
#              your own overlay once the image is in a registry (image-build.sh prints it).
#   CKV_K8S_15 imagePullPolicy Always: an image imported with `k3s ctr images import` must never
#              be pulled (there is nothing to pull it from); IfNotPresent is what makes that work.
checkov_check() {
    local bin=
    if command -v checkov >/dev/null; then bin=$(command -v checkov)
    elif [[ -x $CHECKOV_VENV/bin/checkov ]]; then bin=$CHECKOV_VENV/bin/checkov
    elif [[ $CHECKOV == 1 ]]; then
        echo "installing checkov into $CHECKOV_VENV (a venv: its pins must not touch the system's packages)"
        mkdir -p "$(dirname "$CHECKOV_VENV")"
        timeout 300 python3 -m venv "$CHECKOV_VENV"
        timeout 600 "$CHECKOV_VENV/bin/pip" install -q checkov
        bin=$CHECKOV_VENV/bin/checkov
    else
        echo "skip checkov: not installed (kube/check.sh --checkov installs it)"
        return
    fi
    mkdir -p "$WORK/checkov"
    cp "${RENDERED[@]}" "$WORK/checkov/"
    if timeout 300 unshare -n -- "$bin" -d "$WORK/checkov" --framework kubernetes --skip-download \
        --compact --quiet --skip-check CKV_K8S_43,CKV_K8S_15 >"$WORK/checkov.txt" 2>&1; then
        echo "ok checkov: $(grep -m1 -o 'Passed checks: [0-9]*, Failed checks: [0-9]*' "$WORK/checkov.txt" \
            || echo 'no findings') over ${#RENDERED[@]} renderings"
    else
        sed 's/^/    /' "$WORK/checkov.txt" | head -60; fail "checkov"
    fi
}

# expect_rejected WHAT SED_EXPR CHECK [RENDERING]: a mutated copy of a rendering (default: the
# base) must fail CHECK.
expect_rejected() {
    local what=$1 expr=$2 check=$3 source="$WORK/${4:-base}.yaml" file="$WORK/mutant.yaml"
    sed -e "$expr" "$source" >"$file"
    if cmp -s "$file" "$source"; then fail "self-test '$what': mutation matched nothing"; return; fi
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
    # The Namespace back in the workload: `kubectl delete -k` would take the state PVCs.
    expect_rejected "the Namespace rendered with the workload" \
        '1i apiVersion: v1\nkind: Namespace\nmetadata:\n  name: snowlease\n---' project_checks
    # replicas x workers per pod <= 1024 (the K overlay is 32 x 32 = 1024 exactly).
    local k_overlay=overlays_cloud-1024-workers
    expect_rejected "33 replicas x 32 workers per pod" 's/^  replicas: 32$/  replicas: 33/' project_checks $k_overlay
    expect_rejected "32 replicas x 33 workers per pod" 's/^\( *value: \)"32"$/\1"33"/' project_checks $k_overlay
    expect_rejected "0 workers per pod" 's/^\( *value: \)"32"$/\1"0"/' project_checks $k_overlay
    expect_rejected "a cpu request above the limit" 's/^\( *cpu: \)250m$/\1"2"/' project_checks overlays_k3s
    expect_rejected "a cpu request below one worker's need" 's/^\( *cpu: \)250m$/\150m/' project_checks overlays_k3s
    # The optional components (rendered on the k3s overlay).
    local combo=overlays_k3s_components
    expect_rejected "the Ingress routing /metrics" 's#path: /generate-id#path: /metrics#' project_checks $combo
    expect_rejected "the Ingress routing by Prefix" 's#pathType: Exact#pathType: Prefix#' project_checks $combo
    expect_rejected "no NetworkPolicy for the ingress controller" 's#snowlease.io/ingress: "true"#snowlease.io/ingres: "true"#' project_checks $combo
    expect_rejected "the admin port admitted by namespace name" \
        's#snowlease.io/scrape: "true"#kubernetes.io/metadata.name: monitoring#' project_checks $combo
    expect_rejected "a PodMonitor with an unknown field" 's/^  podMetricsEndpoints:/  podMetricEndpoints:/' project_checks $combo
    expect_rejected "a PodMonitor on the lease port" 's/^    port: admin$/    port: lease/' project_checks $combo
    expect_rejected "an alert without its runbook" '0,/^        runbook:/s/^        runbook:/        run_book:/' project_checks $combo
    expect_rejected "an alert 'for' that is no duration" '0,/^      for: 2m$/s/^      for: 2m$/      for: 2 minutes/' project_checks $combo
    expect_rejected "a dashboard that is not JSON" 's/"schemaVersion": 39,/"schemaVersion": 39/' project_checks $combo
    expect_rejected "the admin port on the NodePort" 's/^    targetPort: lease$/    targetPort: admin/' project_checks overlays_k3s
    # Traefik's label must be the one the NetworkPolicy admits.
    expect_rejected "Traefik without the ingress label" 's#snowlease.io/ingress: "true"#snowlease.io/ingress: "yes"#' project_checks traefik
}

lint() {
    if timeout 60 "$YAMLLINT" -s -c "$KUBE_DIR/yamllint.yaml" "$KUBE_DIR"; then
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
rules_check
checkov_check
self_test
elapsed="$(( ($(date +%s%N) - STARTED) / 1000000 )) ms"
if [[ $FAILED -ne 0 ]]; then
    echo "kube/check.sh: FAILED ($elapsed)"
    exit 1
fi
echo "kube/check.sh: all checks passed ($elapsed)"
