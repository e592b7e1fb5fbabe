// Pool: the scenarios of CPython's _TestPool, _TestPoolWorkerErrors,
// _TestPoolWorkerLifetime and TestInitializers, plus what Python cannot do
// (crash-proof workers, per-task timeouts, retries), with 1, 2 and 4 workers.
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <cstdlib>
#include <map>
#include <mproc/pool.hpp>
#include <mproc/shared_memory.hpp>
#include <mproc/sync.hpp>
#include <list>
#include <numeric>
#include <ranges>
#include <set>
#include <thread>

#include "util.hpp"

using namespace std::chrono_literals;
using mproc::Pool;
using mproc::PoolOptions;
using mproc::StartMethod;

namespace {

int square(int x) { return x * x; }
long long add(int a, long long b) { return a + b; }
std::string shout(std::string s) { return s + "!"; }
void nothing(int) {}
int slow_square(int x) {
  ::usleep(static_cast<useconds_t>(20000 * (x % 3)));
  return x * x;
}
int raise_on_7(int x) {
  if (x == 7) throw std::invalid_argument("seven is not allowed");
  return x;
}
int crash_on(int x, int bad) {
  if (x == bad) {
    std::signal(SIGSEGV, SIG_DFL);
    std::raise(SIGSEGV);
  }
  return x;
}
int segv_on_5(int x) { return crash_on(x, 5); }
int abort_on_2(int x) {
  if (x == 2) {
    std::signal(SIGABRT, SIG_DFL);
    std::abort();
  }
  return x;
}
int exit_on_4(int x) {
  if (x == 4) std::exit(3);
  return x;
}
int loop_on_1(int x) {
  if (x == 1) {
    for (;;) ::pause();
  }
  return x;
}
int sleep_ms(int ms) {
  ::usleep(static_cast<useconds_t>(ms) * 1000);
  return ms;
}
pid_t my_pid(int) { return ::getpid(); }

int g_initialized = 0;
void init_worker(int value) { g_initialized = value; }
int read_init(int) { return g_initialized; }
void failing_init() { throw std::runtime_error("no GPU here"); }

// Crashes the first time it sees x == 3 (marker file), succeeds on the retry.
int crash_once(std::string marker, int x) {
  if (x == 3 && ::access(marker.c_str(), F_OK) != 0) {
    mproc_test::write_file(marker, "x");
    std::signal(SIGSEGV, SIG_DFL);
    std::raise(SIGSEGV);
  }
  return x;
}

long long sum_slice(mproc::SharedArray<std::int64_t> a, std::size_t lo, std::size_t hi) {
  long long s = 0;
  for (std::size_t i = lo; i < hi; ++i) s += a[i];
  return s;
}

std::vector<std::unique_ptr<char[]>> g_leaked;  // reachable, so the allocations stay (and are not elided)
pid_t leak_20mb(int) {
  g_leaked.emplace_back(new char[20 << 20]);
  std::memset(g_leaked.back().get(), 1, 20 << 20);  // touched, so resident
  return ::getpid();
}

int signal_then_sleep(mproc::Event started, int) {
  started.set();
  ::sleep(60);
  return 0;
}

// Runs in a child: Ctrl-C (SIGINT, sent by a thread once a task is running)
// during a blocking map must end the map with KeyboardInterrupt, and the pool's
// destructor must stop the workers. Exit code 42 = all as expected.
void interrupted_map() {
  mproc::enable_keyboard_interrupt();
  int code = 44;
  {
    Pool pool(PoolOptions{.processes = 2});
    mproc::Event started;
    std::thread t([started]() mutable {
      started.wait();
      ::kill(::getpid(), SIGINT);
    });
    auto t0 = std::chrono::steady_clock::now();
    try {
      pool.map(mproc::bind(signal_then_sleep, started), std::views::iota(0, 4), 1);
    } catch (const mproc::KeyboardInterrupt&) {
      code = std::chrono::steady_clock::now() - t0 < 20s ? 42 : 43;
    }
    t.join();
  }  // ~Pool: terminate
  std::exit(code);
}

struct Params {
  int workers;
  StartMethod method;
};

std::string param_name(const ::testing::TestParamInfo<Params>& i) {
  return std::string(mproc::to_string(i.param.method)) + "_" + std::to_string(i.param.workers);
}

}  // namespace

class PoolTest : public ::testing::TestWithParam<Params> {
 protected:
  PoolOptions opts() const {
    PoolOptions o;
    o.processes = GetParam().workers;
    o.start_method = GetParam().method;
    return o;
  }
};

TEST_P(PoolTest, ApplyAndMap) {
  Pool pool(opts());
  EXPECT_EQ(pool.processes(), GetParam().workers);
  EXPECT_EQ(pool.apply(square, 7), 49);
  EXPECT_EQ(pool.apply(add, 2, 40LL), 42);
  EXPECT_EQ(pool.apply(shout, "hi"), "hi!");  // const char* converts to the std::string parameter
  pool.apply(nothing, 1);                     // void result

  std::vector<int> xs(100);
  std::iota(xs.begin(), xs.end(), 0);
  std::vector<int> expect;
  for (int x : xs) expect.push_back(x * x);
  EXPECT_EQ(pool.map(square, xs), expect);
  for (long long chunk : {1LL, 3LL, 7LL, 100LL, 1000LL}) EXPECT_EQ(pool.map(square, xs, chunk), expect) << chunk;
  EXPECT_EQ(pool.map(square, std::views::iota(0, 100)), expect);  // any input range
  EXPECT_TRUE(pool.map(square, std::vector<int>{}).empty());

  std::vector<std::tuple<int, long long>> pairs{{1, 2}, {3, 4}, {5, 6}};
  EXPECT_EQ(pool.starmap(add, pairs), (std::vector<long long>{3, 7, 11}));

  auto r = pool.map_async(slow_square, std::vector<int>{1, 2, 3, 4});
  EXPECT_EQ(r.get(), (std::vector<int>{1, 4, 9, 16}));
  EXPECT_TRUE(r.ready());
  EXPECT_TRUE(r.successful());
}

// Automatic map chunks end at 48 KiB of encoding (docs/pool.md): 3,000 strings of
// 1 KiB make chunks of ~47 items, not Python's 3000 / (4 * workers). Every result
// must come back in its place, whichever way the chunks were cut.
// The 48 KiB cap counts the items only: a callable whose bound values alone pass
// it (here 80 KB) still gets chunks, and the map completes.
double sum_with(std::vector<double> weights, int x) { return weights.at(0) * x + static_cast<double>(weights.size()); }

TEST_P(PoolTest, MapWithALargeBoundCallable) {
  Pool pool(opts());
  std::vector<double> weights(10000, 2.0);
  EXPECT_EQ(pool.map(mproc::bind(sum_with, weights), std::vector<int>{1, 2, 3}),
            (std::vector<double>{10002, 10004, 10006}));
}

TEST_P(PoolTest, MapWithLargeItemsChunksByBytes) {
  Pool pool(opts());
  std::vector<std::string> xs;
  std::vector<std::string> expect;
  for (int i = 0; i < 3000; ++i) {
    xs.push_back(std::string(1000 + i % 50, static_cast<char>('a' + i % 26)) + std::to_string(i));
    expect.push_back(xs.back() + "!");
  }
  EXPECT_EQ(pool.map(shout, xs), expect);
  EXPECT_EQ(pool.map(shout, xs, 7), expect);  // an explicit chunksize is used as given
}

// map encodes straight from inputs whose reading cannot throw; others are copied
// first, so an exception from the input comes out before any task runs.
static_assert(mproc::detail::NoThrowSizedInput<std::vector<int>&>);
static_assert(mproc::detail::NoThrowSizedInput<const std::vector<std::string>&>);
static_assert(mproc::detail::NoThrowSizedInput<std::views::all_t<std::vector<int>&>>);
static_assert(mproc::detail::NoThrowSizedInput<decltype(std::views::iota(0, 3))>);
static_assert(!mproc::detail::NoThrowSizedInput<decltype(std::views::iota(0, 3) |
                                                         std::views::transform([](int x) { return x; }))>);

// The bulk path (docs/pool.md): argument and result of plain bytes. Chunks of
// such items are one copy of the input, results come back in runs written in
// place, and an all-ok batch is one copy into the result vector. Types of odd
// sizes, contiguous and computed inputs, automatic and explicit chunk sizes: the
// same as a serial loop, item for item.
struct Rgb {
  std::uint8_t r, g, b;
  bool operator==(const Rgb&) const = default;
};
static_assert(sizeof(Rgb) == 3 && mproc::detail::bulk_type<Rgb>);
Rgb invert(Rgb c) { return Rgb{static_cast<std::uint8_t>(255 - c.r), static_cast<std::uint8_t>(255 - c.g), c.b}; }
double halve(double x) { return x / 2; }
std::int64_t mix(std::int64_t x) {
  return static_cast<std::int64_t>(static_cast<std::uint64_t>(x) * 0x9E3779B97F4A7C15ULL ^ static_cast<std::uint64_t>(x >> 7));
}
char low_byte(std::int64_t x) { return static_cast<char>(x & 0x7f); }
constexpr int kBulkItems = 50'000;  // several automatic chunks and result batches

template <class F, class In>
auto serial_map(F f, const In& in) {
  std::vector<decltype(f(*std::ranges::begin(in)))> out;
  for (const auto& x : in) out.push_back(f(x));
  return out;
}

TEST_P(PoolTest, BulkMapMatchesASerialLoop) {
  Pool pool(opts());
  std::vector<Rgb> colours;
  std::vector<double> reals;
  std::vector<std::int64_t> wide;
  for (int i = 0; i < kBulkItems; ++i) {
    colours.push_back(Rgb{static_cast<std::uint8_t>(i), static_cast<std::uint8_t>(i >> 8), static_cast<std::uint8_t>(i * 7)});
    reals.push_back(i * 1.25 - 7.0);
    wide.push_back(std::int64_t{i} << 33 | i);
  }
  EXPECT_EQ(pool.map(invert, colours), serial_map(invert, colours));
  EXPECT_EQ(pool.map(halve, reals), serial_map(halve, reals));
  EXPECT_EQ(pool.map(mix, wide), serial_map(mix, wide));
  EXPECT_EQ(pool.map(low_byte, wide), serial_map(low_byte, wide));  // 8 bytes in, 1 out
  for (long long chunk : {1LL, 5LL, 777LL, 20000LL}) EXPECT_EQ(pool.map(invert, colours, chunk), serial_map(invert, colours)) << chunk;
  // Computed input (encoded item by item) and a converting argument (int -> int64).
  auto iota = std::views::iota(0, kBulkItems);
  EXPECT_EQ(pool.map(mix, iota), serial_map([](int x) { return mix(x); }, iota));
  std::vector<int> narrow(wide.size());
  std::iota(narrow.begin(), narrow.end(), -100);
  EXPECT_EQ(pool.map(mix, narrow), serial_map([](int x) { return mix(x); }, narrow));
  std::vector<double> got;
  for (double v : pool.imap(halve, reals)) got.push_back(v);
  EXPECT_EQ(got, serial_map(halve, reals));
  EXPECT_EQ(pool.map(halve, std::vector<double>{}), std::vector<double>{});
}

// Throws on a few items in the middle of automatic chunks (and of their result
// batches): only those fail, with their own index.
int raise_on_mid(int x) {
  if (x == 30'001 || x == 30'002 || x == 41'000) throw std::domain_error("bad item " + std::to_string(x));
  return -x;
}

TEST_P(PoolTest, BulkMapItemThrowingMidChunk) {
  Pool pool(opts());
  std::vector<int> xs(kBulkItems);
  std::iota(xs.begin(), xs.end(), 0);
  try {
    pool.map(raise_on_mid, xs);
    FAIL() << "map did not raise";
  } catch (const mproc::TaskError& e) {
    EXPECT_EQ(e.type_name(), "std::domain_error");
    // The first failure to arrive ends the map (as in Python): one of the three.
    EXPECT_TRUE(e.index() == 30'001u || e.index() == 30'002u || e.index() == 41'000u) << e.index();
    EXPECT_EQ(e.message(), "bad item " + std::to_string(e.index()));
  }
  // Through imap every other result still arrives, in its place.
  std::size_t i = 0;
  std::vector<std::size_t> failed;
  auto results = pool.imap(raise_on_mid, xs);
  for (;; ++i) {
    try {
      auto v = results.next();
      if (!v) break;
      ASSERT_EQ(*v, -static_cast<int>(i));
    } catch (const mproc::TaskError& e) {
      EXPECT_EQ(e.index(), i);
      failed.push_back(e.index());
    }
  }
  EXPECT_EQ(i, xs.size());
  EXPECT_EQ(failed, (std::vector<std::size_t>{30'001, 30'002, 41'000}));
  EXPECT_EQ(pool.map(square, std::vector<int>{1, 2, 3}), (std::vector<int>{1, 4, 9}));
}

// A worker that dies in the middle of a bulk chunk: the item it ran fails with
// WorkerLostError, the chunk's other items are re-run elsewhere (or retried).
int segv_on_mid(int x) { return crash_on(x, 30'001) + 1; }

TEST_P(PoolTest, BulkMapWorkerDiesMidChunk) {
  Pool pool(opts());
  std::vector<int> xs(kBulkItems);
  std::iota(xs.begin(), xs.end(), 0);
  try {
    pool.map(segv_on_mid, xs);
    FAIL() << "map did not raise";
  } catch (const mproc::WorkerLostError& e) {
    EXPECT_EQ(e.index(), 30'001u);
    EXPECT_EQ(e.exitcode(), -SIGSEGV);
  }
  std::size_t i = 0, lost = 0;
  for (auto results = pool.imap_unordered(segv_on_mid, xs);; ++i) {
    try {
      auto v = results.next();
      if (!v) break;
      ASSERT_NE(*v, 30'002);
    } catch (const mproc::WorkerLostError& e) {
      EXPECT_EQ(e.index(), 30'001u);
      ++lost;
    }
  }
  EXPECT_EQ(i, xs.size());
  EXPECT_EQ(lost, 1u);

  mproc_test::TempDir dir;
  auto o = opts();
  o.retries = 1;
  Pool retrying(o);
  auto f = mproc::bind(crash_once, dir.file("marker"));  // crashes on item 3 once
  std::vector<int> ys(kBulkItems);
  std::iota(ys.begin(), ys.end(), 0);
  EXPECT_EQ(retrying.map(f, ys), ys);
}

TEST_P(PoolTest, ImapOrderedAndUnordered) {
  Pool pool(opts());
  std::vector<int> got;
  for (int v : pool.imap(slow_square, std::views::iota(0, 30))) got.push_back(v);
  std::vector<int> expect;
  for (int i = 0; i < 30; ++i) expect.push_back(i * i);
  EXPECT_EQ(got, expect);

  std::multiset<int> unordered;
  for (int v : pool.imap_unordered(slow_square, std::views::iota(0, 30), 2)) unordered.insert(v);
  EXPECT_EQ(unordered, std::multiset<int>(expect.begin(), expect.end()));

  auto empty = pool.imap(square, std::vector<int>{});
  EXPECT_TRUE(empty.begin() == empty.end());
}

TEST_P(PoolTest, TaskExceptionsCarryTypeMessageAndIndex) {
  Pool pool(opts());
  try {
    pool.map(raise_on_7, std::views::iota(0, 20), 3);
    FAIL() << "map did not raise";
  } catch (const mproc::TaskError& e) {
    EXPECT_EQ(e.type_name(), "std::invalid_argument");
    EXPECT_EQ(e.message(), "seven is not allowed");
    EXPECT_EQ(e.index(), 7u);
  }
  auto r = pool.apply_async(raise_on_7, 7);
  r.wait();
  EXPECT_FALSE(r.successful());
  EXPECT_THROW(r.get(), mproc::RemoteError);
  // imap raises at the failing position; the other results still arrive.
  int ok = 0, errors = 0;
  auto results = pool.imap(raise_on_7, std::views::iota(0, 10));
  // next() is Python's next(it): the value, empty at the end, or the item's error.
  for (;;) {
    try {
      if (!results.next()) break;
      ++ok;
    } catch (const mproc::TaskError& e) {
      ++errors;
      EXPECT_EQ(e.index(), 7u);
    }
  }
  EXPECT_EQ(ok, 9);
  EXPECT_EQ(errors, 1);
  EXPECT_EQ(pool.apply(square, 3), 9);  // the pool is fine
}

TEST_P(PoolTest, CallbacksAndThrowingCallbacks) {
  Pool pool(opts());
  std::atomic<int> seen{0};
  std::atomic<int> errors{0};
  auto r = pool.apply_async(square, 6).then([&](const int& v) { seen = v; });
  r.wait();
  auto e = pool.apply_async(raise_on_7, 7).then(nullptr, [&](const std::exception&) { ++errors; });
  e.wait();
  // Registered after the result was ready: runs at once.
  pool.apply_async(square, 2).then([&](const int& v) { seen += v; }).wait();
  // A callback that throws must not hurt the pool.
  pool.apply_async(square, 1).then([](const int&) { throw std::runtime_error("bad callback"); }).wait();
  pool.map_async(square, std::vector<int>{1, 2}).then([&](const std::vector<int>& v) { seen += v[1]; }).wait();
  EXPECT_EQ(pool.apply(square, 5), 25);
  // then() on a ready result runs inline, so by now every callback has run.
  EXPECT_EQ(seen.load(), 36 + 4 + 4);
  EXPECT_EQ(errors.load(), 1);
}

// A thread waiting in get() takes its own results off the result channel while
// it spins (docs/pool.md, latency), never another job's: another job's callbacks
// run on the pool's result thread (or in then()'s caller once ready), so a waiter
// holding a lock that such a callback takes cannot deadlock on itself.
TEST_P(PoolTest, OtherJobsCallbacksNeverRunOnAWaitingThread) {
  Pool pool(opts());
  const auto waiter = std::this_thread::get_id();
  std::atomic<int> on_waiter{0}, ran{0};
  std::atomic<bool> done{false};
  std::thread other([&] {
    std::vector<mproc::AsyncResult<int>> rs;
    for (int i = 0; i < 300; ++i) {
      rs.push_back(pool.apply_async(square, i));
      rs.back().then([&](const int&) {
        if (std::this_thread::get_id() == waiter) ++on_waiter;
        ++ran;
      });
    }
    for (auto& r : rs) r.wait();
    done = true;
  });
  long long sum = 0, expect = 0;
  for (int i = 0; !done || i < 100; ++i) {
    sum += pool.apply(square, i % 10);
    expect += (i % 10) * (i % 10);
  }
  other.join();
  EXPECT_EQ(sum, expect);
  EXPECT_EQ(ran.load(), 300);
  EXPECT_EQ(on_waiter.load(), 0);
}

TEST_P(PoolTest, GetWithTimeoutLeavesThePoolUsable) {
  Pool pool(opts());
  auto r = pool.apply_async(sleep_ms, 2000);
  EXPECT_THROW(r.get(50ms), mproc::TimeoutError);
  EXPECT_FALSE(r.ready());
  if (GetParam().workers > 1) {
    EXPECT_EQ(pool.apply(square, 4), 16);
  }
  pool.terminate();
  EXPECT_THROW(r.get(), mproc::CancelledError);
}

TEST_P(PoolTest, CrashedWorkerFailsOnlyItsTask) {
  Pool pool(opts());
  for (auto f : {segv_on_5, abort_on_2, exit_on_4}) {
    int ok = 0, lost = 0;
    auto results = pool.imap_unordered(f, std::views::iota(0, 12), 1);
    for (;;) {
      try {
        if (!results.next()) break;
        ++ok;
      } catch (const mproc::WorkerLostError& e) {
        ++lost;
        EXPECT_TRUE(e.exitcode() == -SIGSEGV || e.exitcode() == -SIGABRT || e.exitcode() == 3) << e.what();
        EXPECT_NE(std::string(e.what()).find("PoolWorker-"), std::string::npos) << e.what();
      }
    }
    EXPECT_EQ(ok, 11);
    EXPECT_EQ(lost, 1);
  }
  // map over a chunk holding the crashing item: only that item fails; the error says which.
  try {
    pool.map(segv_on_5, std::views::iota(0, 10), 10);
    FAIL();
  } catch (const mproc::WorkerLostError& e) {
    EXPECT_EQ(e.index(), 5u);
    EXPECT_EQ(e.exitcode(), -SIGSEGV);
  }
  EXPECT_EQ(pool.apply(square, 9), 81);
  // The supervisor replaces the dead worker asynchronously: wait (bounded) for it.
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (static_cast<int>(pool.worker_pids().size()) < GetParam().workers && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(static_cast<int>(pool.worker_pids().size()), GetParam().workers);
}

TEST_P(PoolTest, TimeoutKillsTheTask) {
  auto o = opts();
  o.timeout = 300ms;
  Pool pool(o);
  auto results = pool.imap(loop_on_1, std::views::iota(0, 4), 1);
  std::vector<int> got;
  int timeouts = 0;
  for (;;) {
    try {
      auto v = results.next();
      if (!v) break;
      got.push_back(*v);
    } catch (const mproc::TaskTimeoutError& e) {
      ++timeouts;
      EXPECT_EQ(e.index(), 1u);
    }
  }
  EXPECT_EQ(got, (std::vector<int>{0, 2, 3}));
  EXPECT_EQ(timeouts, 1);
  EXPECT_EQ(pool.apply(square, 3), 9);
}

TEST_P(PoolTest, RetriesRerunLostTasks) {
  mproc_test::TempDir dir;
  auto o = opts();
  o.retries = 1;
  Pool pool(o);
  auto f = mproc::bind(crash_once, dir.file("marker"));
  EXPECT_EQ(pool.map(f, std::views::iota(0, 6)), (std::vector<int>{0, 1, 2, 3, 4, 5}));
}

TEST_P(PoolTest, MaxTasksPerChildReplacesWorkers) {
  auto o = opts();
  o.maxtasksperchild = 1;
  Pool pool(o);
  std::set<pid_t> pids;
  for (int i = 0; i < 6; ++i) pids.insert(pool.apply(my_pid, i));
  EXPECT_EQ(pids.size(), 6u);  // every task ran in a fresh worker
}

TEST_P(PoolTest, InitializerRunsInEachWorker) {
  Pool pool(opts(), init_worker, 42);
  for (int v : pool.map(read_init, std::views::iota(0, 8), 1)) EXPECT_EQ(v, 42);
}

TEST_P(PoolTest, SharedArrayArgumentsAreNotCopied) {
  mproc::SharedArray<std::int64_t> a(100000);
  std::iota(a.begin(), a.end(), 0);
  std::vector<std::tuple<mproc::SharedArray<std::int64_t>, std::size_t, std::size_t>> slices;
  for (std::size_t lo = 0; lo < a.size(); lo += 25000) slices.emplace_back(a, lo, lo + 25000);
  Pool pool(opts());
  auto parts = pool.starmap(sum_slice, slices);
  EXPECT_EQ(std::accumulate(parts.begin(), parts.end(), 0LL), 99999LL * 100000 / 2);
  // A temporary handle: the only owner of its segment dies before the task is sent.
  EXPECT_EQ(pool.apply(sum_slice, mproc::SharedArray<std::int64_t>{1, 2, 3}, 0, 3), 6);
  EXPECT_EQ(pool.map(mproc::bind(sum_slice, mproc::SharedArray<std::int64_t>{4, 5}, 0), std::vector<std::size_t>{1, 2}),
            (std::vector<long long>{4, 9}));
}

// A finished small call's records are released by the next call on the
// submitting thread (docs/pool.md, "What one call costs"), but a call whose task
// carries fds is released at once: its duplicates close when it completes, with no
// later call needed.
TEST_P(PoolTest, FdsOfACompletedCallCloseWithoutAnotherCall) {
  Pool pool(opts());
  mproc::SharedArray<std::int64_t> a{1, 2, 3};
  EXPECT_EQ(pool.apply(square, 3), 9);  // warm up (workers, channels); leaves a plain call's records
  const int before = mproc_test::fd_count();
  for (int i = 0; i < 20; ++i) {
    auto r = pool.apply_async(sum_slice, a, 0, 3);
    EXPECT_EQ(r.get(), 6);
  }
  // Another pool thread may drop its last reference a moment after get() returns
  // (the feeder, say): wait for the count, with a deadline. Records kept for a
  // later call would keep it up until the deadline, and fail. Not equality: an fd
  // the pool's machinery had open at `before` (a start method's helper) may have
  // closed since.
  auto until = std::chrono::steady_clock::now() + 10s;
  while (mproc_test::fd_count() > before && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_LE(mproc_test::fd_count(), before);
  // Small plain calls in between and after (released later) still all complete.
  long long s = 0, expect = 0;
  for (int i = 0; i < 2000; ++i) {
    s += pool.apply(square, i % 7);
    expect += (i % 7) * (i % 7);
  }
  EXPECT_EQ(s, expect);
}

TEST_P(PoolTest, CallbacksRunBeforeGetReturns) {
  Pool pool(opts());
  std::atomic<int> ran{0};
  auto r = pool.apply_async(sleep_ms, 50).then([&](const int&) { ++ran; });
  EXPECT_EQ(r.get(), 50);
  EXPECT_EQ(ran.load(), 1);  // Python runs callbacks before the result is ready
  auto m = pool.map_async(square, std::vector<int>{1, 2, 3}).then([&](const std::vector<int>&) { ++ran; });
  m.wait();
  EXPECT_EQ(ran.load(), 2);
}

TEST_P(PoolTest, CloseJoinTerminate) {
  {
    Pool pool(opts());
    auto r = pool.map_async(slow_square, std::views::iota(0, 10));
    pool.close();
    EXPECT_THROW(pool.apply(square, 1), mproc::UsageError);
    EXPECT_THROW(pool.map(square, std::vector<int>{1}), mproc::UsageError);
    pool.join();  // waits for the queued work
    EXPECT_TRUE(r.ready());
    EXPECT_EQ(r.get()[9], 81);
    EXPECT_TRUE(pool.worker_pids().empty());
  }
  {
    Pool pool(opts());
    EXPECT_THROW(pool.join(), mproc::UsageError);  // join before close/terminate
    auto r = pool.apply_async(sleep_ms, 5000);
    pool.terminate();
    EXPECT_THROW(r.get(), mproc::CancelledError);
    pool.join();
  }
  {
    Pool pool(opts());
    auto r = pool.apply_async(sleep_ms, 5000);
  }  // the destructor terminates: no hang
  EXPECT_EQ(mproc_test::zombie_children(), 0);
}

INSTANTIATE_TEST_SUITE_P(Workers, PoolTest,
                         ::testing::Values(Params{1, StartMethod::forkserver}, Params{2, StartMethod::forkserver},
                                           Params{4, StartMethod::forkserver}, Params{2, StartMethod::spawn},
                                           Params{2, StartMethod::fork}),
                         param_name);

TEST(Pool, BadOptions) {
  EXPECT_THROW(Pool(PoolOptions{.processes = -1}), mproc::UsageError);
  EXPECT_THROW(Pool(PoolOptions{.processes = 1, .maxtasksperchild = -1}), mproc::UsageError);
  EXPECT_THROW(Pool(PoolOptions{.processes = 1, .timeout = std::chrono::nanoseconds(-1)}), mproc::UsageError);
  Pool pool(PoolOptions{.processes = 1});
  EXPECT_THROW(pool.map(square, std::vector<int>{1, 2}, -1), mproc::UsageError);
  EXPECT_GE(Pool().processes(), 1);  // default: cpu_count()
}

TEST(Pool, FailingInitializerFailsTasksInsteadOfLoopingForever) {
  Pool pool(PoolOptions{.processes = 1}, failing_init);
  auto r = pool.apply_async(square, 2);
  EXPECT_THROW(r.get(30s), mproc::TaskError);
}

TEST(Pool, MemoryLimitRecyclesWorkers) {
  std::set<pid_t> limited, unlimited;
  {
    Pool pool(PoolOptions{.processes = 1, .max_memory_mb = 10});
    for (int i = 0; i < 4; ++i) limited.insert(pool.apply(leak_20mb, i));
  }
  {
    Pool pool(PoolOptions{.processes = 1});
    for (int i = 0; i < 4; ++i) unlimited.insert(pool.apply(leak_20mb, i));
  }
  EXPECT_EQ(limited.size(), 4u);  // past the limit after every task: replaced each time
  EXPECT_EQ(unlimited.size(), 1u);
  EXPECT_THROW(Pool(PoolOptions{.processes = 1, .max_memory_mb = -1}), mproc::UsageError);
}

TEST(Pool, CtrlCDuringMapRaisesKeyboardInterrupt) {
  mproc::Process p(mproc::ProcessOptions{.start_method = StartMethod::fork}, interrupted_map);
  p.start();
  ASSERT_TRUE(p.join(60s));
  EXPECT_EQ(p.exitcode(), 42);
  EXPECT_EQ(mproc_test::zombie_children(), 0);
}

TEST(Pool, KilledWorkersUnderLoadLoseNothing) {
  // Fault injection: a 10,000-task map while workers are killed at random. Every
  // task ends up with a result or WorkerLostError; nothing hangs.
  Pool pool(PoolOptions{.processes = 2});
  mproc_test::RandomKiller killer([&] { return pool.worker_pids(); }, 10, 20ms);
  std::size_t ok = 0, lost = 0;
  std::string unexpected;
  try {
    auto results =
        pool.imap_unordered(sleep_ms, std::views::iota(0, 10000) | std::views::transform([](int) { return 0; }), 16);
    for (;;) {
      try {
        if (!results.next()) break;
        ++ok;
      } catch (const mproc::WorkerLostError&) {
        ++lost;
      }
    }
  } catch (const std::exception& e) {
    unexpected = e.what();
  }
  killer.stop();
  EXPECT_EQ(unexpected, "");
  EXPECT_EQ(ok + lost, 10000u);
  EXPECT_LE(lost, 10u);
  pool.close();
  pool.join();
  EXPECT_EQ(mproc_test::zombie_children(), 0);
}

namespace {
std::size_t length_plus(std::string big, std::size_t i) { return big.size() + i; }
}  // namespace

TEST(Pool, WorkersKilledWhileReceivingLargeChunksLoseNothing) {
  // Each task's chunk is larger than the out-of-band threshold (64 KiB), so it
  // travels in its own memfd; workers are killed at random, often while receiving
  // one. Every task ends with a result or WorkerLostError (with retries: a
  // result), and a chunk taken out of the ring by a worker that died before it
  // ran is re-queued, never lost: a lost one would hang its get(), caught by the
  // timeout. Regression: the worker wrote its slot only after the out-of-band
  // read, so a death in between lost the chunk.
  const std::string big(100 << 10, 'x');
  for (int retries : {0, 1000}) {
    SCOPED_TRACE("retries " + std::to_string(retries));
    Pool pool(PoolOptions{.processes = 2, .retries = retries});
    mproc_test::RandomKiller killer([&] { return pool.worker_pids(); }, 60, 3ms);
    std::size_t ok = 0, lost = 0, hung = 0, wrong = 0, total = 0;
    while (!killer.done()) {
      std::vector<mproc::AsyncResult<std::size_t>> rs;
      for (std::size_t i = 0; i < 32; ++i) rs.push_back(pool.apply_async(length_plus, big, total + i));
      // One bound for the batch, so a lost task fails the test in 30 s, not 30 s each.
      auto deadline = std::chrono::steady_clock::now() + 30s;
      for (std::size_t i = 0; i < rs.size(); ++i) {
        try {
          auto left = std::max(deadline - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration{});
          wrong += rs[i].get(left) != big.size() + total + i;
          ++ok;
        } catch (const mproc::WorkerLostError&) {
          ++lost;
        } catch (const mproc::TimeoutError&) {
          ++hung;
        }
      }
      total += rs.size();
      if (hung) break;
    }
    killer.stop();
    EXPECT_EQ(hung, 0u);
    EXPECT_EQ(wrong, 0u);
    EXPECT_EQ(ok + lost, total);
    if (retries) {
      EXPECT_EQ(lost, 0u);
    }
    if (hung) break;  // ~Pool terminates
    pool.close();
    pool.join();
  }
  EXPECT_EQ(mproc_test::zombie_children(), 0);
}
