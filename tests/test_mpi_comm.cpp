// tests/test_mpi_comm.cpp — launch mode (b): an MPI program with its own
// MPI_Init and its own MPI calls uses mproc in one phase, through a CommPool over
// its communicator. Every rank runs this main (under mpirun -np 3); the checks are
// collective, so it is a plain program: exit status 0 on every rank when all hold.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <mproc/mpi.hpp>
#include <ranges>
#include <vector>

namespace {

int square(int x) { return x * x; }
int my_rank(int) {
  const char* r = std::getenv("OMPI_COMM_WORLD_RANK");
  return r ? std::atoi(r) : -1;
}

int failures = 0;
void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);  // first: the forkserver and spawned workers stop here
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  // The program's own MPI, before the mproc phase.
  int sum = 0;
  MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  check(sum == size * (size - 1) / 2, "allreduce before");

  {
    // Root 1, to show the root need not be rank 0: ranks 0 and 2 serve.
    mproc::mpi::CommPool p(MPI_COMM_WORLD, 1, {.processes = 1});
    check(static_cast<bool>(p) == (rank == 1), "only the root holds the pool");
    if (p) {
      check(p->ranks() == std::vector<int>{0, 2}, "the serving ranks are the others");
      std::vector<int> want;
      for (int i = 0; i < 500; ++i) want.push_back(i * i);
      check(p->map(square, std::views::iota(0, 500), {5}) == want, "map over the communicator");
      std::vector<int> ranks = p->map(my_rank, std::views::iota(0, 50), {1});
      check(std::ranges::find(ranks, 1) == ranks.end(), "the root ran no task");
      p->close();
      p->join();
    }
  }  // the root's CommPool ends here: the serving ranks return from their constructor

  // The program's own MPI again, on every rank: everyone came back.
  int again = 0;
  MPI_Allreduce(&rank, &again, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  check(again == sum, "allreduce after");

  // A sub-communicator: ranks 0 and 1 form one (0 the root, 1 serving); rank 2
  // alone in its own has nobody to serve it.
  MPI_Comm half;
  MPI_Comm_split(MPI_COMM_WORLD, rank < 2 ? 0 : 1, rank, &half);
  if (rank < 2) {
    mproc::mpi::CommPool p(half, 0, {.processes = 1});
    if (p) check(p->apply(square, 9) == 81 && p->ranks() == std::vector<int>{1}, "pool over a sub-communicator");
  } else {
    bool refused = false;
    try {
      mproc::mpi::CommPool p(half, 0);
    } catch (const mproc::UsageError&) {
      refused = true;
    }
    check(refused, "a communicator with no serving rank is refused");
  }
  MPI_Comm_free(&half);

  MPI_Allreduce(MPI_IN_PLACE, &failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) std::printf(failures ? "FAILED: %d checks\n" : "OK: mode (b), %d failed checks\n", failures);
  MPI_Finalize();
  return failures ? 1 : 0;
}
