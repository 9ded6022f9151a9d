#!/usr/bin/env python3
"""Helpers of kube/monitoring-test.sh for the monitoring component (kube/components/monitoring).

  monitoring_check.py rules OUTDIR
      Writes OUTDIR/snowlease-rules-full.yml (the PrometheusRule's spec: what Prometheus loads)
      and OUTDIR/snowlease-rules.yml (the same without annotations, for promtool's unit tests,
      which compare annotations verbatim), and copies rules-test.yaml beside them.
  monitoring_check.py wait URL QUERY SECONDS
      Polls Prometheus until QUERY returns at least one sample (bounded); exit 1 on timeout.
  monitoring_check.py query URL
      Runs every dashboard expression and every alert expression through /api/v1/query. Each
      must parse and evaluate; each dashboard expression must return data. Prints one line per
      expression; exit 1 on any failure. Also checks /api/v1/rules: every rule loaded, healthy.
  monitoring_check.py mutants OUTDIR
      Proves the unit tests bite: for each alert, a copy of the rules where it can never fire
      and one where it always fires must each make `promtool test rules` fail on that alert.
"""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

COMPONENT = Path(__file__).resolve().parent / "components" / "monitoring"
RULES = COMPONENT / "prometheusrule.yaml"
DASHBOARD = COMPONENT / "snowlease-dashboard.json"
TESTS = COMPONENT / "rules-test.yaml"


def rule_spec():
    return yaml.safe_load(RULES.read_text())["spec"]


def alerts(spec):
    return [r for g in spec["groups"] for r in g["rules"] if "alert" in r]


def dashboard_exprs():
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["refId"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def write_rules(outdir, spec, strip=True):
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "snowlease-rules-full.yml").write_text(yaml.safe_dump(rule_spec(), sort_keys=False))
    for rule in (r for g in spec["groups"] for r in g["rules"]):
        if strip:
            rule.pop("annotations", None)
    (outdir / "snowlease-rules.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (outdir / "rules-test.yaml").write_text(TESTS.read_text())


def api(url, path, **params):
    full = f"{url}{path}?{urllib.parse.urlencode(params)}" if params else f"{url}{path}"
    try:
        with urllib.request.urlopen(full, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as err:  # 400 for a parse error, with a JSON body
        return json.load(err)


def cmd_wait(url, query, seconds):
    deadline = time.monotonic() + float(seconds)
    last = None
    while time.monotonic() < deadline:
        try:
            last = api(url, "/api/v1/query", query=query)
            if last.get("status") == "success" and last["data"]["result"]:
                return 0
        except (OSError, ValueError) as err:
            last = str(err)
        time.sleep(0.25)
    print(f"no data for {query} within {seconds} s (last answer: {last})", file=sys.stderr)
    return 1


def cmd_query(url):
    failures = 0
    # Canaries: the two checks below must be able to fail at all.
    broken = api(url, "/api/v1/query", query="sum(snowlease_ids_issued_total")
    empty = api(url, "/api/v1/query", query='snowlease_no_such_metric{job="snowlease"}')
    if broken.get("status") != "error" or empty.get("status") != "success" or empty["data"]["result"]:
        print(f"  FAIL canaries: a parse error answered {broken.get('status')}, a missing metric {empty}")
        failures += 1
    else:
        print("canaries: a parse error is reported as an error, a missing metric as no data")
    print("dashboard expressions (each must parse and return data):")
    for title, ref, expr in dashboard_exprs():
        answer = api(url, "/api/v1/query", query=expr)
        if answer.get("status") != "success":
            print(f"  FAIL {title} [{ref}]: {answer.get('errorType')}: {answer.get('error')}\n       {expr}")
            failures += 1
        elif not answer["data"]["result"]:
            print(f"  FAIL {title} [{ref}]: no data\n       {expr}")
            failures += 1
        else:
            result = answer["data"]["result"]
            if answer["data"]["resultType"] == "vector":
                count, sample = len(result), result[0]["value"][1]
            else:  # scalar: [time, value]
                count, sample = 1, result[1]
            print(f"  ok   {title} [{ref}]: {count} series, e.g. {sample}")
    print("alert expressions (each must parse; on a healthy server they usually return nothing):")
    for rule in alerts(rule_spec()):
        answer = api(url, "/api/v1/query", query=rule["expr"])
        if answer.get("status") != "success":
            print(f"  FAIL {rule['alert']}: {answer.get('errorType')}: {answer.get('error')}")
            failures += 1
        else:
            n = len(answer["data"]["result"])
            print(f"  ok   {rule['alert']}: {n} series" + (" (condition true right now)" if n else ""))
    loaded = api(url, "/api/v1/rules")
    rules = [r for g in loaded["data"]["groups"] for r in g["rules"]]
    bad = [r for r in rules if r.get("health") != "ok"]
    want = len(alerts(rule_spec()))
    if len(rules) != want or bad:
        for r in bad:
            print(f"  FAIL rule {r['name']} health {r.get('health')}: {r.get('lastError')}")
        print(f"  FAIL Prometheus loaded {len(rules)} rules, expected {want}")
        failures += 1
    else:
        print(f"  ok   Prometheus loaded all {want} alerting rules and evaluates them without error")
    return 1 if failures else 0


def promtool_test(outdir):
    run = subprocess.run(["promtool", "test", "rules", "rules-test.yaml"], cwd=outdir,
                         capture_output=True, text=True, timeout=120)
    return run.returncode, run.stdout + run.stderr


def cmd_mutants(outdir):
    failures = 0
    names = [r["alert"] for r in alerts(rule_spec())]
    for name in names:
        for what, expr in (("never fires", "vector(1) == 0"), ("always fires", "vector(1)")):
            spec = rule_spec()
            for rule in alerts(spec):
                if rule["alert"] == name:
                    rule["expr"] = expr
            write_rules(outdir, spec)
            rc, out = promtool_test(outdir)
            if rc != 0 and f"alertname: {name}," in out:
                print(f"  ok   {name} that {what} fails its unit tests")
            else:
                print(f"  FAIL {name} that {what} still passes the unit tests (rc {rc})")
                failures += 1
    write_rules(outdir, rule_spec())
    return 1 if failures else 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "rules" and len(args) == 1:
        write_rules(args[0], rule_spec())
        return 0
    if cmd == "wait" and len(args) == 3:
        return cmd_wait(*args)
    if cmd == "query" and len(args) == 1:
        return cmd_query(args[0])
    if cmd == "mutants" and len(args) == 1:
        return cmd_mutants(args[0])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
