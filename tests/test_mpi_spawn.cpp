// tests/test_mpi_spawn.cpp — launch mode (c): the program runs alone (no mpirun),
// and mproc::mpi::init starts its serving ranks with MPI_Comm_spawn. CTest runs it
// directly (mpi.test_mpi_spawn.{vader,tcp}); exit status 0 when every check holds.
#include <cstdio>
#include <cstdlib>
#include <mproc/mpi.hpp>
#include <ranges>
#include <set>
#include <vector>

namespace {
int square(int x) { return x * x; }
// Busy a few ms, so that both spawned ranks get chunks; returns the rank's pid.
int busy_pid(int x) {
  volatile std::uint64_t acc = 0;
  for (std::uint64_t i = 0; i < 3'000'000; ++i) acc = acc + i * static_cast<std::uint64_t>(x);
  return static_cast<int>(::getppid());  // the worker's parent: its rank's forkserver
}
}  // namespace

int main(int argc, char** argv) {
  mproc::mpi::init(argc, argv, {.spawn = 2});  // the spawned copies serve here and exit
  int failures = 0;
  auto check = [&](bool ok, const char* what) {
    if (!ok) {
      std::printf("FAILED: %s\n", what);
      ++failures;
    }
  };
  check(mproc::mpi::rank() == 0 && mproc::mpi::size() == 3, "the parent and two spawned ranks");
  mproc::mpi::Pool pool(1);
  check(pool.ranks() == std::vector<int>{1, 2}, "the spawned ranks serve");
  std::vector<int> want;
  for (int i = 0; i < 300; ++i) want.push_back(i * i);
  check(pool.map(square, std::views::iota(0, 300), {7}) == want, "map across the spawned ranks");
  std::set<int> servers;
  for (int p : pool.map(busy_pid, std::views::iota(0, 30), {1})) servers.insert(p);
  check(servers.size() == 2, "both spawned ranks ran tasks");
  std::printf(failures ? "FAILED: %d checks\n" : "OK: launch mode (c)\n", failures);
  return failures ? 1 : 0;
}
