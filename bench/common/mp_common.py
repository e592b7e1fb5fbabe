"""What the Python twins of the benchmark programs share (bench/*/mp_*.py).

System python3, standard library only. Each script measures the same workloads as
its C++ program with multiprocessing, and prints one JSON object on stdout that
the C++ program reads (bench/common/report.hpp: Flat). Medians of repeated runs;
the machine is shared and noisy, so nothing here is a pass/fail gate.
"""
import json
import multiprocessing as mp
import random
import statistics
import sys
import time

MASK = (1 << 64) - 1


def median_of(fn, reps):
    """Runs fn() `reps` times; the median of each number in the dicts it returns."""
    runs = [fn() for _ in range(reps)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def spin(iters, seed=0):
    """The busy work of bench/common/work.hpp: one dependent multiply-add chain."""
    x = seed
    for i in range(iters):
        x = (x * 6364136223846793005 + i) & MASK
    return x


def pi_part(seed, n):
    """Monte Carlo pi (as bench/common/work.hpp): points inside the unit quarter
    circle out of n, from a generator seeded with `seed`."""
    rng = random.Random(seed)
    inside = 0
    for _ in range(n):
        x, y = rng.random(), rng.random()
        if x * x + y * y <= 1.0:
            inside += 1
    return inside


def spin_iters_per_us():
    """spin() iterations per microsecond: the fastest of a few timed runs."""
    n = 100_000
    best = min(_timed(spin, n) for _ in range(5))
    return n / (best * 1e6)


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def quick():
    return "--quick" in sys.argv


def run(measure):
    """The scripts' main: fork start method (as the C++ side's Pool forks its
    workers from a server, neither re-imports anything per task), then print
    measure()'s dict, with the Python version, as JSON."""
    mp.set_start_method("fork")
    res = {"python": sys.version.split()[0]}
    res.update(measure())
    json.dump(res, sys.stdout)
    print()
