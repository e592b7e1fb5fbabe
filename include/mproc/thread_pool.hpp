// mproc/thread_pool.hpp — multiprocessing.pool.ThreadPool for C++.
//
//   mproc::ThreadPool pool({.processes = 8});            // 8 threads
//   std::vector<int> squares = pool.map(square, std::views::iota(0, 100));
//   auto r = pool.apply_async([&cache](int k) { return cache.get(k); }, 3);
//   for (auto& page : pool.imap_unordered(fetch, urls)) ...
//
// The same methods, results (AsyncResult<T>) and imap ranges as mproc::Pool, so a
// program switches between threads and processes by changing one word. What
// differs, because nothing crosses a process boundary (docs/pool.md, "ThreadPool"):
//   * any callable (capturing lambdas, std::function, mutable functors) and any
//     movable argument type; nothing is serialized, results are moved;
//   * a task's exception comes back as itself (the original type, rethrown), not
//     as TaskError; there is no WorkerLostError (a crashing task ends the program);
//   * no per-task timeout (a thread cannot be stopped): PoolOptions::timeout and
//     max_memory_mb are UsageErrors; start_method is ignored; retries has nothing
//     to retry;
//   * terminate() cancels queued work and waits for running tasks to finish.
#pragma once

#include "mproc/detail/config.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "mproc/pool_options.hpp"
#include "mproc/progress.hpp"
#include "mproc/results.hpp"
#include "mproc/timeline.hpp"

namespace mproc {

namespace detail {

class TimelineRecorder;  // mproc/detail/timeline_recorder.hpp

/// A ThreadTask's part in its pool's timeline (PoolOptions::timeline). Inert —
/// a null pointer and one untaken branch per item — unless the pool armed it when
/// it was posted. run() brackets each item with item_start()/item_end() and calls
/// commit() before it makes results visible, so a result that can be seen has its
/// record (src/pool/thread_pool.cpp).
class TaskStamp {
 public:
  TaskStamp() noexcept;
  ~TaskStamp();
  TaskStamp(const TaskStamp&) = delete;
  TaskStamp& operator=(const TaskStamp&) = delete;
  void item_start() noexcept {
    if (s_) started();
  }
  /// Ends the item started last (nothing if none is open).
  void item_end(bool raised) noexcept {
    if (s_) ended(raised);
  }
  /// Records the items ended since the last commit.
  void commit() noexcept {
    if (s_) flush();
  }
  /// The task's items: [first, first + count) of its call.
  void set_items(std::uint64_t first, std::uint64_t count) noexcept {
    first_ = first;
    count_ = count;
  }
  void set_worker(int worker) noexcept { worker_ = worker; }
  /// By the pool, when it queues the task: records go to `rec`. Throws std::bad_alloc.
  void arm(std::shared_ptr<TimelineRecorder> rec, std::uint64_t call, std::int64_t queued_ns);
  /// The task's items not recorded yet will not run: recorded with `why`.
  void unrun(TaskOutcome why) noexcept;

 private:
  struct State;  // what an armed stamp measures
  void started() noexcept;
  void ended(bool raised) noexcept;
  void flush() noexcept;
  std::unique_ptr<State> s_;
  std::uint64_t first_ = 0, count_ = 1;
  int worker_ = -1;
};

/// One unit of work of a ThreadPool: an apply, a chunk of a map, a submit.
class ThreadTask {
 public:
  virtual ~ThreadTask() = default;
  /// Runs it in a pool thread; outcomes go to its results. Never throws.
  virtual void run() noexcept = 0;
  /// It will never run (terminate, cancellation, a failed initializer): its
  /// results fail with `error`. Never throws.
  virtual void fail(std::exception_ptr error) noexcept = 0;
  /// The task's timeline record (inert without PoolOptions::timeline).
  TaskStamp stamp;
};

/// The untyped engine under ThreadPool: threads, a FIFO queue of tasks,
/// maxtasksperchild, the initializer (src/pool/thread_pool.cpp).
class ThreadPoolCore {
 public:
  /// Starts `threads` threads; each runs `initializer` (if any) before its first
  /// task. With `timeline`, tasks posted with a call number are recorded.
  ThreadPoolCore(int threads, long long maxtasks, std::function<void()> initializer, bool timeline = false);
  /// terminate() and join().
  ~ThreadPoolCore();
  ThreadPoolCore(const ThreadPoolCore&) = delete;
  ThreadPoolCore& operator=(const ThreadPoolCore&) = delete;

  /// Queues tasks (one lock, one wake-up). A continuation (the next chunks of an
  /// imap already running) is accepted after close(). Throws UsageError when the
  /// pool takes no new work, CancelledError after terminate(). `call`: the
  /// open_call() number of the tasks' call, for the timeline.
  void post(std::vector<std::unique_ptr<ThreadTask>> tasks, bool continuation = false, std::uint64_t call = 0);
  void post(std::unique_ptr<ThreadTask> task, bool continuation = false, std::uint64_t call = 0);
  /// The next call's number (1, 2, ...) when recording a timeline, else 0.
  std::uint64_t open_call() noexcept;
  /// The timeline recorder, or null.
  std::shared_ptr<TimelineRecorder> timeline() const;
  /// An imap holds the pool open while it may still post chunks: after close(),
  /// the threads wait for it before they exit.
  void open_stream();
  void close_stream() noexcept;
  /// Fails every queued task with CancelledError; returns how many.
  std::size_t cancel_queued_jobs();

  void close();
  void terminate();
  void join();
  /// Throws UsageError (saying why) unless the pool takes new work.
  void check_accepting() const;
  int threads() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// CancelledError(why) as an exception_ptr.
std::exception_ptr cancelled_error(const char* why);

/// initializer(initargs...) as a callable that can run many times (once per
/// thread): the arguments are copied once and passed as lvalues to every call.
template <class F, class... Args>
std::function<void()> bind_initializer(F&& initializer, Args&&... initargs) {
  auto state = std::make_shared<std::tuple<std::decay_t<F>, std::decay_t<Args>...>>(std::forward<F>(initializer),
                                                                                 std::forward<Args>(initargs)...);
  return [state] { std::apply([](auto& f, auto&... a) { std::invoke(f, a...); }, *state); };
}

template <class F, class T, std::size_t... I>
constexpr bool applicable_impl(std::index_sequence<I...>) {
  return std::is_invocable_v<F, decltype(std::get<I>(std::declval<T>()))...>;
}
/// Whether std::apply(f, t) compiles (t a tuple-like value of type T).
template <class F, class T>
constexpr bool applicable_v =
    applicable_impl<F, T>(std::make_index_sequence<std::tuple_size_v<std::remove_cvref_t<T>>>{});

template <bool Star, class Fn, class E>
constexpr bool item_callable() {
  if constexpr (Star) {
    return applicable_v<Fn&, E&&> || applicable_v<Fn&, E&>;
  } else {
    return std::is_invocable_v<Fn&, E&&> || std::is_invocable_v<Fn&, E&>;
  }
}

/// f(item) (map) or f(item's elements...) (starmap), handing the item over as an
/// rvalue when f accepts one and as an lvalue otherwise (f(T&)).
template <bool Star, class Fn, class E>
decltype(auto) call_item(Fn& f, E& item) {
  if constexpr (Star) {
    if constexpr (applicable_v<Fn&, E&&>) {
      return std::apply(f, std::move(item));
    } else {
      return std::apply(f, item);
    }
  } else if constexpr (std::is_invocable_v<Fn&, E&&>) {
    return std::invoke(f, std::move(item));
  } else {
    return std::invoke(f, item);
  }
}

template <bool Star, class Fn, class E>
auto thread_result_of() {
  if constexpr (item_callable<Star, Fn, E>()) {
    return std::type_identity<std::remove_cvref_t<decltype(call_item<Star>(std::declval<Fn&>(), std::declval<E&>()))>>{};
  } else {
    return std::type_identity<not_invocable>{};
  }
}
/// What f returns for one element of a map (Star: starmap) over elements E.
template <bool Star, class Fn, class E>
using thread_result_t = typename decltype(thread_result_of<Star, Fn, E>())::type;

/// Runs `call` and returns its result as the stored value V (monostate for void).
template <class V, class Call>
V invoke_to_value(Call&& call) {
  if constexpr (std::is_void_v<std::invoke_result_t<Call>>) {
    std::forward<Call>(call)();
    return V{};
  } else {
    return std::forward<Call>(call)();
  }
}

/// apply_async / submit: f(args...) into `core` (a ResultCore, or the executor's
/// FutureCore, whose try_start() lets a cancelled task be skipped).
template <class Core, class Fn, class Args>
class ApplyTask final : public ThreadTask {
 public:
  ApplyTask(std::shared_ptr<Core> core, Fn f, Args args) : core_(std::move(core)), f_(std::move(f)), args_(std::move(args)) {}
  void run() noexcept override {
    if constexpr (requires(Core& c) { c.try_start(); }) {
      if (!core_->try_start()) {  // cancelled while queued
        stamp.unrun(TaskOutcome::cancelled);
        return;
      }
    }
    stamp.item_start();
    try {
      auto v = invoke_to_value<typename Core::V>([&]() -> decltype(auto) { return std::apply(f_, std::move(args_)); });
      stamp.item_end(false);
      stamp.commit();
      core_->finish(std::move(v), nullptr);
    } catch (...) {
      stamp.item_end(true);
      stamp.commit();
      core_->finish(std::nullopt, std::current_exception());
    }
  }
  void fail(std::exception_ptr error) noexcept override {
    if constexpr (requires(Core& c) { c.try_cancel(); }) core_->try_cancel();
    core_->finish(std::nullopt, std::move(error));
  }

 private:
  std::shared_ptr<Core> core_;
  Fn f_;
  Args args_;
};

/// The shared state of a ThreadPool map: one slot per item, filled by the chunks.
template <class V>
class ThreadGather {
 public:
  ThreadGather(std::size_t n, std::shared_ptr<ResultCore<std::vector<V>>> core, std::shared_ptr<ProgressBar> bar)
      : values_(n), left_(n), core_(std::move(core)), bar_(std::move(bar)) {}
  void put(std::size_t i, V&& v) {
    values_[i].emplace(std::move(v));
    if (bar_) bar_->update(1);
  }
  /// Like Python's MapResult (and Pool): the first failure makes the result ready.
  void failed(std::exception_ptr e, std::uint64_t items) noexcept {
    if (bar_) {
      bar_->update(0, items);
      bar_->close();  // the final line before map() throws
    }
    if (!failed_.exchange(true)) core_->finish(std::nullopt, std::move(e));
  }
  /// `n` items of a chunk are settled; the last one in completes the map.
  void settled(std::size_t n) noexcept {
    if (left_.fetch_sub(n) != n || failed_.load()) return;
    try {
      std::vector<V> out;
      out.reserve(values_.size());
      for (auto& v : values_) out.push_back(std::move(*v));
      core_->finish(std::move(out), nullptr);
    } catch (...) {
      core_->finish(std::nullopt, std::current_exception());
    }
  }

 private:
  std::vector<std::optional<V>> values_;  // optional: V need not be default-constructible
  std::atomic<std::size_t> left_;
  std::atomic<bool> failed_{false};
  std::shared_ptr<ResultCore<std::vector<V>>> core_;
  std::shared_ptr<ProgressBar> bar_;
};

/// Items [from, to) of a ThreadPool map.
template <bool Star, class Fn, class Elem, class V>
class GatherChunk final : public ThreadTask {
 public:
  GatherChunk(std::shared_ptr<Fn> f, std::shared_ptr<std::vector<Elem>> items, std::size_t from, std::size_t to,
              std::shared_ptr<ThreadGather<V>> state)
      : f_(std::move(f)), items_(std::move(items)), from_(from), to_(to), state_(std::move(state)) {
    stamp.set_items(from, to - from);
  }
  void run() noexcept override {
    for (std::size_t i = from_; i < to_; ++i) {
      stamp.item_start();
      try {
        auto v = invoke_to_value<V>([&]() -> decltype(auto) { return call_item<Star>(*f_, (*items_)[i]); });
        stamp.item_end(false);
        state_->put(i, std::move(v));
      } catch (...) {
        stamp.item_end(true);
        stamp.commit();  // the failure may make the map's result ready
        state_->failed(std::current_exception(), 1);
      }
    }
    stamp.commit();
    state_->settled(to_ - from_);
  }
  void fail(std::exception_ptr error) noexcept override {
    state_->failed(std::move(error), to_ - from_);
    state_->settled(to_ - from_);
  }

 private:
  std::shared_ptr<Fn> f_;
  std::shared_ptr<std::vector<Elem>> items_;
  std::size_t from_, to_;
  std::shared_ptr<ThreadGather<V>> state_;
};

/// The shared state of a ThreadPool imap: outcomes by index, plus the worker
/// time the adaptive chunk size needs.
template <class V>
struct ThreadStream {
  OutcomeBuffer<V> buffer;
  std::atomic<std::uint64_t> items{0};
  std::atomic<std::int64_t> ns{0};
  std::shared_ptr<ProgressBar> bar;
  // An executor's map that timed out or was dropped: chunks not started yet
  // do not run (Python's Executor.map cancels its pending futures).
  std::atomic<bool> cancelled{false};
};

/// One chunk of a ThreadPool imap: its items are owned here.
template <class Fn, class Elem, class V>
class StreamChunk final : public ThreadTask {
 public:
  StreamChunk(std::shared_ptr<Fn> f, std::vector<Elem> items, std::uint64_t first, std::shared_ptr<ThreadStream<V>> state)
      : f_(std::move(f)), items_(std::move(items)), first_(first), state_(std::move(state)) {
    stamp.set_items(first, items_.size());
  }
  void run() noexcept override {
    using Outcome = typename OutcomeBuffer<V>::Outcome;
    if (state_->cancelled.load(std::memory_order_acquire)) {
      stamp.unrun(TaskOutcome::cancelled);
      fail(cancelled_error("mproc: the map's call was cancelled before it started"));
      return;
    }
    auto t0 = std::chrono::steady_clock::now();
    std::vector<Outcome> out;
    try {
      out.reserve(items_.size());
    } catch (...) {
      fail(std::current_exception());
      return;
    }
    for (auto& item : items_) {
      stamp.item_start();
      try {
        out.emplace_back(invoke_to_value<V>([&]() -> decltype(auto) { return call_item<false>(*f_, item); }));
        stamp.item_end(false);
        if (state_->bar) state_->bar->update(1);
      } catch (...) {
        stamp.item_end(true);
        out.emplace_back(std::current_exception());
        if (state_->bar) state_->bar->update(0, 1);
      }
    }
    stamp.commit();
    state_->ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    state_->items += items_.size();
    state_->buffer.add([&](auto& buffered) {
      for (std::size_t k = 0; k < out.size(); ++k) buffered.emplace(first_ + k, std::move(out[k]));
    });
  }
  void fail(std::exception_ptr error) noexcept override {
    if (state_->bar) state_->bar->update(0, items_.size());
    try {
      state_->buffer.add([&](auto& buffered) {
        for (std::size_t k = 0; k < items_.size(); ++k) buffered.emplace(first_ + k, error);
      });
    } catch (...) {
    }
  }

 private:
  std::shared_ptr<Fn> f_;
  std::vector<Elem> items_;
  std::uint64_t first_;
  std::shared_ptr<ThreadStream<V>> state_;
};

/// The feeding side of a ThreadPool imap: reads the input lazily, a bounded
/// window ahead of the consumer (as Pool's StreamSource does), and posts chunks.
/// An executor's map (`per_call`) cancels its chunks not started once it times
/// out or is dropped before its end.
template <bool Ordered, class Fn, class Range>
class ThreadStreamSource final : LazyFeed {
  using Elem = std::remove_cvref_t<std::ranges::range_reference_t<Range>>;
  using V = stored_value_t<thread_result_t<false, Fn, Elem>>;

 public:
  ThreadStreamSource(ThreadPoolCore* core, std::shared_ptr<LazyFeeds> feeds, bool per_call, int workers,
                     std::shared_ptr<Fn> f, Range&& input, std::size_t chunk, std::shared_ptr<ProgressBar> bar)
      : core_(core),
        feeds_(std::move(feeds)),
        per_call_(per_call),
        workers_(workers),
        f_(std::move(f)),
        input_(std::views::all(std::forward<Range>(input))),
        it_(std::ranges::begin(input_)),
        state_(std::make_shared<ThreadStream<V>>()) {
    chunk_.fixed = chunk;
    state_->bar = std::move(bar);
    core_->open_stream();
    call_ = core_->open_call();
    feeds_->add(this);
    // A close() between the caller's check and add() did not feed this map: it
    // feeds itself.
    try {
      core_->check_accepting();
    } catch (...) {
      std::lock_guard lock(mu_);
      refill(true);
    }
  }
  ThreadStreamSource(const ThreadStreamSource&) = delete;
  ThreadStreamSource& operator=(const ThreadStreamSource&) = delete;
  ~ThreadStreamSource() {
    feeds_->remove(this);  // waits for a close() feeding this map
    std::lock_guard lock(mu_);
    if (per_call_) state_->cancelled.store(true, std::memory_order_release);
    seal();
    if (state_->bar) state_->bar->close();
  }

  /// The next result, or empty at the end; TimeoutError past `deadline`.
  std::optional<V> next(std::optional<std::chrono::steady_clock::time_point> deadline = {}) {
    {
      std::lock_guard lock(mu_);
      refill(false);
      if (taken_ == submitted_) {
        if (state_->bar) state_->bar->close();  // the final line before the loop ends
        if (input_error_) std::rethrow_exception(std::exchange(input_error_, nullptr));
        return std::nullopt;
      }
    }
    auto got = state_->buffer.take(Ordered ? std::optional<std::uint64_t>(taken_) : std::nullopt, deadline);
    if (!got) {
      if (per_call_) {
        // Python's Executor.map cancels what has not started once it raises.
        std::lock_guard lock(mu_);
        state_->cancelled.store(true, std::memory_order_release);
        seal();
      }
      throw TimeoutError("mproc: the next result was not ready within the map's timeout");
    }
    ++taken_;  // this thread's alone (feed_rest does not read it): no lock
    chunk_.items_done = state_->items.load();
    chunk_.ns_done = state_->ns.load();
    if (auto* e = std::get_if<std::exception_ptr>(&got->second)) std::rethrow_exception(*e);
    return std::move(std::get<V>(got->second));
  }

 private:
  void feed_rest() noexcept override {
    std::lock_guard lock(mu_);
    refill(true);
  }

  // Reads and posts input, with mu_ held: up to the window, or (`all`) to its end.
  void refill(bool all) noexcept {
    // The window of Pool's StreamSource: in flight + buffered ≤ ~4 chunks per thread.
    std::size_t chunk = chunk_.next();
    std::uint64_t window = std::max<std::uint64_t>(2 * static_cast<std::uint64_t>(workers_),
                                                   4 * static_cast<std::uint64_t>(workers_) * chunk);
    while (!sealed_ && (all || submitted_ - taken_ < window)) {
      bool input_ended = false;
      std::vector<Elem> items;
      try {
        while (items.size() < chunk && it_ != std::ranges::end(input_)) {
          items.emplace_back(*it_);
          ++it_;
        }
        input_ended = it_ == std::ranges::end(input_);
      } catch (...) {
        // Raised by the iteration once the results before it have been taken.
        input_error_ = std::current_exception();
        input_ended = true;
      }
      if (std::size_t n = items.size()) {
        try {
          core_->post(std::make_unique<StreamChunk<Fn, Elem, V>>(f_, std::move(items), submitted_, state_), true, call_);
          submitted_ += n;
        } catch (...) {
          // Terminated meanwhile: raised once the results already queued are taken.
          if (!input_error_) input_error_ = std::current_exception();
          input_ended = true;
        }
      }
      if (input_ended) {
        seal();
        if (state_->bar) state_->bar->set_total(submitted_);  // the input's length is known now
      }
    }
  }
  void seal() {
    if (sealed_) return;
    sealed_ = true;
    core_->close_stream();
  }

  ThreadPoolCore* core_;
  std::shared_ptr<LazyFeeds> feeds_;
  const bool per_call_;
  int workers_;
  std::shared_ptr<Fn> f_;
  // Guards the feeding state below (not taken_, the iterating thread's own):
  // close() may feed the rest of the input from another thread (feed_rest)
  // while this map is iterated.
  std::mutex mu_;
  std::views::all_t<Range> input_;
  std::ranges::iterator_t<std::views::all_t<Range>> it_;
  std::shared_ptr<ThreadStream<V>> state_;
  std::uint64_t submitted_ = 0;
  std::uint64_t taken_ = 0;
  bool sealed_ = false;
  std::exception_ptr input_error_;
  AdaptiveChunk chunk_;
  std::uint64_t call_ = 0;  // for the timeline
};

}  // namespace detail

/// A pool of threads with Pool's interface (multiprocessing.pool.ThreadPool).
/// All members may be called from several threads. The destructor terminates:
/// queued work is cancelled (CancelledError) and running tasks are waited for;
/// call close() and join() first to let queued work finish.
class ThreadPool : public detail::MapMethods<ThreadPool> {
 public:
  /// Starts `options.processes` threads (0: cpu_count()). Throws UsageError for
  /// invalid options, including a `timeout` or `max_memory_mb` (a thread can be
  /// neither stopped nor recycled for memory: use Pool).
  explicit ThreadPool(PoolOptions options = {}) { start(options, nullptr); }
  /// `processes` threads (0: cpu_count()), as Python's ThreadPool(4).
  explicit ThreadPool(int processes) : ThreadPool(PoolOptions{.processes = processes}) {}
  /// With an initializer, run in each thread before its first task (and in each
  /// replacement thread under maxtasksperchild). Any callable; the arguments are
  /// copied once and passed to every call. If it throws, the pool breaks: queued
  /// and later-queued tasks fail with that exception, new calls get UsageError.
  template <class F, class... Args>
  ThreadPool(PoolOptions options, F&& initializer, Args&&... initargs) {
    start(options, detail::bind_initializer(std::forward<F>(initializer), std::forward<Args>(initargs)...));
  }
  /// ThreadPool(processes, initializer, initargs...), Python's positional form.
  template <class F, class... Args>
  ThreadPool(int processes, F&& initializer, Args&&... initargs)
      : ThreadPool(PoolOptions{.processes = processes}, std::forward<F>(initializer), std::forward<Args>(initargs)...) {}
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool();

  // ---- apply -------------------------------------------------------------------

  /// f(args...) in a pool thread, asynchronously. Any callable; the arguments are
  /// decay-copied (std::ref passes a reference) and moved into the call.
  template <class F, class... Args>
  auto apply_async(F&& f, Args&&... args) {
    auto core = apply_job<detail::ResultCore>(std::forward<F>(f), std::forward<Args>(args)...);
    return AsyncResult<typename decltype(core)::element_type::result_type>(std::move(core));
  }
  // apply, map(_async), starmap(_async), imap, imap_unordered: detail::MapMethods,
  // shared with Pool.

  // ---- lifetime ------------------------------------------------------------------------

  /// No new work; threads exit when the queued work is done. Idempotent. A lazy
  /// map not read to its end has the rest of its input read and queued first,
  /// so that all its calls run, as in Python (an endless input: never returns).
  void close();
  /// Cancel queued work (its results fail with CancelledError) and wait for the
  /// running tasks to finish: a thread cannot be killed. Idempotent.
  void terminate();
  /// Wait for the threads to exit. UsageError unless close() or terminate() came first.
  void join();
  /// Number of threads (Pool's name, so code switches with one word).
  int processes() const;
  /// The per-task timeline recorded so far (worker = thread slot, pid = this
  /// process). Throws UsageError unless the pool was created with
  /// PoolOptions::timeline.
  Timeline timeline() const;

 private:
  friend class detail::MapMethods<ThreadPool>;
  friend class ThreadPoolExecutor;
  template <class>
  friend class detail::BasicExecutor;

  void start(const PoolOptions& options, std::function<void()> initializer);
  void check_running() const;

  // apply_async into a new Core<R> (ResultCore, or the executor's FutureCore).
  template <template <class> class Core, class F, class... Args>
  auto apply_job(F&& f, Args&&... args) {
    using Fn = std::decay_t<F>;
    using Tuple = std::tuple<std::decay_t<Args>...>;
    static_assert(std::is_invocable_v<Fn&, std::decay_t<Args>&&...>,
                  "mproc: the ThreadPool function cannot be called with these arguments (f(args...))");
    using R = std::remove_cvref_t<std::invoke_result_t<Fn&, std::decay_t<Args>&&...>>;
    check_running();
    auto core = std::make_shared<Core<R>>();
    core_->post(std::make_unique<detail::ApplyTask<Core<R>, Fn, Tuple>>(core, Fn(std::forward<F>(f)),
                                                                         Tuple(std::forward<Args>(args)...)),
                false, core_->open_call());
    return core;
  }

  template <bool Star, class F, class R>
  auto gather(F&& f, R&& input, MapOptions options) {
    using Fn = std::decay_t<F>;
    using Elem = std::remove_cvref_t<std::ranges::range_reference_t<R>>;
    using Res = detail::thread_result_t<Star, Fn, Elem>;
    static_assert(!std::is_same_v<Res, detail::not_invocable>,
                  "mproc: the ThreadPool function cannot be called with the input's elements (map: f(element); "
                  "starmap: f(elements of the tuple...))");
    using V = detail::stored_value_t<Res>;
    std::size_t chunk = detail::checked_chunksize(options.chunksize);
    check_running();
    // Python reads the whole input first (an exception while reading it comes out
    // of map() before anything runs); the items then live here, shared by the chunks.
    auto items = std::make_shared<std::vector<Elem>>();
    if constexpr (std::ranges::sized_range<R>) items->reserve(std::ranges::size(input));
    if constexpr (std::is_lvalue_reference_v<R> || std::ranges::view<std::remove_cvref_t<R>>) {
      for (auto&& e : input) items->emplace_back(std::forward<decltype(e)>(e));
    } else {
      for (auto& e : input) items->emplace_back(std::move(e));  // a container handed over: its elements too
    }
    std::size_t n = items->size();
    if (chunk == 0) chunk = detail::auto_chunksize(n, processes());
    auto core = std::make_shared<detail::ResultCore<std::vector<V>>>();
    auto bar = detail::make_progress(options.progress, options.desc, n);
    if (n == 0) {
      core->finish(std::vector<V>{}, nullptr);
      return AsyncResult<std::vector<V>>(core);
    }
    auto state = std::make_shared<detail::ThreadGather<V>>(n, core, std::move(bar));
    auto fn = std::make_shared<Fn>(std::forward<F>(f));
    std::vector<std::unique_ptr<detail::ThreadTask>> tasks;
    tasks.reserve((n + chunk - 1) / chunk);
    for (std::size_t i = 0; i < n; i += chunk) {
      tasks.push_back(std::make_unique<detail::GatherChunk<Star, Fn, Elem, V>>(fn, items, i, std::min(n, i + chunk), state));
    }
    core_->post(std::move(tasks), false, core_->open_call());
    return AsyncResult<std::vector<V>>(core);
  }

  template <bool Ordered, class F, class R>
  auto stream(F&& f, R&& input, MapOptions options,
              std::optional<std::chrono::steady_clock::time_point> deadline = std::nullopt, bool per_call = false) {
    using Fn = std::decay_t<F>;
    using Elem = std::remove_cvref_t<std::ranges::range_reference_t<R>>;
    using Res = detail::thread_result_t<false, Fn, Elem>;
    static_assert(!std::is_same_v<Res, detail::not_invocable>,
                  "mproc: the ThreadPool function cannot be called with the input's elements (imap: f(element))");
    using V = detail::stored_value_t<Res>;
    std::size_t chunk = detail::checked_chunksize(options.chunksize);
    check_running();
    using Src = detail::ThreadStreamSource<Ordered, Fn, R>;
    auto bar = detail::make_progress(options.progress, options.desc, detail::known_size(input));
    return IMapResults<V, Src>(detail::with_deadline_t{}, deadline, core_.get(), feeds_, per_call, threads_,
                               std::make_shared<Fn>(std::forward<F>(f)), std::forward<R>(input), chunk, std::move(bar));
  }

  // Executor shutdown(cancel_futures): the queued tasks no thread has started.
  std::size_t cancel_queued_jobs() { return core_->cancel_queued_jobs(); }

  std::unique_ptr<detail::ThreadPoolCore> core_;
  int threads_ = 0;
  // The lazy maps close() feeds to their end (shared with them: a map may outlive its pool).
  std::shared_ptr<detail::LazyFeeds> feeds_ = std::make_shared<detail::LazyFeeds>();
};

}  // namespace mproc
