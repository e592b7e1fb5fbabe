// ThreadPool: the scenarios of test_pool.cpp (CPython's _TestPool, TestInitializers,
// _TestPoolWorkerLifetime) that make sense for threads, with 1, 2 and 4 threads,
// plus what only threads allow (capturing lambdas, move-only arguments, original
// exception types). Blocking tasks wait on an Event the test sets: no sleeps.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <map>
#include <memory>
#include <mproc/background_error.hpp>
#include <mproc/executor.hpp>
#include <mproc/sync.hpp>
#include <mproc/thread_pool.hpp>
#include <numeric>
#include <ranges>
#include <set>
#include <thread>

#include "pool_test_tasks.hpp"

using namespace std::chrono_literals;
using namespace pool_tasks;
using mproc::PoolOptions;
using mproc::ThreadPool;

namespace {

long long add(int a, long long b) { return a + b; }

// A result type that is not default-constructible.
struct Token {
  explicit Token(int v) : value(v) {}
  int value;
};

}  // namespace

class ThreadPoolTest : public ::testing::TestWithParam<int> {
 protected:
  PoolOptions opts() const { return PoolOptions{.processes = GetParam()}; }
};

TEST_P(ThreadPoolTest, ApplyAndMap) {
  ThreadPool pool(opts());
  EXPECT_EQ(pool.processes(), GetParam());
  EXPECT_EQ(pool.apply(square, 7), 49);
  EXPECT_EQ(pool.apply(add, 2, 40LL), 42);
  int base = 100;
  EXPECT_EQ(pool.apply([&base](int x) { return base + x; }, 5), 105);  // capturing lambda
  std::atomic<int> touched{0};
  pool.apply([&touched] { ++touched; });  // void result
  EXPECT_EQ(touched.load(), 1);

  std::vector<int> xs(100);
  std::iota(xs.begin(), xs.end(), 0);
  std::vector<int> expect;
  for (int x : xs) expect.push_back(x * x);
  EXPECT_EQ(pool.map(square, xs), expect);
  for (long long chunk : {1LL, 3LL, 7LL, 100LL, 1000LL}) EXPECT_EQ(pool.map(square, xs, chunk), expect) << chunk;
  EXPECT_EQ(pool.map(square, std::views::iota(0, 100)), expect);
  EXPECT_TRUE(pool.map(square, std::vector<int>{}).empty());

  std::vector<std::tuple<int, long long>> pairs{{1, 2}, {3, 4}, {5, 6}};
  EXPECT_EQ(pool.starmap(add, pairs), (std::vector<long long>{3, 7, 11}));
  EXPECT_EQ(pool.starmap([](int a, int b) { return a * b; }, std::vector<std::pair<int, int>>{{2, 3}, {4, 5}}),
            (std::vector<int>{6, 20}));

  auto r = pool.map_async(square, std::vector<int>{1, 2, 3, 4});
  EXPECT_EQ(r.get(), (std::vector<int>{1, 4, 9, 16}));
  EXPECT_TRUE(r.ready());
  EXPECT_TRUE(r.successful());
  std::vector<std::monostate> voids = pool.map([&touched](int) { ++touched; }, std::views::iota(0, 10));
  EXPECT_EQ(voids.size(), 10u);
  EXPECT_EQ(touched.load(), 11);
}

TEST_P(ThreadPoolTest, ArgumentsNeedNoSerialization) {
  ThreadPool pool(opts());
  // Move-only argument and result; a reference through std::ref.
  auto p = std::make_unique<int>(41);
  EXPECT_EQ(pool.apply([](std::unique_ptr<int> q) { return *q + 1; }, std::move(p)), 42);
  int counter = 0;
  pool.apply([](int& c) { c = 7; }, std::ref(counter));
  EXPECT_EQ(counter, 7);
  // map over move-only elements (moved out of the vector), into a result type
  // without a default constructor. Results are copied out by get(), as Pool's.
  std::vector<std::unique_ptr<int>> owned;
  for (int i = 0; i < 20; ++i) owned.push_back(std::make_unique<int>(i));
  auto tokens = pool.map([](std::unique_ptr<int> q) { return Token(*q * 2); }, std::move(owned), 3);
  ASSERT_EQ(tokens.size(), 20u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(tokens[static_cast<std::size_t>(i)].value, 2 * i);
  // A mutable functor: each task has its own copy for apply.
  struct Counter {
    int n = 0;
    int operator()() { return ++n; }
  };
  EXPECT_EQ(pool.apply(Counter{}), 1);
}

TEST_P(ThreadPoolTest, ExceptionsKeepTheirType) {
  ThreadPool pool(opts());
  // Unlike Pool (TaskError), a thread task's exception comes back as itself.
  try {
    pool.map(raise_on_7, std::views::iota(0, 20), 3);
    FAIL() << "map did not raise";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "seven is not allowed");
  }
  auto r = pool.apply_async(raise_on_7, 7);
  r.wait();
  EXPECT_FALSE(r.successful());
  EXPECT_THROW(r.get(), std::invalid_argument);
  EXPECT_THROW(pool.apply([] { throw 42; }), int);  // not even a std::exception
  int ok = 0, errors = 0;
  auto results = pool.imap(raise_on_7, std::views::iota(0, 10));
  for (auto it = results.begin();;) {
    try {
      if (it == results.end()) break;
      ++ok;
      ++it;
    } catch (const std::invalid_argument&) {
      ++errors;
      ++it;
    }
  }
  EXPECT_EQ(ok, 9);
  EXPECT_EQ(errors, 1);
  EXPECT_EQ(pool.apply(square, 3), 9);
}

TEST_P(ThreadPoolTest, CallbacksAndThrowingCallbacks) {
  ThreadPool pool(opts());
  std::atomic<int> seen{0};
  std::atomic<int> errors{0};
  pool.apply_async(square, 6).then([&](const int& v) { seen = v; }).wait();
  pool.apply_async(raise_on_7, 7).then(nullptr, [&](const std::exception&) { ++errors; }).wait();
  pool.apply_async([] { throw 1; }).then(nullptr, [&](const std::exception&) { ++errors; }).wait();
  pool.apply_async(square, 1).then([](const int&) { throw std::runtime_error("bad callback"); }).wait();
  EXPECT_EQ(pool.apply(square, 5), 25);
  // Callbacks run before the result is marked ready (Python's ApplyResult), and
  // then() on a ready result runs inline: by now every callback has run.
  pool.apply_async(square, 2).then([&](const int& v) { seen += v; }).wait();
  EXPECT_EQ(seen.load(), 36 + 4);
  EXPECT_EQ(errors.load(), 2);
}

TEST_P(ThreadPoolTest, GetWithTimeoutLeavesThePoolUsable) {
  ThreadPool pool(opts());
  mproc::Event started, go;
  auto r = pool.apply_async(block, started, go, 5);
  ASSERT_TRUE(started.wait_for(30s));
  EXPECT_THROW(r.get(50ms), mproc::TimeoutError);
  EXPECT_FALSE(r.ready());
  if (GetParam() > 1) {
    EXPECT_EQ(pool.apply(square, 4), 16);
  }
  go.set();
  EXPECT_EQ(r.get(), 5);
}

TEST_P(ThreadPoolTest, InitializerRunsInEachThread) {
  std::atomic<int> calls{0};
  {
    ThreadPool pool(opts(), [&calls](int v) {
      t_init = v;
      ++calls;
    }, 42);
    for (int v : pool.map(read_init, std::views::iota(0, 64), 1)) EXPECT_EQ(v, 42);
    pool.close();
    pool.join();
  }
  EXPECT_EQ(calls.load(), GetParam());
}

TEST_P(ThreadPoolTest, MaxTasksPerChildReplacesThreads) {
  auto o = opts();
  o.maxtasksperchild = 1;
  ThreadPool pool(o, [](int v) { t_init = v; }, 9);
  // Each task runs in a fresh thread (thread_locals start over) that ran the initializer.
  for (int v : pool.map(count_tasks, std::views::iota(0, 20), 1)) EXPECT_EQ(v, 1);
  for (int v : pool.map(read_init, std::views::iota(0, 20), 1)) EXPECT_EQ(v, 9);
  ThreadPool single(PoolOptions{.processes = 1});
  std::vector<int> counts;
  for (int i = 0; i < 4; ++i) counts.push_back(single.apply(count_tasks, i));
  EXPECT_EQ(counts[3] - counts[0], 3);  // one thread ran them all
}

TEST_P(ThreadPoolTest, CloseJoinTerminate) {
  {
    ThreadPool pool(opts());
    auto r = pool.map_async(square, std::views::iota(0, 1000), 1);
    pool.close();
    EXPECT_THROW(pool.apply(square, 1), mproc::UsageError);
    EXPECT_THROW(pool.map(square, std::vector<int>{1}), mproc::UsageError);
    EXPECT_THROW(pool.imap(square, std::vector<int>{1}), mproc::UsageError);
    pool.join();  // waits for the queued work
    EXPECT_TRUE(r.ready());
    EXPECT_EQ(r.get()[999], 999 * 999);
  }
  {
    // terminate(): the queued tasks are cancelled; the running one finishes.
    ThreadPool pool(opts());
    EXPECT_THROW(pool.join(), mproc::UsageError);
    mproc::Event started, go;
    std::vector<mproc::AsyncResult<int>> running;
    for (int i = 0; i < GetParam(); ++i) running.push_back(pool.apply_async(block, started, go, i));
    ASSERT_TRUE(started.wait_for(30s));
    std::vector<mproc::AsyncResult<int>> queued;
    for (int i = 0; i < 5 * GetParam(); ++i) queued.push_back(pool.apply_async(square, i));
    std::thread terminator([&] { pool.terminate(); });
    // Some queued results fail with CancelledError before any running task ends.
    int cancelled = 0;
    for (auto& q : queued) {
      if (!q.wait(30s)) continue;
      try {
        q.get();
      } catch (const mproc::CancelledError&) {
        ++cancelled;
      }
    }
    EXPECT_GT(cancelled, 0);
    go.set();
    terminator.join();
    for (int i = 0; i < static_cast<int>(running.size()); ++i) {
      // A task already taken by a thread ran to the end (or was cancelled before it started).
      try {
        EXPECT_EQ(running[static_cast<std::size_t>(i)].get(), i);
      } catch (const mproc::CancelledError&) {
      }
    }
    pool.join();
    EXPECT_THROW(pool.apply(square, 1), mproc::UsageError);
  }
  {
    // The destructor cancels what is queued and waits for what runs: no hang.
    mproc::Event started, go;
    std::optional<mproc::AsyncResult<int>> queued;
    std::thread releaser;
    {
      ThreadPool pool(opts());
      std::vector<mproc::AsyncResult<int>> running;
      for (int i = 0; i < GetParam(); ++i) running.push_back(pool.apply_async(block, started, go, i));
      queued.emplace(pool.apply_async(square, 3));
      bool ok = started.wait_for(30s);
      releaser = std::thread([&] { go.set(); });  // before or while the destructor waits
      EXPECT_TRUE(ok);
    }
    releaser.join();
    EXPECT_TRUE(queued->ready());  // ran, or was cancelled
  }
}

TEST_P(ThreadPoolTest, ImapKeepsGoingAfterClose) {
  // Like Python: an imap already iterating completes after close(); join waits for it.
  ThreadPool pool(opts());
  auto results = pool.imap(square, std::views::iota(0, 500), 1);
  auto it = results.begin();
  EXPECT_EQ(*it, 0);
  pool.close();
  int n = 1;
  for (++it; it != results.end(); ++it) {
    EXPECT_EQ(*it, n * n);
    ++n;
  }
  EXPECT_EQ(n, 500);
  pool.join();
}

INSTANTIATE_TEST_SUITE_P(Threads, ThreadPoolTest, ::testing::Values(1, 2, 4));

TEST(ThreadPool, BadOptions) {
  EXPECT_THROW(ThreadPool(PoolOptions{.processes = -1}), mproc::UsageError);
  EXPECT_THROW(ThreadPool(PoolOptions{.processes = 1, .maxtasksperchild = -1}), mproc::UsageError);
  // A thread cannot be stopped: no per-task timeout.
  EXPECT_THROW(ThreadPool(PoolOptions{.processes = 1, .timeout = 1s}), mproc::UsageError);
  EXPECT_THROW(ThreadPool(PoolOptions{.processes = 1, .max_memory_mb = 100}), mproc::UsageError);
  ThreadPool pool(PoolOptions{.processes = 1, .start_method = mproc::StartMethod::spawn, .retries = 2});  // accepted
  EXPECT_THROW(pool.map(square, std::vector<int>{1, 2}, -1), mproc::UsageError);
  EXPECT_GE(ThreadPool().processes(), 1);
}

TEST(ThreadPool, FailingInitializerBreaksThePool) {
  mproc::Event go;
  ThreadPool pool(PoolOptions{.processes = 2}, [&go] {
    go.wait();
    throw std::runtime_error("no GPU here");
  });
  auto r = pool.apply_async(square, 2);  // queued before the initializer fails
  go.set();
  EXPECT_THROW(r.get(30s), std::runtime_error);
  try {
    (void)pool.apply_async(square, 3);
    FAIL() << "a broken pool took work";
  } catch (const mproc::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("no GPU here"), std::string::npos) << e.what();
  }
}

TEST(ThreadPool, ManyConcurrentCallers) {
  // Several threads submitting at once (the pool's methods are thread-safe).
  ThreadPool pool(PoolOptions{.processes = 4});
  std::vector<std::thread> callers;
  std::atomic<long long> total{0};
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&] {
      std::vector<mproc::AsyncResult<int>> rs;
      for (int i = 0; i < 2000; ++i) rs.push_back(pool.apply_async(square, i % 10));
      for (auto& r : rs) total += r.get();
    });
  }
  for (auto& c : callers) c.join();
  EXPECT_EQ(total.load(), 4LL * 200 * 285);  // 200 rounds of 0..9 squared (285) per caller
}

// Errors with no caller to throw to (here: callbacks that throw) go through the
// one reporting path: the handler the program set, stderr without one.
TEST(BackgroundErrors, GoToTheHandlerTheProgramSet) {
  struct Seen {
    std::mutex mu;
    std::vector<std::pair<std::string, std::string>> reports;
    std::promise<void> two;
  };
  auto seen = std::make_shared<Seen>();
  auto previous = mproc::set_background_error_handler([seen](const mproc::BackgroundError& e) {
    std::lock_guard lock(seen->mu);
    seen->reports.emplace_back(std::string(e.where), std::string(e.what));
    if (seen->reports.size() == 2) seen->two.set_value();
  });
  EXPECT_FALSE(previous);  // the default
  {
    ThreadPool pool(PoolOptions{.processes = 1});
    auto r = pool.apply_async(square, 3);
    r.then([](int) { throw std::runtime_error("result callback boom"); });
    EXPECT_EQ(r.get(), 9);
    mproc::ThreadPoolExecutor ex(mproc::ExecutorOptions{.max_workers = 1});
    auto f = ex.submit(square, 4);
    f.add_done_callback([](const mproc::Future<int>&) { throw std::logic_error("done callback boom"); });
    EXPECT_EQ(f.get(), 16);
    ASSERT_EQ(seen->two.get_future().wait_for(30s), std::future_status::ready);
  }
  auto mine = mproc::set_background_error_handler(nullptr);  // back to stderr
  EXPECT_TRUE(mine);
  std::lock_guard lock(seen->mu);
  std::set<std::pair<std::string, std::string>> got(seen->reports.begin(), seen->reports.end());
  EXPECT_EQ(got, (std::set<std::pair<std::string, std::string>>{
                     {"result callback", "result callback boom (thrown by the callback; ignored)"},
                     {"done callback", "done callback boom (thrown by the callback; ignored)"}}));
}

namespace thread_pool_header {
int run_alone();  // thread_pool_header_alone.cpp: <mproc/thread_pool.hpp> alone, no cereal
}

// <mproc/thread_pool.hpp> compiles on its own, without the serializer or
// cereal (a #error in thread_pool_header_alone.cpp says so otherwise), and
// every kind of call works from that header alone.
TEST(ThreadPoolHeader, CompilesAloneWithoutTheSerializer) { EXPECT_EQ(thread_pool_header::run_alone(), 16); }
