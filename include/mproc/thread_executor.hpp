// mproc/thread_executor.hpp — concurrent.futures.ThreadPoolExecutor for C++, on
// its own: a program that uses only threads includes this (or
// mproc/executor.hpp, which adds ProcessPoolExecutor) and compiles neither
// mproc::Pool nor the serializer nor cereal. Future, as_completed() and wait()
// come with it (mproc/futures.hpp); docs/executor.md.
//
//   mproc::ThreadPoolExecutor ex(4);
//   auto f = ex.submit([&](int x) { return x + offset; }, 7);  // any callable
//   int v = f.get();
#pragma once

#include "mproc/detail/config.hpp"

#include <functional>

#include "mproc/futures.hpp"
#include "mproc/thread_pool.hpp"

namespace mproc {

/// concurrent.futures.ThreadPoolExecutor on mproc::ThreadPool, with
/// ProcessPoolExecutor's interface: tasks are any callables run in threads of
/// this process; a task's exception comes back as itself. All members may be
/// called from several threads. The destructor calls shutdown(true).
class ThreadPoolExecutor : public detail::BasicExecutor<ThreadPool> {
 public:
  explicit ThreadPoolExecutor(ExecutorOptions options = {}) { start(options, nullptr); }
  /// `max_workers` threads (0: min(32, cpu_count() + 4)), as Python's ThreadPoolExecutor(4).
  explicit ThreadPoolExecutor(int max_workers) : ThreadPoolExecutor(ExecutorOptions{.max_workers = max_workers}) {}
  /// With an initializer run in each thread before its first task. If it throws,
  /// pending futures fail with its exception and submit() throws UsageError
  /// (Python: BrokenThreadPool).
  template <class F, class... Args>
  ThreadPoolExecutor(ExecutorOptions options, F&& initializer, Args&&... initargs) {
    start(options, detail::bind_initializer(std::forward<F>(initializer), std::forward<Args>(initargs)...));
  }
  ThreadPoolExecutor(const ThreadPoolExecutor&) = delete;
  ThreadPoolExecutor& operator=(const ThreadPoolExecutor&) = delete;
  /// shutdown(true): waits for every submitted task. Never throws.
  ~ThreadPoolExecutor();

  /// Schedules f(args...) on a pool thread. Throws UsageError after shutdown().
  template <class F, class... Args>
  [[nodiscard]] auto submit(F&& f, Args&&... args) {
    check_open();
    auto core = pool_->apply_job<detail::FutureCore>(std::forward<F>(f), std::forward<Args>(args)...);
    return Future<typename decltype(core)::element_type::result_type>(std::move(core));
  }

 private:
  void start(const ExecutorOptions& options, std::function<void()> initializer);
};

}  // namespace mproc
