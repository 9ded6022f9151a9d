#!/usr/bin/env python3
"""Project checks on rendered snowlease manifests that no schema can make.

Reads one rendered kustomize stream (a file or stdin) and checks it against what the server
binary actually does: the environment variables it reads, its listen ports, its admin paths and
its drain timeout are taken from `snowlease-server --help` when a binary is given, else from
the server sources, else from the documented contract. Prints one line per failure and exits 1
if there was any.

Usage: check_manifests.py RENDERED.yaml [--server-bin PATH] [--src DIR] [--label NAME]
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import yaml

# The documented contract (common.md), used only when neither a binary nor sources are found.
CONTRACT_ENV = {
    "SNOWLEASE_LISTEN", "SNOWLEASE_ADMIN_LISTEN", "WORKER_ID", "POD_NAME", "SNOWLEASE_THREADS",
    "SNOWLEASE_EPOCH", "SNOWLEASE_MAX_LEAD_MS", "SNOWLEASE_STATE_DIR", "SNOWLEASE_MAX_CONNECTIONS",
    "SNOWLEASE_IDLE_TIMEOUT_MS", "SNOWLEASE_DRAIN_TIMEOUT_MS", "SNOWLEASE_LOG_FORMAT",
    "SNOWLEASE_TOKEN_FILE",
}
CONTRACT_DEFAULTS = {"listen": 7609, "admin": 7610, "drain_ms": 5000}
ADMIN_PATHS = {"readiness": "/readyz", "liveness": "/healthz"}
SERVICE_TYPES = {"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"}
MAX_WORKERS = 1024  # 10 worker bits
ENV_TOKEN = re.compile(r"\b(?:SNOWLEASE_[A-Z0-9_]+|WORKER_ID|POD_NAME)\b")


class Facts:
    """What the server reads and its defaults, with where they came from."""

    def __init__(self, env, listen, admin, drain_ms, source):
        self.env, self.listen, self.admin, self.drain_ms, self.source = env, listen, admin, drain_ms, source


def port_of(text, fallback):
    match = re.search(r":(\d+)\s*$", text or "")
    return int(match.group(1)) if match else fallback


def default_after(text, flag):
    """The `[default: X]` clap prints in the paragraph of option `flag`, or None."""
    option = re.compile(r"\s*(?:-\w, )?--[a-z]")
    block, inside = [], False
    for line in text.splitlines():
        if option.match(line):
            inside = re.match(r"\s*(?:-\w, )?" + re.escape(flag) + r"(?=[\s=<,]|$)", line) is not None
        if inside:
            block.append(line)
    match = re.search(r"\[default: ([^\]]+)\]", "\n".join(block))
    return match.group(1).strip() if match else None


def facts_from_help(binary):
    try:
        out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        sys.exit(f"cannot run {binary} --help: {err}")
    text = out.stdout + out.stderr
    env = set(ENV_TOKEN.findall(text))
    if out.returncode != 0 or not env:
        sys.exit(f"{binary} --help failed or names no environment variable (rc {out.returncode})")
    listen = port_of(default_after(text, "--listen"), CONTRACT_DEFAULTS["listen"])
    admin = port_of(default_after(text, "--admin-listen"), CONTRACT_DEFAULTS["admin"])
    drain = default_after(text, "--drain-timeout-ms")
    drain_ms = int(drain) if drain and drain.isdigit() else CONTRACT_DEFAULTS["drain_ms"]
    return Facts(env, listen, admin, drain_ms, f"{binary} --help")


def facts_from_source(src):
    files = sorted(Path(src).glob("**/*.rs"))
    text = "\n".join(f.read_text(errors="replace") for f in files)
    env = set(re.findall(r'"((?:SNOWLEASE_[A-Z0-9_]+|WORKER_ID|POD_NAME))"', text))
    if not env:
        return None
    def const(name, fallback):
        match = re.search(r"\b" + name + r": u\d+ = ([\d_]+);", text)
        return int(match.group(1).replace("_", "")) if match else fallback

    return Facts(env, const("DEFAULT_PORT", CONTRACT_DEFAULTS["listen"]),
                 const("DEFAULT_ADMIN_PORT", CONTRACT_DEFAULTS["admin"]),
                 const("DEFAULT_DRAIN_TIMEOUT_MS", CONTRACT_DEFAULTS["drain_ms"]),
                 f"string literals and DEFAULT_* constants in {src}")


class Checker:
    def __init__(self, docs, facts, label):
        self.docs, self.facts, self.label, self.failures = docs, facts, label, []

    def fail(self, what):
        self.failures.append(f"{self.label}: {what}")

    def of_kind(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]

    def run(self):
        sets = self.of_kind("StatefulSet")
        if len(sets) != 1:
            self.fail(f"expected exactly one StatefulSet, found {len(sets)}")
            return
        sts = sets[0]
        pod = sts["spec"]["template"]["spec"]
        containers = pod.get("containers", [])
        server = next((c for c in containers if c.get("name") == "server"), None)
        if server is None:
            self.fail("StatefulSet has no container named server")
            return
        env = {e["name"]: e for e in server.get("env", [])}
        self.check_env(env)
        ports = self.check_ports(server, env)
        self.check_replicas(sts)
        self.check_probes(server, ports)
        self.check_termination(pod, server, env)
        self.check_security(pod, server)
        self.check_resources(server, env)
        self.check_services(sts, ports)
        self.check_network_policies()
        self.check_selectors(sts)

    def check_env(self, env):
        for name in sorted(set(env) - self.facts.env):
            self.fail(f"env {name} is not read by the server (source: {self.facts.source})")
        pod_name = env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {})
        if pod_name.get("fieldPath") != "metadata.name":
            self.fail("POD_NAME must come from the downward API (fieldRef metadata.name)")
        if "WORKER_ID" in env:
            self.fail("WORKER_ID is set: in a StatefulSet the worker id must come from POD_NAME")

    def check_ports(self, server, env):
        want = {
            "lease": port_of(env.get("SNOWLEASE_LISTEN", {}).get("value"), self.facts.listen),
            "admin": port_of(env.get("SNOWLEASE_ADMIN_LISTEN", {}).get("value"), self.facts.admin),
        }
        have = {p.get("name"): p.get("containerPort") for p in server.get("ports", [])}
        for name, port in want.items():
            if have.get(name) != port:
                self.fail(f"container port {name} is {have.get(name)}, the server listens on {port}")
        return want

    def check_replicas(self, sts):
        replicas = sts["spec"].get("replicas", 1)
        start = sts["spec"].get("ordinals", {}).get("start", 0)
        if not 1 <= replicas <= MAX_WORKERS:
            self.fail(f"replicas {replicas} outside 1..{MAX_WORKERS}")
        if start < 0 or start + replicas > MAX_WORKERS:
            self.fail(f"ordinals {start}..{start + replicas - 1} exceed worker ids 0..{MAX_WORKERS - 1}")
        if sts["spec"].get("podManagementPolicy") != "Parallel":
            self.fail("podManagementPolicy must be Parallel")
        claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
        retention = sts["spec"].get("persistentVolumeClaimRetentionPolicy", {})
        if retention.get("whenScaled", "Retain") != "Retain":
            self.fail("a scaled-away worker must keep its state volume (whenScaled: Retain)")
        if not claims:
            self.fail("no volumeClaimTemplates: the state dir would not survive a restart")

    def check_probes(self, server, ports):
        for kind, path in ADMIN_PATHS.items():
            probe = server.get(f"{kind}Probe", {}).get("httpGet")
            if not probe:
                self.fail(f"{kind} probe missing or not httpGet")
                continue
            if probe.get("path") != path:
                self.fail(f"{kind} probe path {probe.get('path')} is not {path}")
            if probe.get("port") not in ("admin", ports["admin"]):
                self.fail(f"{kind} probe port {probe.get('port')} is not the admin port")

    def check_termination(self, pod, server, env):
        drain_ms = int(env.get("SNOWLEASE_DRAIN_TIMEOUT_MS", {}).get("value", self.facts.drain_ms))
        pre_stop = server.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace * 1000 <= drain_ms + pre_stop * 1000:
            self.fail(f"terminationGracePeriodSeconds {grace} s does not exceed drain {drain_ms} ms "
                      f"+ preStop {pre_stop} s")
        if env.get("SNOWLEASE_LOG_FORMAT", {}).get("value") != "json":
            self.fail("SNOWLEASE_LOG_FORMAT should be json in a cluster")

    def check_security(self, pod, server):
        psc, csc = pod.get("securityContext", {}), server.get("securityContext", {})
        if pod.get("automountServiceAccountToken") is not False:
            self.fail("pod must not mount a service account token")
        if psc.get("runAsUser") != 65532 or not psc.get("runAsNonRoot"):
            self.fail("pod must run as non-root uid 65532")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            self.fail("seccompProfile must be RuntimeDefault")
        if csc.get("allowPrivilegeEscalation") is not False:
            self.fail("allowPrivilegeEscalation must be false")
        if csc.get("readOnlyRootFilesystem") is not True:
            self.fail("root filesystem must be read-only")
        if csc.get("capabilities", {}).get("drop") != ["ALL"]:
            self.fail("capabilities must drop ALL")
        for account in self.of_kind("ServiceAccount"):
            if account.get("automountServiceAccountToken") is not False:
                self.fail(f"ServiceAccount {account['metadata']['name']} automounts its token")

    def check_resources(self, server, env):
        res = server.get("resources", {})
        if res.get("requests") != res.get("limits"):
            self.fail("requests must equal limits (Guaranteed QoS)")
        cpu = str(res.get("limits", {}).get("cpu", ""))
        if not cpu.isdigit() or int(cpu) < 1:
            self.fail(f"cpu limit {cpu!r} is not a whole number of CPUs")
        if "SNOWLEASE_THREADS" in env:
            self.fail("SNOWLEASE_THREADS is set: the server should follow the cgroup CPU quota")

    def check_services(self, sts, ports):
        services = self.of_kind("Service")
        named = {s["metadata"]["name"]: s for s in services}
        headless = named.get(sts["spec"].get("serviceName"))
        if headless is None:
            self.fail(f"serviceName {sts['spec'].get('serviceName')} names no Service")
        elif headless["spec"].get("clusterIP") != "None" or headless["spec"].get("publishNotReadyAddresses"):
            self.fail("the governing Service must be headless with publishNotReadyAddresses false")
        by_name = {v: k for k, v in ports.items()}
        for svc in services:
            spec, name = svc["spec"], svc["metadata"]["name"]
            kind = spec.get("type", "ClusterIP")
            if kind not in SERVICE_TYPES:
                self.fail(f"Service {name} has invalid type {kind!r}")
            for port in spec.get("ports", []):
                target = port.get("targetPort", port.get("port"))
                if target not in ports and target not in by_name:
                    self.fail(f"Service {name} targets {target!r}, not a server port")
                node_port = port.get("nodePort")
                if node_port is not None and kind not in ("NodePort", "LoadBalancer"):
                    self.fail(f"Service {name} sets nodePort but is {kind}")
                if node_port is not None and not 30000 <= node_port <= 32767:
                    self.fail(f"Service {name} nodePort {node_port} outside 30000-32767")

    def check_network_policies(self):
        allowed = {self.facts.listen, self.facts.admin, "lease", "admin"}
        for policy in self.of_kind("NetworkPolicy"):
            for rule in policy["spec"].get("ingress", []):
                for port in rule.get("ports", []):
                    if port.get("port") not in allowed:
                        self.fail(f"NetworkPolicy {policy['metadata']['name']} opens {port.get('port')}")

    def check_selectors(self, sts):
        labels = sts["spec"]["template"]["metadata"].get("labels", {})
        selectors = [("StatefulSet", sts["spec"]["selector"]["matchLabels"])]
        selectors += [(f"Service {s['metadata']['name']}", s["spec"].get("selector", {}))
                      for s in self.of_kind("Service")]
        selectors += [(f"PDB {p['metadata']['name']}", p["spec"]["selector"].get("matchLabels", {}))
                      for p in self.of_kind("PodDisruptionBudget")]
        for what, selector in selectors:
            if not selector or any(labels.get(k) != v for k, v in selector.items()):
                self.fail(f"{what} selector {selector} does not select the pods")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rendered")
    parser.add_argument("--server-bin")
    parser.add_argument("--src", default=str(Path(__file__).resolve().parent.parent / "server" / "src"))
    parser.add_argument("--label", default="manifests")
    args = parser.parse_args()
    facts = facts_from_help(args.server_bin) if args.server_bin else facts_from_source(args.src)
    if facts is None:
        facts = Facts(CONTRACT_ENV, CONTRACT_DEFAULTS["listen"], CONTRACT_DEFAULTS["admin"],
                      CONTRACT_DEFAULTS["drain_ms"], "the documented contract (no binary, no sources)")
    stream = sys.stdin if args.rendered == "-" else open(args.rendered, encoding="utf-8")
    docs = [d for d in yaml.safe_load_all(stream) if d]
    checker = Checker(docs, facts, args.label)
    checker.run()
    for line in checker.failures:
        print(f"FAIL {line}")
    if checker.failures:
        return 1
    print(f"ok {args.label}: project checks passed (server facts from {facts.source}; "
          f"lease {facts.listen}, admin {facts.admin}, drain {facts.drain_ms} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
