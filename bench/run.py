#!/usr/bin/env python3
"""Runs every benchmark and writes the report: docs/BENCHMARKS.md, plots in docs/bench/*.svg
and every number, with the machine, in docs/bench/results.json.

    python3 bench/run.py [--quick] [--no-python] [--out DIR] [--compare OLD.json]
    python3 bench/run.py --report-only RESULTS.json [--out DIR]   # rewrite the report only
    make bench                                                     # the same, full run

Steps: configure build/release if it is not there (as the top-level Makefile does) and
build the benchmark programs; run each from the source root with --json (each runs its
Python twin beside it, so mproc, C++ threads and Python's multiprocessing are measured
in the same run); collect their JSON; draw the sweeps with gnuplot (if gnuplot is
missing, the report says so and still has every table); write the Markdown report.

Why Python and not a shell script: the driver reads and writes JSON, computes ratios
and changes between runs and lays out Markdown tables, which a shell script would need
jq and awk for; python3 is already required by the benchmarks' Python twins. Standard
library only (3.11).
"""
import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = 1

# (suite key, program, what it measures); each program is bench/<key>/<key>_bench.cpp.
SUITES = [
    ("ipc", "ipc_bench", "Queue, Pipe, Lock and SharedArray between processes"),
    ("pool", "pool_bench", "Pool, executors and the C++ thread pool"),
    ("workloads", "workloads_bench", "the articles' workloads: serial, threads, processes"),
    ("manager", "manager_bench", "Manager proxies beside Python's multiprocessing.Manager"),
]


# ---- running ------------------------------------------------------------------------------


def sh(cmd, **kw):
    """Runs a command from the source root, echoing it; raises on failure."""
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True, **kw)


def build(build_dir, programs):
    """Configures `build_dir` like the top-level Makefile (Ninja, ccache when there,
    Release) if it has no CMake cache yet, then builds only `programs`."""
    if not (build_dir / "CMakeCache.txt").exists():
        launcher = shutil.which("ccache") or ""
        sh(["cmake", "-S", ".", "-G", "Ninja", f"-DCMAKE_CXX_COMPILER_LAUNCHER={launcher}",
            "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release"])
    sh(["cmake", "--build", build_dir, "--target", *programs])


def run_suite(build_dir, key, program, args):
    """Runs one benchmark program; its JSON (rows, suite, machine) plus seconds taken,
    or an "error" entry when it failed (the other suites still run)."""
    raw = ROOT / "bench" / "results" / f"{key}.json"  # gitignored
    raw.unlink(missing_ok=True)
    cmd = [build_dir / "bench" / program, "--json", raw]
    if args.quick:
        cmd.append("--quick")
    if args.no_python:
        cmd.append("--no-python")
    t0 = time.monotonic()
    try:
        sh(cmd)
        out = json.loads(raw.read_text())
    except (subprocess.CalledProcessError, OSError, ValueError) as e:
        out = {"rows": [], "error": f"{program} failed: {e}"}
        print(f"run.py: {out['error']}", file=sys.stderr)
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def first_line(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def cmake_cache(build_dir, name):
    try:
        for line in (build_dir / "CMakeCache.txt").read_text().splitlines():
            if line.startswith(name + ":"):
                return line.split("=", 1)[1]
    except OSError:
        pass
    return ""


def machine_info(build_dir):
    """What the numbers depend on: hardware, load, kernel, toolchain, commit."""
    info = {"hostname": platform.node()}
    try:
        cpu = [l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")]
        info["cpu"] = cpu[0].split(":", 1)[1].strip() if cpu else platform.processor()
    except OSError:
        info["cpu"] = platform.processor() or "unknown"
    info["cpus_online"] = os.cpu_count()
    info["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        kib = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
        info["memory_gib"] = round(kib / 2**20, 1)
    except (OSError, StopIteration):
        info["memory_gib"] = None
    info["kernel"] = f"{platform.system()} {platform.release()} {platform.machine()}"
    try:
        rel = dict(l.split("=", 1) for l in Path("/etc/os-release").read_text().splitlines() if "=" in l)
        info["os"] = rel.get("PRETTY_NAME", "").strip('"')
    except OSError:
        info["os"] = ""
    info["load_at_start"] = [round(x, 2) for x in os.getloadavg()]
    cxx = cmake_cache(build_dir, "CMAKE_CXX_COMPILER") or "c++"
    info["compiler"] = first_line([cxx, "--version"])
    info["build_type"] = cmake_cache(build_dir, "CMAKE_BUILD_TYPE")
    info["python"] = sys.version.split()[0]
    info["gnuplot"] = first_line(["gnuplot", "--version"]) if shutil.which("gnuplot") else None
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    info["commit"] = commit + (" (with uncommitted changes)" if dirty else "")
    return info


# ---- numbers ------------------------------------------------------------------------------


def fmt(v):
    """A number as the C++ programs print it (bench/common/report.hpp: fmt)."""
    if v is None or v < 0 or not math.isfinite(v):
        return "n/a"
    if v >= 1e9:
        return f"{v / 1e9:.2f}G"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.1f}k"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}"


def ratio(row, other):
    """How much better the row's value is than `other` (>1: better), or None."""
    v = row["value"]
    if other is None or other <= 0 or v <= 0:
        return None
    return other / v if row["better"] == "lower" else v / other


def ratio_text(r):
    if r is None:
        return ""
    return f"{r:.1f}× better" if r >= 1 else f"{1 / r:.1f}× worse"


def sections(rows):
    """Rows grouped by section, in order of first appearance."""
    out = {}
    for row in rows:
        out.setdefault(row["section"], []).append(row)
    return out


# ---- plots --------------------------------------------------------------------------------


def slug(text):
    short = text.split("(")[0].split(":")[0].split(",")[0]
    s = "".join(c.lower() if c.isalnum() else "_" for c in short.strip())
    return "_".join(p for p in s.split("_") if p)


def x_label(x, unit):
    if unit == "B":
        for div, name in ((2**20, "MiB"), (2**10, "KiB")):
            if x >= div:
                return f"{x / div:g} {name}"
    if unit == "µs" and x >= 1000:
        return f"{x / 1000:g} ms"
    return f"{x:g} {unit}"


def gp_quote(s):
    return "'" + s.replace("'", "''") + "'"


def sweep_plot(title, rows):
    """A gnuplot script (without terminal/output) drawing a sweep section: x positions are
    the sweep's points in order (sizes and durations grow by a constant factor, so this is
    a log axis; 0 gets its own place at the left), one line for each mproc series and one
    for each comparison."""
    xs = sorted({r["x"] for r in rows})
    lines = []  # (title, {x: value})
    for r in rows:
        name = "mproc " + r["series"]
        for who, v in [(name, r["value"])] + list(r["compare"].items()):
            entry = next((l for l in lines if l[0] == who), None)
            if entry is None:
                entry = (who, {})
                lines.append(entry)
            entry[1][r["x"]] = v
    data = []
    for i, x in enumerate(xs):
        cells = [str(i), '"' + x_label(x, rows[0]["x_unit"]) + '"']
        for _, vals in lines:
            v = vals.get(x)
            cells.append(f"{v:.6g}" if v is not None and v > 0 and math.isfinite(v) else "?")
        data.append(" ".join(cells))
    values = [v for _, vals in lines for v in vals.values() if v is not None and v > 0 and math.isfinite(v)]
    log_y = bool(values) and max(values) / min(values) > 30
    unit = rows[0]["unit"]
    xlabel = "message size" if rows[0]["x_unit"] == "B" else "busy work per task"
    script = [
        "$data << EOD", *data, "EOD",
        f"set title {gp_quote(title)}",
        f"set xlabel {gp_quote(xlabel)}",
        f"set ylabel {gp_quote(unit or title.split(' against')[0])}",
        "set format y '%g'",
        "set datafile missing '?'",
        "set grid",
        "set key below",
        f"set xrange [-0.3:{len(xs) - 0.7}]",
        "set logscale y" if log_y else "set yrange [0:*]",
    ]
    plots = []
    for k, (who, _) in enumerate(lines):
        xtic = ":xtic(2)" if k == 0 else ""
        style = "lw 2 pt 7" if who.startswith("mproc") else "lw 1.5 pt 6 dt 2"
        plots.append(f"$data using 1:{k + 3}{xtic} with linespoints {style} title {gp_quote(who)}")
    script.append("plot " + ", \\\n     ".join(plots))
    return script


def bar_plot(title, rows):
    """A clustered bar chart of a section without a sweep (the workloads' speedups): one
    group per row, one bar for the row's value and one for each comparison."""
    keys = []
    for r in rows:
        keys += [k for k in r["compare"] if k not in keys]
    first = rows[0]["name"].split(": ", 1)[1] if ": " in rows[0]["name"] else "mproc"
    data = []
    for r in rows:
        label = r["name"].split(":")[0].split(" (")[0]
        cells = [f'"{label}"', f"{r['value']:.6g}"]
        for k in keys:
            v = r["compare"].get(k)
            cells.append(f"{v:.6g}" if v is not None and v > 0 and math.isfinite(v) else "?")
        data.append(" ".join(cells))
    titles = [first] + keys
    script = [
        "$data << EOD", *data, "EOD",
        f"set title {gp_quote(title)}",
        f"set ylabel {gp_quote(rows[0]['unit'] or 'ratio')}",
        "set format y '%g'",
        "set datafile missing '?'",
        "set style data histograms",
        "set style histogram clustered gap 1",
        "set style fill solid 0.8 border -1",
        "set grid ytics",
        "set yrange [0:*]",
        "set key below",
    ]
    plots = [f"$data using {k + 2}{':xtic(1)' if k == 0 else ''} title {gp_quote(t)}" for k, t in enumerate(titles)]
    script.append("plot " + ", \\\n     ".join(plots))
    return script


def make_plots(results, plot_dir):
    """Draws one SVG per sweep section and one bar chart for the workloads' speedups.
    Returns {(suite, section): file name}; empty, with a message, without gnuplot."""
    if not shutil.which("gnuplot"):
        print("run.py: gnuplot not found (Debian: apt-get install gnuplot-nox; scripts/deps.sh "
              "installs it): the report has the tables but no plots", file=sys.stderr)
        return {}
    plot_dir.mkdir(parents=True, exist_ok=True)
    made = {}
    for key, suite in results["suites"].items():
        for title, rows in sections(suite.get("rows", [])).items():
            if all("series" in r for r in rows):
                script = sweep_plot(title, rows)
            elif key == "workloads" and title.startswith("Speedup"):
                script = bar_plot(title, rows)
            else:
                continue
            name = f"{key}_{slug(title)}.svg"
            head = ["set terminal svg size 900,480 dynamic noenhanced font 'sans,12' background rgb 'white'",
                    f"set output {gp_quote(str(plot_dir / name))}"]
            try:
                subprocess.run(["gnuplot"], input="\n".join(head + script) + "\n", text=True, check=True,
                               capture_output=True, timeout=60)
                made[(key, title)] = name
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                print(f"run.py: gnuplot failed for {title!r}: {getattr(e, 'stderr', e)}", file=sys.stderr)
    return made


# ---- the report ---------------------------------------------------------------------------


def machine_table(m):
    load = m.get("load_at_start") or []
    end = m.get("load_at_end") or []
    rows = [
        ("CPU", m.get("cpu")),
        ("CPUs", f"{m.get('cpus_online')} online, {m.get('cpus_usable')} usable by this process"),
        ("memory", f"{m.get('memory_gib')} GiB"),
        ("kernel", m.get("kernel")),
        ("OS", m.get("os")),
        ("load average (1, 5, 15 min)", f"{', '.join(map(str, load))} at start; {', '.join(map(str, end))} at end"),
        ("compiler", f"{m.get('compiler')} ({m.get('build_type') or 'build type unknown'})"),
        ("Python", m.get("python")),
        ("gnuplot", m.get("gnuplot") or "not installed: no plots"),
        ("commit", m.get("commit")),
    ]
    out = ["| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return out


def section_table(rows):
    """A Markdown table: the row's value, then each comparison with its ratio."""
    keys = []
    for r in rows:
        keys += [k for k in r["compare"] if k not in keys]
    out = ["| | value | " + " | ".join(keys) + " |" if keys else "| | value |",
           "|---|---:|" + "---:|" * len(keys)]
    for r in rows:
        unit = f" {r['unit']}" if r["unit"] and r["value"] >= 0 else ""
        cells = [r["name"], f"**{fmt(r['value'])}**{unit}"]
        for k in keys:
            v = r["compare"].get(k)
            if v is None:
                cells.append("")
            elif v < 0:
                cells.append("n/a")
            else:
                rt = ratio_text(ratio(r, v))
                cells.append(fmt(v) + (f" ({rt})" if rt else ""))
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return out


def render(results, plots, plot_rel="bench"):
    """The whole of BENCHMARKS.md as a string."""
    m = results["machine"]
    mode = "quick mode (`--quick`: fewer and shorter runs)" if results.get("quick") else "full mode"
    py = "" if results.get("python", True) else " Python's side was skipped (`--no-python`)."
    md = [
        "# Benchmarks",
        "",
        f"Generated by `bench/run.py` on {results['date']} in {mode}, taking "
        f"{results.get('seconds', 0):.0f} s.{py} Every number is also in "
        f"[{plot_rel}/results.json]({plot_rel}/results.json), with the machine, so that runs can be compared.",
        "",
        "## How to reproduce",
        "",
        "```sh",
        "make bench                       # builds build/release, runs everything (~5 min on 2 busy cores), rewrites this file",
        "python3 bench/run.py --quick     # the same in about a minute, with fewer and shorter runs",
        "python3 bench/run.py --out /tmp/bench --compare docs/bench/results.json   # a new run, changes per row",
        "```",
        "",
        "One program alone, from the source root: `build/release/bench/pool_bench --quick` "
        "(see [bench/README.md](../bench/README.md)).",
        "",
        "## Machine",
        "",
        *machine_table(m),
        "",
        "## Reading the numbers",
        "",
        "* Every value is the **median** of repeated runs: 3 to 5 in full mode; in quick mode 3 for the "
        "sweeps and the workloads and a single run for the other rows. Every ratio compares numbers "
        "taken in the same run of the driver, seconds to minutes apart, never numbers from different days.",
        "* This machine is shared: the load average above says how busy it was. Absolute numbers move by "
        "tens of percent from run to run (more for tail latencies and small timings); read the ratios and "
        "the shapes of the curves, not the third digit. Quick mode runs fewer repetitions and is noisier.",
        "* In each table, **value** is mproc's number (unless the row names someone else), and each other "
        "column gives a peer's number and how the value compares with it: *2.0× better* means mproc took "
        "half the time (or did twice the work per second); *n/a* means the peer was not measured.",
        "* Python is the system `python3` with `multiprocessing` (fork start method); the C++ thread pool "
        "is a plain `std::thread` + `std::condition_variable` pool (bench/common/thread_pool.hpp).",
        "",
    ]
    if not plots:
        md += ["*No plots: gnuplot was not installed when this report was written "
               "(Debian package `gnuplot-nox`).*", ""]
    for key, program, what in SUITES:
        suite = results["suites"].get(key)
        if suite is None:
            continue
        md += [f"## {key}: {what}", "", f"`{program}`, {suite.get('seconds', 0):.0f} s."]
        if suite.get("error"):
            md += ["", f"**Failed:** {suite['error']}"]
        for title, rows in sections(suite.get("rows", [])).items():
            md += ["", f"### {title}", ""]
            if (key, title) in plots:
                md += [f"![{title}]({plot_rel}/{plots[(key, title)]})", ""]
            md += section_table(rows)
        md.append("")
    return "\n".join(md)


def write_report(results, out_dir):
    plot_dir = out_dir / "bench"
    plot_dir.mkdir(parents=True, exist_ok=True)
    for old in plot_dir.glob("*.svg"):
        old.unlink()
    plots = make_plots(results, plot_dir)
    (plot_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    (out_dir / "BENCHMARKS.md").write_text(render(results, plots))
    print(f"run.py: wrote {out_dir / 'BENCHMARKS.md'}, {len(plots)} plots and {plot_dir / 'results.json'}")


# ---- comparing two runs -------------------------------------------------------------------


def compare(old, new):
    """Lines giving, for every row in both runs, mproc's value then and now and the change
    (with better or worse by the row's direction)."""
    out = []
    om, nm = old.get("machine", {}), new.get("machine", {})
    if (om.get("cpu"), om.get("cpus_online")) != (nm.get("cpu"), nm.get("cpus_online")):
        out.append(f"note: different machines: {om.get('cpu')} x{om.get('cpus_online')} then, "
                   f"{nm.get('cpu')} x{nm.get('cpus_online')} now")
    if old.get("quick") != new.get("quick"):
        out.append("note: one run is in quick mode and the other is not")
    for key, suite in new["suites"].items():
        before = {(r["section"], r["name"]): r for r in old.get("suites", {}).get(key, {}).get("rows", [])}
        for r in suite.get("rows", []):
            o = before.get((r["section"], r["name"]))
            if o is None or o["value"] <= 0 or r["value"] <= 0:
                continue
            change = (r["value"] - o["value"]) / o["value"] * 100
            good = (change < 0) == (r["better"] == "lower")
            verdict = "" if abs(change) < 0.5 else (" better" if good else " worse")  # below what +0% shows
            out.append(f"{key} | {r['name']}: {fmt(o['value'])} -> {fmt(r['value'])} {r['unit']} "
                       f"({change:+.0f}%{verdict})")
    return out


# ---- main ---------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer and shorter runs (about a minute)")
    ap.add_argument("--no-python", action="store_true", help="skip Python's multiprocessing side")
    ap.add_argument("--out", default="docs", type=Path,
                    help="where BENCHMARKS.md goes; plots and results.json go to OUT/bench (default: docs)")
    ap.add_argument("--build-dir", default="build/release", type=Path, help="CMake build directory")
    ap.add_argument("--no-build", action="store_true", help="use the programs already built")
    ap.add_argument("--only", help="comma-separated suites to run (" + ", ".join(k for k, _, _ in SUITES) + ")")
    ap.add_argument("--compare", type=Path, metavar="OLD.json", help="print each row's change against OLD.json")
    ap.add_argument("--report-only", type=Path, metavar="RESULTS.json",
                    help="run nothing: write the report and plots from RESULTS.json")
    args = ap.parse_args(argv)
    out_dir = args.out if args.out.is_absolute() else ROOT / args.out
    build_dir = args.build_dir if args.build_dir.is_absolute() else ROOT / args.build_dir
    old = json.loads(args.compare.read_text()) if args.compare else None  # read before it may be rewritten

    if args.report_only:
        results = json.loads(args.report_only.read_text())
    else:
        chosen = [s for s in SUITES if not args.only or s[0] in args.only.split(",")]
        if not chosen:
            ap.error(f"--only: no such suite: {args.only}")
        t0 = time.monotonic()
        if not args.no_build:
            build(build_dir, [program for _, program, _ in chosen])
        machine = machine_info(build_dir)
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        suites = {key: run_suite(build_dir, key, program, args) for key, program, _ in chosen}
        machine["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
        results = {"schema": SCHEMA, "date": date, "quick": args.quick, "python": not args.no_python,
                   "seconds": round(time.monotonic() - t0, 1), "machine": machine, "suites": suites}
    write_report(results, out_dir)
    if old is not None:
        print(f"\nchanges against {args.compare} ({old.get('date', '?')}):")
        print("\n".join(compare(old, results)))
    failed = [k for k, s in results["suites"].items() if s.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
