// tests/test_mpi_rank_killed.cpp — a whole serving rank dies (SIGKILL) while its
// workers run tasks. Open MPI 4.1 has no fault-tolerant MPI: mpirun notices the
// death and aborts the job, killing every other rank. Run by
// tests/mpi_rank_killed.sh, which checks that mpirun ends on its own (no hang)
// with a failure status, and that no process of the job is left on the machine
// (the killed rank's forkserver and workers included). docs/cluster.md, "Failures".
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <mproc/mpi.hpp>
#include <ranges>

namespace {
int hang(int) {
  ::pause();
  return 0;
}
}  // namespace

// With the argument "root", rank 0 itself dies (abort) instead.
int main(int argc, char** argv) {
  mproc::mpi::init(argc, argv);
  mproc::mpi::Pool pool(2);
  auto r = pool.map_async(hang, std::views::iota(0, 8), {1});  // every rank's workers busy
  if (argc > 1 && std::string_view(argv[1]) == "root") {
    std::printf("rank 0: aborting\n");
    std::fflush(stdout);
    // Without Open MPI's SIGABRT handler: it prints a backtrace from inside the
    // signal (malloc in a handler), which ThreadSanitizer reports in make test's
    // TSan run. The death is the same.
    ::signal(SIGABRT, SIG_DFL);
    std::abort();
  }
  pid_t victim = pool.rank_pids().back();
  std::printf("rank 0: killing serving rank %d (pid %d)\n", pool.ranks().back(), static_cast<int>(victim));
  std::fflush(stdout);
  ::kill(victim, SIGKILL);
  (void)r.get();  // never returns: mpirun ends the job
  std::printf("rank 0: the map returned after a rank was killed\n");
  return 3;
}
