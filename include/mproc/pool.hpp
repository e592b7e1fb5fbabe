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

#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "mproc/background_error.hpp"
#include "mproc/detail/futex.hpp"
#include "mproc/detail/pool_core.hpp"
#include "mproc/error.hpp"
#include "mproc/process.hpp"
#include "mproc/progress.hpp"
#include "mproc/task.hpp"
#include "mproc/timeline.hpp"

namespace mproc {

/// Makes Ctrl-C (SIGINT) end a blocking wait on a pool result (get(), wait(),
/// map(), imap iteration) with mproc::KeyboardInterrupt instead of killing the
/// program, like Python's KeyboardInterrupt; unwinding then terminates the pool.
/// Installs a SIGINT handler for the whole process: call it once, from main().
/// Without it, Ctrl-C keeps its default action (the program ends; its daemon
/// workers die with it).
void enable_keyboard_interrupt();

/// Pool settings, validated at construction (UsageError with what to change).
struct PoolOptions {
  /// Worker processes; 0 means cpu_count(). Negative: UsageError.
  int processes = 0;
  /// Start method of the workers; empty means the global default (forkserver).
  std::optional<StartMethod> start_method{};
  /// Replace a worker after this many chunks (Python's maxtasksperchild); 0 = never.
  long long maxtasksperchild = 0;
  /// Per-task time limit: a task still running after it is killed with its worker
  /// and fails with TaskTimeoutError. Empty: no limit. Any std::chrono::duration
  /// (rounded up to nanoseconds); zero or negative: UsageError.
  detail::OptionalTimeout timeout{};
  /// Re-run a task whose worker died this many times before failing it.
  int retries = 0;
  /// Replace a worker whose resident memory passed this many MiB after a chunk
  /// (a leaking task library, a cache that only grows); 0 = never. Negative: UsageError.
  long long max_memory_mb = 0;
  /// Record a TaskRecord per task (Pool::timeline(), docs/timeline.md). Off:
  /// nothing is recorded and nothing changes on the hot path.
  bool timeline = false;
};

/// Per-call options of the map family. `pool.map(f, xs, 10)` sets the chunk size,
/// as in Python; `pool.map(f, xs, {0, true, "squares"})` also draws a progress bar.
struct MapOptions {
  /// Items per chunk; 0 picks one (docs/pool.md). Negative: UsageError.
  long long chunksize = 0;
  /// Draw a progress bar on stderr while the call runs (mproc/progress.hpp).
  bool progress = false;
  /// The progress bar's label.
  std::string desc{};
  MapOptions() = default;
  MapOptions(long long chunk) : chunksize(chunk) {}  // NOLINT: implicit, like Python's positional arg
  MapOptions(long long chunk, bool show_progress, std::string description = {})
      : chunksize(chunk), progress(show_progress), desc(std::move(description)) {}
};

namespace detail {

template <class T>
using stored_value_t = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

/// Set by the SIGINT handler that enable_keyboard_interrupt() installs.
bool keyboard_interrupt_pending() noexcept;
bool keyboard_interrupt_enabled() noexcept;
/// Throws KeyboardInterrupt (clearing the flag) if Ctrl-C arrived.
void check_keyboard_interrupt();

/// cv.wait(lock, pred) that, when keyboard interrupts are enabled, wakes every
/// 20 ms to see whether Ctrl-C arrived (a signal handler cannot notify a
/// condition variable).
template <class Pred>
void interruptible_wait(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, Pred pred) {
  if (!keyboard_interrupt_enabled()) {
    cv.wait(lock, pred);
    return;
  }
  while (!pred()) {
    if (keyboard_interrupt_pending()) {
      lock.unlock();
      check_keyboard_interrupt();
      lock.lock();
    }
    cv.wait_for(lock, std::chrono::milliseconds(20));
  }
}

/// As interruptible_wait(), but only until `deadline` (empty: no limit, detail/timeout.hpp
/// turns a user's timeout into one). Returns pred().
template <class Pred>
bool interruptible_wait_until(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, deadline_t deadline,
                              Pred pred) {
  if (!deadline) {
    interruptible_wait(cv, lock, pred);
    return true;
  }
  if (!keyboard_interrupt_enabled()) return cv.wait_until(lock, *deadline, pred);
  while (!pred()) {
    if (keyboard_interrupt_pending()) {
      lock.unlock();
      check_keyboard_interrupt();
      lock.lock();
    }
    auto now = std::chrono::steady_clock::now();
    if (now >= *deadline) return pred();
    cv.wait_until(lock, std::min(*deadline, now + std::chrono::milliseconds(20)));
  }
  return true;
}

/// Shared state behind AsyncResult<T>.
template <class T>
struct ResultCore {
  using result_type = T;
  using V = stored_value_t<T>;
  std::mutex mu;
  std::condition_variable cv;
  bool ready = false;
  // `ready`, readable without the lock: a waiter spins on it for up to spin_ns
  // before it sleeps on cv (set by pools that have a core to spare for it).
  std::atomic<bool> done{false};
  std::int64_t spin_ns = 0;
  // A process pool's: the waiter receives job `source_job`'s results itself
  // while it spins (ResultReceiver). Null for thread pools.
  std::shared_ptr<ResultReceiver> receiver;
  std::uint64_t source_job = 0;
  std::optional<V> value;
  std::exception_ptr error;
  std::vector<std::function<void(const V&)>> callbacks;
  std::vector<std::function<void(const std::exception&)>> error_callbacks;

  static void run_callbacks(const std::exception_ptr& error, const std::optional<V>& value,
                            const std::vector<std::function<void(const V&)>>& cbs,
                            const std::vector<std::function<void(const std::exception&)>>& ecbs) noexcept {
    // A throwing callback must not take the pool's result thread down (Python's
    // pool dies here); it is reported and ignored.
    try {
      if (error) {
        try {
          std::rethrow_exception(error);
        } catch (const std::exception& e) {
          for (auto& f : ecbs) f(e);
        } catch (...) {
          // A ThreadPool task may throw anything (its exception is kept as is).
          const Error e("mproc: the task threw an exception not derived from std::exception");
          for (auto& f : ecbs) f(e);
        }
      } else {
        for (auto& f : cbs) f(*value);
      }
    } catch (...) {
      report_current_exception("result callback", "(thrown by the callback; ignored)");
    }
  }

  bool completing = false;

  // Like Python's ApplyResult._set: the callbacks run before the result is marked
  // ready, so a get() that returns has seen every callback registered before it
  // completed. Callbacks added by then() meanwhile are picked up by the loop.
  void finish(std::optional<V> v, std::exception_ptr e) {
    std::unique_lock lock(mu);
    if (ready || completing) return;
    completing = true;
    value = std::move(v);
    error = e;
    for (;;) {
      std::vector<std::function<void(const V&)>> cbs;
      std::vector<std::function<void(const std::exception&)>> ecbs;
      cbs.swap(callbacks);
      ecbs.swap(error_callbacks);
      if (cbs.empty() && ecbs.empty()) break;
      lock.unlock();
      run_callbacks(error, value, cbs, ecbs);
      lock.lock();
    }
    ready = true;
    done.store(true, std::memory_order_release);
    lock.unlock();
    cv.notify_all();
  }
};

template <class Derived>
class MapMethods;  // below: Pool's and ThreadPool's shared methods

}  // namespace detail

/// The result of an asynchronous call (Python's AsyncResult / MapResult).
/// A handle; safe to use from several threads.
template <class T>
class [[nodiscard]] AsyncResult {
  using Core = detail::ResultCore<T>;
  using V = typename Core::V;

 public:
  explicit AsyncResult(std::shared_ptr<Core> core) : core_(std::move(core)) {}

  /// Blocks until ready; returns the value or throws the task's error
  /// (TaskError, WorkerLostError, TaskTimeoutError, CancelledError).
  T get() const {
    wait();
    return take();
  }
  /// As get(), but throws TimeoutError if not ready within `timeout` (the task
  /// keeps running; call get() again later).
  template <class Rep, class Period>
  T get(std::chrono::duration<Rep, Period> timeout) const {
    if (!wait(timeout)) throw TimeoutError("mproc: result not ready within the timeout");
    return take();
  }
  /// Blocks until ready. Throws KeyboardInterrupt on Ctrl-C once
  /// mproc::enable_keyboard_interrupt() was called.
  void wait() const {
    auto done = [&] { return core_->done.load(std::memory_order_acquire); };
    if (done()) return;
    // A process pool's waiter takes its own result off the result channel while
    // it spins, sparing the result thread's wake-up of it (docs/pool.md, latency).
    bool spun = core_->receiver && core_->receiver->receive(core_->source_job, done, core_->spin_ns);
    if (!spun && detail::spin_until(done, core_->spin_ns)) return;
    std::unique_lock lock(core_->mu);
    detail::interruptible_wait(core_->cv, lock, [&] { return core_->ready; });
  }
  /// Waits at most `timeout` (negative: UsageError); true when ready.
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) const {
    auto deadline = detail::timeout_deadline(timeout, "AsyncResult.wait()");
    std::unique_lock lock(core_->mu);
    return detail::interruptible_wait_until(core_->cv, lock, deadline, [&] { return core_->ready; });
  }
  bool ready() const {
    std::lock_guard lock(core_->mu);
    return core_->ready;
  }
  /// Whether it finished without error. UsageError if not ready (Python's ValueError).
  bool successful() const {
    std::lock_guard lock(core_->mu);
    if (!core_->ready) throw UsageError("mproc: successful() called before the result is ready");
    return !core_->error;
  }

  /// Python's callback= / error_callback=: `callback(value)` or
  /// `error_callback(exception)` runs once the result is ready — on the pool's
  /// result thread, on a thread waiting in this result's own get()/wait() (which
  /// may receive it itself: docs/pool.md, latency), or right here if it already
  /// is; never on a thread waiting for another result. A callback that throws is
  /// reported (mproc/background_error.hpp: stderr by default) and ignored; the
  /// pool carries on.
  template <class C, class E = std::nullptr_t>
  AsyncResult& then(C&& callback, E&& error_callback = nullptr) {
    std::unique_lock lock(core_->mu);
    std::vector<std::function<void(const V&)>> cbs;
    std::vector<std::function<void(const std::exception&)>> ecbs;
    if constexpr (!std::is_null_pointer_v<std::remove_cvref_t<C>>) {
      if constexpr (std::is_void_v<T>) {
        cbs.emplace_back([cb = std::forward<C>(callback)](const V&) { cb(); });
      } else {
        cbs.emplace_back(std::forward<C>(callback));
      }
    }
    if constexpr (!std::is_null_pointer_v<std::remove_cvref_t<E>>) ecbs.emplace_back(std::forward<E>(error_callback));
    if (!core_->ready) {
      for (auto& f : cbs) core_->callbacks.push_back(std::move(f));
      for (auto& f : ecbs) core_->error_callbacks.push_back(std::move(f));
      return *this;
    }
    lock.unlock();
    Core::run_callbacks(core_->error, core_->value, cbs, ecbs);
    return *this;
  }

 private:
  T take() const {
    std::lock_guard lock(core_->mu);
    if (core_->error) std::rethrow_exception(core_->error);
    if constexpr (!std::is_void_v<T>) return *core_->value;
  }
  // For the pool's own blocking calls (apply, map, starmap), whose AsyncResult
  // is a temporary no one else sees: the value is moved out, not copied (for a
  // map of 10 M ints, 80 MB of fresh pages and a TLB shoot-down saved).
  template <class>
  friend class detail::MapMethods;
  T get_owned() && {
    wait();
    std::lock_guard lock(core_->mu);
    if (core_->error) std::rethrow_exception(core_->error);
    if constexpr (!std::is_void_v<T>) return std::move(*core_->value);
  }
  std::shared_ptr<Core> core_;
};

namespace detail {

/// Turns a failed item into the exception the user sees.
std::exception_ptr make_item_error(Failure kind, const ExceptionInfo& info, int exitcode, std::uint64_t index);

/// `inner` with its items counted into `bar` first (src/pool/progress.cpp); with
/// `end_on_failure` (map: the first failure ends the call) the bar is closed at the
/// first failure. Returns `inner` itself when `bar` is null.
std::shared_ptr<JobSink> progress_sink(std::shared_ptr<JobSink> inner, std::shared_ptr<ProgressBar> bar,
                                       bool end_on_failure);

/// Plain bytes that travel as themselves, read and written with memcpy in bulk
/// (the map bulk path, docs/pool.md). Not bool: a received bool is checked to
/// be 0 or 1.
template <class T>
inline constexpr bool bulk_type = kind_of<T>() == Kind::bytes && !std::is_same_v<std::remove_cv_t<T>, bool>;

/// Asks for transparent huge pages over [p, p + bytes) (its whole pages), before
/// they are first touched; a no-op for small ranges or where THP is off.
void advise_huge_pages(void* p, std::size_t bytes) noexcept;

/// n value-initialized Vs; a big vector gets huge pages before it is zeroed (on
/// a VM a 4 KiB page fault costs µs: 80 MB of results took ~200 ms of faults).
template <class V>
std::vector<V> make_values(std::size_t n) {
  std::vector<V> v;
  v.reserve(n);
  advise_huge_pages(v.data(), n * sizeof(V));
  v.resize(n);
  return v;
}

/// A job whose results are gathered into one value (apply) or a vector (map),
/// into a ResultCore, or into `Core` (a type derived from it, such as the
/// executor's FutureCore, whose own finish() is then the one called).
template <class V, bool Single, class Core = void>
class GatherJob final : public JobSink {
 public:
  using T = std::conditional_t<Single, V, std::vector<V>>;
  using CoreT = std::conditional_t<std::is_void_v<Core>,
                                   ResultCore<std::conditional_t<Single && std::is_same_v<V, std::monostate>, void, T>>,
                                   Core>;
  GatherJob(std::size_t n, std::shared_ptr<CoreT> core) : values_(sized(n)), left_(n), core_(std::move(core)) {}

  void on_batch(std::uint64_t first, std::uint64_t count, const std::uint8_t* status, const std::uint8_t* fresh,
                Reader& payload, const ItemTiming&) noexcept override {
    bool done = false;
    try {
      std::lock_guard lock(mu_);
      bool copied = false;
      if constexpr (bulk_type<V>) {
        // Every item new and successful, results back to back: one copy.
        if (!status && !fresh && first <= values_.size() && count <= values_.size() - first && count <= left_) {
          if (count != 0) payload.read(values_.data() + first, count * sizeof(V));
          left_ -= count;
          copied = true;
        }
      }
      for (std::uint64_t k = 0; k < count && !copied; ++k) {
        std::uint64_t i = first + k;
        if (status_at(status, k) != 0) {
          ExceptionInfo info = load<ExceptionInfo>(payload);
          if (fresh_at(fresh, k)) {
            // Like Python's MapResult: the first failure makes the whole result ready.
            failed_ = true;
            error_ = make_item_error(Failure::raised, info, 1, i);
            break;
          }
          continue;
        }
        // A fresh item is delivered once (PoolCore tracks which were), so no
        // index is decoded into twice.
        if (fresh_at(fresh, k) && i < values_.size() && left_ > 0) {
          decode_into(payload, values_[i]);
          --left_;
        } else {
          (void)load<V>(payload);
        }
      }
      done = left_ == 0 || failed_;
    } catch (...) {
      core_->finish(std::nullopt, std::current_exception());
      return;
    }
    if (done) complete();
  }
  void on_failure(std::uint64_t index, Failure kind, const ExceptionInfo& info, int exitcode,
                  const ItemTiming&) noexcept override {
    core_->finish(std::nullopt, make_item_error(kind, info, exitcode, index));
  }

 private:
  void complete() noexcept {
    try {
      if (failed_) {
        core_->finish(std::nullopt, error_);
      } else if constexpr (Single) {
        core_->finish(std::move(values_[0]), nullptr);
      } else {
        core_->finish(std::move(values_), nullptr);
      }
    } catch (...) {
      core_->finish(std::nullopt, std::current_exception());
    }
  }
  // One value inline for a single call (apply, submit: no allocation), a vector for map.
  using Values = std::conditional_t<Single, std::array<V, 1>, std::vector<V>>;
  static Values sized(std::size_t n) {
    if constexpr (Single) {
      return Values{};
    } else {
      return make_values<V>(n);
    }
  }
  std::mutex mu_;
  Values values_;
  std::size_t left_;
  bool failed_ = false;
  std::exception_ptr error_;
  std::shared_ptr<CoreT> core_;
};

/// Outcomes of a lazily-fed job's items, by index, until the iterating thread
/// takes them (imap; ThreadPool's imap shares it).
template <class V>
class OutcomeBuffer {
 public:
  using Outcome = std::variant<V, std::exception_ptr>;
  using clock = std::chrono::steady_clock;

  /// Adds outcomes under one lock: `fill(map)` emplaces (index, outcome) pairs.
  template <class Fill>
  void add(Fill&& fill) {
    {
      std::lock_guard lock(mu_);
      fill(buffered_);
      added_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
  }
  /// How long take() spins before it sleeps (PoolCore::spin_ns).
  void set_spin(std::int64_t ns) { spin_ns_ = ns; }
  /// A process pool's: take() receives job `job`'s results itself while it spins.
  void set_receiver(std::shared_ptr<ResultReceiver> r, std::uint64_t job) {
    receiver_ = std::move(r);
    job_ = job;
  }
  /// The job whose results take() receives (by the iterating thread, between takes).
  void set_receiver_job(std::uint64_t job) { job_ = job; }
  /// Waits for item `index` (ordered) or any item (unordered), until `deadline`
  /// if one is given. Returns it and its index, or empty when the deadline passed.
  std::optional<std::pair<std::uint64_t, Outcome>> take(std::optional<std::uint64_t> index,
                                                         std::optional<clock::time_point> deadline = {}) {
    std::unique_lock lock(mu_);
    auto present = [&] { return index ? buffered_.count(*index) != 0 : !buffered_.empty(); };
    // Spin first, watching for any add(), while the wanted item is missing.
    for (auto spin_end = clock::now() + std::chrono::nanoseconds(spin_ns_); !present() && clock::now() < spin_end;) {
      std::uint64_t seen = added_.load(std::memory_order_acquire);
      lock.unlock();
      auto added = [&] { return added_.load(std::memory_order_acquire) != seen; };
      std::int64_t left = (spin_end - clock::now()).count();
      // Receiving our own results here spares the result thread's wake-up of us.
      if (!(receiver_ && receiver_->receive(job_, added, left))) spin_until(added, left);
      lock.lock();
      if (!added()) break;
    }
    if (!interruptible_wait_until(cv_, lock, deadline, present)) return std::nullopt;
    auto it = index ? buffered_.find(*index) : buffered_.begin();
    auto out = std::make_pair(it->first, std::move(it->second));
    buffered_.erase(it);
    return out;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::uint64_t, Outcome> buffered_;
  std::atomic<std::uint64_t> added_{0};
  std::int64_t spin_ns_ = 0;
  std::shared_ptr<ResultReceiver> receiver_;
  std::uint64_t job_ = 0;
};

/// Items of a lazily-fed job, buffered until the iterating thread takes them.
template <class V>
class StreamJob final : public JobSink {
 public:
  using Outcome = typename OutcomeBuffer<V>::Outcome;

  void on_batch(std::uint64_t first, std::uint64_t count, const std::uint8_t* status, const std::uint8_t* fresh,
                Reader& payload, const ItemTiming&) noexcept override {
    buffer_.add([&](auto& buffered) {
      for (std::uint64_t k = 0; k < count; ++k) {
        Outcome o;
        try {
          if (status_at(status, k) != 0) {
            ExceptionInfo info = load<ExceptionInfo>(payload);
            o = make_item_error(Failure::raised, info, 1, first + k);
          } else {
            o = load<V>(payload);
          }
        } catch (...) {
          o = std::current_exception();
          if (fresh_at(fresh, k)) buffered.emplace(first + k, std::move(o));
          break;  // the rest of the batch cannot be decoded
        }
        if (fresh_at(fresh, k)) buffered.emplace(first + k, std::move(o));
      }
    });
  }
  void on_failure(std::uint64_t index, Failure kind, const ExceptionInfo& info, int exitcode,
                  const ItemTiming&) noexcept override {
    buffer_.add([&](auto& buffered) { buffered.emplace(index, make_item_error(kind, info, exitcode, index)); });
  }

  /// Waits for item `index` (ordered) or any item (unordered); see OutcomeBuffer::take.
  auto take(std::optional<std::uint64_t> index, std::optional<std::chrono::steady_clock::time_point> deadline = {}) {
    return buffer_.take(index, deadline);
  }
  void set_spin(std::int64_t ns) { buffer_.set_spin(ns); }
  void set_receiver(std::shared_ptr<ResultReceiver> r, std::uint64_t job) { buffer_.set_receiver(std::move(r), job); }
  void set_receiver_job(std::uint64_t job) { buffer_.set_receiver_job(job); }

 private:
  OutcomeBuffer<V> buffer_;
};

// ---- pool task entries (run in the worker) ------------------------------------------

/// Stands in for the result type when the function cannot be called with the
/// arguments, so that check_types() can say so in one clear message.
struct not_invocable {};

template <class F, class Arg, bool Star, class = void>
struct pool_result {
  using type = not_invocable;
};
template <class F, class Arg>
struct pool_result<F, Arg, false, std::enable_if_t<std::is_invocable_v<F&, Arg&&>>> {
  using type = std::invoke_result_t<F&, Arg&&>;
};
template <class F, class... A>
struct pool_result<F, std::tuple<A...>, true, std::enable_if_t<std::is_invocable_v<F&, A&&...>>> {
  using type = std::invoke_result_t<F&, A&&...>;
};
template <class F, class Arg, bool Star>
using pool_result_t = std::remove_cvref_t<typename pool_result<F, Arg, Star>::type>;

template <class F, class Arg, bool Star>
struct PoolEntryTag {};

/// Worker-side view of the chunk being run (ctx of a pool entry).
struct PoolEntryCtx {
  ItemSink* sink;
  std::uint64_t first;
  std::uint64_t count;
};

/// The bulk path of pool_entry (plain-bytes argument and result, docs/pool.md):
/// the chunk's items are read in place, back to back, and the results written
/// in runs straight into the result batch; per item, one relaxed store says
/// which item runs (for crash attribution).
template <class R, class Arg, class F>
void run_bulk(F& f, Reader& in, const PoolEntryCtx& c) {
  const std::byte* items = nullptr;
  try {
    if (c.count > in.remaining() / sizeof(Arg)) throw SerializationError("mproc: task message truncated");
    items = in.take(c.count * sizeof(Arg));
  } catch (...) {
    ExceptionInfo info = capture_current_exception();
    for (std::uint64_t k = 0; k < c.count; ++k) c.sink->failed(c.first + k, info);
    return;
  }
  for (std::uint64_t k = 0; k < c.count;) {
    std::span<std::byte> out = c.sink->run_begin(c.first + k, c.count - k, sizeof(R));
    const std::size_t n = out.size() / sizeof(R);
    std::size_t j = 0;
    std::optional<ExceptionInfo> error;
    try {
      for (; j < n; ++j) {
        c.sink->running(c.first + k + j);
        Arg arg{};
        std::memcpy(&arg, items + (k + j) * sizeof(Arg), sizeof(Arg));
        const R r = std::invoke(f, std::move(arg));
        std::memcpy(out.data() + j * sizeof(R), &r, sizeof(R));
      }
    } catch (...) {
      error = capture_current_exception();
    }
    c.sink->run_end(j);  // the results before a failed item, then the failure
    if (error) c.sink->failed(c.first + k + j++, *error);
    k += j;
  }
}

template <class F, class Arg, bool Star>
std::uint64_t pool_entry(Reader* in, void* ctx) {
  constexpr std::uint64_t id = fnv1a(pretty_name<PoolEntryTag<F, Arg, Star>>());
  if (!in) return id;
  auto& c = *static_cast<PoolEntryCtx*>(ctx);
  F f = decode_callable<F>(*in);
  using R = pool_result_t<F, Arg, Star>;
  if constexpr (!Star && bulk_type<Arg> && bulk_type<R>) {
    if (c.sink->bulk()) {
      run_bulk<R, Arg>(f, *in, c);
      return id;
    }
  }
  for (std::uint64_t k = 0; k < c.count; ++k) {
    std::uint64_t index = c.first + k;
    std::optional<Arg> arg;
    try {
      arg.emplace(load<Arg>(*in));
    } catch (...) {
      // Misaligned from here on: every remaining item of the chunk fails the same way.
      ExceptionInfo info = capture_current_exception();
      for (; k < c.count; ++k) c.sink->failed(c.first + k, info);
      return id;
    }
    c.sink->starting(index);
    try {
      if constexpr (std::is_void_v<R>) {
        if constexpr (Star) std::apply(f, std::move(*arg));
        else std::invoke(f, std::move(*arg));
        c.sink->result_writer();
      } else {
        R r = [&]() -> R {
          if constexpr (Star) return std::apply(f, std::move(*arg));
          else return std::invoke(f, std::move(*arg));
        }();
        dump(c.sink->result_writer(), r);
      }
      c.sink->ok(index);
    } catch (...) {
      c.sink->failed(index, capture_current_exception());
    }
  }
  return id;
}

/// The argument type sent for one item of `map(f, range)`: f's parameter type
/// when f has exactly one signature with one parameter, else the range's.
template <class Fn, class Elem>
auto map_arg_for() {
  if constexpr (callable_params<Fn>::known) {
    using P = typename callable_params<Fn>::type;
    if constexpr (P::size == 1) {
      return std::type_identity<std::tuple_element_t<0, typename P::stored>>{};
    } else {
      return std::type_identity<std::remove_cvref_t<Elem>>{};
    }
  } else {
    return std::type_identity<std::remove_cvref_t<Elem>>{};
  }
}
/// For starmap: f's parameters as a tuple when known, else the element (tuple-like).
template <class Fn, class Elem>
auto star_arg_for() {
  if constexpr (callable_params<Fn>::known) {
    return std::type_identity<typename callable_params<Fn>::type::stored>{};
  } else {
    return std::type_identity<std::remove_cvref_t<Elem>>{};
  }
}

/// Owned duplicates of fds (F_DUPFD_CLOEXEC). Throws std::system_error.
std::vector<int> dup_fds(std::span<const int> fds);

/// Encodes chunks of one call: the prefix (header, entry, callable) once, then items.
template <class Fn, class Arg, bool Star>
class ChunkEncoder {
 public:
  explicit ChunkEncoder(const Fn& f) {
    prefix_.reserve(kFirstBytes);
    write_prefix(prefix_, f);
    // Our own copies: chunks of an imap are encoded long after the callable (and
    // whatever handle lent these fds) may be gone.
    prefix_fds_ = dup_fds(prefix_.fds());
  }
  ~ChunkEncoder() {
    for (int fd : prefix_fds_) ::close(fd);
  }
  ChunkEncoder(const ChunkEncoder&) = delete;
  ChunkEncoder& operator=(const ChunkEncoder&) = delete;
  /// The one chunk of a single call (apply, submit): one item, encoded into one
  /// buffer that becomes the message's (no prefix copy, no growing).
  template <class E>
  static ChunkMessage single(const Fn& f, E&& elem) {
    ChunkMessage m;
    Writer w;
    w.reserve(kFirstBytes);
    write_prefix(w, f);
    m.prefix = w.size();
    m.fds = dup_fds(w.fds());  // the callable's (a bound Event, say), then the item's
    if constexpr (kStride) {
      m.stride = sizeof(Arg);
    } else {
      m.offsets.push_back(w.size());
    }
    try {
      put(w, std::forward<E>(elem), m.fds);
    } catch (...) {
      for (int fd : m.fds) ::close(fd);
      throw;
    }
    m.bytes = std::move(w).take_bytes();
    return m;
  }
  /// Starts a chunk; `item_bytes`: how many bytes its items will take, if known.
  void begin(std::size_t item_bytes = 0) {
    msg_ = ChunkMessage{};
    items_ = 0;
    w_.clear();
    // Plain items: the buffer becomes the message itself (finish() moves it), so
    // it is sized once, here.
    if constexpr (kStride) w_.reserve(prefix_.size() + item_bytes);
    w_.write(prefix_.bytes().data(), prefix_.size());
    // Fds the callable carries (e.g. a bound Event) come first, at the indices the
    // prefix was encoded with; the items' fds follow.
    for (int fd : prefix_fds_) w_.add_fd(fd);
    msg_.fds = dup_fds(prefix_fds_);
  }
  template <class E>
  void add(E&& elem) {
    if constexpr (kStride) {
      // Plain bytes (numbers, trivially copyable structs): no fds to track, and
      // items at a fixed stride, so no offsets either.
      put(w_, std::forward<E>(elem), msg_.fds);
      ++items_;
    } else {
      msg_.offsets.push_back(w_.size());
      put(w_, std::forward<E>(elem), msg_.fds);
    }
  }
  /// Whether add_contiguous may be used: items of plain bytes at a fixed stride.
  static constexpr bool kStride = !Star && kind_of<Arg>() == Kind::bytes;
  /// Adds n items that lie back to back at `p` (a vector's or an array's elements
  /// of exactly the argument type): one copy.
  void add_contiguous(const Arg* p, std::size_t n)
    requires kStride
  {
    if (n != 0) w_.write(p, n * sizeof(Arg));
    items_ += n;
  }
  /// Adds the n items that `it` reads (converted to the argument), advancing it.
  template <class It>
  void add_n(It& it, std::size_t n)
    requires kStride
  {
    std::byte* out = w_.extend(n * sizeof(Arg)).data();
    for (std::size_t k = 0; k < n; ++k, ++it) {
      const Arg arg = static_cast<Arg>(*it);
      std::memcpy(out + k * sizeof(Arg), &arg, sizeof(Arg));
    }
    items_ += n;
  }
  std::size_t items() const { return kStride ? items_ : msg_.offsets.size(); }
  /// Bytes of the items encoded so far in this chunk (the callable's prefix not
  /// counted: the first item always fits, so a chunk is never empty).
  std::size_t item_bytes() const { return w_.size() - prefix_.size(); }
  /// Finishes the chunk: owned copies of the fds its items carry.
  ChunkMessage finish();

 private:
  // What a call's first chunk allocates at once (header, entry id, a small
  // callable and a few small arguments fit), instead of growing step by step.
  static constexpr std::size_t kFirstBytes = 256;

  static void write_prefix(Writer& w, const Fn& f) {
    ChunkHeader h{};
    w.write(&h, sizeof h);
    encode_entry<&pool_entry<Fn, Arg, Star>>(w);
    encode_callable<Fn>(w, f);
  }
  // Encodes one item into w; owned copies of the fds it adds go to `owned`.
  template <class E>
  static void put(Writer& w, E&& elem, std::vector<int>& owned) {
    if constexpr (!Star && kind_of<Arg>() == Kind::bytes) {
      // Plain bytes (numbers, trivially copyable structs): no fds to track.
      const Arg arg = static_cast<Arg>(std::forward<E>(elem));
      w.write(&arg, sizeof arg);
    } else {
      std::size_t had = w.fds().size();
      // The converted argument is a temporary: fds it lends (a SharedArray, a Queue)
      // close when it dies, so our own copies are taken while it is alive.
      auto arg = [&]() -> Arg {
        if constexpr (Star) {
          return std::apply([](auto&&... a) { return Arg(std::forward<decltype(a)>(a)...); }, std::forward<E>(elem));
        } else {
          return static_cast<Arg>(std::forward<E>(elem));
        }
      }();
      dump(w, arg);
      auto added = dup_fds(w.fds().subspan(had));
      owned.insert(owned.end(), added.begin(), added.end());
    }
  }

  Writer prefix_;
  std::vector<int> prefix_fds_;
  Writer w_;
  ChunkMessage msg_;
  std::size_t items_ = 0;  // with kStride (no offsets kept)
};

template <class Fn, class Arg, bool Star>
ChunkMessage ChunkEncoder<Fn, Arg, Star>::finish() {
  msg_.prefix = prefix_.size();
  if constexpr (kStride) {
    msg_.stride = sizeof(Arg);
    msg_.bytes = std::move(w_).take_bytes();
  } else {
    // Copied: w_ keeps its capacity for the next chunk, whose size is unknown.
    auto bytes = w_.bytes();
    msg_.bytes.assign(bytes.begin(), bytes.end());
  }
  items_ = 0;  // items() counts the chunk being built: none until begin()
  ChunkMessage out = std::move(msg_);
  msg_ = ChunkMessage{};
  return out;
}

/// Python's map chunk size rule: ceil(n / (4 * workers)).
template <class R>
inline constexpr bool integral_iota = false;
template <std::integral W, std::integral B>
inline constexpr bool integral_iota<std::ranges::iota_view<W, B>> = true;

/// A map input that can be encoded as it is read, without a copy first: its size
/// is known, and reading it cannot throw (a vector, an array, an iota of
/// integers), so no task can start before an error in the input is seen.
template <class R>
concept NoThrowSizedInput =
    std::ranges::sized_range<R> && std::ranges::forward_range<R> &&
    std::is_copy_constructible_v<std::remove_cvref_t<std::ranges::range_reference_t<R>>> &&
    (integral_iota<std::remove_cvref_t<R>> || requires(std::ranges::iterator_t<R> it, std::ranges::sentinel_t<R> end) {
      requires noexcept(*it);
      requires noexcept(++it);
      requires noexcept(it != end);
    });

/// An automatic map chunk ends once its encoding passes this size, so that it
/// travels inside the task ring (below ChannelOptions::oob_threshold): memory
/// that is already mapped and faulted in, reused message after message. A
/// bigger chunk goes out of band in a fresh memfd, and on a VM every fresh page
/// costs a fault of several µs on each side (docs/pool.md, chunk size).
inline constexpr std::size_t kAutoChunkBytes = std::size_t{48} << 10;

inline std::size_t auto_chunksize(std::size_t n, int workers) {
  std::size_t d = static_cast<std::size_t>(workers) * 4;
  return n == 0 ? 1 : std::max<std::size_t>(1, (n + d - 1) / d);
}

std::size_t checked_chunksize(long long c);

/// The number of items of a sized input (a progress bar's total), else empty.
template <class R>
std::optional<std::uint64_t> known_size(R& input) {
  if constexpr (std::ranges::sized_range<R>) {
    return static_cast<std::uint64_t>(std::ranges::size(input));
  } else {
    return std::nullopt;
  }
}

/// A lazy map (imap, an executor's map) that can be told to read the rest of its
/// input now: close() does, so that a lazy map nobody iterates still runs all of
/// its calls, as in Python, whose pools and executors submit every call at once
/// (issue 11, bug 4), instead of keeping the pool open for ever.
class LazyFeed {
 public:
  /// Reads the rest of the input and queues all of it, ignoring the read-ahead
  /// window. Never throws: an error while reading or queueing is kept for the
  /// iteration to raise, at its position.
  virtual void feed_rest() noexcept = 0;

 protected:
  LazyFeed() = default;
  ~LazyFeed() = default;
};

/// The lazy maps alive on one pool. Safe from any thread.
class LazyFeeds {
 public:
  void add(LazyFeed* f) {
    std::lock_guard lock(mu_);
    live_.push_back(f);
  }
  /// Waits while feed_all() feeds `f`: after this returns, `f` is never called.
  void remove(LazyFeed* f) noexcept {
    std::lock_guard lock(mu_);
    std::erase(live_, f);
  }
  /// feed_rest() on each live lazy map, under the lock (remove() waits for it).
  void feed_all() noexcept {
    std::lock_guard lock(mu_);
    for (LazyFeed* f : live_) f->feed_rest();
  }

 private:
  std::mutex mu_;
  std::vector<LazyFeed*> live_;
};

/// Tag of the IMapResults constructor with a deadline (executor map's timeout).
struct with_deadline_t {};

template <class P>
class BasicExecutor;  // executor.hpp

/// A pool initializer, encoded as a process task (run by each worker).
template <class F, class... Args>
std::vector<std::byte> encode_initializer(F&& initializer, Args&&... initargs) {
  Writer w;
  encode_process_task(w, std::forward<F>(initializer), std::forward<Args>(initargs)...);
  auto b = w.bytes();
  return std::vector<std::byte>(b.begin(), b.end());
}

}  // namespace detail

/// Lazily fed, lazily read results of imap/imap_unordered: an input range.
/// Iterate it once, from one thread. Input is read ahead by a bounded window.
template <class V, class Source>
class IMapResults {
 public:
  using value_type = V;

  class iterator {
   public:
    using value_type = V;
    using difference_type = std::ptrdiff_t;
    using iterator_category = std::input_iterator_tag;
    iterator() = default;
    explicit iterator(IMapResults* owner) : owner_(owner) { advance(); }
    const V& operator*() const { return *current_; }
    const V* operator->() const { return &*current_; }
    iterator& operator++() {
      advance();
      return *this;
    }
    void operator++(int) { advance(); }
    friend bool operator==(const iterator& a, std::default_sentinel_t) { return !a.current_; }

   private:
    void advance() {
      current_.reset();
      if (auto v = owner_->next()) current_.emplace(std::move(*v));
    }
    IMapResults* owner_ = nullptr;
    std::optional<V> current_;
  };

  /// Builds the source in place (it holds iterators into itself, so it never moves).
  template <class... A>
  explicit IMapResults(std::in_place_t, A&&... args) : src_(std::forward<A>(args)...) {}
  /// As above; a result not ready by `deadline` makes next() throw TimeoutError
  /// (Executor.map's timeout, measured from the call).
  template <class... A>
  IMapResults(detail::with_deadline_t, std::optional<std::chrono::steady_clock::time_point> deadline, A&&... args)
      : src_(std::forward<A>(args)...), deadline_(deadline) {}
  IMapResults(const IMapResults&) = delete;
  IMapResults& operator=(const IMapResults&) = delete;
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() { return {}; }

  /// The next result (throws the item's error), or empty at the end.
  std::optional<V> next() { return src_.next(deadline_); }

 private:
  Source src_;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
};

namespace detail {

/// The methods Pool and ThreadPool share, written once over the pool's own
/// apply_async, gather<Star> (map, starmap) and stream<Ordered> (imap), so that
/// both keep one interface (CRTP; Derived befriends this class).
template <class Derived>
class MapMethods {
 public:
  /// f(args...) in a worker; blocks for the result.
  template <class F, class... Args>
  auto apply(F&& f, Args&&... args) {
    return self().apply_async(std::forward<F>(f), std::forward<Args>(args)...).get_owned();
  }

  // ---- map / starmap -----------------------------------------------------------------

  /// map without waiting: an AsyncResult of the vector of results.
  template <class F, std::ranges::input_range R>
  auto map_async(F&& f, R&& input, MapOptions options = {}) {
    return self().template gather<false>(std::forward<F>(f), std::forward<R>(input), std::move(options));
  }
  /// [f(x) for x in input], in input order. Blocks. Throws the first failure.
  template <class F, std::ranges::input_range R>
  auto map(F&& f, R&& input, MapOptions options = {}) {
    return map_async(std::forward<F>(f), std::forward<R>(input), std::move(options)).get_owned();
  }
  template <class F, std::ranges::input_range R>
  auto starmap_async(F&& f, R&& input, MapOptions options = {}) {
    return self().template gather<true>(std::forward<F>(f), std::forward<R>(input), std::move(options));
  }
  /// [f(*args) for args in input]: each element is a tuple of arguments.
  template <class F, std::ranges::input_range R>
  auto starmap(F&& f, R&& input, MapOptions options = {}) {
    return starmap_async(std::forward<F>(f), std::forward<R>(input), std::move(options)).get_owned();
  }

  // ---- imap ----------------------------------------------------------------------------

  /// Results in input order, as they become available. The input is read lazily
  /// (it may be unbounded), a bounded window ahead of the results taken.
  template <class F, std::ranges::input_range R>
  auto imap(F&& f, R&& input, MapOptions options = {}) {
    return self().template stream<true>(std::forward<F>(f), std::forward<R>(input), std::move(options));
  }
  /// Results in completion order.
  template <class F, std::ranges::input_range R>
  auto imap_unordered(F&& f, R&& input, MapOptions options = {}) {
    return self().template stream<false>(std::forward<F>(f), std::forward<R>(input), std::move(options));
  }

 protected:
  MapMethods() = default;
  ~MapMethods() = default;

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
};

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
  Pool(const PoolOptions& options, std::vector<std::byte> initializer, std::size_t max_queued) {
    start(options, std::move(initializer), max_queued);
  }
  void start(const PoolOptions& options, std::vector<std::byte> initializer, std::size_t max_queued = 0);
  // Opens a job, submits its chunks, seals it; returns its id.
  std::uint64_t run_job(std::shared_ptr<detail::JobSink> sink, const std::function<void(std::uint64_t)>& submit_all);

  // apply_async into a new Core<R> (ResultCore, or the executor's FutureCore);
  // returns the core and the job's id.
  template <template <class> class Core, class F, class... Args>
  auto apply_job(F&& f, Args&&... args) {
    using Fn = std::decay_t<F>;
    using Stored = detail::stored_args_t<Fn, Args...>;
    using R = detail::pool_result_t<Fn, Stored, true>;
    using V = detail::stored_value_t<R>;
    check_types<Fn, Stored, R>();
    auto core = std::make_shared<Core<R>>();
    core->spin_ns = core_->spin_ns();
    auto job = std::make_shared<detail::GatherJob<V, true, Core<R>>>(1, core);
    detail::ChunkMessage chunk =
        detail::ChunkEncoder<Fn, Stored, true>::single(f, std::forward_as_tuple(std::forward<Args>(args)...));
    // Set before the job exists: no one waits on the core before this returns.
    core->receiver = core_->receiver();
    // One reference captured: the std::function keeps it without allocating.
    struct Submit {
      detail::PoolCore& pool;
      Core<R>& core;
      detail::ChunkMessage& chunk;
    } ctx{*core_, *core, chunk};
    struct CloseUnsent {  // if the job could not be opened, the chunk's fds are still ours
      detail::ChunkMessage& chunk;
      ~CloseUnsent() {
        for (int fd : chunk.fds) ::close(fd);
      }
    } close_unsent{chunk};
    std::uint64_t id = run_job(job, [&ctx](std::uint64_t i) {
      ctx.core.source_job = i;
      ctx.pool.submit(i, 0, std::move(ctx.chunk));  // leaves chunk.fds empty: submit owns them
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
    core->spin_ns = core_->spin_ns();
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
          core_->submit(id, i, enc.finish());
        }
      } else {
        auto it = std::ranges::begin(input);
        for (std::size_t i = 0, k = 0; i < n; i = k) {
          enc.begin();
          for (k = i; k < std::min(n, i + chunk) && enc.item_bytes() < max_bytes; ++k, ++it) enc.add(*it);
          core_->submit(id, i, enc.finish());
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

  std::unique_ptr<detail::PoolCore> core_;
  int processes_ = 0;
  // The lazy maps close() feeds to their end (shared with them: a map may outlive its pool).
  std::shared_ptr<detail::LazyFeeds> feeds_ = std::make_shared<detail::LazyFeeds>();
};

namespace detail {

/// Adaptive chunking for imap (docs/pool.md): start at 1 item per chunk, then
/// size chunks so each takes ~2 ms of worker time, from the running mean item
/// time, capped at 1024 items; an explicit chunksize is used as given.
struct AdaptiveChunk {
  std::size_t fixed = 0;
  std::uint64_t items_done = 0;
  std::int64_t ns_done = 0;
  std::size_t next() const {
    if (fixed) return fixed;
    if (items_done < 8 || ns_done <= 0) return 1;
    std::int64_t mean = std::max<std::int64_t>(1, ns_done / static_cast<std::int64_t>(items_done));
    return static_cast<std::size_t>(std::clamp<std::int64_t>(2'000'000 / mean, 1, 1024));
  }
};

/// The feeding side of imap: reads the input, encodes chunks, keeps a bounded
/// number of items in flight, and hands results to the iterating thread.
///
/// An executor's map (`per_call`) gives each chunk a job of its own, as Python's
/// Executor.map submits a future per call, so that the chunks no worker has
/// taken can be cancelled when the map times out or is dropped before its end
/// (issue 11, bug 8). Pool.imap keeps one job for all its chunks.
template <bool Ordered, class Fn, class Arg, bool Star, class Range>
class StreamSource final : LazyFeed {
  using Res = pool_result_t<Fn, Arg, Star>;
  using V = stored_value_t<Res>;

 public:
  StreamSource(PoolCore* core, std::shared_ptr<LazyFeeds> feeds, bool per_call, int workers, const Fn& f, Range&& input,
               std::size_t chunk, std::shared_ptr<ProgressBar> bar = nullptr)
      : core_(core),
        feeds_(std::move(feeds)),
        per_call_(per_call),
        workers_(workers),
        enc_(std::make_unique<ChunkEncoder<Fn, Arg, Star>>(f)),
        input_(std::views::all(std::forward<Range>(input))),
        it_(std::ranges::begin(input_)),
        job_(std::make_shared<TimedStream>()),
        bar_(std::move(bar)) {
    chunk_.fixed = chunk;
    job_->set_spin(core_->spin_ns());
    sink_ = progress_sink(job_, bar_, false);
    // Registered before the job opens: a close() from now on feeds this map
    // (below, if it came before the job was open), or makes open_job throw.
    feeds_->add(this);
    try {
      if (!per_call_) {
        id_ = core_->open_job(sink_);
      } else if (!core_->accepting()) {
        throw UsageError("mproc: Pool is not running (closed or terminated)");
      }
    } catch (...) {
      feeds_->remove(this);
      throw;
    }
    job_->set_receiver(core_->receiver(), id_);
    std::lock_guard lock(mu_);
    opened_ = true;
    if (feed_requested_) refill(true);
  }
  StreamSource(const StreamSource&) = delete;
  StreamSource& operator=(const StreamSource&) = delete;
  ~StreamSource() {
    feeds_->remove(this);  // waits for a close() feeding this map
    std::lock_guard lock(mu_);
    if (per_call_) {
      cancel_unstarted();
    } else if (!sealed_) {
      core_->seal_job(id_);
    }
    if (bar_) bar_->close();
  }

  /// The next result, or empty at the end. With a deadline (executor map's
  /// timeout), throws TimeoutError once it passes without a result.
  std::optional<V> next(std::optional<std::chrono::steady_clock::time_point> deadline = {}) {
    {
      std::lock_guard lock(mu_);
      refill(false);
      if (taken_ == submitted_) {
        if (bar_) bar_->close();  // the final line before the loop ends
        if (input_error_) std::rethrow_exception(std::exchange(input_error_, nullptr));
        return std::nullopt;
      }
      // Receive the wanted item's results on this thread while spinning: they
      // come under the job of the chunk holding it.
      if (per_call_ && !calls_.empty()) job_->set_receiver_job(calls_.front().first);
    }
    auto got = job_->take(Ordered ? std::optional<std::uint64_t>(taken_) : std::nullopt, deadline);
    if (!got) {
      if (per_call_) {
        // Python's Executor.map cancels what has not started once its iteration
        // raises; so does this one. Later calls time out again.
        std::lock_guard lock(mu_);
        seal();
        cancel_unstarted();
      }
      throw TimeoutError("mproc: the next result was not ready within the map's timeout");
    }
    auto& [index, outcome] = *got;
    ++taken_;  // this thread's alone (feed_rest does not read it): no lock
    if (per_call_) {
      std::lock_guard lock(mu_);
      while (!calls_.empty() && calls_.front().second <= taken_) calls_.pop_front();
    }
    chunk_.items_done = job_->items();
    chunk_.ns_done = job_->ns();
    if (auto* e = std::get_if<std::exception_ptr>(&outcome)) std::rethrow_exception(*e);
    return std::move(std::get<V>(outcome));
  }

 private:
  // StreamJob plus the per-item worker time the adaptive chunk size needs.
  class TimedStream final : public JobSink {
   public:
    void on_batch(std::uint64_t first, std::uint64_t count, const std::uint8_t* status, const std::uint8_t* fresh,
                  Reader& payload, const ItemTiming& t) noexcept override {
      ns_ += t.end_ns - t.start_ns;
      items_ += count;
      inner_.on_batch(first, count, status, fresh, payload, t);
    }
    void on_failure(std::uint64_t index, Failure kind, const ExceptionInfo& info, int exitcode,
                    const ItemTiming& t) noexcept override {
      inner_.on_failure(index, kind, info, exitcode, t);
    }
    auto take(std::optional<std::uint64_t> i, std::optional<std::chrono::steady_clock::time_point> deadline) {
      return inner_.take(i, deadline);
    }
    void set_spin(std::int64_t ns) { inner_.set_spin(ns); }
    void set_receiver(std::shared_ptr<ResultReceiver> r, std::uint64_t job) { inner_.set_receiver(std::move(r), job); }
    void set_receiver_job(std::uint64_t job) { inner_.set_receiver_job(job); }
    std::uint64_t items() const { return items_.load(); }
    std::int64_t ns() const { return ns_.load(); }

   private:
    StreamJob<V> inner_;
    std::atomic<std::uint64_t> items_{0};
    std::atomic<std::int64_t> ns_{0};
  };

  void feed_rest() noexcept override {
    std::lock_guard lock(mu_);
    if (opened_) {
      refill(true);
    } else {
      feed_requested_ = true;  // the constructor feeds it once the job is open
    }
  }

  // Reads and queues input, with mu_ held: up to the window, or (`all`) to its end.
  void refill(bool all) noexcept {
    // Window: in flight + buffered results at most ~4 chunks per worker, and
    // never fewer than 64 items per worker, so that small chunks keep every
    // worker and the channels busy (a shallow pipeline caps chunksize=1 at
    // workers / round trip). Past 2 items per worker it also stops at 64 MiB of
    // encoded tasks in flight. Memory does not grow with the input.
    std::size_t chunk = chunk_.next();
    const auto w = static_cast<std::uint64_t>(workers_);
    std::uint64_t window = std::max<std::uint64_t>(64 * w, 4 * w * chunk);
    while (!sealed_ && (all || (submitted_ - taken_ < window &&
                                (submitted_ - taken_ < 2 * w || bytes_in_flight() < kMaxBytes)))) {
      bool input_ended = false;
      std::uint64_t first = submitted_;
      try {
        enc_->begin();
        while (enc_->items() < chunk && it_ != std::ranges::end(input_)) {
          enc_->add(*it_);
          ++it_;
        }
        input_ended = it_ == std::ranges::end(input_);
      } catch (...) {
        // An exception while reading the input surfaces once the results before it
        // have been taken (Python raises it at that point of the iteration).
        input_error_ = std::current_exception();
        input_ended = true;
      }
      try {
        // The items read before an input error go out first, and only then is the
        // job sealed: a job sealed with all its items in is forgotten at once, and
        // a chunk submitted to it after that would fail with CancelledError
        // instead of the input's error (issue 11, bug 7).
        if (std::size_t n = enc_->items()) {
          ChunkMessage msg = enc_->finish();
          sizes_.emplace_back(first + n, msg.bytes.size());
          bytes_ += msg.bytes.size();
          if (per_call_) {
            std::uint64_t id = core_->open_job(sink_);
            calls_.emplace_back(id, first + n);
            try {
              core_->submit(id, first, std::move(msg));
            } catch (...) {
              core_->seal_job(id);
              throw;
            }
            core_->seal_job(id);
          } else {
            core_->submit(id_, first, std::move(msg));
          }
          submitted_ += n;
        }
      } catch (...) {
        // The pool was terminated or closed meanwhile: the iteration raises it
        // once the results already queued have been taken.
        if (!input_error_) input_error_ = std::current_exception();
        input_ended = true;
      }
      if (input_ended) seal();
    }
  }
  void seal() {
    if (!sealed_) {
      if (!per_call_) core_->seal_job(id_);
      // The input's length is known now: what was submitted.
      if (bar_) bar_->set_total(submitted_);
    }
    sealed_ = true;
  }
  // Executor map, with mu_ held: cancels the calls no worker has taken.
  void cancel_unstarted() noexcept {
    for (const auto& [id, end] : calls_) {
      try {
        core_->cancel_job(id);
      } catch (...) {
      }
    }
    calls_.clear();
  }

  // Encoded bytes of the chunks not yet fully taken (approximate for
  // imap_unordered, which takes out of order).
  std::size_t bytes_in_flight() {
    while (!sizes_.empty() && sizes_.front().first <= taken_) {
      bytes_ -= sizes_.front().second;
      sizes_.pop_front();
    }
    return bytes_;
  }
  static constexpr std::size_t kMaxBytes = std::size_t{64} << 20;

  PoolCore* core_;
  std::shared_ptr<LazyFeeds> feeds_;
  const bool per_call_;
  int workers_;
  // Guards the feeding state below (not taken_, the iterating thread's own):
  // close() may feed the rest of the input from another thread (feed_rest)
  // while this map is iterated.
  std::mutex mu_;
  std::deque<std::pair<std::uint64_t, std::size_t>> sizes_;  // (end index, bytes) per chunk
  std::size_t bytes_ = 0;
  std::unique_ptr<ChunkEncoder<Fn, Arg, Star>> enc_;
  std::views::all_t<Range> input_;  // a reference to an lvalue range, the range itself otherwise
  std::ranges::iterator_t<std::views::all_t<Range>> it_;
  std::shared_ptr<TimedStream> job_;
  std::shared_ptr<JobSink> sink_;  // job_, counted into the progress bar
  std::uint64_t id_ = 0;           // the one job (not per_call)
  // per_call: (job, end index) of each chunk not yet fully taken, in order.
  std::deque<std::pair<std::uint64_t, std::uint64_t>> calls_;
  std::uint64_t submitted_ = 0;
  std::uint64_t taken_ = 0;
  bool sealed_ = false;
  bool opened_ = false;          // the constructor is done
  bool feed_requested_ = false;  // close() came before it was
  std::exception_ptr input_error_;
  AdaptiveChunk chunk_;
  std::shared_ptr<ProgressBar> bar_;
};

}  // namespace detail

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
  if (!core_ || !core_->accepting()) throw UsageError("mproc: Pool is not running (closed or terminated)");
  using Src = detail::StreamSource<Ordered, Fn, Arg, false, R>;
  return IMapResults<V, Src>(detail::with_deadline_t{}, deadline, core_.get(), feeds_, per_call, processes_, f,
                             std::forward<R>(input), chunk,
                             detail::make_progress(options.progress, options.desc, detail::known_size(input)));
}

}  // namespace mproc
