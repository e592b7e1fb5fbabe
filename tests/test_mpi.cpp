// tests/test_mpi.cpp — mproc::mpi::Pool across real MPI ranks. Run by CTest under
// `mpirun -np 3` (tests/CMakeLists.txt, mproc_add_mpi_test), once over shared
// memory (btl vader) and once over TCP: rank 0 runs these tests, ranks 1 and 2
// serve their tasks, each in its own local worker processes.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mproc/mpi.hpp>
#include <mproc/shared_memory.hpp>
#include <numeric>
#include <ranges>
#include <set>
#include <string>
#include <vector>

#include "test_mpi_tasks.hpp"

namespace {

using namespace std::chrono_literals;
using namespace mpi_tasks;

int first_of(mproc::SharedArray<int> a) { return a[0]; }
int t_init = 0;
void init_worker(int v) { t_init = v; }
int read_init(int) { return t_init; }
void failing_init(int) { throw std::runtime_error("no licence on this node"); }

// A pool that outlives main() (held by a global, destroyed after finalize() ran at
// exit): its destructor must not wait for ranks that are gone. A hang here is
// caught by the test's CTest TIMEOUT.
std::unique_ptr<mproc::mpi::Pool> g_outlives_main;

TEST(MpiPool, APoolThatOutlivesMainDoesNotHangTheExit) {
  g_outlives_main = std::make_unique<mproc::mpi::Pool>(1);
  EXPECT_EQ(g_outlives_main->apply(square, 6), 36);
  (void)g_outlives_main->apply_async(hang_always, 0);  // still running at exit
}

TEST(MpiPool, RunsOnTheOtherRanks) {
  mproc::mpi::Pool pool(1);
  EXPECT_EQ(pool.ranks(), (std::vector<int>{1, 2}));
  EXPECT_EQ(pool.processes(), 2);
  std::set<int> seen;
  for (int r : pool.map(spin_rank, std::views::iota(0, 40), {1})) seen.insert(r);
  EXPECT_EQ(seen, (std::set<int>{1, 2})) << "every serving rank ran tasks, rank 0 none";
}

TEST(MpiPool, ApplyAndApplyAsync) {
  mproc::mpi::Pool pool(2);
  EXPECT_EQ(pool.processes(), 4);
  EXPECT_EQ(pool.apply(square, 7), 49);
  EXPECT_EQ(pool.apply(add, 2, 3), 5);
  std::vector<mproc::AsyncResult<int>> rs;
  for (int i = 0; i < 200; ++i) rs.push_back(pool.apply_async(square, i));
  for (int i = 0; i < 200; ++i) EXPECT_EQ(rs[i].get(), i * i);
}

TEST(MpiPool, MapStarmapInOrder) {
  mproc::mpi::Pool pool(2);
  std::vector<int> want(10'000);
  for (int i = 0; i < 10'000; ++i) want[i] = i * i;
  EXPECT_EQ(pool.map(square, std::views::iota(0, 10'000)), want);
  EXPECT_EQ(pool.map(square, std::views::iota(0, 10'000), {1000}), want);
  EXPECT_EQ(pool.map(square, std::views::iota(0, 100), {1}), std::vector<int>(want.begin(), want.begin() + 100));
  EXPECT_TRUE(pool.map(square, std::vector<int>{}).empty());
  std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
  EXPECT_EQ(pool.starmap(add, pairs), (std::vector<int>{3, 7, 11}));
  auto big = pool.map([](const std::string& s) { return s + "!"; }, std::vector<std::string>(50, std::string(100'000, 'x')));
  ASSERT_EQ(big.size(), 50u);
  EXPECT_EQ(big[49].size(), 100'001u);
}

// The progress bar of a map over ranks: drawn on rank 0 as results come back, it
// ends at total/total (fd 2 is pointed at a temporary file meanwhile).
TEST(MpiPool, MapProgressBarCountsEveryRanksResults) {
  mproc::mpi::Pool pool(1);
  std::vector<int> got;
  std::string text = capture_stderr([&] { got = pool.map(square, std::views::iota(0, 200), {5, true, "squares"}); });
  EXPECT_EQ(got.size(), 200u);
  ASSERT_FALSE(text.empty()) << "no bar was drawn";
  EXPECT_EQ(text.back(), '\n');
  std::string last = last_line(text);
  EXPECT_NE(last.find("squares"), std::string::npos) << last;
  EXPECT_NE(last.find("200/200"), std::string::npos) << last;
}

TEST(MpiPool, TaskErrorsKeepTheirIndex) {
  mproc::mpi::Pool pool(1);
  try {
    (void)pool.map(raise_on_7, std::views::iota(0, 20), {3});
    FAIL() << "no error";
  } catch (const mproc::TaskError& e) {
    EXPECT_EQ(e.index(), 7u);
    EXPECT_NE(std::string(e.what()).find("seven is not allowed"), std::string::npos);
  }
  EXPECT_EQ(pool.apply(square, 3), 9) << "the pool goes on";
}

TEST(MpiPool, ACrashOnARankIsThatTasksWorkerLostError) {
  mproc::mpi::Pool pool(1);
  try {
    (void)pool.map(crash_on_3, std::views::iota(0, 10), {1});
    FAIL() << "no error";
  } catch (const mproc::WorkerLostError& e) {
    EXPECT_EQ(e.index(), 3u);
    EXPECT_EQ(e.exitcode(), -SIGABRT);
  }
  auto r = pool.apply_async(crash_on_3, 3);
  EXPECT_THROW(r.get(), mproc::WorkerLostError);
  EXPECT_EQ(pool.map(square, std::views::iota(0, 100)).back(), 99 * 99) << "the rank replaced its worker";
}

TEST(MpiPool, TimeoutOnARank) {
  mproc::mpi::Pool pool({.processes = 1, .timeout = 300ms});
  try {
    (void)pool.map(hang, std::views::iota(0, 4), {1});
    FAIL() << "no error";
  } catch (const mproc::TaskTimeoutError& e) {
    EXPECT_EQ(e.index(), 1u);
  }
  EXPECT_EQ(pool.apply(square, 4), 16);
}

TEST(MpiPool, InitializerRunsInEveryRanksWorkers) {
  mproc::mpi::Pool pool({.processes = 1}, init_worker, 42);
  for (int v : pool.map(read_init, std::views::iota(0, 20), {1})) EXPECT_EQ(v, 42);
}

// Every worker's initializer throws: each rank's local pool breaks. The tasks fail
// with the reason; the ranks (and the MPI job) go on.
TEST(MpiPool, ABrokenPoolOnARankFailsItsTasksNotTheJob) {
  {
    mproc::mpi::Pool pool({.processes = 1}, failing_init, 0);
    for (int round = 0; round < 3; ++round) {
      try {
        (void)pool.map(square, std::views::iota(0, 10), {1});
        FAIL() << "the map succeeded although no worker can start";
      } catch (const mproc::Error& e) {
        SCOPED_TRACE(e.what());
      }
    }
  }
  mproc::mpi::Pool next(1);
  EXPECT_EQ(next.apply(square, 8), 64) << "the serving ranks still serve";
}

TEST(MpiPool, CloseJoinFinishesTheWork) {
  mproc::mpi::Pool pool(1);
  auto r = pool.map_async(square, std::views::iota(0, 1000), {10});
  pool.close();
  EXPECT_THROW((void)pool.apply_async(square, 1), mproc::UsageError);
  pool.join();
  EXPECT_EQ(r.get()[999], 999 * 999);
}

TEST(MpiPool, TerminateCancelsWhatIsPending) {
  mproc::mpi::Pool pool(1);
  std::vector<mproc::AsyncResult<int>> rs;
  for (int i = 0; i < 10; ++i) rs.push_back(pool.apply_async(hang_always, i));
  pool.terminate();
  for (auto& r : rs) EXPECT_THROW(r.get(), mproc::CancelledError);
  pool.join();
}

TEST(MpiPool, TwoPoolsAtOnce) {
  mproc::mpi::Pool a(1), b(1);
  auto ra = a.map_async(square, std::views::iota(0, 500), {7});
  auto rb = b.map_async(square, std::views::iota(0, 500), {9});
  EXPECT_EQ(ra.get(), rb.get());
}

TEST(MpiPool, RefusesWhatCannotCrossRanks) {
  EXPECT_THROW(mproc::mpi::Pool({.processes = 1, .start_method = mproc::StartMethod::fork}), mproc::UsageError);
  EXPECT_THROW(mproc::mpi::Pool({.processes = 1, .timeline = true}), mproc::UsageError);
  EXPECT_THROW(mproc::mpi::Pool(-1), mproc::UsageError);
  mproc::mpi::Pool pool(1);
  mproc::SharedArray<int> a{7, 8, 9};  // travels as a file descriptor: not to another host
  try {
    (void)pool.apply_async(first_of, a);
    FAIL() << "a descriptor went to another rank";
  } catch (const mproc::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("file descriptor"), std::string::npos) << e.what();
  }
  EXPECT_EQ(pool.apply(square, 5), 25) << "the pool is still usable";
}

}  // namespace

int main(int argc, char** argv) {
  mproc::mpi::init(argc, argv);  // ranks 1.. serve here and exit
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
