// bench/common/thread_pool.hpp — the C++ baseline the benchmarks compare with: a
// plain std::thread pool (workers pulling std::function jobs from one mutex +
// condition_variable queue, results through std::future), as most C++ code
// bases write it.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace bench {

class ThreadPool {
 public:
  explicit ThreadPool(int n) {
    for (int i = 0; i < n; ++i) {
      threads_.emplace_back([this] {
        for (;;) {
          std::function<void()> job;
          {
            std::unique_lock l(mu_);
            cv_.wait(l, [&] { return stop_ || !q_.empty(); });
            if (stop_ && q_.empty()) return;
            job = std::move(q_.front());
            q_.pop_front();
          }
          job();
        }
      });
    }
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  /// Runs the queued jobs, then joins the threads.
  ~ThreadPool() {
    {
      std::lock_guard l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  /// Queues f(); its result (or exception) comes back through the future.
  template <class F>
  auto submit(F f) {
    auto task = std::make_shared<std::packaged_task<decltype(f())()>>(std::move(f));
    auto fut = task->get_future();
    {
      std::lock_guard l(mu_);
      q_.emplace_back([task] { (*task)(); });
    }
    cv_.notify_one();
    return fut;
  }

  /// f(0) ... f(n-1) in chunks of `chunksize` indices, one job per chunk; the
  /// results in input order (what Pool.map does, here without any copying).
  template <class F>
  auto map(F f, int n, int chunksize) {
    using R = decltype(f(0));
    std::vector<R> out(static_cast<std::size_t>(n));
    std::vector<std::future<void>> done;
    for (int lo = 0; lo < n; lo += chunksize) {
      int hi = std::min(n, lo + chunksize);
      done.push_back(submit([&out, &f, lo, hi] {
        for (int i = lo; i < hi; ++i) out[static_cast<std::size_t>(i)] = f(i);
      }));
    }
    for (auto& d : done) d.get();
    return out;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> q_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

/// Python's Pool.map chunk size: ceil(n / (4 * workers)).
inline int python_chunksize(int n, int workers) {
  int c = n / (4 * workers);
  if (n % (4 * workers) != 0) ++c;
  return std::max(c, 1);
}

}  // namespace bench
