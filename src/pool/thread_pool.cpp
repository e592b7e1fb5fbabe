// The ThreadPool engine (mproc/thread_pool.hpp, docs/pool.md "ThreadPool").
//
// N threads take tasks from one FIFO deque under one mutex. A thread that has
// run maxtasksperchild tasks starts its own replacement and ends; the
// replacement joins it first thing, so no thread is left unjoined (the slot's
// std::thread handle travels from the old thread to the new one).
#include "mproc/thread_pool.hpp"

#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>

#include "mproc/detail/timeline_recorder.hpp"
#include "mproc/process.hpp"  // cpu_count

namespace mproc {
namespace detail {

std::exception_ptr cancelled_error(const char* why) { return std::make_exception_ptr(CancelledError(why)); }

// ---- TaskStamp: a task's timeline records -------------------------------------------

namespace {
std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

struct TaskStamp::State {
  std::shared_ptr<TimelineRecorder> rec;
  std::uint64_t call = 0, done = 0;  // done: items recorded so far
  std::int64_t queued_ns = 0, start_ns = 0, base_ns = 0, prev_ns = 0;
  std::vector<std::uint8_t> outcomes, times;  // since the last commit; times: ItemTimes
};

TaskStamp::TaskStamp() noexcept = default;
TaskStamp::~TaskStamp() = default;

void TaskStamp::arm(std::shared_ptr<TimelineRecorder> rec, std::uint64_t call, std::int64_t queued_ns) {
  s_ = std::make_unique<State>();
  s_->rec = std::move(rec);
  s_->call = call;
  s_->queued_ns = queued_ns;
}

// Between two items of a chunk a thread only stores the first one's result, so
// the second starts when the first ended: one clock read per item, not two.
void TaskStamp::started() noexcept { s_->start_ns = s_->outcomes.empty() ? steady_ns() : s_->prev_ns; }

void TaskStamp::ended(bool raised) noexcept {
  State& s = *s_;
  if (!s.start_ns) return;  // no item open
  std::int64_t end = steady_ns();
  std::int64_t start = std::exchange(s.start_ns, 0);
  try {
    if (s.outcomes.empty()) s.base_ns = s.prev_ns = start;
    ItemTimes::put(s.times, start - s.prev_ns);
    ItemTimes::put(s.times, end - start);
    s.outcomes.push_back(raised ? 1 : 0);
    s.prev_ns = end;
  } catch (...) {
    // No memory: these items go unrecorded.
    s.done += s.outcomes.size();
    s.times.clear();
    s.outcomes.clear();
  }
}

void TaskStamp::flush() noexcept {
  State& s = *s_;
  if (s.outcomes.empty()) return;
  try {
    std::vector<std::uint8_t> fresh(s.outcomes.size(), 1);
    TimelineSource src{s.call, first_, s.queued_ns, steady_ns(), worker_};
    s.rec->ran(src, first_ + s.done, s.outcomes.size(), s.outcomes.data(), fresh.data(), s.times, s.base_ns,
               s.prev_ns);
  } catch (...) {
  }
  s.done += s.outcomes.size();
  s.outcomes.clear();
  s.times.clear();
}

void TaskStamp::unrun(TaskOutcome why) noexcept {
  if (!s_) return;
  flush();
  std::int64_t now = steady_ns();
  for (; s_->done < count_; ++s_->done) {
    s_->rec->failed(TimelineSource{s_->call, first_, s_->queued_ns, now, -1}, first_ + s_->done, why, 0, now);
  }
}

struct ThreadPoolCore::Impl {
  enum class State { running, closing, terminated };

  long long maxtasks = 0;
  std::function<void()> initializer;
  std::shared_ptr<TimelineRecorder> timeline;  // PoolOptions::timeline, or null
  std::atomic<std::uint64_t> calls{0};

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
  static void fail_all(std::deque<std::unique_ptr<ThreadTask>>& tasks, const std::exception_ptr& error,
                       TaskOutcome why = TaskOutcome::cancelled) {
    for (auto& t : tasks) {
      t->stamp.unrun(why);
      t->fail(error);
    }
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
        fail_all(dropped, broken, TaskOutcome::raised);
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
      task->stamp.set_worker(static_cast<int>(slot));
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
      report_background_error("ThreadPool", std::string("could not replace a thread: ") + e.what());
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

ThreadPoolCore::ThreadPoolCore(int threads, long long maxtasks, std::function<void()> initializer, bool timeline)
    : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.maxtasks = maxtasks;
  I.initializer = std::move(initializer);
  if (timeline) {
    // Every slot's "process" is this one, from the timeline's origin on.
    I.timeline = std::make_shared<TimelineRecorder>(threads);
    for (int i = 0; i < threads; ++i) I.timeline->worker_started(i, static_cast<int>(::getpid()), I.timeline->origin_ns());
  }
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

namespace {
/// Work offered to a pool whose initializer threw (Python: BrokenThreadPool).
[[noreturn]] void throw_broken(const std::exception_ptr& broken) {
  std::string why = "unknown exception";
  try {
    std::rethrow_exception(broken);
  } catch (const std::exception& e) {
    why = e.what();
  } catch (...) {
  }
  throw UsageError("mproc: ThreadPool is broken: its initializer threw (" + why + ")");
}
}  // namespace

void ThreadPoolCore::post(std::vector<std::unique_ptr<ThreadTask>> tasks, bool continuation, std::uint64_t call) {
  Impl& I = *impl_;
  if (I.timeline && call) {
    std::int64_t now = steady_ns();
    for (auto& t : tasks) t->stamp.arm(I.timeline, call, now);
  }
  {
    std::lock_guard lock(I.mu);
    if (I.state == Impl::State::terminated) {
      // The initializer threw between the caller's check_accepting() and here:
      // the same UsageError the check would have raised.
      if (I.broken) throw_broken(I.broken);
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

void ThreadPoolCore::post(std::unique_ptr<ThreadTask> task, bool continuation, std::uint64_t call) {
  std::vector<std::unique_ptr<ThreadTask>> one;
  one.push_back(std::move(task));
  post(std::move(one), continuation, call);
}

std::uint64_t ThreadPoolCore::open_call() noexcept { return impl_->timeline ? ++impl_->calls : 0; }

std::shared_ptr<TimelineRecorder> ThreadPoolCore::timeline() const { return impl_->timeline; }

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
  if (impl_->broken) throw_broken(impl_->broken);
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
  threads_ = options.processes ? options.processes : cpu_count();
  core_ = std::make_unique<detail::ThreadPoolCore>(threads_, options.maxtasksperchild, std::move(initializer),
                                                   options.timeline);
}

ThreadPool::~ThreadPool() = default;  // ThreadPoolCore's destructor terminates and joins

void ThreadPool::check_running() const { core_->check_accepting(); }

void ThreadPool::close() {
  feeds_->feed_all();  // lazy maps run every call, as in Python (issue 11, bug 4)
  core_->close();
}
void ThreadPool::terminate() { core_->terminate(); }
void ThreadPool::join() { core_->join(); }
int ThreadPool::processes() const { return threads_; }

Timeline ThreadPool::timeline() const {
  auto rec = core_->timeline();
  if (!rec) {
    throw UsageError("mproc: this ThreadPool records no timeline; create it with PoolOptions::timeline = true");
  }
  return Timeline(std::move(rec));
}

}  // namespace mproc
