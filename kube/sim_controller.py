#!/usr/bin/env python3
"""The control plane of kube/simulate.sh: kubelet probes, endpoints controller, kube-proxy, DNS.

Runs inside the simulated node's network namespace. Every period it reads the pods that exist
and are not terminating (CTL/pods, lines "ordinal ip", replaced atomically by simulate.sh),
probes each one's GET /readyz on the admin port, and from the ready ones derives the endpoints.
When they change it
  * rewrites the node's nat table with iptables-restore the way kube-proxy's iptables mode does
    (KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* with `-m statistic --mode random`, a NodePort
    through KUBE-NODEPORTS/KUBE-EXT-*, KUBE-MARK-MASQ + MASQUERADE), and REJECTs the Service
    in the filter table while it has no endpoints;
  * rewrites the headless Service's "DNS" (the client namespace's /etc/hosts) in place, one line
    per ready pod, as CoreDNS answers for a headless Service with publishNotReadyAddresses false;
  * writes CTL/endpoints ("ordinal ip" lines) for simulate.sh to wait on, and logs the change.
  * appends "unix_ms endpoints ORDINAL..." to CTL/events, so simulate.sh can tell when a pod
    was back in the headless name's records.
Every --period (or CTL/period, seconds, while that file exists) it probes the pods that are not
ready; a ready pod is probed again only after CTL/ready_period seconds (default: the period).
simulate.sh probes fast while it sets up and injects faults, and ready pods at the manifest's
readiness periodSeconds (2) while it measures; with hundreds of pods it stretches that so the
probes stay near 64 a second, because here every kubelet's probes share the two cores being
measured (a real cluster spreads them over its nodes). It stops when CTL/stop exists or after
--deadline-s, whichever comes first.
"""

import argparse
import http.client
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

FAILURE_THRESHOLD = 2  # consecutive failed probes before a ready pod leaves the endpoints


def probe(ip, port, timeout):
    try:
        conn = http.client.HTTPConnection(ip, port, timeout=timeout)
        conn.request("GET", "/readyz")
        status = conn.getresponse().status
        conn.close()
        return status == 200
    except (OSError, http.client.HTTPException):
        return False


def read_pods(path):
    pods = {}
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    pods[int(parts[0])] = parts[1]
    except FileNotFoundError:
        pass
    return pods


def read_period(path, default):
    """The probe period simulate.sh asks for (CTL/period, seconds), else the default."""
    try:
        with open(path, encoding="ascii") as f:
            return min(60.0, max(0.05, float(f.read().strip())))
    except (OSError, ValueError):
        return default


def nat_rules(args, endpoints):
    """The nat table kube-proxy (iptables mode) would write for these endpoints."""
    svc, ext = "KUBE-SVC-SNOWLEASE", "KUBE-EXT-SNOWLEASE"
    seps = [f"KUBE-SEP-SNOWLEASE{ordinal}" for ordinal, _ in endpoints]
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]",
             ":KUBE-POSTROUTING - [0:0]", ":KUBE-MARK-MASQ - [0:0]", f":{svc} - [0:0]", f":{ext} - [0:0]"]
    lines += [f":{sep} - [0:0]" for sep in seps]
    lines += [
        "-A PREROUTING -j KUBE-SERVICES",
        "-A OUTPUT -j KUBE-SERVICES",
        "-A POSTROUTING -j KUBE-POSTROUTING",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        "-A KUBE-POSTROUTING -j MASQUERADE",
    ]
    if endpoints:
        lines += [
            f"-A KUBE-SERVICES -d {args.svc_ip}/32 -p tcp --dport {args.port} -j {svc}",
            "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
            f"-A KUBE-NODEPORTS -p tcp --dport {args.node_port} -j {ext}",
            f"-A {ext} -j KUBE-MARK-MASQ",
            f"-A {ext} -j {svc}",
        ]
    # Endpoint i of n is taken with probability 1/(n-i) among those left: uniform overall.
    for i, ((_, ip), sep) in enumerate(zip(endpoints, seps)):
        left = len(endpoints) - i
        if left > 1:
            lines.append(f"-A {svc} -m statistic --mode random --probability {1 / left:.11f} -j {sep}")
        else:
            lines.append(f"-A {svc} -j {sep}")
        lines.append(f"-A {sep} -s {ip}/32 -j KUBE-MARK-MASQ")
        lines.append(f"-A {sep} -p tcp -m tcp -j DNAT --to-destination {ip}:{args.port}")
    lines.append("COMMIT")
    # No endpoints: kube-proxy rejects instead of letting the SYN go unanswered.
    lines += ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    if not endpoints:
        for dst, port in ((args.svc_ip, args.port), (args.node_ip, args.node_port)):
            lines += [f"-A FORWARD -d {dst}/32 -p tcp --dport {port} -j REJECT --reject-with tcp-reset",
                      f"-A INPUT -d {dst}/32 -p tcp --dport {port} -j REJECT --reject-with tcp-reset"]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def apply(args, endpoints):
    rules = nat_rules(args, endpoints)
    subprocess.run(["iptables-restore", "-w", "5"], input=rules, text=True, check=True, timeout=30)
    with open(args.hosts_file, "w", encoding="ascii") as f:  # in place: the file is bind-mounted
        f.write("127.0.0.1 localhost\n")
        for _, ip in endpoints:
            f.write(f"{ip} {args.headless_name}\n")
    tmp = os.path.join(args.ctl, "endpoints.tmp")
    with open(tmp, "w", encoding="ascii") as f:
        f.writelines(f"{ordinal} {ip}\n" for ordinal, ip in endpoints)
    os.replace(tmp, os.path.join(args.ctl, "endpoints"))
    with open(os.path.join(args.ctl, "events"), "a", encoding="ascii") as f:
        f.write(f"{int(time.time() * 1000)} endpoints {' '.join(str(o) for o, _ in endpoints)}\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctl", required=True)
    parser.add_argument("--svc-ip", required=True)
    parser.add_argument("--node-ip", required=True)
    parser.add_argument("--port", type=int, default=7609)
    parser.add_argument("--admin-port", type=int, default=7610)
    parser.add_argument("--node-port", type=int, default=30609)
    parser.add_argument("--hosts-file", required=True)
    parser.add_argument("--headless-name", required=True)
    parser.add_argument("--period", type=float, default=0.25)
    parser.add_argument("--deadline-s", type=float, default=900)
    args = parser.parse_args()

    deadline = time.monotonic() + args.deadline_s
    ready, failures, last_probe = set(), {}, {}
    apply(args, [])
    current = []
    with ThreadPoolExecutor(max_workers=64) as pool:
        while time.monotonic() < deadline and not os.path.exists(os.path.join(args.ctl, "stop")):
            started = time.monotonic()
            period = read_period(os.path.join(args.ctl, "period"), args.period)
            ready_period = read_period(os.path.join(args.ctl, "ready_period"), period)
            pods = read_pods(os.path.join(args.ctl, "pods"))
            due = {o: ip for o, ip in pods.items()
                   if o not in ready or started - last_probe.get(o, 0.0) >= ready_period}
            last_probe.update((o, started) for o in due)
            results = dict(zip(due, pool.map(
                lambda ip: probe(ip, args.admin_port, min(0.5, period * 2)), due.values())))
            for ordinal, ok in results.items():
                if ok:
                    ready.add(ordinal)
                    failures[ordinal] = 0
                else:
                    failures[ordinal] = failures.get(ordinal, 0) + 1
                    if failures[ordinal] >= FAILURE_THRESHOLD:
                        ready.discard(ordinal)
            ready &= set(pods)  # a terminating or deleted pod leaves at once
            endpoints = sorted((o, pods[o]) for o in ready)
            if endpoints != current:
                apply(args, endpoints)
                print(f"{time.strftime('%T')} endpoints: {[o for o, _ in endpoints]}", flush=True)
                current = endpoints
            time.sleep(max(0.0, period - (time.monotonic() - started)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
