#!/usr/bin/env python3
"""Python's side of the pool benchmark (bench/pool/pool_bench.cpp runs it).

Same workloads as the C++ program, system python3 standard library only; prints
one JSON object. Medians of repeated runs.
"""
import functools
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from mp_common import median_of, pi_part, quick, run, spin, spin_iters_per_us  # noqa: E402

# Task durations of the sweep, in µs of busy work (as pool_bench).
TASK_US = [0, 1, 10, 100, 1000]


def square(x):
    return x * x


def apply_roundtrip(pool, n):
    for _ in range(50):
        pool.apply_async(square, (1,)).get()
    lat = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        pool.apply_async(square, (i,)).get()
        lat.append(time.perf_counter_ns() - t0)
    lat.sort()
    return {"median_us": lat[len(lat) // 2] / 1e3}


def imap_chunk1(pool, n):
    t0 = time.perf_counter()
    s = 0
    for v in pool.imap(square, range(n), chunksize=1):
        s += v
    return {"items_per_s": n / (time.perf_counter() - t0)}


def map_ints(pool, n):
    t0 = time.perf_counter()
    pool.map(square, range(n))
    return {"items_per_s": n / (time.perf_counter() - t0)}


def executor_submit(n):
    with ProcessPoolExecutor(2) as ex:
        list(ex.map(square, range(100)))
        t0 = time.perf_counter()
        futs = [ex.submit(square, i) for i in range(n)]
        for f in futs:
            f.result()
        return {"tasks_per_s": n / (time.perf_counter() - t0)}


def monte_carlo(pool, n):
    t0 = time.perf_counter()
    pi_part(1, n)
    serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    pool.starmap(pi_part, [(s, n // 2) for s in (1, 2)])
    par = time.perf_counter() - t0
    return {"serial_s": serial, "parallel_s": par, "efficiency": serial / (2 * par)}


def pool_ready():
    t0 = time.perf_counter()
    p = mp.Pool(2)
    p.apply(square, (1,))
    dt = time.perf_counter() - t0
    p.terminate()
    p.join()
    return {"ms": dt * 1e3}


def busy(iters, i):
    """One task of the task-size sweep: `iters` steps of busy work."""
    return spin(iters, i)


def sweep_tasks(task_us, budget_us, least, most):
    """Tasks for one duration: about `budget_us` of work, between `least` and `most`."""
    if task_us <= 0:
        return most
    return max(least, min(most, int(budget_us / task_us)))


def _seconds(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def task_sweep(pool, q):
    """Throughput and parallel efficiency of map and imap(chunksize=1), 2 workers."""
    per_us = spin_iters_per_us()
    reps, budget, least, most = (3, 100_000, 40, 4000) if q else (5, 500_000, 200, 20000)
    out = {}
    for us in TASK_US:
        n = sweep_tasks(us, budget, least, most)
        f = functools.partial(busy, int(us * per_us))

        def one():
            serial = _seconds(lambda: [f(i) for i in range(n)])
            t_map = _seconds(lambda: pool.map(f, range(n)))
            t_imap = _seconds(lambda: sum(pool.imap(f, range(n), chunksize=1)))
            return {
                "map_per_s": n / t_map,
                "imap_per_s": n / t_imap,
                "map_efficiency": serial / (2 * t_map),
                "imap_efficiency": serial / (2 * t_imap),
            }

        out[str(us)] = median_of(one, reps)
    return out


def measure():
    q = quick()
    reps = 1 if q else 3
    with mp.Pool(2) as pool:
        res = {
            "apply": median_of(lambda: apply_roundtrip(pool, 500 if q else 3000), reps),
            "imap_chunk1": median_of(lambda: imap_chunk1(pool, 5000 if q else 30000), reps),
            "map_ints": median_of(lambda: map_ints(pool, 1_000_000 if q else 10_000_000), reps),
            "monte_carlo": median_of(lambda: monte_carlo(pool, 400_000 if q else 2_000_000), reps),
            "task_sweep": task_sweep(pool, q),
        }
    res["executor"] = median_of(lambda: executor_submit(2000 if q else 10000), reps)
    res["pool_ready"] = median_of(pool_ready, 3 if q else 9)
    return res


if __name__ == "__main__":
    run(measure)
