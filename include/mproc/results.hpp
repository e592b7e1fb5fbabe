// mproc/results.hpp — the typed front end the pools and executors share: the
// results of asynchronous calls (AsyncResult<T>, and the imap ranges,
// IMapResults), their shared state (ResultCore, OutcomeBuffer), the map-family
// methods written once for Pool and ThreadPool (detail::MapMethods), and the
// chunking and lazy-feeding rules of those methods. Nothing here serializes:
// mproc/thread_pool.hpp includes this instead of mproc/pool.hpp, so ThreadPool
// users compile neither the serializer nor cereal. The backend each front end
// sits on (docs/design.md, "The pool's backend seam"): a PoolBackend (PoolCore
// locally) for Pool and ProcessPoolExecutor, ThreadPoolCore for ThreadPool and
// ThreadPoolExecutor.
#pragma once

#include "mproc/detail/config.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
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
#include "mproc/detail/result_receiver.hpp"
#include "mproc/error.hpp"
#include "mproc/keyboard_interrupt.hpp"
#include "mproc/pool_options.hpp"
#include "mproc/progress.hpp"

namespace mproc {
namespace detail {

template <class T>
using stored_value_t = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

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

/// The outcomes a lazy map holds for its iterating thread: a window of slots by
/// item index, from the oldest not yet taken (imap), or, once taken out of order
/// (imap_unordered), a queue in order of arrival. Not a tree: a node allocated,
/// rebalanced and freed per item was most of the parent's time in an imap of
/// small tasks. Indices come from one counter and imap's read-ahead bounds how
/// far results run ahead of the oldest one not taken, so the slots stay few.
template <class Outcome>
class OutcomeSlots {
 public:
  /// Keeps `o` for item `index` (each index comes once: the backend delivers
  /// every item once; a repeat is ignored while the index is in the window).
  void emplace(std::uint64_t index, Outcome&& o) {
    if (unordered_) {
      arrived_.emplace_back(index, std::move(o));
    } else {
      if (index < base_) return;
      auto k = static_cast<std::size_t>(index - base_);
      if (k >= slots_.size()) slots_.resize(k + 1);
      if (slots_[k]) return;
      slots_[k].emplace(std::move(o));
    }
    ++present_;
  }
  bool empty() const noexcept { return present_ == 0; }
  /// Whether item `index` can be taken (ordered taking only).
  bool contains(std::uint64_t index) const noexcept {
    return !unordered_ && index >= base_ && index - base_ < slots_.size() &&
           slots_[static_cast<std::size_t>(index - base_)].has_value();
  }
  /// Takes item `index`; contains(index) must hold. Ordered taking takes the
  /// oldest (the window moves on); another leaves an empty slot behind.
  Outcome take(std::uint64_t index) {
    auto& slot = slots_[static_cast<std::size_t>(index - base_)];
    Outcome o = std::move(*slot);
    slot.reset();
    --present_;
    if (index == base_) {
      slots_.pop_front();
      ++base_;
    }
    return o;
  }
  /// Takes the outcome that came first of those not taken; !empty() must hold.
  /// From the first call on, outcomes are kept in order of arrival.
  std::pair<std::uint64_t, Outcome> take_first_arrived() {
    if (!unordered_) {
      unordered_ = true;
      for (std::size_t k = 0; k < slots_.size(); ++k) {
        if (slots_[k]) arrived_.emplace_back(base_ + k, std::move(*slots_[k]));
      }
      slots_.clear();
    }
    std::pair<std::uint64_t, Outcome> p = std::move(arrived_.front());
    arrived_.pop_front();
    --present_;
    return p;
  }

 private:
  std::deque<std::optional<Outcome>> slots_;  // slots_[k] is item base_ + k
  std::uint64_t base_ = 0;
  std::size_t present_ = 0;
  bool unordered_ = false;
  std::deque<std::pair<std::uint64_t, Outcome>> arrived_;
};

/// Outcomes of a lazily-fed job's items, by index, until the iterating thread
/// takes them (imap; ThreadPool's imap shares it).
template <class V>
class OutcomeBuffer {
 public:
  using Outcome = std::variant<V, std::exception_ptr>;
  using clock = std::chrono::steady_clock;

  /// Adds outcomes under one lock: `fill(slots)` calls slots.emplace(index, outcome).
  template <class Fill>
  void add(Fill&& fill) {
    {
      std::lock_guard lock(mu_);
      fill(buffered_);
      added_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
  }
  /// How long take() spins before it sleeps (PoolBackend::spin_ns).
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
    if (!wait(lock, index, deadline)) return std::nullopt;
    return take_one(index);
  }
  /// As take(), and then, under the same lock, the outcomes that follow it with
  /// no gap (ordered) or that arrived after it (unordered), up to `max` in all:
  /// appended to `out` as (index, outcome) pairs. False when the deadline passed.
  template <class Out>
  bool take_batch(std::optional<std::uint64_t> index, std::optional<clock::time_point> deadline, Out& out,
                  std::size_t max) {
    std::unique_lock lock(mu_);
    if (!wait(lock, index, deadline)) return false;
    out.push_back(take_one(index));
    for (std::size_t n = 1; n < max; ++n) {
      if (index) {
        ++*index;
        if (!buffered_.contains(*index)) break;
      } else if (buffered_.empty()) {
        break;
      }
      out.push_back(take_one(index));
    }
    return true;
  }

 private:
  // With mu_ held (by `lock`): waits for item `index` (or any), spinning first.
  bool wait(std::unique_lock<std::mutex>& lock, std::optional<std::uint64_t> index,
            std::optional<clock::time_point> deadline) {
    auto present = [&] { return index ? buffered_.contains(*index) : !buffered_.empty(); };
    if (present()) return true;
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
    return interruptible_wait_until(cv_, lock, deadline, present);
  }
  std::pair<std::uint64_t, Outcome> take_one(std::optional<std::uint64_t> index) {
    if (!index) return buffered_.take_first_arrived();
    return {*index, buffered_.take(*index)};
  }

  std::mutex mu_;
  std::condition_variable cv_;
  OutcomeSlots<Outcome> buffered_;
  std::atomic<std::uint64_t> added_{0};
  std::int64_t spin_ns_ = 0;
  std::shared_ptr<ResultReceiver> receiver_;
  std::uint64_t job_ = 0;
};

/// Stands in for the result type when the function cannot be called with the
/// arguments, so that check_types() can say so in one clear message.
struct not_invocable {};

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

/// Python's map chunk size rule: ceil(n / (4 * workers)).
inline std::size_t auto_chunksize(std::size_t n, int workers) {
  std::size_t d = static_cast<std::size_t>(workers) * 4;
  return n == 0 ? 1 : std::max<std::size_t>(1, (n + d - 1) / d);
}

/// `c` as a chunk size; UsageError if negative.
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
}  // namespace mproc
