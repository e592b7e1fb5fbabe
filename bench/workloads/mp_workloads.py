#!/usr/bin/env python3
"""Python's side of the workloads benchmark (bench/workloads/workloads_bench.cpp runs it).

The articles' workloads, 8 tasks each, run serially, on multiprocessing.pool.ThreadPool
and on multiprocessing.Pool (4 workers each, started and warmed up before the timed
runs); prints the median seconds of each as JSON (3 runs, 5 in full mode). Tasks are sized to take about as long serially as the
C++ program's (Python does less work per task: a smaller matrix, fewer darts).
"""
import functools
import multiprocessing as mp
import os
import sys
import time
from multiprocessing.pool import ThreadPool

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from mp_common import median_of, pi_part, quick, run, spin, spin_iters_per_us  # noqa: E402

TASKS = 8
WORKERS = 4


def cpu_heavy(iters, task):
    return spin(iters, task)


def io_heavy(nbytes, task):
    """Writes `nbytes` of text (lines of 64 characters) to a file of its own, removes it."""
    text = ("x" * 63 + "\n") * (nbytes // 64)
    path = f"/tmp/mproc_bench_io_py_{os.getpid()}_{task}"
    with open(path, "w") as f:
        n = f.write(text)
    os.unlink(path)
    return n


def sleep_ms(ms, task):
    time.sleep(ms / 1000)
    return task


def dot_product(dim, task):
    """C = A B for dim x dim matrices made from the task number, each element the dot
    product of a row of A and a column of B (B kept transposed); returns C's trace."""
    a = [[float((i * dim + k + task) % 7) for k in range(dim)] for i in range(dim)]
    bt = [[float((k * dim + j) % 5) for k in range(dim)] for j in range(dim)]
    c = [[sum(x * y for x, y in zip(row, col)) for col in bt] for row in a]
    return int(sum(c[i][i] for i in range(dim)))


def monte_carlo(darts, task):
    return pi_part(task + 1, darts)


def _seconds(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def three_ways(task, procs, threads, reps):
    """Median seconds of TASKS tasks serially, on the thread pool and on the process pool."""

    def once():
        return {
            "serial_s": _seconds(lambda: [task(i) for i in range(TASKS)]),
            "threads_s": _seconds(lambda: threads.map(task, range(TASKS), chunksize=1)),
            "processes_s": _seconds(lambda: procs.map(task, range(TASKS), chunksize=1)),
        }

    return median_of(once, reps)


def measure():
    q = quick()
    reps = 3 if q else 5
    task_ms = 10 if q else 40
    sizes = {
        "cpu_heavy": (cpu_heavy, int(task_ms * 1000 * spin_iters_per_us())),
        "io_heavy": (io_heavy, (2 if q else 4) << 20),
        "sleep": (sleep_ms, 20 if q else 50),
        "dot_product": (dot_product, 64 if q else 104),
        "monte_carlo": (monte_carlo, 100_000 if q else 400_000),
    }
    res = {}
    with mp.Pool(WORKERS) as procs, ThreadPool(WORKERS) as threads:
        warm = functools.partial(cpu_heavy, 0)  # every worker up and running before the timed runs
        procs.map(warm, range(4 * WORKERS), chunksize=1)
        threads.map(warm, range(4 * WORKERS), chunksize=1)
        for name, (fn, size) in sizes.items():
            res[name] = three_ways(functools.partial(fn, size), procs, threads, reps)
    res["dot_product"]["dim"] = sizes["dot_product"][1]
    res["monte_carlo"]["darts"] = sizes["monte_carlo"][1]
    return res


if __name__ == "__main__":
    run(measure)
