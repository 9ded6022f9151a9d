"""compare.py's table on saved inputs: the report must print exactly the expected table and
summary for bench/tests/compare/results.jsonl (every row kind, a baseline, a failed run).

    python3 -m unittest discover -s bench/tests -p 'test_*.py'

After a deliberate change to the table, regenerate the expected files with the command in
`regenerate()` and read the diff.
"""
import contextlib
import io
import json
import os
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "compare")
sys.dont_write_bytecode = True  # no __pycache__ in the tree
sys.path.insert(0, os.path.dirname(HERE))

import compare  # noqa: E402  (bench/compare.py)

PIN = "servers pinned to CPU 0, load generators to CPU 1"


def run_report(out_dir):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        compare.report(os.path.join(DATA, "results.jsonl"), 3, 10, PIN, "-19", out_dir)
    return buf.getvalue()


def regenerate():
    with tempfile.TemporaryDirectory() as out:
        stdout = run_report(out)
        open(os.path.join(DATA, "expected_stdout.txt"), "w").write(stdout)
        for name, dest in (("table.md", "expected_table.md"),
                           ("summary.json", "expected_summary.json")):
            with open(os.path.join(out, name)) as src:
                open(os.path.join(DATA, dest), "w").write(src.read())


class ReportOnSavedInputs(unittest.TestCase):
    def test_the_table_and_summary_match_the_saved_output(self):
        with tempfile.TemporaryDirectory() as out:
            stdout = run_report(out)
            table = open(os.path.join(out, "table.md")).read()
            summary = json.load(open(os.path.join(out, "summary.json")))
        self.assertEqual(stdout, open(os.path.join(DATA, "expected_stdout.txt")).read())
        self.assertEqual(table, open(os.path.join(DATA, "expected_table.md")).read())
        self.assertEqual(summary, json.load(open(os.path.join(DATA, "expected_summary.json"))))


if __name__ == "__main__":
    if sys.argv[1:] == ["--regenerate"]:
        regenerate()
    else:
        unittest.main()
