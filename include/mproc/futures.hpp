// mproc/futures.hpp — the part of concurrent.futures both executors share:
// Future<T>, as_completed(), wait() over futures, ExecutorOptions, and what
// ProcessPoolExecutor and ThreadPoolExecutor have in common (detail::BasicExecutor).
// Nothing here serializes or knows the process pool: mproc/thread_executor.hpp
// (ThreadPoolExecutor) includes this and mproc/thread_pool.hpp, so a program
// that uses only threads compiles neither mproc::Pool nor the serializer nor
// cereal; mproc/process_executor.hpp adds ProcessPoolExecutor over mproc::Pool.
// mproc/executor.hpp includes both (docs/executor.md).
#pragma once

#include "mproc/detail/config.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "mproc/background_error.hpp"
#include "mproc/detail/timeout.hpp"  // OptionalTimeout, deadline_after
#include "mproc/error.hpp"
#include "mproc/keyboard_interrupt.hpp"  // interruptible_wait_until
#include "mproc/pool_options.hpp"        // MapOptions, StartMethod
#include "mproc/results.hpp"             // ResultCore, AsyncResult, IMapResults
#include "mproc/timeline.hpp"

namespace mproc {

/// Executor settings (the constructor arguments of Python's executors).
struct ExecutorOptions {
  /// Workers; 0: Python's default (processes: cpu_count(); threads:
  /// min(32, cpu_count() + 4)). Negative: UsageError.
  int max_workers = 0;
  /// Replace a worker after this many tasks: a fresh process, or a fresh thread
  /// (its initializer runs again, its thread_locals start over). 0: never.
  long long max_tasks_per_child = 0;
  /// How worker processes start (Python's mp_context); ThreadPoolExecutor ignores it.
  std::optional<StartMethod> start_method{};
  /// Record a TaskRecord per task (timeline(), docs/timeline.md).
  bool timeline = false;
};

namespace detail {

/// Futures that completed, in order, for as_completed() and wait().
struct CompletionQueue {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::size_t> order;  // indices into the caller's futures
  std::size_t completed = 0;
  std::size_t raised = 0;  // finished with an exception (not cancelled)
  void push(std::size_t index, bool with_exception) {
    {
      std::lock_guard lock(mu);
      order.push_back(index);
      ++completed;
      raised += with_exception;
    }
    cv.notify_all();
  }
};

template <class T>
class WaitSet;

class PoolBackend;  // mproc/detail/pool_backend.hpp: only ProcessPoolExecutor's TUs need it

/// ProcessPoolExecutor's way into its pool for Future::cancel()/running(). The
/// executor detaches it before the pool goes away, so a Future that outlives its
/// executor answers false instead of touching a dead pool. No lock is held while
/// the pool runs a cancelled future's callbacks (they may use other futures).
/// Compiled in src/pool/executor.cpp, so that Future (and a ThreadPoolExecutor
/// program) does not need the process pool's headers.
class PoolGate {
 public:
  explicit PoolGate(PoolBackend* core) noexcept : core_(core) {}
  PoolGate(const PoolGate&) = delete;
  PoolGate& operator=(const PoolGate&) = delete;
  /// The backend's cancel_job(job); false once detached, or if it threw.
  bool cancel(std::uint64_t job);
  /// The backend's job_dispatched(job); false once detached, or if it threw.
  bool dispatched(std::uint64_t job);
  /// Waits for calls in progress; later calls answer false.
  void detach();

 private:
  // Calls op(backend, job) unless detached, counted so that detach() waits for it.
  bool with_core(bool (*op)(PoolBackend&, std::uint64_t), std::uint64_t job);
  std::mutex mu_;
  std::condition_variable idle_;
  std::size_t users_ = 0;
  PoolBackend* core_;
};

/// The shared state of a Future: a ResultCore (so the pools fill it as they fill
/// an AsyncResult) plus what cancel()/running() need, and done callbacks that run
/// after the future is done (concurrent.futures' order; an AsyncResult's then()
/// callbacks run before it is ready, multiprocessing's order). The pools call
/// this finish(), not ResultCore's: they hold the core by its own type.
template <class T>
struct FutureCore : ResultCore<T> {
  using typename ResultCore<T>::V;
  static constexpr std::uint8_t pending = 0, started = 1, cancelled = 2;
  /// ThreadPoolExecutor: the task's thread moves pending → started; cancel()
  /// moves pending → cancelled. Whoever wins decides whether it runs.
  std::atomic<std::uint8_t> stage{pending};
  /// ProcessPoolExecutor: cancel through the pool (null for threads).
  std::shared_ptr<PoolGate> gate;
  std::uint64_t job = 0;

  bool try_start() noexcept { return advance(started); }
  bool try_cancel() noexcept { return advance(cancelled); }

  /// Sets the outcome (the first call wins), then tells the waiters and runs the
  /// done callbacks, in the order they were added.
  void finish(std::optional<V> v, std::exception_ptr e) {
    ResultCore<T>::finish(std::move(v), std::move(e));
    std::vector<std::function<void()>> to_run;
    std::vector<Waiter> ws;
    {
      std::lock_guard lock(this->mu);
      to_run.swap(done_callbacks);
      ws.swap(waiters);
    }
    bool r = raised();
    for (auto& w : ws) w.queue->push(w.index, r);
    for (auto& f : to_run) f();
  }

  /// Keeps `fn` for finish(); false (and `fn` untouched) if the future is done:
  /// the caller runs it.
  bool add_done_callback(std::function<void()>& fn) {
    std::lock_guard lock(this->mu);
    if (this->ready) return false;
    done_callbacks.push_back(std::move(fn));
    return true;
  }

  // as_completed()/wait() waiting on this future; each removes itself after.
  struct Waiter {
    std::shared_ptr<CompletionQueue> queue;
    std::size_t index;
  };

  /// Adds a waiter, or tells it at once if the future is done.
  void add_waiter(const std::shared_ptr<CompletionQueue>& q, std::size_t index) {
    {
      std::lock_guard lock(this->mu);
      if (!this->ready) {
        waiters.push_back({q, index});
        return;
      }
    }
    q->push(index, raised());
  }
  void remove_waiter(const CompletionQueue* q) {
    std::lock_guard lock(this->mu);
    std::erase_if(waiters, [&](const Waiter& w) { return w.queue.get() == q; });
  }
  /// Done with an exception, other than by cancellation.
  bool raised() {
    std::lock_guard lock(this->mu);
    return this->ready && this->error && !cancelled_locked();
  }
  /// Finished by cancellation (with mu held).
  bool cancelled_locked() const {
    if (!this->ready || !this->error) return false;
    // A thread task that threw CancelledError itself was not cancelled; for
    // processes the task's own exceptions arrive as TaskError.
    if (!gate && stage.load(std::memory_order_acquire) != cancelled) return false;
    try {
      std::rethrow_exception(this->error);
    } catch (const CancelledError&) {
      return true;
    } catch (...) {
      return false;
    }
  }

 private:
  bool advance(std::uint8_t to) noexcept {
    std::uint8_t from = pending;
    return stage.compare_exchange_strong(from, to, std::memory_order_acq_rel);
  }
  std::vector<std::function<void()>> done_callbacks;  // guarded by mu
  std::vector<Waiter> waiters;                        // guarded by mu
};

}  // namespace detail

/// The result of Executor::submit (concurrent.futures.Future). A handle: copies
/// share the state; safe to use from several threads.
template <class T>
class [[nodiscard]] Future {
  using Core = detail::FutureCore<T>;

 public:
  explicit Future(std::shared_ptr<Core> core) : core_(std::move(core)) {}

  /// Blocks until done; returns the value or throws the task's exception
  /// (threads: the original one; processes: TaskError, WorkerLostError), or
  /// CancelledError if it was cancelled. Python's result().
  T get() const { return result().get(); }
  /// As get(), but throws TimeoutError if not done within `timeout`.
  template <class Rep, class Period>
  T get(std::chrono::duration<Rep, Period> timeout) const {
    return result().get(timeout);
  }
  void wait() const { result().wait(); }
  /// Waits at most `timeout`; true when done.
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) const {
    return result().wait(timeout);
  }
  /// Finished, failed or cancelled. Never blocks.
  bool done() const { return result().ready(); }
  bool ready() const { return done(); }

  /// Cancels the task if it has not started: true if it will never run (or was
  /// cancelled already), false once it runs or is done. Threads: true until a
  /// thread takes the task. Processes: true until a worker takes the task, even
  /// when it already waits in the workers' task channel (docs/executor.md). A
  /// cancelled future is done: get() and exception() throw CancelledError; its
  /// done callbacks run.
  bool cancel() {
    if (core_->gate) {
      if (!done() && core_->gate->cancel(core_->job)) core_->try_cancel();
    } else if (core_->try_cancel()) {
      core_->finish(std::nullopt, std::make_exception_ptr(CancelledError("mproc: the future was cancelled")));
      return true;
    }
    return cancelled();
  }
  /// Whether cancel() (or shutdown(cancel_futures)) cancelled it.
  bool cancelled() const {
    std::lock_guard lock(core_->mu);
    return core_->cancelled_locked();
  }
  /// Not done and can no longer be cancelled: a thread or a worker process has
  /// taken it.
  bool running() const {
    if (done()) return false;
    if (core_->gate) return core_->gate->dispatched(core_->job);
    return core_->stage.load(std::memory_order_acquire) == Core::started;
  }

  /// Blocks until done; the task's exception, or null if it succeeded. Throws
  /// CancelledError if it was cancelled (Python's exception()).
  std::exception_ptr exception() const {
    wait();
    return error();
  }
  /// As exception(), but throws TimeoutError if not done within `timeout`.
  template <class Rep, class Period>
  std::exception_ptr exception(std::chrono::duration<Rep, Period> timeout) const {
    if (!wait(timeout)) throw TimeoutError("mproc: future not done within the timeout");
    return error();
  }

  /// Calls `fn(future)` once the future is done, in the order callbacks were
  /// added: in the thread that completes it (the pool's result thread, a thread
  /// waiting in this future's get()/wait() that received its result itself, a
  /// ThreadPool thread, or the one calling cancel()), or here at once if it is
  /// done already. A callback that throws is reported (mproc/background_error.hpp:
  /// stderr by default) and ignored.
  template <class Fn>
  void add_done_callback(Fn&& fn) const {
    static_assert(std::is_invocable_v<std::decay_t<Fn>&, const Future&>,
                  "mproc: a done callback is called with the Future: fn(const mproc::Future<T>&)");
    std::weak_ptr<Core> weak = core_;
    std::function<void()> call = [weak, f = std::make_shared<std::decay_t<Fn>>(std::forward<Fn>(fn))] {
      auto c = weak.lock();  // the thread finishing the future holds a reference
      if (!c) return;
      try {
        (*f)(Future(std::move(c)));
      } catch (...) {
        detail::report_current_exception("done callback", "(thrown by the callback; ignored)");
      }
    };
    if (!core_->add_done_callback(call)) call();
  }

  friend bool operator==(const Future& a, const Future& b) { return a.core_ == b.core_; }

 private:
  template <class U>
  friend class detail::WaitSet;

  AsyncResult<T> result() const { return AsyncResult<T>(core_); }
  std::exception_ptr error() const {
    std::lock_guard lock(core_->mu);
    if (core_->cancelled_locked()) throw CancelledError("mproc: the future was cancelled");
    return core_->error;
  }

  std::shared_ptr<Core> core_;
};

namespace detail {

template <class F>
struct is_future : std::false_type {};
template <class T>
struct is_future<Future<T>> : std::true_type {
  using value_type = T;
};

}  // namespace detail

namespace detail {

/// The distinct futures of an as_completed()/wait() call (the first of
/// duplicates, as Python's set), each telling one CompletionQueue when done.
/// Removes itself from the futures when destroyed.
template <class T>
class WaitSet {
 public:
  template <class R>
  explicit WaitSet(R&& futures) : queue_(std::make_shared<CompletionQueue>()) {
    std::unordered_set<const void*> seen;
    for (auto&& f : futures) {
      if (seen.insert(f.core_.get()).second) futures_.push_back(f);
    }
    for (std::size_t i = 0; i < futures_.size(); ++i) futures_[i].core_->add_waiter(queue_, i);
  }
  WaitSet(const WaitSet&) = delete;
  WaitSet& operator=(const WaitSet&) = delete;
  ~WaitSet() {
    for (auto& f : futures_) f.core_->remove_waiter(queue_.get());
  }
  const std::vector<Future<T>>& futures() const { return futures_; }
  CompletionQueue& queue() { return *queue_; }

 private:
  std::vector<Future<T>> futures_;
  std::shared_ptr<CompletionQueue> queue_;
};

/// The source behind as_completed()'s range (an IMapResults, like imap's).
template <class T>
class AsCompletedSource {
 public:
  template <class R>
  explicit AsCompletedSource(R&& futures) : set_(std::forward<R>(futures)) {}

  std::optional<Future<T>> next(std::optional<std::chrono::steady_clock::time_point> deadline) {
    auto& q = set_.queue();
    std::unique_lock lock(q.mu);
    if (taken_ == set_.futures().size()) return std::nullopt;
    auto present = [&] { return !q.order.empty(); };
    if (!interruptible_wait_until(q.cv, lock, deadline, present)) {
      std::size_t total = set_.futures().size();
      throw TimeoutError("mproc: " + std::to_string(total - taken_) + " (of " + std::to_string(total) +
                         ") futures unfinished");
    }
    std::size_t i = q.order.front();
    q.order.pop_front();
    ++taken_;
    return set_.futures()[i];
  }

 private:
  WaitSet<T> set_;
  std::size_t taken_ = 0;
};

template <class R>
using future_value_t = typename std::ranges::range_value_t<R>;

template <class R>
constexpr bool check_futures() {
  static_assert(is_future<future_value_t<R>>::value,
                "mproc: as_completed()/wait() take a range of mproc::Future<T> (one T for all of them)");
  return true;
}

}  // namespace detail

/// An input range over `futures` that yields each one as it completes (finished,
/// failed or cancelled): those already done first. Iterating throws TimeoutError
/// if the next one is not done within `timeout` of this call. Duplicates are
/// yielded once. All futures must have the same T. Python's as_completed().
template <std::ranges::input_range R>
auto as_completed(R&& futures, detail::OptionalTimeout timeout = std::nullopt) {
  detail::check_futures<R>();
  using F = detail::future_value_t<R>;
  using Src = detail::AsCompletedSource<typename detail::is_future<F>::value_type>;
  return IMapResults<F, Src>(detail::with_deadline_t{}, detail::deadline_after(timeout), std::forward<R>(futures));
}

/// When wait() returns (Python's constants).
enum class ReturnWhen {
  first_completed,  ///< as soon as any future is done
  first_exception,  ///< as soon as any future fails (not by cancellation); else all completed
  all_completed,    ///< when all are done
};
inline constexpr ReturnWhen FIRST_COMPLETED = ReturnWhen::first_completed;
inline constexpr ReturnWhen FIRST_EXCEPTION = ReturnWhen::first_exception;
inline constexpr ReturnWhen ALL_COMPLETED = ReturnWhen::all_completed;

/// What wait() returns: the futures done and those not done (Python's named tuple).
template <class F>
struct DoneAndNotDone {
  std::vector<F> done;
  std::vector<F> not_done;
};

/// Blocks until `return_when` holds for `futures` or `timeout` passes (then it
/// returns what is done so far, no exception). Python's concurrent.futures.wait().
/// `timeout`: any std::chrono::duration; zero or negative: what is done now.
/// (mproc::wait over connections, queues and sentinels is in mproc/wait.hpp.)
template <std::ranges::input_range R>
  requires detail::is_future<detail::future_value_t<R>>::value
auto wait(R&& futures, detail::OptionalTimeout timeout = std::nullopt, ReturnWhen return_when = ALL_COMPLETED) {
  using F = detail::future_value_t<R>;
  detail::WaitSet<typename detail::is_future<F>::value_type> set(
      std::forward<R>(futures));
  {
    auto& q = set.queue();
    std::size_t n = set.futures().size();
    std::unique_lock lock(q.mu);
    auto met = [&] {
      switch (return_when) {
        case ReturnWhen::first_completed:
          return q.completed > 0 || n == 0;
        case ReturnWhen::first_exception:
          return q.raised > 0 || q.completed == n;
        case ReturnWhen::all_completed:
          break;
      }
      return q.completed == n;
    };
    detail::interruptible_wait_until(q.cv, lock, detail::deadline_after(timeout), met);
  }
  DoneAndNotDone<F> out;
  for (const auto& f : set.futures()) (f.done() ? out.done : out.not_done).push_back(f);
  return out;
}

// ---- executors ------------------------------------------------------------------------

namespace detail {

/// What ProcessPoolExecutor and ThreadPoolExecutor share, over their pool P
/// (Pool or ThreadPool): map, shutdown, max_workers.
template <class P>
class BasicExecutor {
 public:
  /// Results of f(x) for x in input, in order, as an input range (Python's map).
  /// The input is read lazily, a bounded window ahead. Iterating throws an item's
  /// error at its position, and TimeoutError if a result is not ready within
  /// `timeout` of this call. `options`: chunk size (0: adaptive), progress bar.
  /// As in Python, once the iteration times out, or the range is dropped before
  /// its end, the calls no worker has started are cancelled; shutdown() runs all
  /// the calls of a map not iterated yet. Throws UsageError after shutdown().
  template <class F, std::ranges::input_range R>
  auto map(F&& f, R&& input, detail::OptionalTimeout timeout = std::nullopt, MapOptions options = {}) {
    check_open();
    return pool_->template stream<true>(std::forward<F>(f), std::forward<R>(input), std::move(options),
                                        deadline_after(timeout), true);
  }

  /// No new tasks; with `cancel_futures`, the futures that can still be cancelled
  /// are (see Future::cancel); with `wait`, blocks until every other task is done
  /// and the workers have exited. Safe to call more than once, from any thread.
  void shutdown(bool wait = true, bool cancel_futures = false) {
    shut_.store(true, std::memory_order_release);
    if (cancel_futures) pool_->cancel_queued_jobs();
    pool_->close();
    if (wait) pool_->join();
  }
  /// Number of workers (processes or threads).
  int max_workers() const { return pool_->processes(); }
  /// The per-task timeline recorded so far (one call per submit/map). Throws
  /// UsageError unless ExecutorOptions::timeline was set.
  Timeline timeline() const { return pool_->timeline(); }

 protected:
  BasicExecutor() = default;
  ~BasicExecutor() = default;
  void check_open() const {
    if (shut_.load(std::memory_order_acquire)) throw UsageError("mproc: cannot schedule new futures after shutdown()");
  }
  /// The end of Python's `with` block, for the destructors: shutdown(true), never throwing.
  void shutdown_quietly() noexcept {
    try {
      shutdown(true);
    } catch (...) {
      report_current_exception("executor shutdown");
    }
  }

  std::unique_ptr<P> pool_;
  std::atomic<bool> shut_{false};
};

}  // namespace detail

}  // namespace mproc
