// mproc/mpi.hpp — the pool across machines: workers are MPI ranks, each running
// its tasks in its own local worker processes (target mproc::mpi; docs/cluster.md).
//
//   int main(int argc, char** argv) {
//     mproc::mpi::init(argc, argv);   // rank 0 returns; the other ranks serve tasks, then exit
//     mproc::mpi::Pool pool;          // every other rank's workers
//     auto squares = pool.map(square, std::views::iota(0, 1000));
//   }
//   $ mpirun -np 4 ./app
#pragma once

#include "mproc/detail/config.hpp"

#include <mpi.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
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

/// The pool backend over MPI ranks: the root's half. Chunks wait here until a
/// serving rank has room (two chunks per local worker), go to it whole, and
/// its workers' outcomes come back and are delivered to the job's sink on the
/// link's thread. Same members, same contract as the local engine
/// (mproc::detail::PoolCore; docs/design.md, "The pool's backend seam").
class RankBackend {
 public:
  /// Opens the pool on every serving rank of `link`, and waits until each has
  /// started its workers. Throws UsageError (no serving rank, fork start
  /// method) or the first rank's start error.
  RankBackend(std::shared_ptr<Link> link, const PoolOptions& options, std::vector<std::byte> initializer);
  ~RankBackend();
  RankBackend(const RankBackend&) = delete;
  RankBackend& operator=(const RankBackend&) = delete;

  std::uint64_t open_job(std::shared_ptr<mproc::detail::JobSink> sink);
  /// Throws UsageError for a chunk that carries file descriptors (they cannot
  /// reach another host) and closes them.
  void submit(std::uint64_t job, std::uint64_t first, mproc::detail::ChunkMessage chunk);
  void seal_job(std::uint64_t job);
  bool cancel_job(std::uint64_t job);
  std::size_t cancel_queued_jobs();
  bool job_dispatched(std::uint64_t job) const;
  void close();
  void terminate();
  void join();
  bool accepting() const;
  int processes() const;
  std::int64_t spin_ns() const { return 0; }
  const std::shared_ptr<mproc::detail::ResultReceiver>& receiver() const { return receiver_; }
  std::vector<pid_t> worker_pids() const { return {}; }
  std::shared_ptr<mproc::detail::TimelineRecorder> timeline() const { return nullptr; }

  /// The serving ranks (their rank numbers in the link's communicator) and their pids.
  std::vector<int> ranks() const;
  std::vector<pid_t> rank_pids() const;

  // ---- called by the link's thread (link.cpp) ----
  struct Impl;

 private:
  std::shared_ptr<Link> link_;
  std::unique_ptr<Impl> impl_;
  std::shared_ptr<mproc::detail::ResultReceiver> receiver_ = std::make_shared<mproc::detail::ResultReceiver>();
};

/// The world's link (created on first use, on rank 0). Throws UsageError before init().
std::shared_ptr<Link> world_link();

}  // namespace detail

/// A Pool whose workers are the other ranks' worker processes, over the world
/// of mproc::mpi::init (rank 0 only). PoolOptions mean what they mean for a
/// local Pool, per serving rank: `processes` is each rank's worker count (0:
/// its share of its node's cores), `timeout`, `retries`, `maxtasksperchild`,
/// `max_memory_mb` and `start_method` (forkserver or spawn; fork is refused)
/// apply to each rank's workers. `timeline` is not supported yet (UsageError).
///
/// This first version has apply/apply_async and map/map_async/starmap; the
/// remaining methods come with the shared front end (docs/cluster.md, "Status").
class Pool {
 public:
  explicit Pool(PoolOptions options = {});
  explicit Pool(int processes_per_rank) : Pool(PoolOptions{.processes = processes_per_rank}) {}
  template <class F, class... Args>
  Pool(PoolOptions options, F&& initializer, Args&&... initargs)
      : Pool(options, detail::bytes_for_ranks(
                          mproc::detail::encode_initializer(std::forward<F>(initializer), std::forward<Args>(initargs)...))) {}
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  /// Terminates (like mproc::Pool): close() and join() first to let work finish.
  ~Pool();

  /// f(args...) on some rank's worker, asynchronously.
  template <class F, class... Args>
  auto apply_async(F&& f, Args&&... args);
  /// f(args...) on some rank's worker; blocks for the result.
  template <class F, class... Args>
  auto apply(F&& f, Args&&... args) {
    auto r = apply_async(std::forward<F>(f), std::forward<Args>(args)...);
    if constexpr (std::is_void_v<decltype(r.get())>) {
      r.get();
    } else {
      return std::remove_cvref_t<decltype(r.get())>(r.get());
    }
  }
  template <class F, std::ranges::input_range R>
  auto map_async(F&& f, R&& input, MapOptions options = {}) {
    return gather<false>(std::forward<F>(f), std::forward<R>(input), std::move(options));
  }
  template <class F, std::ranges::input_range R>
  auto map(F&& f, R&& input, MapOptions options = {}) {
    auto r = map_async(std::forward<F>(f), std::forward<R>(input), std::move(options));
    return std::remove_cvref_t<decltype(r.get())>(r.get());
  }
  template <class F, std::ranges::input_range R>
  auto starmap_async(F&& f, R&& input, MapOptions options = {}) {
    return gather<true>(std::forward<F>(f), std::forward<R>(input), std::move(options));
  }
  template <class F, std::ranges::input_range R>
  auto starmap(F&& f, R&& input, MapOptions options = {}) {
    auto r = starmap_async(std::forward<F>(f), std::forward<R>(input), std::move(options));
    return std::remove_cvref_t<decltype(r.get())>(r.get());
  }

  /// No new work; each rank's workers exit once the queued work is done.
  void close() { core_->close(); }
  /// Stop now: every rank's workers are killed; unfinished results fail with CancelledError.
  void terminate() { core_->terminate(); }
  /// Waits until every rank's workers are gone. UsageError unless close() or terminate() came first.
  void join() { core_->join(); }
  /// Worker processes on all serving ranks together.
  int processes() const { return core_->processes(); }
  /// The serving ranks' numbers and pids.
  std::vector<int> ranks() const { return core_->ranks(); }
  std::vector<pid_t> rank_pids() const { return core_->rank_pids(); }

 private:
  friend class CommPool;
  Pool(const PoolOptions& options, std::vector<std::byte> initializer);
  Pool(std::shared_ptr<detail::Link> link, const PoolOptions& options, std::vector<std::byte> initializer);
  std::uint64_t run_job(std::shared_ptr<mproc::detail::JobSink> sink, auto&& submit_all) {
    std::uint64_t id = core_->open_job(std::move(sink));
    try {
      submit_all(id);
    } catch (...) {
      core_->seal_job(id);
      throw;
    }
    core_->seal_job(id);
    return id;
  }
  template <bool Star, class F, class R>
  auto gather(F&& f, R&& input, MapOptions options);

  std::unique_ptr<detail::RankBackend> core_;
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

template <class F, class... Args>
auto Pool::apply_async(F&& f, Args&&... args) {
  namespace md = mproc::detail;
  using Fn = std::decay_t<F>;
  using Stored = md::stored_args_t<Fn, Args...>;
  using R = md::pool_result_t<Fn, Stored, true>;
  using V = md::stored_value_t<R>;
  static_assert(md::SendableCallable<Fn>, "mproc::mpi::Pool: the task must be sendable (docs/serialization.md)");
  auto core = std::make_shared<md::ResultCore<R>>();
  auto job = std::make_shared<md::GatherJob<V, true, md::ResultCore<R>>>(1, core);
  md::ChunkMessage chunk = md::ChunkEncoder<Fn, Stored, true>::single(f, std::forward_as_tuple(std::forward<Args>(args)...));
  run_job(job, [&](std::uint64_t id) { core_->submit(id, 0, std::move(chunk)); });
  return AsyncResult<R>(core);
}

template <bool Star, class F, class R>
auto Pool::gather(F&& f, R&& input, MapOptions options) {
  namespace md = mproc::detail;
  using Fn = std::decay_t<F>;
  using Elem = std::ranges::range_reference_t<R>;
  using Arg = typename std::conditional_t<Star, decltype(md::star_arg_for<Fn, Elem>()),
                                          decltype(md::map_arg_for<Fn, Elem>())>::type;
  using Res = md::pool_result_t<Fn, Arg, Star>;
  using V = md::stored_value_t<Res>;
  static_assert(md::SendableCallable<Fn>, "mproc::mpi::Pool: the task must be sendable (docs/serialization.md)");
  std::vector<std::remove_cvref_t<Elem>> items;
  for (auto&& e : input) items.emplace_back(std::forward<decltype(e)>(e));
  const std::size_t n = items.size();
  std::size_t chunk = md::checked_chunksize(options.chunksize);
  const std::size_t max_bytes = chunk == 0 ? md::kAutoChunkBytes : SIZE_MAX;
  if (chunk == 0) chunk = md::auto_chunksize(n, processes());
  auto core = std::make_shared<md::ResultCore<std::vector<V>>>();
  if (n == 0) {
    core->finish(std::vector<V>{}, nullptr);
    return AsyncResult<std::vector<V>>(core);
  }
  auto job = md::progress_sink(std::make_shared<md::GatherJob<V, false>>(n, core),
                               md::make_progress(options.progress, options.desc, n), true);
  md::ChunkEncoder<Fn, Arg, Star> enc(f);
  run_job(job, [&](std::uint64_t id) {
    for (std::size_t i = 0, k = 0; i < n; i = k) {
      enc.begin();
      for (k = i; k < std::min(n, i + chunk) && enc.item_bytes() < max_bytes; ++k) enc.add(std::move(items[k]));
      core_->submit(id, i, enc.finish());
    }
  });
  return AsyncResult<std::vector<V>>(core);
}

}  // namespace mproc::mpi
