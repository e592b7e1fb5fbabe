// The map-method contract, written once and run over the front ends that share
// it (TYPED_TEST): Pool, ThreadPool, ProcessPoolExecutor, ThreadPoolExecutor,
// and Pool on an in-process fake backend (the backend seam). Each method is tested where the type has it: map and
// imap-like iteration everywhere (an executor's map is Pool's imap with a
// timeout), imap_unordered and starmap on the pools. Covered: ordering under
// every chunk size, empty input, an item's exception (with its index where the
// type carries one), an input that throws, lazy reading of unbounded input,
// timeouts, and shutdown with a lazy map that nobody iterates.
//
// Tasks that must stay busy wait on a process-shared Event the test sets; calls
// are counted in a shared mproc::Value, so the same functions serve threads and
// processes.
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <mproc/executor.hpp>
#include <mproc/pool.hpp>
#include <mproc/sync.hpp>
#include <mproc/thread_pool.hpp>
#include <mproc/value.hpp>
#include <numeric>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "fake_pool_backend.hpp"
#include "pool_test_tasks.hpp"
#include "task_error_check.hpp"

using namespace std::chrono_literals;
using namespace pool_tasks;

namespace {

long long add(int a, long long b) { return a + b; }
int count_call(mproc::Value<int> calls, int x) {
  calls.fetch_add(1);
  return x;
}
// Counts the call; the item equal to `stop` sets `started` and waits for `go`.
int count_and_block(mproc::Value<int> calls, mproc::Event started, mproc::Event go, int stop, int x) {
  calls.fetch_add(1);
  if (x == stop) {
    started.set();
    go.wait();
  }
  return x;
}
// Sets `done` when it runs the item equal to `last`.
int mark(mproc::Event done, int last, int x) {
  if (x == last) done.set();
  return x;
}

/// Runs `fn` on a thread and fails (ending the program: the thread cannot be
/// stopped) unless it returns within `limit`: a hang becomes a clear failure.
template <class Fn>
void within(std::chrono::seconds limit, const char* what, Fn&& fn) {
  auto done = std::async(std::launch::async, std::forward<Fn>(fn));
  if (done.wait_for(limit) != std::future_status::ready) {
    ADD_FAILURE() << what << " did not return within " << limit.count() << " s";
    std::fflush(nullptr);
    std::_Exit(1);
  }
  done.get();
}

template <class R>
std::vector<typename std::remove_cvref_t<R>::value_type> collect(R&& results) {
  std::vector<typename std::remove_cvref_t<R>::value_type> out;
  for (auto&& v : results) out.push_back(v);
  return out;
}

// ---- the front ends, behind one adapter each ----------------------------------------------
//
// make(n): n workers. map(): the blocking map as a vector. imap(): the ordered lazy
// map (an executor's map). shutdown(): close()+join() / shutdown(true).

template <class P>
struct Pools {
  using type = P;
  static constexpr bool kThreads = std::is_same_v<P, mproc::ThreadPool>;
  static constexpr bool kExecutor = false;
  static std::unique_ptr<P> make(int n) { return std::make_unique<P>(mproc::PoolOptions{.processes = n}); }
  template <class F, class R>
  static auto map(P& p, F f, R&& xs, long long chunk = 0) {
    return p.map(f, std::forward<R>(xs), chunk);
  }
  template <class F, class R>
  static auto imap(P& p, F f, R&& xs, long long chunk = 0) {
    return p.imap(f, std::forward<R>(xs), chunk);
  }
  static void shutdown(P& p) {
    p.close();
    p.join();
  }
};

template <class E>
struct Executors {
  using type = E;
  static constexpr bool kThreads = std::is_same_v<E, mproc::ThreadPoolExecutor>;
  static constexpr bool kExecutor = true;
  static std::unique_ptr<E> make(int n) { return std::make_unique<E>(mproc::ExecutorOptions{.max_workers = n}); }
  template <class F, class R>
  static auto map(E& e, F f, R&& xs, long long chunk = 0) {
    return collect(e.map(f, std::forward<R>(xs), std::nullopt, chunk));
  }
  template <class F, class R>
  static auto imap(E& e, F f, R&& xs, long long chunk = 0) {
    return e.map(f, std::forward<R>(xs), std::nullopt, chunk);
  }
  static void shutdown(E& e) { e.shutdown(true); }
};

// The typed Pool front end on an in-process backend (tests/fake_pool_backend.hpp):
// the map methods need nothing of the local process engine (docs/design.md, "The
// pool's backend seam").
struct PoolOnFakeBackend : Pools<mproc::Pool> {
  static constexpr bool kFake = true;
  static std::unique_ptr<mproc::Pool> make(int n) {
    return std::make_unique<mproc::Pool>(std::make_unique<mproc_test::FakePoolBackend>(n));
  }
};

template <class S>
class MapContract : public ::testing::Test {
 protected:
  static constexpr bool kThreads = S::kThreads;
  // An item's std::invalid_argument as each front end reports it, with its index.
  static void expect_item_error(const std::exception_ptr& e, std::size_t index) {
    mproc_test::expect_invalid_argument(e, kThreads, "seven is not allowed", index);
  }
};

using Subjects = ::testing::Types<Pools<mproc::Pool>, Pools<mproc::ThreadPool>, Executors<mproc::ProcessPoolExecutor>,
                                  Executors<mproc::ThreadPoolExecutor>, PoolOnFakeBackend>;
class SubjectNames {
 public:
  template <class S>
  static std::string GetName(int) {
    using T = typename S::type;
    if constexpr (requires { S::kFake; }) return "PoolOnFakeBackend";
    if constexpr (std::is_same_v<T, mproc::Pool>) return "Pool";
    if constexpr (std::is_same_v<T, mproc::ThreadPool>) return "ThreadPool";
    if constexpr (std::is_same_v<T, mproc::ProcessPoolExecutor>) return "ProcessPoolExecutor";
    return "ThreadPoolExecutor";
  }
};
TYPED_TEST_SUITE(MapContract, Subjects, SubjectNames);

std::vector<int> squares(int n) {
  std::vector<int> out;
  for (int i = 0; i < n; ++i) out.push_back(i * i);
  return out;
}

}  // namespace

// Results come back in input order whatever the chunk size and worker count;
// imap_unordered returns each result once.
TYPED_TEST(MapContract, OrderUnderEveryChunkSize) {
  using S = TypeParam;
  std::vector<int> xs(200);
  std::iota(xs.begin(), xs.end(), 0);
  const auto expect = squares(200);
  for (int workers : {1, 2, 4}) {
    auto p = S::make(workers);
    for (long long chunk : {0LL, 1LL, 3LL, 64LL, 1000LL}) {
      EXPECT_EQ(S::map(*p, square, xs, chunk), expect) << workers << " workers, chunk " << chunk;
      EXPECT_EQ(S::map(*p, square, std::views::iota(0, 200), chunk), expect) << workers << " workers, chunk " << chunk;
      EXPECT_EQ(collect(S::imap(*p, square, std::views::iota(0, 200), chunk)), expect)
          << workers << " workers, chunk " << chunk;
      if constexpr (!S::kExecutor) {
        auto un = collect(p->imap_unordered(square, std::views::iota(0, 200), chunk));
        EXPECT_EQ(std::multiset<int>(un.begin(), un.end()), std::multiset<int>(expect.begin(), expect.end()));
        std::vector<std::tuple<int, long long>> pairs{{1, 2}, {3, 4}, {5, 6}};
        EXPECT_EQ(p->starmap(add, pairs, chunk), (std::vector<long long>{3, 7, 11}));
      }
    }
  }
}

TYPED_TEST(MapContract, EmptyInput) {
  using S = TypeParam;
  auto p = S::make(2);
  EXPECT_TRUE(S::map(*p, square, std::vector<int>{}).empty());
  EXPECT_TRUE(S::map(*p, square, std::views::iota(0, 0), 1).empty());
  auto lazy = S::imap(*p, square, std::vector<int>{});
  EXPECT_TRUE(lazy.begin() == lazy.end());
  if constexpr (!S::kExecutor) {
    auto un = p->imap_unordered(square, std::vector<int>{});
    EXPECT_TRUE(un.begin() == un.end());
    EXPECT_TRUE(p->starmap(add, std::vector<std::tuple<int, long long>>{}).empty());
    EXPECT_TRUE(p->map_async(square, std::vector<int>{}).get().empty());
  }
}

TYPED_TEST(MapContract, NegativeChunksizeIsAUsageError) {
  using S = TypeParam;
  auto p = S::make(1);
  EXPECT_THROW(S::map(*p, square, std::vector<int>{1, 2}, -1), mproc::UsageError);
  EXPECT_THROW((void)S::imap(*p, square, std::vector<int>{1, 2}, -1), mproc::UsageError);
}

// The first failing item makes map throw; lazy iteration yields the results
// before it, then throws at its position, then (pools) goes on with the rest.
TYPED_TEST(MapContract, ItemExceptionAtItsIndex) {
  using S = TypeParam;
  auto p = S::make(2);
  for (long long chunk : {0LL, 1LL, 3LL, 20LL}) {
    try {
      S::map(*p, raise_on_7, std::views::iota(0, 20), chunk);
      ADD_FAILURE() << "map did not raise, chunk " << chunk;
    } catch (...) {
      this->expect_item_error(std::current_exception(), 7);
    }
    std::vector<int> got;
    auto results = S::imap(*p, raise_on_7, std::views::iota(0, 10), chunk);
    try {
      for (int v : results) got.push_back(v);
      ADD_FAILURE() << "imap did not raise, chunk " << chunk;
    } catch (...) {
      this->expect_item_error(std::current_exception(), 7);
    }
    EXPECT_EQ(got, (std::vector<int>{0, 1, 2, 3, 4, 5, 6})) << "chunk " << chunk;
  }
  EXPECT_EQ(S::map(*p, square, std::vector<int>{3}), std::vector<int>{9});  // still fine
}

// An input that throws: map throws it before anything runs; lazy iteration
// yields the results before the bad element, then throws the input's own
// exception — never CancelledError, even when every earlier item has finished
// by the time the input throws in the middle of a chunk (bug 7 of issue 11:
// the partial chunk was submitted after the job was sealed, and a job whose
// items were all in by then was already gone).
TYPED_TEST(MapContract, InputThatThrowsMidChunk) {
  using S = TypeParam;
  auto p = S::make(2);
  auto bad_input = std::views::iota(0, 10) | std::views::transform([](int x) {
                     if (x == 4) throw std::runtime_error("bad input");
                     return x;
                   });
  EXPECT_THROW(S::map(*p, square, bad_input), std::runtime_error);
  std::vector<int> got;
  try {
    for (int v : S::imap(*p, square, bad_input)) got.push_back(v);
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "bad input");
  }
  EXPECT_EQ(got, (std::vector<int>{0, 1, 4, 9}));  // everything before the bad element
  for (int round = 0; round < 20; ++round) {
    mproc::Event first_chunk_ran;
    // Chunks of 2: [0, 1] goes out; [2, ...] holds 2 when reading 3 throws, after
    // the first chunk has run and (most likely, 1 ms later) come back.
    auto input = std::views::iota(0, 10) | std::views::transform([&first_chunk_ran](int x) {
                   if (x == 3) {
                     first_chunk_ran.wait();
                     std::this_thread::sleep_for(1ms);
                     throw std::runtime_error("bad input");
                   }
                   return x;
                 });
    std::vector<int> round_got;
    try {
      for (int v : S::imap(*p, mproc::bind(mark, first_chunk_ran, 1), input, 2)) round_got.push_back(v);
      ADD_FAILURE() << "no exception, round " << round;
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "bad input") << "round " << round;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "round " << round << ": " << e.what() << " instead of the input's exception";
    }
    EXPECT_EQ(round_got, (std::vector<int>{0, 1, 2})) << "round " << round;
  }
}

// Lazy maps read an endless input a bounded window ahead of the consumer.
TYPED_TEST(MapContract, LazyMapReadsUnboundedInputLazily) {
  using S = TypeParam;
  auto p = S::make(2);
  std::atomic<long> read{0};
  auto counting = std::views::iota(0) | std::views::transform([&read](int x) {
                    ++read;
                    return x;
                  });
  long taken = 0;
  for (int v : S::imap(*p, square, counting)) {
    EXPECT_EQ(v, static_cast<int>(taken * taken));
    if (++taken == 2000) break;
  }
  EXPECT_LT(read.load(), taken + 20000) << "read far ahead of its consumer";
}

// Pools: map_async(...).get(timeout) throws TimeoutError and the call goes on.
// Executors: iterating a map throws TimeoutError once `timeout` (from the call)
// passes without the next result.
TYPED_TEST(MapContract, Timeouts) {
  using S = TypeParam;
  auto p = S::make(2);
  mproc::Value<int> calls(0);
  mproc::Event started, go;
  auto f = mproc::bind(count_and_block, calls, started, go, 2);
  if constexpr (S::kExecutor) {
    std::vector<int> got;
    auto t0 = std::chrono::steady_clock::now();
    try {
      for (int v : p->map(f, std::vector<int>{0, 1, 2}, 200ms, 1)) got.push_back(v);
      ADD_FAILURE() << "no TimeoutError";
    } catch (const mproc::TimeoutError&) {
    }
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 200ms);
    EXPECT_EQ(got, (std::vector<int>{0, 1}));
  } else {
    auto r = p->map_async(f, std::vector<int>{0, 1, 2}, 1);
    EXPECT_THROW(r.get(100ms), mproc::TimeoutError);
    EXPECT_FALSE(r.wait(10ms));
    go.set();
    EXPECT_EQ(r.get(), (std::vector<int>{0, 1, 2}));
  }
  go.set();
  EXPECT_EQ(S::map(*p, square, std::vector<int>{4}), std::vector<int>{16});
}

// Bug 4 of issue 11: a lazy map nobody iterates must not hang shutdown. As in
// Python, shutdown (close + join, shutdown(true)) runs every call of the map and
// returns; the results are still there to iterate afterwards.
TYPED_TEST(MapContract, ShutdownWithALazyMapNobodyIterates) {
  using S = TypeParam;
  for (long long chunk : {0LL, 1LL, 7LL}) {
    mproc::Value<int> calls(0);
    auto p = S::make(2);
    auto results = S::imap(*p, mproc::bind(count_call, calls), std::views::iota(0, 500), chunk);
    within(30s, "shutdown with a lazy map not iterated", [&] { S::shutdown(*p); });
    EXPECT_EQ(calls.load(), 500) << "chunk " << chunk;
    std::vector<int> expect(500);
    std::iota(expect.begin(), expect.end(), 0);
    EXPECT_EQ(collect(results), expect) << "chunk " << chunk;
  }
}

// Bug 8 of issue 11: an executor map whose iteration timed out, or that is
// dropped before its end, cancels the calls that have not started (Python's
// Executor.map cancels its pending futures when its generator is closed); the
// one running finishes.
TYPED_TEST(MapContract, ExecutorMapCancelsCallsNotStartedWhenDropped) {
  using S = TypeParam;
  if constexpr (!S::kExecutor) {
    GTEST_SKIP() << "Executor.map only";
  } else {
    for (bool timed_out : {true, false}) {
      mproc::Value<int> calls(0);
      mproc::Event started, go;
      auto p = S::make(1);
      {
        std::vector<int> got;
        auto results = p->map(mproc::bind(count_and_block, calls, started, go, 2), std::views::iota(0, 50),
                              timed_out ? std::optional<std::chrono::nanoseconds>(200ms) : std::nullopt, 1);
        try {
          for (int v : results) {
            got.push_back(v);
            if (!timed_out && v == 1) break;  // dropped while item 2 runs (or is about to)
          }
          if (timed_out) {
            ADD_FAILURE() << "no TimeoutError";
          }
        } catch (const mproc::TimeoutError&) {
          EXPECT_TRUE(timed_out);
        }
        EXPECT_EQ(got, (std::vector<int>{0, 1}));
        // Dropped: only once item 2 runs (it may have been claimed already).
        if (!timed_out) {
          ASSERT_TRUE(started.wait_for(30s));
        }
      }  // the map's range is dropped here
      go.set();
      within(30s, "shutdown", [&] { p->shutdown(true); });
      // Item 2 ran if it had started when the timeout passed (the usual case).
      EXPECT_EQ(calls.load(), started.is_set() ? 3 : 2)
          << (timed_out ? "timed out" : "dropped") << ": calls after item 2 ran anyway";
    }
  }
}
