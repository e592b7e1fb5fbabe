// Python's shapes that C++ users type first (issue 10 §3): the worker count given
// positionally (Pool(4), ThreadPool(4), ProcessPoolExecutor(4), ThreadPoolExecutor(4)),
// and every timed call taking any std::chrono::duration, floating-point ones included
// (get(std::chrono::duration<double>(0.1))), through detail/timeout.hpp's one conversion.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <mproc/executor.hpp>
#include <mproc/pipe.hpp>
#include <mproc/pool.hpp>
#include <mproc/process.hpp>
#include <mproc/queue.hpp>
#include <mproc/sync.hpp>
#include <mproc/thread_pool.hpp>
#include <optional>
#include <ratio>
#include <type_traits>
#include <vector>

#include "pool_test_tasks.hpp"

using namespace std::chrono_literals;
using pool_tasks::init_worker;
using pool_tasks::read_init;
using pool_tasks::square;
using dsec = std::chrono::duration<double>;

namespace {

void nothing() {}

// ---- the positional worker count ---------------------------------------------------

// Each form compiles and picks the intended constructor, and the options forms beside
// them stay unambiguous.
static_assert(std::is_constructible_v<mproc::Pool, int>);
static_assert(std::is_constructible_v<mproc::ThreadPool, int>);
static_assert(std::is_constructible_v<mproc::ProcessPoolExecutor, int>);
static_assert(std::is_constructible_v<mproc::ThreadPoolExecutor, int>);
static_assert(std::is_constructible_v<mproc::Pool, int, void (*)(int), int>);
static_assert(std::is_constructible_v<mproc::ThreadPool, int, void (*)(int), int>);
static_assert(std::is_constructible_v<mproc::Pool, mproc::PoolOptions>);
static_assert(std::is_constructible_v<mproc::ProcessPoolExecutor, mproc::ExecutorOptions>);
// Explicit, as Python has no `pool = 4`.
static_assert(!std::is_convertible_v<int, mproc::Pool>);
static_assert(!std::is_convertible_v<int, mproc::ThreadPool>);
static_assert(!std::is_convertible_v<int, mproc::ProcessPoolExecutor>);
static_assert(!std::is_convertible_v<int, mproc::ThreadPoolExecutor>);

TEST(PositionalWorkers, PoolTakesTheCount) {
  mproc::Pool pool(2);
  EXPECT_EQ(pool.processes(), 2);
  EXPECT_EQ(pool.apply(square, 7), 49);
}

TEST(PositionalWorkers, PoolZeroIsCpuCount) {
  mproc::Pool pool(0);  // Python's Pool(None): the int overload, not PoolOptions
  EXPECT_EQ(pool.processes(), mproc::cpu_count());
}

TEST(PositionalWorkers, PoolBracesStillMeanOptions) {
  mproc::Pool a({.processes = 1});
  EXPECT_EQ(a.processes(), 1);
  mproc::Pool b({});  // value-initialized: cpu_count(), whichever overload takes it
  EXPECT_EQ(b.processes(), mproc::cpu_count());
}

TEST(PositionalWorkers, PoolWithInitializer) {
  mproc::Pool pool(1, init_worker, 42);  // Pool(processes, initializer, initargs)
  EXPECT_EQ(pool.processes(), 1);
  EXPECT_EQ(pool.apply(read_init, 0), 42);
}

TEST(PositionalWorkers, ThreadPool) {
  mproc::ThreadPool tp(3);
  EXPECT_EQ(tp.processes(), 3);
  EXPECT_EQ(tp.apply(square, 5), 25);
  mproc::ThreadPool ti(1, init_worker, 9);
  EXPECT_EQ(ti.apply(read_init, 0), 9);
}

TEST(PositionalWorkers, Executors) {
  mproc::ProcessPoolExecutor ex(2);
  EXPECT_EQ(ex.max_workers(), 2);
  EXPECT_EQ(ex.submit(square, 6).get(), 36);
  mproc::ThreadPoolExecutor tx(3);
  EXPECT_EQ(tx.max_workers(), 3);
  EXPECT_EQ(tx.submit(square, 4).get(), 16);
}

// ---- any duration ------------------------------------------------------------------

TEST(AnyDuration, ConversionRoundsUpAndSaturates) {
  using mproc::detail::to_nanoseconds;
  EXPECT_EQ(to_nanoseconds(dsec(0.1)), std::chrono::nanoseconds(100'000'000));
  // A positive timeout never becomes 0 ns ("try once").
  EXPECT_EQ(to_nanoseconds(std::chrono::duration<double>(1e-12)), 1ns);
  EXPECT_EQ(to_nanoseconds(std::chrono::duration<long long, std::pico>(1)), 1ns);
  EXPECT_EQ(to_nanoseconds(std::chrono::duration<float, std::milli>(1.5f)), 1'500'000ns);
  EXPECT_EQ(to_nanoseconds(0s), 0ns);
  // Beyond a century: no limit, instead of an overflowed (negative) deadline.
  EXPECT_EQ(to_nanoseconds(std::chrono::hours::max()), std::nullopt);
  EXPECT_EQ(to_nanoseconds(dsec(1e300)), std::nullopt);
  EXPECT_LT(*to_nanoseconds(std::chrono::hours::min()), 0ns);
  EXPECT_THROW(to_nanoseconds(dsec(std::numeric_limits<double>::quiet_NaN())), mproc::UsageError);
  EXPECT_THROW(mproc::detail::timeout_deadline(dsec(-0.5), "x"), mproc::UsageError);
}

TEST(AnyDuration, AsyncResultAndFuture) {
  mproc::ThreadPool tp(1);
  auto r = tp.apply_async(square, 3);
  EXPECT_TRUE(r.wait(dsec(30)));
  EXPECT_EQ(r.get(dsec(30)), 9);
  EXPECT_EQ(r.get(std::chrono::duration<float, std::milli>(30000)), 9);
  EXPECT_THROW((void)r.wait(dsec(-1)), mproc::UsageError);

  mproc::ThreadPoolExecutor tx(1);
  auto f = tx.submit(square, 4);
  EXPECT_TRUE(f.wait(dsec(30)));
  EXPECT_EQ(f.get(dsec(30)), 16);
  EXPECT_EQ(f.exception(dsec(30)), nullptr);
}

TEST(AnyDuration, ResultNotReadyTimesOut) {
  mproc::ThreadPool tp(1);
  mproc::Event started, go;
  auto r = tp.apply_async(pool_tasks::block, started, go, 1);
  ASSERT_TRUE(started.wait_for(dsec(30)));
  EXPECT_FALSE(r.wait(dsec(0.01)));
  EXPECT_THROW((void)r.get(std::chrono::duration<double, std::milli>(10)), mproc::TimeoutError);
  go.set();
  EXPECT_EQ(r.get(), 1);
}

TEST(AnyDuration, ExecutorMapAsCompletedWait) {
  mproc::ThreadPoolExecutor tx(2);
  std::vector<int> xs{1, 2, 3};
  std::vector<int> got;
  for (int v : tx.map(square, xs, dsec(30))) got.push_back(v);
  EXPECT_EQ(got, (std::vector<int>{1, 4, 9}));
  std::vector<mproc::Future<int>> fs{tx.submit(square, 2), tx.submit(square, 3)};
  int n = 0;
  for (auto& f : mproc::as_completed(fs, dsec(30))) n += f.get();
  EXPECT_EQ(n, 13);
  auto [done, not_done] = mproc::wait(fs, std::chrono::duration<float>(30.0f));
  EXPECT_EQ(done.size(), 2u);
  EXPECT_TRUE(not_done.empty());
  // The forms that took std::optional<nanoseconds> still compile.
  (void)mproc::wait(fs, std::nullopt);
  (void)mproc::wait(fs, std::optional<std::chrono::milliseconds>(5000ms));
}

TEST(AnyDuration, PoolOptionsTimeout) {
  mproc::PoolOptions o{.processes = 1, .timeout = dsec(30)};
  ASSERT_TRUE(o.timeout.has_value());
  EXPECT_EQ(*o.timeout, 30s);
  EXPECT_THROW(mproc::Pool(mproc::PoolOptions{.processes = 1, .timeout = dsec(0)}), mproc::UsageError);
}

TEST(AnyDuration, QueuePipeSyncProcess) {
  mproc::Queue<int> q;
  q.put(5, dsec(1));
  EXPECT_EQ(q.get(dsec(1)), 5);
  EXPECT_THROW((void)q.get(dsec(0.001)), mproc::Empty);
  auto [a, b] = mproc::Pipe<int>();
  EXPECT_FALSE(b.poll(dsec(0.001)));
  a.send(7);
  EXPECT_TRUE(b.poll(dsec(5)));
  EXPECT_EQ(b.recv(dsec(5)), 7);

  mproc::Lock lock;
  EXPECT_TRUE(lock.acquire_for(dsec(1)));
  lock.release();
  mproc::Event ev;
  EXPECT_FALSE(ev.wait_for(dsec(0.001)));
  mproc::Semaphore sem(1);
  EXPECT_TRUE(sem.acquire(true, dsec(1)));
  sem.release();

  mproc::Process p(nothing);
  p.start();
  EXPECT_TRUE(p.join(dsec(30)));
  EXPECT_EQ(p.exitcode(), 0);
}

}  // namespace
