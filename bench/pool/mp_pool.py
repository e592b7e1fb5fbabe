#!/usr/bin/env python3
"""Python's side of the pool benchmark (bench/pool/pool_bench.cpp runs it).

Same workloads as the C++ program, system python3 standard library only; prints
one JSON object. Medians of repeated runs.
"""
import json
import multiprocessing as mp
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor


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


def pi_part(args):
    seed, n = args
    rng = random.Random(seed)
    inside = 0
    for _ in range(n):
        x, y = rng.random(), rng.random()
        if x * x + y * y <= 1.0:
            inside += 1
    return inside


def monte_carlo(pool, n):
    t0 = time.perf_counter()
    pi_part((1, n))
    serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    pool.map(pi_part, [(s, n // 2) for s in (1, 2)])
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


def med(fn, reps):
    runs = [fn() for _ in range(reps)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main():
    quick = "--quick" in sys.argv
    reps = 1 if quick else 3
    with mp.Pool(2) as pool:
        res = {
            "python": sys.version.split()[0],
            "apply": med(lambda: apply_roundtrip(pool, 500 if quick else 3000), reps),
            "imap_chunk1": med(lambda: imap_chunk1(pool, 5000 if quick else 30000), reps),
            "map_ints": med(lambda: map_ints(pool, 1_000_000 if quick else 10_000_000), reps),
            "monte_carlo": med(lambda: monte_carlo(pool, 400_000 if quick else 2_000_000), reps),
        }
    res["executor"] = med(lambda: executor_submit(2000 if quick else 10000), reps)
    res["pool_ready"] = med(pool_ready, reps)
    json.dump(res, sys.stdout)
    print()


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
