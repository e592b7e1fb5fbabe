// mpi_bench — mproc::mpi beside raw MPI, in one job (docs/cluster.md):
//
//   mpirun --oversubscribe -np 3 [--mca btl self,vader] build/release/bench/mpi_bench [--rounds=5]
//   mpirun --oversubscribe -np 3 python3 -m mpi4py.futures bench/mpi/mpi4py_futures.py   # the peer
//
// Rows, each the median of --rounds rounds:
//   raw MPI ping-pong      rank 0 <-> rank 1, MPI_Send/MPI_Recv of 64 bytes (the floor);
//   apply round trip       pool.apply(f, x): rank 0 -> a worker process of rank 1 or 2 -> back;
//   map 10M ints           pool.map(square, iota(0, 10M)) with automatic chunks and with n/8;
//   map chunksize 1        pool.map(square, iota(0, 20k), {1}).
// The program is an MPI program of its own (launch mode b): the ping-pong runs before
// the CommPool phase, on the same ranks. No test runs it; nothing here is checked
// beyond the results being right.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <mproc/mpi.hpp>
#include <ranges>
#include <string>
#include <vector>

namespace {

using clk = std::chrono::steady_clock;
long long square(int x) { return 1LL * x * x; }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
double seconds_since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int rounds = 5;
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]).rfind("--rounds=", 0) == 0) rounds = std::max(1, std::stoi(argv[i] + 9));
  if (size < 2) {
    if (rank == 0) std::fprintf(stderr, "mpi_bench: run it under mpirun -np 2 or more\n");
    MPI_Finalize();
    return 2;
  }

  // The floor: raw MPI ping-pong between ranks 0 and 1.
  std::vector<double> pingpong;
  char msg[64] = {};
  for (int r = 0; r < rounds; ++r) {
    const int n = 20'000;
    MPI_Barrier(MPI_COMM_WORLD);
    auto t = clk::now();
    for (int i = 0; i < n; ++i) {
      if (rank == 0) {
        MPI_Send(msg, sizeof msg, MPI_BYTE, 1, 0, MPI_COMM_WORLD);
        MPI_Recv(msg, sizeof msg, MPI_BYTE, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      } else if (rank == 1) {
        MPI_Recv(msg, sizeof msg, MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(msg, sizeof msg, MPI_BYTE, 0, 0, MPI_COMM_WORLD);
      }
    }
    pingpong.push_back(seconds_since(t) / n * 1e6);
  }

  {
    mproc::mpi::CommPool p(MPI_COMM_WORLD, 0, {.processes = 1});
    if (p) {
      for (int i = 0; i < 500; ++i) (void)p->apply(square, i);  // warm: every rank's worker up
      std::vector<double> apply_us, map_auto, map_n8, map_1;
      for (int r = 0; r < rounds; ++r) {
        std::vector<double> one;
        for (int i = 0; i < 2000; ++i) {
          auto t = clk::now();
          (void)p->apply(square, i);
          one.push_back(seconds_since(t) * 1e6);
        }
        apply_us.push_back(median(one));
        const int n = 10'000'000;
        auto t = clk::now();
        bool ok = p->map(square, std::views::iota(0, n)).back() == 1LL * (n - 1) * (n - 1);
        map_auto.push_back(n / seconds_since(t));
        t = clk::now();
        ok &= p->map(square, std::views::iota(0, n), {n / 8}).size() == static_cast<std::size_t>(n);
        map_n8.push_back(n / seconds_since(t));
        t = clk::now();
        ok &= p->map(square, std::views::iota(0, 20'000), {1}).back() == 19'999LL * 19'999;
        map_1.push_back(20'000 / seconds_since(t));
        if (!ok) std::fprintf(stderr, "mpi_bench: wrong results\n");
      }
      std::printf("mproc::mpi at np = %d (%zu serving ranks, %d workers), medians of %d rounds\n", size,
                  p->ranks().size(), p->processes(), rounds);
      std::printf("  raw MPI ping-pong (64 B)     %8.1f us\n", median(pingpong));
      std::printf("  apply round trip             %8.1f us\n", median(apply_us));
      std::printf("  map 10M ints, auto chunks    %8.2f M items/s\n", median(map_auto) / 1e6);
      std::printf("  map 10M ints, chunksize n/8  %8.2f M items/s\n", median(map_n8) / 1e6);
      std::printf("  map 20k ints, chunksize 1    %8.1f k items/s\n", median(map_1) / 1e3);
      p->close();
      p->join();
    }
  }
  MPI_Finalize();
  return 0;
}
