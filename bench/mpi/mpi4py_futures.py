"""mpi_bench's peer rows for mpi4py.futures (Debian's python3-mpi4py):

    mpirun --oversubscribe -np 3 python3 -m mpi4py.futures bench/mpi/mpi4py_futures.py [rounds]

submit().result() round trip, map of 1 M ints with chunksize n/8 (10 M takes minutes
there) and map of 5 k ints with chunksize 1; medians of `rounds` (default 5) rounds.
"""
import statistics
import sys
import time

from mpi4py.futures import MPIPoolExecutor


def square(x):
    return x * x


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with MPIPoolExecutor() as ex:
        for i in range(200):
            ex.submit(square, i).result()
        rt, big, one = [], [], []
        for _ in range(rounds):
            us = []
            for i in range(1000):
                t = time.perf_counter()
                ex.submit(square, i).result()
                us.append((time.perf_counter() - t) * 1e6)
            rt.append(statistics.median(us))
            n = 1_000_000
            t = time.perf_counter()
            list(ex.map(square, range(n), chunksize=n // 8))
            big.append(n / (time.perf_counter() - t))
            n = 5000
            t = time.perf_counter()
            list(ex.map(square, range(n)))
            one.append(n / (time.perf_counter() - t))
        print("mpi4py.futures, medians of %d rounds" % rounds)
        print("  submit().result() round trip %8.1f us" % statistics.median(rt))
        print("  map 1M ints, chunksize n/8   %8.2f M items/s" % (statistics.median(big) / 1e6))
        print("  map 5k ints, chunksize 1     %8.1f k items/s" % (statistics.median(one) / 1e3))
