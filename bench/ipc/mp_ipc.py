#!/usr/bin/env python3
"""Python multiprocessing's side of the IPC benchmark (bench/ipc/ipc_bench.cpp runs it).

Measures the same workloads as the C++ program, with the system python3's standard
library only, and prints one JSON object on stdout. Medians of repeated runs; the
machine is shared and noisy, so the C++ driver reports ratios, never gates on them.
"""
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from mp_common import median_of, quick, run  # noqa: E402

# Payload sizes of the round-trip sweep: 8 B to 1 MiB, powers of 4 (as ipc_bench).
SIZES = [8 << (2 * i) for i in range(9)] + [1 << 20]


def warmup(n):
    """Untimed round trips before `n` timed ones (as ipc_bench)."""
    return min(50, n)


def _echo_queue(q_in, q_out, n):
    for _ in range(n):
        q_out.put(q_in.get())


def _pingpong(n, send, recv, child, msg=1):
    """Round trips of one message: `send` then `recv`, echoed by `child`."""
    child.start()
    for _ in range(warmup(n)):
        send(msg)
        recv()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        send(msg)
        recv()
        lat.append(time.perf_counter_ns() - t0)
    child.join()
    lat.sort()
    return {"median_us": lat[len(lat) // 2] / 1e3, "p99_us": lat[int(len(lat) * 0.99)] / 1e3}


def queue_pingpong(n, msg=1):
    a, b = mp.Queue(), mp.Queue()
    return _pingpong(n, a.put, b.get, mp.Process(target=_echo_queue, args=(a, b, n + warmup(n))), msg)


def _echo_pipe(conn, n):
    for _ in range(n):
        conn.send(conn.recv())


def pipe_pingpong(n, msg=1):
    a, b = mp.Pipe()
    return _pingpong(n, a.send, a.recv, mp.Process(target=_echo_pipe, args=(b, n + warmup(n))), msg)


def sweep_rounds(size, base, least):
    """Round trips per run at a payload size: `base` up to 4 KiB, fewer above
    (as ipc_bench)."""
    return max(least, min(base, base * 4096 // size))


def size_sweep(pingpong, base, least, reps):
    """Median round trip of a `size`-byte bytes object, for each size."""
    return {
        str(size): median_of(lambda: pingpong(sweep_rounds(size, base, least), bytes(size)), reps) for size in SIZES
    }


def _produce(q, n):
    payload = b"12345678"
    for _ in range(n):
        q.put(payload)
    q.put(None)


def _consume(q, done):
    count = 0
    while True:
        item = q.get()
        if item is None:
            break
        count += 1
    done.put(count)


def small_messages(producers, consumers, n_per_producer):
    q, done = mp.Queue(), mp.Queue()
    cons = [mp.Process(target=_consume, args=(q, done)) for _ in range(consumers)]
    for c in cons:
        c.start()
    t0 = time.perf_counter()
    prods = [mp.Process(target=_produce, args=(q, n_per_producer)) for _ in range(producers)]
    for p in prods:
        p.start()
    for p in prods:
        p.join()
    # one poison pill per consumer beyond those the producers sent
    for _ in range(consumers - producers):
        q.put(None)
    total = sum(done.get() for _ in range(consumers))
    dt = time.perf_counter() - t0
    for c in cons:
        c.join()
    return {"msgs_per_s": total / dt}


def _recv_big(q, out):
    data = q.get()
    out.put(len(data))


def big_message(size):
    q, out = mp.Queue(), mp.Queue()
    p = mp.Process(target=_recv_big, args=(q, out))
    p.start()
    data = bytes(size)
    t0 = time.perf_counter()
    q.put(data)
    n = out.get()
    dt = time.perf_counter() - t0
    p.join()
    assert n == size
    return {"gib_per_s": size / dt / 2**30}


def lock_uncontended(n):
    lock = mp.Lock()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        lock.acquire()
        lock.release()
    return {"ns_per_pair": (time.perf_counter_ns() - t0) / n}


def _hammer(lock, n):
    for _ in range(n):
        lock.acquire()
        lock.release()


def lock_contended(n):
    lock = mp.Lock()
    p = mp.Process(target=_hammer, args=(lock, n))
    t0 = time.perf_counter_ns()
    p.start()
    _hammer(lock, n)
    p.join()
    return {"ns_per_pair": (time.perf_counter_ns() - t0) / (2 * n)}


def measure():
    q = quick()
    reps = 1 if q else 3
    n = 2000 if q else 10000
    sweep = (300, 10, 3) if q else (2000, 40, 5)  # rounds up to 4 KiB, least rounds, runs
    return {
        "queue_pingpong": median_of(lambda: queue_pingpong(n), reps),
        "pipe_pingpong": median_of(lambda: pipe_pingpong(n), reps),
        "queue_rtt": size_sweep(queue_pingpong, *sweep),
        "pipe_rtt": size_sweep(pipe_pingpong, *sweep),
        "small_1to1": median_of(lambda: small_messages(1, 1, 20000 if q else 100000), reps),
        "small_2to2": median_of(lambda: small_messages(2, 2, 10000 if q else 50000), reps),
        "big_64mib": median_of(lambda: big_message(64 << 20), reps),
        "lock_uncontended": median_of(lambda: lock_uncontended(100000), reps),
        "lock_contended": median_of(lambda: lock_contended(20000 if q else 100000), reps),
    }


if __name__ == "__main__":
    run(measure)
