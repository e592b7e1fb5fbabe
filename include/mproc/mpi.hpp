// mproc/mpi.hpp — the pool across machines: workers are MPI ranks, each running
// its tasks in its own local worker processes (target mproc::mpi; docs/cluster.md).
//
//   int main(int argc, char** argv) {
//     mproc::mpi::init(argc, argv);   // rank 0 returns; the other ranks serve tasks, then exit
//     mproc::mpi::Pool pool;          // a mproc::Pool over every other rank's workers
//     auto squares = pool.map(square, std::views::iota(0, 1000));
//     for (int v : pool.imap_unordered(square, inputs)) ...
//   }
//   $ mpirun -np 4 ./app
#pragma once

#include "mproc/detail/config.hpp"

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "mproc/pool.hpp"

namespace mproc::mpi {

// ---- launch mode (a): the static world, `mpirun -np N ./app` ------------------------------

/// Call first thing in main(), instead of mproc::init (it calls it first: the
/// forkserver and spawned children, which are re-executions of the program,
/// run their role there and never reach MPI). Initializes MPI (asking for
/// MPI_THREAD_MULTIPLE), then:
///  * on rank 0, returns: main() runs there, and its mproc::mpi::Pool objects
///    send tasks to the other ranks;
///  * on every other rank, serves tasks until rank 0 calls finalize() (at its
///    exit at the latest), then finalizes MPI and ends the process with
///    std::exit(0): it never returns.
/// Throws std::runtime_error if MPI cannot be initialized or provides less than
/// MPI_THREAD_SERIALIZED; UsageError if called twice. Not thread-safe.
void init(int argc, char** argv);

/// What init() does when the program was started alone (`./app`, not under
/// mpirun: a world of one rank).
struct InitOptions {
  /// Launch mode (c): start this many serving ranks with MPI_Comm_spawn (copies
  /// of this program, with its arguments; they serve and exit, main() runs on
  /// this process only). 0: none (a Pool then has no rank to serve it). Ignored
  /// in a world of more than one rank.
  int spawn = 0;
};
/// init(argc, argv) with options: `mproc::mpi::init(argc, argv, {.spawn = 3})`.
/// Throws UsageError for a negative spawn count, std::runtime_error if
/// MPI_Comm_spawn fails (Open MPI needs its runtime to start them: under a batch
/// system, give the job slots for them).
void init(int argc, char** argv, InitOptions options);
/// Ends the cluster, on rank 0: tells the serving ranks to stop (their pools
/// are terminated) and finalizes MPI. Idempotent; run at exit by init's
/// handler. Let every mproc::mpi::Pool end before it: a pool destroyed after it
/// (held by a global) fails its pending work with CancelledError and returns.
void finalize();
/// Whether init() has run (and finalize() has not) in this process.
bool initialized() noexcept;
/// This process's rank in MPI_COMM_WORLD, and the world's size.
int rank();
int size();

namespace detail {

class Link;  // src/mpi/link.cpp: the root's MPI thread, shared by its pools

/// An initializer's bytes for other ranks (other machines): it cannot carry file
/// descriptors there (UsageError if its arguments do: a Value, Queue, Lock, SharedArray).
std::vector<std::byte> bytes_for_ranks(const mproc::detail::EncodedTask& initializer);

/// The pool backend over MPI ranks: the root's half (a detail::PoolBackend,
/// docs/design.md "The pool's backend seam"). Chunks wait here until a serving
/// rank has room (two chunks per local worker), go to it whole, and its
/// workers' outcomes come back and are delivered to the job's sink on the
/// link's thread. Chunks not yet sent to a rank can be cancelled (executor
/// Future::cancel). No ResultReceiver (waiters sleep until the link delivers),
/// no worker pids here (rank_pids() has the ranks'), no timeline yet.
class RankBackend final : public mproc::detail::PoolBackend {
 public:
  /// Opens the pool on every serving rank of `link`, and waits until each has
  /// started its workers. Throws UsageError (no serving rank, fork start
  /// method, timeline, invalid options) or StartError (a rank's workers could
  /// not start).
  RankBackend(std::shared_ptr<Link> link, const PoolOptions& options, std::vector<std::byte> initializer);
  ~RankBackend() override;
  RankBackend(const RankBackend&) = delete;
  RankBackend& operator=(const RankBackend&) = delete;

  std::uint64_t open_job(std::shared_ptr<mproc::detail::JobSink> sink) override;
  /// Throws UsageError for a chunk that carries file descriptors (they cannot
  /// reach another host) and closes them; CancelledError once terminated.
  void submit(std::uint64_t job, std::uint64_t first, mproc::detail::ChunkMessage chunk) override;
  void seal_job(std::uint64_t job) override;
  bool cancel_job(std::uint64_t job) override;
  std::size_t cancel_queued_jobs() override;
  bool job_dispatched(std::uint64_t job) const override;
  void close() override;
  void terminate() override;
  void join() override;
  bool accepting() const override;
  int processes() const override;
  std::int64_t spin_ns() const override { return 0; }
  const std::shared_ptr<mproc::detail::ResultReceiver>& receiver() const override { return no_receiver_; }
  std::vector<pid_t> worker_pids() const override { return {}; }
  std::shared_ptr<mproc::detail::TimelineRecorder> timeline() const override { return nullptr; }

  /// The serving ranks (their rank numbers in the link's communicator) and their pids.
  std::vector<int> ranks() const;
  std::vector<pid_t> rank_pids() const;

  // ---- called by the link's thread (link.cpp) ----
  struct Impl;

 private:
  std::shared_ptr<Link> link_;
  std::unique_ptr<Impl> impl_;
  static inline const std::shared_ptr<mproc::detail::ResultReceiver> no_receiver_{};
};

/// The world's link (created on first use, on rank 0). Throws UsageError before init().
std::shared_ptr<Link> world_link();
/// A RankBackend over the world of mproc::mpi::init.
std::unique_ptr<RankBackend> world_backend(const PoolOptions& options, std::vector<std::byte> initializer);

}  // namespace detail

/// The cluster as a pool backend, over the world of mproc::mpi::init (rank 0
/// only): for the local front ends' backend constructors,
///
///   mproc::Pool pool(mproc::mpi::backend());                   // = mproc::mpi::Pool pool;
///   mproc::ProcessPoolExecutor ex(mproc::mpi::backend({.processes = 2}));
///
/// `options` and the initializer mean what they mean for mproc::mpi::Pool. Blocks
/// until every serving rank has started its workers. Throws as mproc::mpi::Pool's
/// constructor does.
std::unique_ptr<mproc::detail::PoolBackend> backend(PoolOptions options = {});
template <class F, class... Args>
std::unique_ptr<mproc::detail::PoolBackend> backend(PoolOptions options, F&& initializer, Args&&... initargs) {
  return detail::world_backend(options, detail::bytes_for_ranks(mproc::detail::encode_initializer(
                                            std::forward<F>(initializer), std::forward<Args>(initargs)...)));
}

/// A mproc::Pool whose workers are the other ranks' worker processes, over the
/// world of mproc::mpi::init (rank 0 only): every method of mproc::Pool (apply,
/// apply_async, map, map_async, starmap, starmap_async, imap, imap_unordered,
/// chunksize, callbacks, get(timeout), progress bars, close/terminate/join),
/// through the same front end, and a mproc::Pool& may refer to it. PoolOptions
/// mean what they mean for a local Pool, per serving rank: `processes` is each
/// rank's worker count (0: its share of its node's cores), `timeout`,
/// `retries`, `maxtasksperchild`, `max_memory_mb` and `start_method`
/// (forkserver or spawn; fork is refused) apply to each rank's workers.
/// `timeline` is not supported yet (UsageError). processes() is the total over
/// all serving ranks; worker_pids() is empty (the workers live on other
/// hosts); ranks() and rank_pids() name the serving ranks.
///
/// Hold it as itself (or borrow it as mproc::Pool&): mproc::Pool's destructor
/// is not virtual, so do not delete it through a mproc::Pool*.
class Pool : public mproc::Pool {
 public:
  /// Opens the pool on every serving rank; blocks until each has started its
  /// workers. Throws UsageError (before init(), no serving rank, fork, timeline,
  /// invalid options), StartError (a rank's workers could not start).
  explicit Pool(PoolOptions options = {}) : Pool(detail::world_backend(options, {})) {}
  explicit Pool(int processes_per_rank) : Pool(PoolOptions{.processes = processes_per_rank}) {}
  /// With an initializer run in every worker of every rank. UsageError if its
  /// arguments carry file descriptors (they cannot reach another host).
  template <class F, class... Args>
  Pool(PoolOptions options, F&& initializer, Args&&... initargs)
      : Pool(detail::world_backend(options, detail::bytes_for_ranks(mproc::detail::encode_initializer(
                                                std::forward<F>(initializer), std::forward<Args>(initargs)...)))) {}

  /// The serving ranks' numbers and pids.
  std::vector<int> ranks() const { return ranks_->ranks(); }
  std::vector<pid_t> rank_pids() const { return ranks_->rank_pids(); }

 private:
  friend class CommPool;
  explicit Pool(std::unique_ptr<detail::RankBackend> b) : Pool(*b, std::move(b)) {}
  // `owner` is a reference: nothing is moved before `raw` is bound.
  Pool(detail::RankBackend& raw, std::unique_ptr<detail::RankBackend>&& owner)
      : mproc::Pool(std::move(owner)), ranks_(&raw) {}

  detail::RankBackend* ranks_;  // the backend, owned by mproc::Pool
};

// ---- launch mode (b): a pool over a communicator the program already has ------------------

/// MPICommExecutor(comm, root)'s counterpart, for an MPI program that uses mproc in
/// one phase: **collective** over `comm` (every rank of it constructs one, with the
/// same root). On `root` it holds a Pool whose workers are the other ranks'
/// worker processes (`*p`, `p->map(...)`). On every other rank the constructor
/// serves the root's tasks until the root's CommPool is destroyed, then returns an
/// empty CommPool (false), and the program goes on with its own MPI.
///
///   mproc::mpi::CommPool p(MPI_COMM_WORLD, 0);
///   if (p) results = p->map(f, inputs);     // root only; the others served meanwhile
///   MPI_Bcast(...);                         // everyone is back
///
/// Needs mproc::init(argc, argv) first in main() (before MPI_Init) and MPI
/// initialized with at least MPI_THREAD_SERIALIZED on the root (the pool's MPI
/// calls come from its own thread; with less than MPI_THREAD_MULTIPLE the root
/// must make no MPI call of its own while the CommPool lives). Uses a duplicate of
/// `comm`, so its messages never meet the program's. Throws UsageError for each
/// of these, and where `comm` has no rank but the root.
class CommPool {
 public:
  CommPool(MPI_Comm comm, int root = 0, PoolOptions options = {});
  /// On the root: terminates the pool (close() and join() it first to let work
  /// finish), then releases the serving ranks. Elsewhere: nothing.
  ~CommPool();
  CommPool(const CommPool&) = delete;
  CommPool& operator=(const CommPool&) = delete;
  /// True on the root.
  explicit operator bool() const noexcept { return pool_ != nullptr; }
  Pool& operator*() const noexcept { return *pool_; }
  Pool* operator->() const noexcept { return pool_.get(); }
  Pool* get() const noexcept { return pool_.get(); }

 private:
  std::shared_ptr<detail::Link> link_;
  std::unique_ptr<Pool> pool_;
};

}  // namespace mproc::mpi
