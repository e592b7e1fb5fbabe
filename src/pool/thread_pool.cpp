// The ThreadPool engine (mproc/thread_pool.hpp, docs/pool.md "ThreadPool").
//
// N threads take tasks from one FIFO deque under one mutex. A thread that has
// run maxtasksperchild tasks starts its own replacement and ends; the
// replacement joins it first thing, so no thread is left unjoined (the slot's
// std::thread handle travels from the old thread to the new one).
#include "mproc/thread_pool.hpp"

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>

namespace mproc {
namespace detail {

std::exception_ptr cancelled_error(const char* why) { return std::make_exception_ptr(CancelledError(why)); }

struct ThreadPoolCore::Impl {
  enum class State { running, closing, terminated };

  long long maxtasks = 0;
  std::function<void()> initializer;

  mutable std::mutex mu;
  std::condition_variable cv;  // work queued, or the state changed
  State state = State::running;
  std::deque<std::unique_ptr<ThreadTask>> queue;
  std::size_t open_streams = 0;
  std::exception_ptr broken;  // the initializer's exception, once it threw
  std::vector<std::thread> threads;

  // With mu held: whether a thread with nothing to do may exit.
  bool finished() const {
    return state == State::terminated || (state == State::closing && queue.empty() && open_streams == 0);
  }

  // Fails tasks taken off the queue (without mu: they run user callbacks).
  static void fail_all(std::deque<std::unique_ptr<ThreadTask>>& tasks, const std::exception_ptr& error) {
    for (auto& t : tasks) t->fail(error);
    tasks.clear();
  }

  void worker(std::size_t slot, std::thread predecessor) {
    if (predecessor.joinable()) predecessor.join();  // the thread this one replaces
    if (initializer) {
      try {
        initializer();
      } catch (...) {
        // No thread can run a task without its initializer: like a Pool whose
        // initializer keeps failing, the pool stops, failing the queued work.
        std::deque<std::unique_ptr<ThreadTask>> dropped;
        {
          std::lock_guard lock(mu);
          if (!broken) broken = std::current_exception();
          state = State::terminated;
          dropped.swap(queue);
        }
        cv.notify_all();
        fail_all(dropped, broken);
        return;
      }
    }
    for (long long done = 0; maxtasks <= 0 || done < maxtasks; ++done) {
      std::unique_ptr<ThreadTask> task;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return !queue.empty() || finished(); });
        if (queue.empty() || state == State::terminated) return;
        task = std::move(queue.front());
        queue.pop_front();
        if (queue.empty() && state == State::closing && open_streams == 0) cv.notify_all();  // let idle threads exit
      }
      task->run();
    }
    // maxtasksperchild reached: a fresh thread takes this slot (Python replaces
    // the worker the same way), unless the pool is done.
    std::lock_guard lock(mu);
    if (finished()) return;
    std::thread self = std::move(threads[slot]);  // empty if join() holds it already
    try {
      threads[slot] = std::thread([this, slot, self = std::move(self)]() mutable { worker(slot, std::move(self)); });
    } catch (const std::exception& e) {
      std::fprintf(stderr, "mproc: ThreadPool could not replace a thread: %s\n", e.what());
    }
  }

  // Joins every thread, including replacements started meanwhile. A thread
  // calling this (a task or callback terminating its own pool) skips itself.
  void join_threads() {
    for (;;) {
      std::thread t;
      {
        std::lock_guard lock(mu);
        for (auto& slot : threads) {
          if (slot.joinable() && slot.get_id() != std::this_thread::get_id()) {
            t = std::move(slot);
            break;
          }
        }
      }
      if (!t.joinable()) return;
      t.join();
    }
  }
};

ThreadPoolCore::ThreadPoolCore(int threads, long long maxtasks, std::function<void()> initializer)
    : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.maxtasks = maxtasks;
  I.initializer = std::move(initializer);
  I.threads.resize(static_cast<std::size_t>(threads));
  // No lock needed: until a task is queued no thread touches `threads`.
  try {
    for (std::size_t i = 0; i < I.threads.size(); ++i) {
      I.threads[i] = std::thread([&I, i] { I.worker(i, std::thread()); });
    }
  } catch (...) {
    {
      std::lock_guard lock(I.mu);
      I.state = Impl::State::terminated;
    }
    I.cv.notify_all();
    I.join_threads();
    throw;
  }
}

ThreadPoolCore::~ThreadPoolCore() {
  terminate();
  impl_->join_threads();
  // Left only when the pool is destroyed from one of its own threads.
  for (auto& t : impl_->threads) {
    if (t.joinable()) t.detach();
  }
}

void ThreadPoolCore::post(std::vector<std::unique_ptr<ThreadTask>> tasks, bool continuation) {
  Impl& I = *impl_;
  {
    std::lock_guard lock(I.mu);
    if (I.state == Impl::State::terminated) {
      if (I.broken) std::rethrow_exception(I.broken);
      throw CancelledError("mproc: the ThreadPool was terminated");
    }
    if (I.state == Impl::State::closing && !continuation) {
      throw UsageError("mproc: ThreadPool is not running (closed or terminated)");
    }
    for (auto& t : tasks) I.queue.push_back(std::move(t));
  }
  if (tasks.size() == 1) {
    I.cv.notify_one();
  } else {
    I.cv.notify_all();
  }
}

void ThreadPoolCore::post(std::unique_ptr<ThreadTask> task, bool continuation) {
  std::vector<std::unique_ptr<ThreadTask>> one;
  one.push_back(std::move(task));
  post(std::move(one), continuation);
}

void ThreadPoolCore::open_stream() {
  std::lock_guard lock(impl_->mu);
  ++impl_->open_streams;
}

void ThreadPoolCore::close_stream() noexcept {
  {
    std::lock_guard lock(impl_->mu);
    --impl_->open_streams;
  }
  impl_->cv.notify_all();
}

std::size_t ThreadPoolCore::cancel_queued_jobs() {
  std::deque<std::unique_ptr<ThreadTask>> dropped;
  {
    std::lock_guard lock(impl_->mu);
    dropped.swap(impl_->queue);
  }
  impl_->cv.notify_all();
  std::size_t n = dropped.size();
  Impl::fail_all(dropped, cancelled_error("mproc: the task was cancelled before it started"));
  return n;
}

void ThreadPoolCore::close() {
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->state != Impl::State::running) return;
    impl_->state = Impl::State::closing;
  }
  impl_->cv.notify_all();
}

void ThreadPoolCore::terminate() {
  std::deque<std::unique_ptr<ThreadTask>> dropped;
  {
    std::lock_guard lock(impl_->mu);
    impl_->state = Impl::State::terminated;
    dropped.swap(impl_->queue);
  }
  impl_->cv.notify_all();
  Impl::fail_all(dropped, cancelled_error("mproc: the ThreadPool was terminated before this task started"));
  impl_->join_threads();  // running tasks finish: a thread cannot be killed
}

void ThreadPoolCore::join() {
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->state == Impl::State::running) throw UsageError("mproc: join() needs close() or terminate() first");
  }
  impl_->join_threads();
}

void ThreadPoolCore::check_accepting() const {
  std::lock_guard lock(impl_->mu);
  if (impl_->state == Impl::State::running) return;
  if (impl_->broken) {
    std::string why = "unknown exception";
    try {
      std::rethrow_exception(impl_->broken);
    } catch (const std::exception& e) {
      why = e.what();
    } catch (...) {
    }
    throw UsageError("mproc: ThreadPool is broken: its initializer threw (" + why + ")");
  }
  throw UsageError("mproc: ThreadPool is not running (closed or terminated)");
}

int ThreadPoolCore::threads() const { return static_cast<int>(impl_->threads.size()); }

}  // namespace detail

// ---- ThreadPool (non-template parts) --------------------------------------------------

void ThreadPool::start(const PoolOptions& options, std::function<void()> initializer) {
  if (options.processes < 0) {
    throw UsageError("mproc: ThreadPool needs processes >= 1 (or 0 for cpu_count()), got " +
                     std::to_string(options.processes));
  }
  if (options.maxtasksperchild < 0) {
    throw UsageError("mproc: maxtasksperchild must be >= 1 (or 0 for no limit), got " +
                     std::to_string(options.maxtasksperchild));
  }
  if (options.timeout) {
    throw UsageError("mproc: ThreadPool has no per-task timeout: a thread cannot be stopped. Use mproc::Pool, "
                     "whose workers are processes, or bound the wait with AsyncResult::get(timeout)");
  }
  if (options.max_memory_mb != 0) {
    throw UsageError("mproc: max_memory_mb recycles worker processes; ThreadPool's threads share one process. "
                     "Use mproc::Pool");
  }
  if (options.retries < 0) throw UsageError("mproc: retries must be >= 0");
  if (options.timeline) {
    throw UsageError("mproc: timelines are recorded by process pools only (Pool, ProcessPoolExecutor); "
                     "ThreadPool has no timeline option yet");
  }
  threads_ = options.processes ? options.processes : cpu_count();
  core_ = std::make_unique<detail::ThreadPoolCore>(threads_, options.maxtasksperchild, std::move(initializer));
}

ThreadPool::~ThreadPool() = default;  // ThreadPoolCore's destructor terminates and joins

void ThreadPool::check_running() const { core_->check_accepting(); }

void ThreadPool::close() { core_->close(); }
void ThreadPool::terminate() { core_->terminate(); }
void ThreadPool::join() { core_->join(); }
int ThreadPool::processes() const { return threads_; }

}  // namespace mproc
