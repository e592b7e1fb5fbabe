// mproc/pool.hpp — multiprocessing.Pool for C++.
//
//   mproc::Pool pool({.processes = 4});
//   std::vector<int> squares = pool.map(square, std::views::iota(0, 100));
//   auto r = pool.apply_async(slow, 3).then([](const int& v) { ... });
//   for (int v : pool.imap_unordered(square, inputs)) ...
//
// What Python's Pool gets wrong and this one does not (docs/pool.md):
//   * a worker that dies mid-task (segfault, abort, kill -9, exit()) fails exactly
//     that task with WorkerLostError; the worker is replaced, the rest completes;
//   * a per-task timeout that really stops the task (the worker is killed);
//   * imap/imap_unordered read their input lazily with bounded read-ahead and an
//     adaptive chunk size, so memory stays flat over unbounded streams;
//   * a task's exception comes back with its type, what(), and argument index;
//   * argument and result types are checked at compile time.
#pragma once

#include "mproc/detail/config.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ranges>
#include <type_traits>
#include <utility>
#include <vector>

#include "mproc/detail/chunk_encoder.hpp"
#include "mproc/detail/encoded_task.hpp"
#include "mproc/detail/pool_backend.hpp"
#include "mproc/detail/pool_entry.hpp"
#include "mproc/detail/pool_jobs.hpp"
#include "mproc/detail/pool_stream.hpp"
#include "mproc/error.hpp"
#include "mproc/keyboard_interrupt.hpp"
#include "mproc/pool_options.hpp"
#include "mproc/process.hpp"
#include "mproc/progress.hpp"
#include "mproc/results.hpp"
#include "mproc/task.hpp"
#include "mproc/timeline.hpp"

// Where the parts of a Pool live (docs/design.md, "The pool's backend seam"):
//   mproc/pool_options.hpp        PoolOptions, MapOptions
//   mproc/results.hpp             AsyncResult, IMapResults, the map methods (shared with ThreadPool)
//   mproc/keyboard_interrupt.hpp  enable_keyboard_interrupt
//   detail/chunk_encoder.hpp      a call's chunk messages (the parent side of the wire)
//   detail/pool_entry.hpp         the entry a worker runs for a chunk
//   detail/pool_jobs.hpp          the typed sinks results are delivered to
//   detail/pool_stream.hpp        imap's feeding side
//   detail/pool_backend.hpp       the backend seam (PoolBackend, JobSink, ItemSink)
//   detail/pool_core.hpp          the local process backend (PoolCore), made by start()

namespace mproc {
namespace detail {

/// A pool initializer, encoded as a process task (run by each worker), with
/// the fds its arguments carry.
template <class F, class... Args>
EncodedTask encode_initializer(F&& initializer, Args&&... initargs) {
  Writer w;
  encode_process_task(w, std::forward<F>(initializer), std::forward<Args>(initargs)...);
  return EncodedTask(w);
}

}  // namespace detail

/// A pool of worker processes (multiprocessing.Pool). All members may be called
/// from several threads. The destructor terminates the pool, like leaving
/// Python's `with Pool() as p:` block: call close() and join() first to let
/// queued work finish.
class Pool : public detail::MapMethods<Pool> {
 public:
  /// Starts the workers. Throws UsageError for invalid options, StartError /
  /// std::system_error if processes cannot be started.
  explicit Pool(PoolOptions options = {}) { start(options, {}); }
  /// `processes` workers (0: cpu_count()), as Python's Pool(4).
  explicit Pool(int processes) : Pool(PoolOptions{.processes = processes}) {}
  /// With a per-worker initializer, run once in each worker before any task
  /// (e.g. to set up a library that must be initialised inside the process).
  template <class F, class... Args>
  Pool(PoolOptions options, F&& initializer, Args&&... initargs) {
    start(options, detail::encode_initializer(std::forward<F>(initializer), std::forward<Args>(initargs)...));
  }
  /// Pool(processes, initializer, initargs...), Python's positional form.
  template <class F, class... Args>
  Pool(int processes, F&& initializer, Args&&... initargs)
      : Pool(PoolOptions{.processes = processes}, std::forward<F>(initializer), std::forward<Args>(initargs)...) {}
  /// On another backend than the local worker processes (docs/design.md, "The
  /// pool's backend seam"; e.g. the cluster's MPI ranks): the Pool owns it from
  /// here on. Throws UsageError if it is null.
  explicit Pool(std::unique_ptr<detail::PoolBackend> backend);
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  ~Pool();

  // ---- apply -------------------------------------------------------------------

  /// f(args...) in a worker, asynchronously.
  template <class F, class... Args>
  auto apply_async(F&& f, Args&&... args) {
    auto core = apply_job<detail::ResultCore>(std::forward<F>(f), std::forward<Args>(args)...).first;
    return AsyncResult<typename decltype(core)::element_type::result_type>(core);
  }
  // apply, map(_async), starmap(_async), imap, imap_unordered: detail::MapMethods.

  // ---- lifetime ------------------------------------------------------------------------

  /// No new work; workers exit when the queued work is done. Idempotent. A lazy
  /// map (imap, imap_unordered) not read to its end has the rest of its input
  /// read and queued first, so that all its calls run (Python's task handler
  /// does it in the background): an endless input never lets close() return.
  void close();
  /// Kill the workers now; unfinished results fail with CancelledError. Idempotent.
  void terminate();
  /// Wait for the workers to exit. UsageError unless close() or terminate() came first.
  void join();
  /// Number of worker processes.
  int processes() const;
  /// Pids of the current workers (they change as workers are replaced).
  std::vector<pid_t> worker_pids() const;
  /// The per-task timeline recorded so far (a handle that outlives the pool).
  /// Throws UsageError unless the pool was created with PoolOptions::timeline.
  Timeline timeline() const;

 private:
  friend class detail::MapMethods<Pool>;
  friend class ProcessPoolExecutor;
  template <class>
  friend class detail::BasicExecutor;
  // ProcessPoolExecutor's pool: an encoded initializer, and at most `max_queued`
  // chunks waiting in the task channel (the rest wait in the parent, cancellable).
  Pool(const PoolOptions& options, detail::EncodedTask initializer, std::size_t max_queued) {
    start(options, std::move(initializer), max_queued);
  }
  void start(const PoolOptions& options, detail::EncodedTask initializer, std::size_t max_queued = 0);
  // Opens a job, submits its chunks (submit_all(id)), seals it; returns its id.
  // A template, not a std::function: the typed side crosses into the backend
  // through PoolBackend's calls and the JobSink it registers, nothing else.
  template <class SubmitAll>
  std::uint64_t run_job(std::shared_ptr<detail::JobSink> sink, SubmitAll&& submit_all) {
    std::uint64_t id = backend_->open_job(std::move(sink));
    try {
      submit_all(id);
    } catch (...) {
      backend_->seal_job(id);
      throw;
    }
    backend_->seal_job(id);
    return id;
  }

  // apply_async into a new Core<R> (ResultCore, or the executor's FutureCore);
  // returns the core and the job's id.
  template <template <class> class Core, class F, class... Args>
  auto apply_job(F&& f, Args&&... args) {
    using Fn = std::decay_t<F>;
    using Stored = detail::stored_args_t<Fn, Args...>;
    using R = detail::pool_result_t<Fn, Stored, true>;
    using V = detail::stored_value_t<R>;
    check_types<Fn, Stored, R>();
    auto call = std::make_shared<detail::SingleCall<V, Core<R>>>();
    std::shared_ptr<Core<R>> core(call, &call->core);
    std::shared_ptr<detail::JobSink> job(call, &call->job);
    call.reset();
    core->spin_ns = backend_->spin_ns();
    detail::ChunkMessage chunk =
        detail::ChunkEncoder<Fn, Stored, true>::single(f, std::forward_as_tuple(std::forward<Args>(args)...));
    // Set before the job exists: no one waits on the core before this returns.
    core->receiver = backend_->receiver();
    struct CloseUnsent {  // if the job could not be opened, the chunk's fds are still ours
      detail::ChunkMessage& chunk;
      ~CloseUnsent() {
        for (int fd : chunk.fds) ::close(fd);
      }
    } close_unsent{chunk};
    std::uint64_t id = run_job(job, [&](std::uint64_t i) {
      core->source_job = i;
      backend_->submit(i, 0, std::move(chunk));  // leaves chunk.fds empty: submit owns them
    });
    return std::make_pair(std::move(core), id);
  }

  // One clear compile-time message per mistake, in this order.
  template <class Fn, class Arg, class R>
  static constexpr bool check_types() {
    if constexpr (!detail::SendableCallable<Fn>) {
      detail::diagnose_callable<Fn>();
      return false;
    } else if constexpr (std::is_same_v<R, detail::not_invocable>) {
      static_assert(detail::dependent_false<Fn>,
                    "mproc: the pool function cannot be called with the input's elements (map/imap: "
                    "f(element); starmap: f(elements of the tuple...); apply: f(args...)). With "
                    "mproc::bind(f, values...), the bound values come first.");
      return false;
    } else if constexpr (!Serializable<Arg>) {
      detail::diagnose<Arg>();
      return false;
    } else if constexpr (!std::is_void_v<R> && !Serializable<R>) {
      detail::diagnose<R>();
      return false;
    } else {
      return true;
    }
  }

  template <bool Star, class F, class R>
  auto gather(F&& f, R&& input, MapOptions options) {
    using Fn = std::decay_t<F>;
    using Elem = std::ranges::range_reference_t<R>;
    using Arg = typename std::conditional_t<Star, decltype(detail::star_arg_for<Fn, Elem>()),
                                            decltype(detail::map_arg_for<Fn, Elem>())>::type;
    using Res = detail::pool_result_t<Fn, Arg, Star>;
    using V = detail::stored_value_t<Res>;
    check_types<Fn, Arg, Res>();
    std::size_t chunk = detail::checked_chunksize(options.chunksize);
    if constexpr (detail::NoThrowSizedInput<R>) {
      // Reading cannot throw and the size is known: encode straight from the range.
      return gather_range<Star, Fn, Arg, V>(f, input, std::ranges::size(input), chunk, options);
    } else {
      // Python materializes the input first, so an exception while reading it
      // comes out of map() before any task runs. Same here.
      std::vector<std::remove_cvref_t<Elem>> items;
      if constexpr (std::ranges::sized_range<R>) items.reserve(std::ranges::size(input));
      for (auto&& e : input) items.emplace_back(std::forward<decltype(e)>(e));
      auto moved = items | std::views::transform([](auto& e) -> decltype(auto) { return std::move(e); });
      return gather_range<Star, Fn, Arg, V>(f, moved, items.size(), chunk, options);
    }
  }

  // map_async over `input`, of `n` items, read once from the front.
  template <bool Star, class Fn, class Arg, class V, class R>
  AsyncResult<std::vector<V>> gather_range(const Fn& f, R&& input, std::size_t n, std::size_t chunk,
                                           const MapOptions& options) {
    // Automatic chunks also end once their items' encoding passes kAutoChunkBytes.
    const std::size_t max_bytes = chunk == 0 ? detail::kAutoChunkBytes : SIZE_MAX;
    if (chunk == 0) chunk = detail::auto_chunksize(n, processes());
    auto core = std::make_shared<detail::ResultCore<std::vector<V>>>();
    core->spin_ns = backend_->spin_ns();
    auto bar = detail::make_progress(options.progress, options.desc, n);
    if (n == 0) {
      core->finish(std::vector<V>{}, nullptr);
      return AsyncResult<std::vector<V>>(core);
    }
    auto job = detail::progress_sink(std::make_shared<detail::GatherJob<V, false>>(n, core), bar, true);
    detail::ChunkEncoder<Fn, Arg, Star> enc(f);
    run_job(job, [&](std::uint64_t id) {
      using Enc = detail::ChunkEncoder<Fn, Arg, Star>;
      if constexpr (Enc::kStride) {
        // Items of one size: each chunk's count is known up front (the same cut as
        // the loop below), and its items are written in one go; the argument's
        // own bytes, back to back, are one copy.
        const std::size_t per = std::max<std::size_t>(1, std::min(chunk, max_bytes / sizeof(Arg)));
        auto it = std::ranges::begin(input);
        for (std::size_t i = 0; i < n; i += per) {
          const std::size_t k = std::min(per, n - i);
          enc.begin(k * sizeof(Arg));
          if constexpr (std::ranges::contiguous_range<R> &&
                        std::is_same_v<std::remove_cvref_t<std::ranges::range_reference_t<R>>, Arg>) {
            enc.add_contiguous(std::ranges::data(input) + i, k);
          } else {
            enc.add_n(it, k);
          }
          backend_->submit(id, i, enc.finish());
        }
      } else {
        auto it = std::ranges::begin(input);
        for (std::size_t i = 0, k = 0; i < n; i = k) {
          enc.begin();
          for (k = i; k < std::min(n, i + chunk) && enc.item_bytes() < max_bytes; ++k, ++it) enc.add(*it);
          backend_->submit(id, i, enc.finish());
        }
      }
    });
    return AsyncResult<std::vector<V>>(core);
  }

  // imap/imap_unordered; with a deadline and `per_call` for executor map (a
  // timeout, and its calls not started cancelled when it is dropped).
  template <bool Ordered, class F, class R>
  auto stream(F&& f, R&& input, MapOptions options,
              std::optional<std::chrono::steady_clock::time_point> deadline = std::nullopt, bool per_call = false);

  // Executor shutdown(cancel_futures): the queued jobs no worker has taken.
  std::size_t cancel_queued_jobs() { return backend_->cancel_queued_jobs(); }

  std::unique_ptr<detail::PoolBackend> backend_;
  int processes_ = 0;
  // The lazy maps close() feeds to their end (shared with them: a map may outlive its pool).
  std::shared_ptr<detail::LazyFeeds> feeds_ = std::make_shared<detail::LazyFeeds>();
};

template <bool Ordered, class F, class R>
auto Pool::stream(F&& f, R&& input, MapOptions options, std::optional<std::chrono::steady_clock::time_point> deadline,
                  bool per_call) {
  using Fn = std::decay_t<F>;
  using Elem = std::ranges::range_reference_t<R>;
  using Arg = typename decltype(detail::map_arg_for<Fn, Elem>())::type;
  using Res = detail::pool_result_t<Fn, Arg, false>;
  using V = detail::stored_value_t<Res>;
  check_types<Fn, Arg, Res>();
  std::size_t chunk = detail::checked_chunksize(options.chunksize);
  if (!backend_ || !backend_->accepting()) throw UsageError("mproc: Pool is not running (closed or terminated)");
  using Src = detail::StreamSource<Ordered, Fn, Arg, false, R>;
  return IMapResults<V, Src>(detail::with_deadline_t{}, deadline, backend_.get(), feeds_, per_call, processes_, f,
                             std::forward<R>(input), chunk,
                             detail::make_progress(options.progress, options.desc, detail::known_size(input)));
}

}  // namespace mproc
