// src/mpi/world.cpp — launch mode (a): mproc::mpi::init/finalize over
// MPI_COMM_WORLD, the backends over it, and launch mode (b)'s CommPool.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>
#include <mutex>

#include "internal.hpp"
#include "link.hpp"
#include "mproc/error.hpp"
#include "mproc/mpi.hpp"
#include "mproc/process.hpp"

namespace mproc::mpi {
namespace {

struct World {
  std::mutex mu;
  bool initialized = false;
  bool finalized = false;
  MPI_Comm comm = MPI_COMM_NULL;  // a duplicate of MPI_COMM_WORLD: our messages never meet the program's
  int rank = 0;
  int size = 1;
  std::shared_ptr<detail::Link> link;
};
World& world() {
  static World* w = new World;  // never destroyed: finalize may run from atexit after statics
  return *w;
}

void finalize_at_exit() {
  try {
    finalize();
  } catch (...) {
  }
}

}  // namespace

void init(int argc, char** argv) { init(argc, argv, InitOptions{}); }

void init(int argc, char** argv, InitOptions options) {
  // First: in the forkserver and in spawned children (re-executions of this
  // program) this never returns, so they never initialize MPI themselves.
  if (!mproc::initialized()) mproc::init(argc, argv);
  if (options.spawn < 0) throw UsageError("mproc::mpi::init: spawn must be >= 0, got " + std::to_string(options.spawn));
  World& w = world();
  std::lock_guard lock(w.mu);
  if (w.initialized) throw UsageError("mproc::mpi::init() called twice");
  int already = 0;
  MPI_Initialized(&already);
  if (already) {
    throw UsageError("mproc::mpi::init(): MPI is already initialized; to use mproc in a program that runs MPI itself, "
                     "build a mproc::mpi::CommPool over its communicator instead (launch mode b)");
  }
  int provided = 0;
  detail::check(MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
  if (provided < MPI_THREAD_SERIALIZED) {
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Comm parent = MPI_COMM_NULL;
  MPI_Comm_get_parent(&parent);
  int world_size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  if (parent != MPI_COMM_NULL) {
    // Launch mode (c), a spawned serving rank: one world with the parent, after it.
    detail::check(MPI_Intercomm_merge(parent, 1, &w.comm), "MPI_Intercomm_merge");
    MPI_Comm_free(&parent);
  } else if (world_size == 1 && options.spawn > 0) {
    // Launch mode (c), the parent: copies of this executable, with its arguments.
    std::vector<char*> args;
    for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
    args.push_back(nullptr);
    std::vector<int> errors(static_cast<std::size_t>(options.spawn));
    MPI_Comm inter;
    char exe[] = "/proc/self/exe";
    std::string self = std::filesystem::read_symlink(exe).string();
    detail::check(MPI_Comm_spawn(self.c_str(), args.data(), options.spawn, MPI_INFO_NULL, 0, MPI_COMM_SELF, &inter,
                                 errors.data()),
                  "MPI_Comm_spawn");
    detail::check(MPI_Intercomm_merge(inter, 0, &w.comm), "MPI_Intercomm_merge");
    MPI_Comm_free(&inter);
  } else {
    detail::check(MPI_Comm_dup(MPI_COMM_WORLD, &w.comm), "MPI_Comm_dup");
  }
  MPI_Comm_rank(w.comm, &w.rank);
  MPI_Comm_size(w.comm, &w.size);
  w.initialized = true;
  const int node_ranks = detail::node_ranks(w.comm);  // collective: before rank 0 leaves
  if (w.rank != 0) {
    try {
      detail::serve_loop(w.comm, 0, node_ranks);
    } catch (const std::exception& e) {
      // Fail loud, never hang: MPI_Finalize would wait for the other ranks,
      // which wait for this one. MPI_Abort ends the whole job now.
      std::fprintf(stderr, "mproc::mpi: serving rank %d: %s\n", w.rank, e.what());
      MPI_Abort(w.comm, 1);
    }
    const int status = 0;
    MPI_Comm_free(&w.comm);
    MPI_Finalize();
    w.finalized = true;
    std::exit(status);
  }
  std::atexit(finalize_at_exit);
}

void finalize() {
  World& w = world();
  std::lock_guard lock(w.mu);
  if (!w.initialized || w.finalized) return;
  w.finalized = true;
  if (w.link) {
    w.link->shutdown();  // sends kShutdown from its thread, waits for it to leave
    w.link.reset();
  } else {
    for (int r = 1; r < w.size; ++r) MPI_Send(nullptr, 0, MPI_BYTE, r, detail::kShutdown, w.comm);
  }
  MPI_Comm_free(&w.comm);
  MPI_Finalize();
}

bool initialized() noexcept {
  World& w = world();
  std::lock_guard lock(w.mu);
  return w.initialized && !w.finalized;
}

int rank() {
  World& w = world();
  std::lock_guard lock(w.mu);
  if (!w.initialized) throw UsageError("mproc::mpi::rank() before mproc::mpi::init()");
  return w.rank;
}

int size() {
  World& w = world();
  std::lock_guard lock(w.mu);
  if (!w.initialized) throw UsageError("mproc::mpi::size() before mproc::mpi::init()");
  return w.size;
}

std::shared_ptr<detail::Link> detail::world_link() {
  World& w = world();
  std::lock_guard lock(w.mu);
  if (!w.initialized || w.finalized) {
    throw UsageError("mproc::mpi::Pool needs mproc::mpi::init(argc, argv) first (and not after finalize())");
  }
  if (!w.link) w.link = std::make_shared<Link>(w.comm, 0, false);
  return w.link;
}

namespace detail {
std::vector<std::byte> bytes_for_ranks(const mproc::detail::EncodedTask& t) {
  if (!t.fds().empty()) {
    throw UsageError("mproc::mpi: the initializer's arguments carry file descriptors (a Value, Queue, Lock or "
                     "SharedArray), which cannot reach other ranks; pass plain data and create such objects in it");
  }
  return std::vector<std::byte>(t.bytes().begin(), t.bytes().end());
}
}  // namespace detail

std::unique_ptr<detail::RankBackend> detail::world_backend(const PoolOptions& options,
                                                          std::vector<std::byte> initializer) {
  return std::make_unique<RankBackend>(world_link(), options, std::move(initializer));
}

std::unique_ptr<mproc::detail::PoolBackend> backend(PoolOptions options) { return detail::world_backend(options, {}); }

CommPool::CommPool(MPI_Comm comm, int root, PoolOptions options) {
  if (!mproc::initialized()) {
    throw UsageError("mproc::mpi::CommPool needs mproc::init(argc, argv) first in main(), before MPI_Init (the "
                     "forkserver and spawned workers re-execute the program and must stop there, before MPI)");
  }
  int up = 0, down = 0;
  MPI_Initialized(&up);
  MPI_Finalized(&down);
  if (!up || down) throw UsageError("mproc::mpi::CommPool needs MPI initialized (MPI_Init_thread) and not finalized");
  int n = 0, me = 0;
  MPI_Comm_size(comm, &n);
  MPI_Comm_rank(comm, &me);
  if (root < 0 || root >= n) {
    throw UsageError("mproc::mpi::CommPool: root " + std::to_string(root) + " is not a rank of the communicator (size " +
                     std::to_string(n) + ")");
  }
  MPI_Comm dup;
  detail::check(MPI_Comm_dup(comm, &dup), "MPI_Comm_dup");  // collective
  const int node_ranks = detail::node_ranks(dup);         // collective
  if (me != root) {
    try {
      detail::serve_loop(dup, root, node_ranks);
    } catch (...) {
      MPI_Comm_free(&dup);
      throw;
    }
    MPI_Comm_free(&dup);
    return;
  }
  int level = 0;
  MPI_Query_thread(&level);
  link_ = std::make_shared<detail::Link>(dup, root, true);  // frees dup at shutdown
  try {
    if (level < MPI_THREAD_SERIALIZED) {
      throw UsageError("mproc::mpi::CommPool needs MPI initialized with MPI_THREAD_SERIALIZED or more on the root "
                       "(MPI_Init_thread): its MPI calls come from the pool's own thread");
    }
    pool_.reset(new Pool(std::make_unique<detail::RankBackend>(link_, options, std::vector<std::byte>{})));
  } catch (...) {
    link_->shutdown();  // releases the serving ranks
    throw;
  }
}

CommPool::~CommPool() {
  pool_.reset();
  if (link_) link_->shutdown();
}

}  // namespace mproc::mpi
