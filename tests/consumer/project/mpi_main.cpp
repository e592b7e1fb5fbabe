// The consumer of mproc::mpi (built when mproc was built with MPI): links and
// compiles; run under mpirun -np 2 or more, rank 0 sends one task to rank 1.
#include <mproc/mpi.hpp>

int twice(int x) { return 2 * x; }

int main(int argc, char** argv) {
  mproc::mpi::init(argc, argv);
  if (mproc::mpi::size() < 2) return 0;  // alone: no rank to serve tasks
  mproc::mpi::Pool pool(1);
  return pool.apply(twice, 21) == 42 ? 0 : 1;
}
