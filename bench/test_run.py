#!/usr/bin/env python3
"""Smoke test of bench/run.py's report writer and --compare on a tiny canned results
file (bench/testdata/tiny_results.json): no benchmark runs and nothing is timed.
CTest runs it as bench.report (bench/CMakeLists.txt)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
CANNED = HERE / "testdata" / "tiny_results.json"


def run_py(*args, env=None):
    return subprocess.run([sys.executable, str(HERE / "run.py"), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=60)


class ReportTest(unittest.TestCase):
    def setUp(self):
        self.out = Path(tempfile.mkdtemp(prefix="mproc_bench_report_"))

    def tearDown(self):
        shutil.rmtree(self.out)

    def report(self, env=None):
        r = run_py("--report-only", CANNED, "--out", self.out, env=env)
        # The canned workloads suite carries an error: the driver must say so through its exit code.
        self.assertEqual(r.returncode, 1, r.stderr)
        return (self.out / "BENCHMARKS.md").read_text(), r

    def test_tables_ratios_and_machine(self):
        md, _ = self.report()
        self.assertIn("| CPU | Canned CPU 9000 |", md)
        self.assertIn("0.5, 0.4, 0.3 at start; 1.5, 0.6, 0.35 at end", md)
        self.assertIn("| queue ping-pong median | **20.00** µs | 10.00 (2.0× worse) | 60.00 (3.0× better) |", md)
        self.assertIn("| Pool.map, 0 µs | **200.0k** tasks/s | 400.0k (2.0× worse) | 100.0k (2.0× better) |", md)
        self.assertIn("| Queue, 1 MiB | **800** µs | n/a |", md)
        self.assertIn("**Failed:** workloads_bench failed: canned failure", md)
        self.assertEqual(json.loads((self.out / "bench" / "results.json").read_text())["machine"]["cpu"],
                         "Canned CPU 9000")

    @unittest.skipUnless(shutil.which("gnuplot"), "gnuplot is not installed")
    def test_plots(self):
        md, _ = self.report()
        svgs = sorted(p.name for p in (self.out / "bench").glob("*.svg"))
        self.assertEqual(svgs, ["ipc_queue_round_trip_against_message_size.svg",
                                "pool_throughput_against_task_size.svg",
                                "workloads_speedup_over_serial_in_the_same_language.svg"])
        for name in svgs:
            self.assertIn(f"](bench/{name})", md)
            self.assertIn("<svg", (self.out / "bench" / name).read_text())

    def test_without_gnuplot_the_tables_remain(self):
        md, r = self.report(env=dict(os.environ, PATH=str(self.out)))  # no gnuplot on this PATH
        self.assertIn("gnuplot not found", r.stderr)
        self.assertIn("*No plots: gnuplot was not installed", md)
        self.assertIn("| Pool.map, 1000 µs | **1800** tasks/s |", md)
        self.assertEqual(list((self.out / "bench").glob("*.svg")), [])

    def test_compare(self):
        new = json.loads(CANNED.read_text())
        new["suites"]["ipc"]["rows"][0]["value"] = 40  # latency doubled: worse
        new["suites"]["pool"]["rows"][0]["value"] = 300000  # throughput +50%: better
        changed = self.out / "new.json"
        changed.write_text(json.dumps(new))
        r = run_py("--report-only", changed, "--out", self.out, "--compare", CANNED)
        self.assertIn("ipc | queue ping-pong median: 20.00 -> 40.00 µs (+100% worse)", r.stdout)
        self.assertIn("pool | Pool.map, 0 µs: 200.0k -> 300.0k tasks/s (+50% better)", r.stdout)
        self.assertIn("ipc | Queue, 8 B: 20.00 -> 20.00 µs (+0%)", r.stdout)


if __name__ == "__main__":
    unittest.main()
