// Executors: the scenarios of CPython's test_concurrent_futures (ExecutorTest,
// AsCompletedTests, WaitTests, FutureTests' callbacks and cancel, shutdown,
// InitializerMixin, max_tasks_per_child), each run for ProcessPoolExecutor and
// ThreadPoolExecutor. Tasks that must stay busy wait on a process-shared Event the
// test sets, so nothing depends on timing except the timeouts under test.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mproc/executor.hpp>
#include <mproc/sync.hpp>
#include <mproc/value.hpp>
#include <numeric>
#include <ranges>
#include <set>
#include <thread>

#include "pool_test_tasks.hpp"
#include "task_error_check.hpp"
#include "util.hpp"

using namespace std::chrono_literals;
using namespace pool_tasks;
using mproc::ExecutorOptions;
using mproc::Future;
using mproc::ProcessPoolExecutor;
using mproc::ThreadPoolExecutor;

namespace {

int mul(int a, int b) { return a * b; }
void nothing() {}
pid_t my_pid(int) { return ::getpid(); }
void failing_init() { throw std::runtime_error("no GPU here"); }

}  // namespace

template <class E>
class ExecutorTest : public ::testing::Test {
 protected:
  static constexpr bool kThreads = std::is_same_v<E, ThreadPoolExecutor>;
  static void expect_task_error(const std::exception_ptr& e, const char* what) {
    mproc_test::expect_invalid_argument(e, kThreads, what);
  }
};

using Executors = ::testing::Types<ProcessPoolExecutor, ThreadPoolExecutor>;
class ExecutorNames {
 public:
  template <class T>
  static std::string GetName(int) {
    return std::is_same_v<T, ThreadPoolExecutor> ? "Threads" : "Processes";
  }
};
TYPED_TEST_SUITE(ExecutorTest, Executors, ExecutorNames);

TYPED_TEST(ExecutorTest, Submit) {
  TypeParam ex(ExecutorOptions{.max_workers = 2});
  EXPECT_EQ(ex.max_workers(), 2);
  Future<int> f = ex.submit(mul, 2, 8);
  EXPECT_EQ(f.get(), 16);
  EXPECT_TRUE(f.done());
  EXPECT_FALSE(f.running());
  EXPECT_FALSE(f.cancelled());
  EXPECT_FALSE(f.exception());
  EXPECT_EQ(f.get(1s), 16);  // again, and with a timeout
  Future<void> v = ex.submit(nothing);
  v.get();
  std::vector<Future<int>> many;
  for (int i = 0; i < 500; ++i) many.push_back(ex.submit(square, i));
  long long sum = 0;
  for (auto& m : many) sum += m.get();
  EXPECT_EQ(sum, 499LL * 500 * 999 / 6);
}

TYPED_TEST(ExecutorTest, ExceptionPropagation) {
  TypeParam ex(ExecutorOptions{.max_workers = 2});
  auto f = ex.submit(raise_on_7, 7);
  this->expect_task_error(f.exception(), "seven is not allowed");
  EXPECT_TRUE(f.done());
  EXPECT_FALSE(f.cancelled());
  EXPECT_THROW(f.get(), std::exception);
  // map raises at the failing position, after the results before it.
  std::vector<int> got;
  auto results = ex.map(raise_on_7, std::views::iota(0, 10), std::nullopt, 1);
  try {
    for (int v : results) got.push_back(v);
    FAIL() << "map did not raise";
  } catch (...) {
    this->expect_task_error(std::current_exception(), "seven is not allowed");
  }
  EXPECT_EQ(got, (std::vector<int>{0, 1, 2, 3, 4, 5, 6}));
}

TYPED_TEST(ExecutorTest, AsCompleted) {
  mproc::Event started, go;
  TypeParam ex(ExecutorOptions{.max_workers = 2});
  auto a = ex.submit(mul, 2, 21);
  auto b = ex.submit(mul, 3, 7);
  a.wait();
  b.wait();
  auto slow = ex.submit(block, started, go, 5);
  std::vector<Future<int>> fs{a, slow, b, a};  // a duplicate is yielded once
  std::set<int> seen;
  int n = 0;
  for (auto& f : mproc::as_completed(fs)) {
    EXPECT_TRUE(f.done()) << "yielded before it was done: #" << n;
    seen.insert(f.get());
    if (++n == 2) go.set();  // the finished ones come first
  }
  EXPECT_EQ(n, 3);
  EXPECT_EQ(seen, (std::set<int>{42, 21, 5}));
}

TYPED_TEST(ExecutorTest, AsCompletedTimeout) {
  mproc::Event started, go;
  TypeParam ex(ExecutorOptions{.max_workers = 2});
  auto done = ex.submit(square, 3);
  done.wait();
  auto slow = ex.submit(block, started, go, 5);
  std::vector<Future<int>> fs{done, slow};
  std::vector<int> got;
  try {
    for (auto& f : mproc::as_completed(fs, 200ms)) got.push_back(f.get());
    FAIL() << "no TimeoutError";
  } catch (const mproc::TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("1 (of 2) futures unfinished"), std::string::npos) << e.what();
  }
  EXPECT_EQ(got, std::vector<int>{9});
  go.set();
  EXPECT_EQ(slow.get(), 5);
}

TYPED_TEST(ExecutorTest, WaitReturnWhen) {
  mproc::Event started, go;
  TypeParam ex(ExecutorOptions{.max_workers = 2});
  auto slow = ex.submit(block, started, go, 1);
  ASSERT_TRUE(started.wait_for(30s));
  auto quick = ex.submit(square, 4);
  {
    auto [done, not_done] = mproc::wait(std::vector<Future<int>>{slow, quick}, std::nullopt, mproc::FIRST_COMPLETED);
    EXPECT_EQ(done, std::vector<Future<int>>{quick});
    EXPECT_EQ(not_done, std::vector<Future<int>>{slow});
  }
  auto bad = ex.submit(raise_on_7, 7);
  {
    auto [done, not_done] = mproc::wait(std::vector<Future<int>>{slow, quick, bad}, std::nullopt, mproc::FIRST_EXCEPTION);
    EXPECT_EQ(done.size(), 2u);  // quick (already done) and bad
    EXPECT_EQ(not_done, std::vector<Future<int>>{slow});
  }
  {
    // Nothing raises: FIRST_EXCEPTION waits for all, here until the timeout.
    auto t0 = std::chrono::steady_clock::now();
    auto [done, not_done] = mproc::wait(std::vector<Future<int>>{slow, quick}, 200ms, mproc::FIRST_EXCEPTION);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 200ms);
    EXPECT_EQ(done, std::vector<Future<int>>{quick});
    EXPECT_EQ(not_done, std::vector<Future<int>>{slow});
  }
  {
    auto [done, not_done] = mproc::wait(std::vector<Future<int>>{slow, quick}, 100ms);  // ALL_COMPLETED, times out
    EXPECT_EQ(not_done, std::vector<Future<int>>{slow});
  }
  go.set();
  {
    auto [done, not_done] = mproc::wait(std::vector<Future<int>>{slow, quick, bad});
    EXPECT_EQ(done.size(), 3u);
    EXPECT_TRUE(not_done.empty());
  }
  auto none = mproc::wait(std::vector<Future<int>>{}, std::nullopt, mproc::FIRST_COMPLETED);
  EXPECT_TRUE(none.done.empty() && none.not_done.empty());
}

TYPED_TEST(ExecutorTest, CancelQueuedFutures) {
  mproc::Event started, go;
  TypeParam ex(ExecutorOptions{.max_workers = 1});
  auto running = ex.submit(block, started, go, 1);
  ASSERT_TRUE(started.wait_for(30s));
  EXPECT_TRUE(running.running());
  EXPECT_FALSE(running.cancel());  // Python: a running call cannot be cancelled
  std::vector<Future<int>> queued;
  for (int i = 0; i < 6; ++i) queued.push_back(ex.submit(square, i));
  EXPECT_FALSE(queued.front().running());  // not taken yet: the only worker is busy
  auto last = queued.back();
  std::atomic<int> callbacks{0};
  last.add_done_callback([&](const Future<int>& f) {
    EXPECT_TRUE(f.cancelled());
    ++callbacks;
  });
  EXPECT_TRUE(last.cancel());
  EXPECT_TRUE(last.cancel());  // again: still cancelled
  EXPECT_TRUE(last.cancelled());
  EXPECT_TRUE(last.done());
  EXPECT_FALSE(last.running());
  EXPECT_EQ(callbacks.load(), 1);  // ran in cancel()'s thread, before it returned
  EXPECT_THROW(last.get(), mproc::CancelledError);
  EXPECT_THROW((void)last.exception(), mproc::CancelledError);
  go.set();
  EXPECT_EQ(running.get(), 1);
  for (int i = 0; i + 1 < 6; ++i) EXPECT_EQ(queued[static_cast<std::size_t>(i)].get(), i * i);
  EXPECT_FALSE(queued.front().cancel());  // done
  EXPECT_FALSE(queued.front().cancelled());
}

int mark_ran(mproc::Array<int> ran, int i) {
  ran.fetch_add(static_cast<std::size_t>(i), 1);
  return i;
}

// cancel() racing the workers that take the tasks: whatever the outcome, a
// future cancelled (true) never ran, and every other one ran exactly once and
// has its result. Nothing is lost, nothing runs twice, nothing hangs.
int square_with(mproc::Event e, int x) { return e.is_set() ? x * x : -1; }

// More tasks than the task channel holds, each carrying fds (an Event), behind a
// busy worker: the pool's feeder is left holding one while it waits for room.
// Cancelling them all must not close fds the feeder is still sending (it would
// die, and the pool would never feed again): later work still runs, nothing hangs.
TYPED_TEST(ExecutorTest, CancellingTasksThatCarryFdsWhileTheFeederWaits) {
  mproc::Event started, go;
  TypeParam ex(ExecutorOptions{.max_workers = 1});
  auto running = ex.submit(block, started, go, 1);
  ASSERT_TRUE(started.wait_for(30s));
  std::vector<Future<int>> fs;
  for (int i = 0; i < 1100; ++i) fs.push_back(ex.submit(square_with, go, i));
  for (auto& f : fs) EXPECT_TRUE(f.cancel());
  go.set();
  EXPECT_EQ(running.get(30s), 1);
  EXPECT_EQ(ex.submit(square_with, go, 3).get(30s), 9);  // the pool still feeds its workers
  for (auto& f : fs) EXPECT_THROW(f.get(30s), mproc::CancelledError);
}

TYPED_TEST(ExecutorTest, CancelRacingTheWorkersIsExactlyOnce) {
  constexpr std::size_t kTasks = 5000;  // more than the pool's 4096 tickets: their words are reused
  mproc::Array<int> ran(kTasks);
  std::vector<bool> cancelled(kTasks);
  {
    TypeParam ex(ExecutorOptions{.max_workers = 2});
    // Both workers are held until half the tasks are in: the cancels of that half
    // find them queued (some cancels succeed, whatever the machine's speed); in the
    // second half they race the workers.
    mproc::Event started, go;
    std::vector<Future<int>> held;
    for (int w = 0; w < 2; ++w) held.push_back(ex.submit(block, started, go, w));
    std::vector<Future<int>> fs;
    for (std::size_t i = 0; i < kTasks; ++i) {
      if (i == kTasks / 2) go.set();
      fs.push_back(ex.submit(mark_ran, ran, static_cast<int>(i)));
      // Cancel every other one of the tasks submitted 16 ago: some were taken already.
      if (i >= 16 && i % 2 == 0) cancelled[i - 16] = fs[i - 16].cancel();
    }
    for (int w = 0; w < 2; ++w) EXPECT_EQ(held[w].get(), w);
    for (std::size_t i = 0; i < kTasks; ++i) {
      if (cancelled[i]) {
        EXPECT_TRUE(fs[i].cancelled());
        EXPECT_THROW(fs[i].get(), mproc::CancelledError);
      } else {
        EXPECT_EQ(fs[i].get(), static_cast<int>(i));
      }
    }
  }  // shutdown(wait): every task that will ever run has run
  for (std::size_t i = 0; i < kTasks; ++i) ASSERT_EQ(ran.get(i), cancelled[i] ? 0 : 1) << "task " << i;
  EXPECT_GT(std::count(cancelled.begin(), cancelled.end(), true), 0);
}

TYPED_TEST(ExecutorTest, ShutdownCancelFutures) {
  mproc::Event started, go;
  std::vector<Future<int>> fs;
  {
    TypeParam ex(ExecutorOptions{.max_workers = 1});
    auto running = ex.submit(block, started, go, 1);
    ASSERT_TRUE(started.wait_for(30s));
    for (int i = 0; i < 20; ++i) fs.push_back(ex.submit(square, i));
    ex.shutdown(false, true);
    EXPECT_THROW((void)ex.submit(square, 1), mproc::UsageError);
    go.set();
    EXPECT_EQ(running.get(), 1);
  }
  int cancelled = 0;
  for (std::size_t i = 0; i < fs.size(); ++i) {
    ASSERT_TRUE(fs[i].done());
    if (fs[i].cancelled()) {
      ++cancelled;
    } else {
      EXPECT_EQ(fs[i].get(), static_cast<int>(i * i));
    }
  }
  // Every queued future: none was taken by the one worker, busy with `block`
  // (processes: they wait in the task channel, cancellable by their tickets).
  EXPECT_EQ(cancelled, 20);
}

TYPED_TEST(ExecutorTest, ShutdownNoWait) {
  mproc::Event started, go;
  std::optional<Future<int>> f;
  {
    TypeParam ex(ExecutorOptions{.max_workers = 2});
    f.emplace(ex.submit(block, started, go, 3));
    ASSERT_TRUE(started.wait_for(30s));
    ex.shutdown(false);  // returns while the task still runs
    EXPECT_FALSE(f->done());
    EXPECT_THROW((void)ex.submit(square, 2), mproc::UsageError);
    EXPECT_THROW((void)ex.map(square, std::vector<int>{1}), mproc::UsageError);
    go.set();
  }  // the destructor waits
  EXPECT_EQ(f->get(), 3);
}

TYPED_TEST(ExecutorTest, DestructorWaitsForSubmittedTasks) {
  mproc::Event started, go;
  std::vector<Future<int>> fs;
  std::thread releaser([&] {
    started.wait();
    go.set();
  });
  {
    TypeParam ex(ExecutorOptions{.max_workers = 2});
    fs.push_back(ex.submit(block, started, go, 7));
    for (int i = 0; i < 10; ++i) fs.push_back(ex.submit(square, i));
  }  // like leaving Python's `with` block: shutdown(wait=True)
  releaser.join();
  for (auto& f : fs) EXPECT_TRUE(f.done());
  EXPECT_EQ(fs[0].get(), 7);
  // A future outliving its executor stays usable.
  EXPECT_FALSE(fs[1].cancel());
  EXPECT_FALSE(fs[1].running());
  EXPECT_EQ(fs[10].get(), 81);
}

TYPED_TEST(ExecutorTest, DoneCallbacks) {
  mproc::Event started, go, last;
  TypeParam ex(ExecutorOptions{.max_workers = 2});
  auto f = ex.submit(block, started, go, 5);
  std::mutex mu;
  std::vector<int> order;
  auto push = [&](int i) {
    std::lock_guard lock(mu);
    order.push_back(i);
  };
  f.add_done_callback([&](const Future<int>&) { push(1); });
  f.add_done_callback([&](const Future<int>& g) {
    EXPECT_EQ(g.get(), 5);
    EXPECT_TRUE(g == f);
    push(2);
  });
  f.add_done_callback([](const Future<int>&) { throw std::runtime_error("callback error (expected)"); });
  f.add_done_callback([&](const Future<int>&) {
    push(3);
    last.set();
  });
  go.set();
  ASSERT_TRUE(last.wait_for(30s));
  f.add_done_callback([&](const Future<int>&) { push(4); });  // done already: runs here, now
  std::lock_guard lock(mu);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4}));
  // A failed future's callbacks see its exception.
  mproc::Event failed;
  std::exception_ptr seen;
  auto bad = ex.submit(raise_on_7, 7);
  bad.add_done_callback([&](const Future<int>& g) {
    seen = g.exception();
    failed.set();
  });
  ASSERT_TRUE(failed.wait_for(30s));
  this->expect_task_error(seen, "seven is not allowed");
}

TYPED_TEST(ExecutorTest, Initializer) {
  TypeParam ex(ExecutorOptions{.max_workers = 2}, init_worker, 42);
  std::vector<Future<int>> fs;
  for (int i = 0; i < 8; ++i) fs.push_back(ex.submit(read_init, i));
  for (auto& f : fs) EXPECT_EQ(f.get(), 42);
}

TYPED_TEST(ExecutorTest, FailingInitializer) {
  // Python: BrokenExecutor, from the pending futures and from later submits.
  TypeParam ex(ExecutorOptions{.max_workers = 1}, failing_init);
  auto deadline = std::chrono::steady_clock::now() + 30s;
  bool refused = false;
  while (!refused && std::chrono::steady_clock::now() < deadline) {
    try {
      auto f = ex.submit(square, 2);
      EXPECT_THROW(f.get(30s), std::exception);  // never a value
    } catch (const mproc::UsageError&) {
      refused = true;  // the executor knows it is broken
    }
  }
  EXPECT_TRUE(refused);
}

TYPED_TEST(ExecutorTest, MaxTasksPerChild) {
  {
    TypeParam ex(ExecutorOptions{.max_workers = 1, .max_tasks_per_child = 1}, init_worker, 7);
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(ex.submit(count_tasks, i).get(), 1);  // a fresh worker each time
      EXPECT_EQ(ex.submit(read_init, i).get(), 7);    // that ran the initializer
    }
    if constexpr (!TestFixture::kThreads) {
      std::set<pid_t> pids;
      for (int i = 0; i < 3; ++i) pids.insert(ex.submit(my_pid, i).get());
      EXPECT_EQ(pids.size(), 3u);
    }
  }
  TypeParam ex(ExecutorOptions{.max_workers = 1});
  int first = ex.submit(count_tasks, 0).get();
  EXPECT_EQ(ex.submit(count_tasks, 0).get(), first + 1);  // the same worker
}

TYPED_TEST(ExecutorTest, BadOptions) {
  EXPECT_THROW(TypeParam(ExecutorOptions{.max_workers = -1}), mproc::UsageError);
  EXPECT_THROW(TypeParam(ExecutorOptions{.max_tasks_per_child = -1}), mproc::UsageError);
  TypeParam ex;
  EXPECT_GE(ex.max_workers(), 1);
}

TYPED_TEST(ExecutorTest, ManyFuturesInFlight) {
  TypeParam ex(ExecutorOptions{.max_workers = 2});
  std::vector<Future<int>> fs;
  for (int i = 0; i < 5000; ++i) fs.push_back(ex.submit(square, i % 100));
  long long sum = 0;
  std::size_t n = 0;
  for (auto& f : mproc::as_completed(fs, 60s)) {
    sum += f.get();
    ++n;
  }
  EXPECT_EQ(n, fs.size());
  EXPECT_EQ(sum, 50LL * 328350);  // 50 rounds of sum(i*i, i < 100)
}

TEST(ThreadPoolExecutor, AnyCallable) {
  // Threads take what processes cannot: capturing lambdas, references, move-only values.
  ThreadPoolExecutor ex(ExecutorOptions{.max_workers = 2});
  int base = 10;
  EXPECT_EQ(ex.submit([&base](int x) { return base + x; }, 5).get(), 15);
  auto p = std::make_unique<int>(3);
  EXPECT_EQ(ex.submit([](std::unique_ptr<int> q) { return *q; }, std::move(p)).get(), 3);
  std::vector<int> got;
  for (int v : ex.map([&base](int x) { return base * x; }, std::views::iota(0, 5))) got.push_back(v);
  EXPECT_EQ(got, (std::vector<int>{0, 10, 20, 30, 40}));
  EXPECT_GE(ThreadPoolExecutor().max_workers(), 5);  // min(32, cpu_count() + 4)
}

namespace {
std::size_t mark_ran_big(mproc::Array<int> ran, std::string big, int i) {
  ran.fetch_add(static_cast<std::size_t>(i), 1);
  return big.size() + static_cast<std::size_t>(i);
}
// White-box: the executor's pool, to find the workers to kill (and to end a test
// that found a lost task, which shutdown(wait) would wait for forever).
class KillableExecutor : public ProcessPoolExecutor {
 public:
  using ProcessPoolExecutor::ProcessPoolExecutor;
  std::vector<pid_t> worker_pids() const { return pool_->worker_pids(); }
  void terminate() { pool_->terminate(); }
};
}  // namespace

TEST(ProcessPoolExecutor, WorkersKilledWhileReceivingLargeTasksLoseNothing) {
  // Pool's test of that name, with the executor's tickets (cancellable tasks):
  // each task travels out of band (> 64 KiB) while workers are killed at random.
  // Every future completes with a result or WorkerLostError (none hangs), a task
  // with a result ran exactly once, and no task ran twice.
  const std::string big(100 << 10, 'x');
  constexpr int kMax = 8000;
  mproc::Array<int> ran(kMax);
  std::vector<int> outcome(kMax, 0);  // 1 result, 2 WorkerLostError
  int total = 0;
  std::size_t hung = 0, wrong = 0;
  {
    KillableExecutor ex(ExecutorOptions{.max_workers = 2});
    mproc_test::RandomKiller killer([&] { return ex.worker_pids(); }, 60, 3ms);
    while (!killer.done() && total + 32 <= kMax && !hung) {
      std::vector<Future<std::size_t>> fs;
      for (int i = 0; i < 32; ++i) fs.push_back(ex.submit(mark_ran_big, ran, big, total + i));
      auto deadline = std::chrono::steady_clock::now() + 30s;
      for (int i = 0; i < 32; ++i) {
        try {
          auto left = std::max(deadline - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration{});
          wrong += fs[static_cast<std::size_t>(i)].get(left) != big.size() + static_cast<std::size_t>(total + i);
          outcome[static_cast<std::size_t>(total + i)] = 1;
        } catch (const mproc::WorkerLostError&) {
          outcome[static_cast<std::size_t>(total + i)] = 2;
        } catch (const mproc::TimeoutError&) {
          ++hung;
        }
      }
      total += 32;
    }
    killer.stop();
    if (hung) ex.terminate();
  }
  EXPECT_EQ(hung, 0u);
  EXPECT_EQ(wrong, 0u);
  for (int i = 0; i < total; ++i) {
    auto k = static_cast<std::size_t>(i);
    if (outcome[k] == 1) {
      ASSERT_EQ(ran.get(k), 1) << "task " << i;
    } else {
      ASSERT_LE(ran.get(k), 1) << "task " << i;
    }
  }
  EXPECT_EQ(mproc_test::zombie_children(), 0);
}
