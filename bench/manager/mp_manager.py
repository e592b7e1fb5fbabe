#!/usr/bin/env python3
"""Python multiprocessing.Manager's side of the manager benchmark
(bench/manager/manager_bench.cpp runs it and prints the rows side by side)."""
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from mp_common import quick, run  # noqa: E402


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _incr(d, lock, n):
    for _ in range(n):
        with lock:
            d["k"] += 1


def measure():
    n_ops = 500 if quick() else 5000
    starts = []
    for _ in range(3 if quick() else 7):
        t0 = time.perf_counter()
        m = mp.Manager()
        starts.append(time.perf_counter() - t0)
        m.shutdown()
    m = mp.Manager()
    d = m.dict()
    lat = []
    for i in range(n_ops):
        t0 = time.perf_counter_ns()
        d[i % 64] = i
        _ = d[i % 64]
        lat.append((time.perf_counter_ns() - t0) / 2)
    create = []
    for _ in range(50 if quick() else 200):
        t0 = time.perf_counter_ns()
        m.dict()
        create.append(time.perf_counter_ns() - t0)
    procs, each = 8, (200 if quick() else 2000)
    d["k"] = 0
    lock = m.Lock()
    ps = [mp.Process(target=_incr, args=(d, lock, each)) for _ in range(procs)]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    secs = time.perf_counter() - t0
    exact = d["k"] == procs * each
    m.shutdown()
    return {
        "start_ms": _median(starts) * 1e3,
        "op_us": _median(lat) / 1e3,
        "create_us": _median(create) / 1e3,
        "incr_per_s": procs * each / secs,
        "incr_exact": 1 if exact else 0,
    }


if __name__ == "__main__":
    run(measure)
