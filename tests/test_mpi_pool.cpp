// tests/test_mpi_pool.cpp — the shared Pool and executor front end over MPI ranks
// (mproc::mpi::Pool is a mproc::Pool on detail::RankBackend; mproc::mpi::backend()
// puts the same backend under mproc::Pool or mproc::ProcessPoolExecutor). Run by
// CTest under `mpirun -np 3` over shared memory and over TCP
// (mpi.test_mpi_pool.{vader,tcp}): rank 0 runs these tests, ranks 1 and 2 serve.
// The methods the stop-gap mproc::mpi::Pool lacked: imap, imap_unordered (lazy,
// with a task's exception, a remote worker's crash and a timeout in the
// stream), callbacks, get(timeout), progress on imap, an executor over ranks
// with cancellation. Tasks that must stay busy block on a FIFO that rank 0
// writes to (every rank of these jobs is on this machine), never on a sleep.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <mproc/executor.hpp>
#include <mproc/mpi.hpp>
#include <optional>
#include <ranges>
#include <set>
#include <string>
#include <vector>

#include "test_mpi_tasks.hpp"

namespace {

using namespace std::chrono_literals;
using namespace mpi_tasks;

// Blocks until rank 0 writes a byte into the FIFO at `path` (Gate below).
int wait_gate(std::string path, int x) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error("cannot open " + path);
  char c;
  while (::read(fd, &c, 1) < 0) {
  }
  ::close(fd);
  return x;
}

// A FIFO that tasks on the serving ranks wait on; open() lets `n` of them through.
// Held open for writing (O_RDWR never blocks) so that a task that opens it late
// still finds a writer and its byte.
class Gate {
 public:
  Gate() : path_("/tmp/mproc_test_mpi_gate_" + std::to_string(::getpid())) {
    ::unlink(path_.c_str());
    if (::mkfifo(path_.c_str(), 0600) != 0) throw std::runtime_error("mkfifo " + path_);
    fd_ = ::open(path_.c_str(), O_RDWR);
  }
  ~Gate() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  void open(int n) {
    for (int i = 0; i < n; ++i) ASSERT_EQ(::write(fd_, "x", 1), 1);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

std::vector<int> squares(int n) {
  std::vector<int> v;
  for (int i = 0; i < n; ++i) v.push_back(i * i);
  return v;
}
template <class R>
std::vector<int> collect(R&& results) {
  std::vector<int> v;
  for (int x : results) v.push_back(x);
  return v;
}

// Code written against the local mproc::Pool, unchanged.
std::vector<int> local_code(mproc::Pool& pool) {
  std::vector<int> v = pool.map(square, std::views::iota(0, 50));
  for (int x : pool.imap(square, std::views::iota(50, 100), {3})) v.push_back(x);
  return v;
}

TEST(MpiFrontEnd, IsAMprocPoolOrABackendUnderOne) {
  mproc::mpi::Pool a(1);
  EXPECT_EQ(local_code(a), squares(100));
  EXPECT_EQ(a.processes(), 2);
  EXPECT_TRUE(a.worker_pids().empty()) << "the workers live on the serving ranks";
  EXPECT_EQ(a.ranks(), (std::vector<int>{1, 2}));
  mproc::Pool b(mproc::mpi::backend({.processes = 2}));
  EXPECT_EQ(b.processes(), 4);
  EXPECT_EQ(local_code(b), squares(100));
  EXPECT_THROW((void)b.timeline(), mproc::UsageError);
}

TEST(MpiFrontEnd, ImapAndImapUnordered) {
  mproc::mpi::Pool pool(1);
  for (long long chunk : {0LL, 1LL, 7LL}) {
    SCOPED_TRACE(chunk);
    const int n = chunk == 1 ? 100 : 1000;  // a round trip per item at chunksize 1: keep it short
    EXPECT_EQ(collect(pool.imap(square, std::views::iota(0, n), {chunk})), squares(n));
    auto got = collect(pool.imap_unordered(square, std::views::iota(0, n), {chunk}));
    const std::vector<int> all = squares(n);
    std::multiset<int> want(all.begin(), all.end());
    EXPECT_EQ(std::multiset<int>(got.begin(), got.end()), want);
  }
  EXPECT_TRUE(collect(pool.imap(square, std::vector<int>{})).empty());
  std::set<int> ranks;
  for (int r : pool.imap_unordered(spin_rank, std::views::iota(0, 40), {1})) ranks.insert(r);
  EXPECT_EQ(ranks, (std::set<int>{1, 2})) << "imap's chunks go to every serving rank";
  std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
  EXPECT_EQ(pool.starmap_async(add, pairs).get(), (std::vector<int>{3, 7, 11}));
}

// imap reads its input on rank 0 a bounded window ahead of the results taken:
// an endless input works, and only a window's worth more than was taken is read.
TEST(MpiFrontEnd, ImapReadsAnEndlessInputLazily) {
  mproc::mpi::Pool pool(1);
  std::atomic<int> read{0};
  auto endless = std::views::iota(0) | std::views::transform([&read](int x) {
                   read.fetch_add(1, std::memory_order_relaxed);
                   return x;
                 });
  int taken = 0;
  {
    auto results = pool.imap(square, endless, {1});
    for (int v : results) {
      ASSERT_EQ(v, taken * taken);
      if (++taken == 100) break;
    }
  }
  EXPECT_LT(read.load(), 100 + 2000) << "the window is bounded (4 chunks or 64 items per worker)";
  EXPECT_EQ(pool.apply(square, 3), 9);
}

// A task's exception, a worker's crash on a serving rank and a timeout there, in
// the middle of a stream: that item raises at its place, every other result arrives.
TEST(MpiFrontEnd, ImapFailuresAtTheirPlace) {
  mproc::mpi::Pool pool({.processes = 1, .timeout = 300ms});
  auto run = [](auto&& results, std::size_t n, auto expect_error) {
    std::size_t ok = 0, errors = 0;
    for (;;) {
      try {
        if (!results.next()) break;
        ++ok;
      } catch (const mproc::Error& e) {
        ++errors;
        expect_error(e);
      }
    }
    EXPECT_EQ(ok, n - 1);
    EXPECT_EQ(errors, 1u);
  };
  run(pool.imap(raise_on_7, std::views::iota(0, 20), {3}), 20, [](const mproc::Error& e) {
    auto* te = dynamic_cast<const mproc::TaskError*>(&e);
    ASSERT_NE(te, nullptr) << e.what();
    EXPECT_EQ(te->index(), 7u);
    EXPECT_EQ(te->type_name(), "std::invalid_argument");
    EXPECT_EQ(te->message(), "seven is not allowed");
  });
  run(pool.imap_unordered(crash_on_3, std::views::iota(0, 10), {1}), 10, [](const mproc::Error& e) {
    auto* wl = dynamic_cast<const mproc::WorkerLostError*>(&e);
    ASSERT_NE(wl, nullptr) << e.what();
    EXPECT_EQ(wl->index(), 3u);
    EXPECT_EQ(wl->exitcode(), -SIGABRT);
  });
  run(pool.imap(hang, std::views::iota(0, 4), {1}), 4, [](const mproc::Error& e) {
    auto* to = dynamic_cast<const mproc::TaskTimeoutError*>(&e);
    ASSERT_NE(to, nullptr) << e.what();
    EXPECT_EQ(to->index(), 1u);
  });
  EXPECT_EQ(pool.map(square, std::views::iota(0, 100)), squares(100)) << "the ranks replaced their workers";
}

// Callbacks run on rank 0's link thread; one may submit more work there.
TEST(MpiFrontEnd, CallbacksAndGetTimeout) {
  mproc::mpi::Pool pool(1);
  std::promise<int> sum;
  pool.map_async(square, std::views::iota(0, 100), {9}).then([&](const std::vector<int>& v) {
    int s = 0;
    for (int x : v) s += x;
    sum.set_value(s);
  });
  EXPECT_EQ(sum.get_future().get(), 328'350);
  std::promise<std::string> error;
  pool.map_async(raise_on_7, std::views::iota(0, 10))
      .then([](const std::vector<int>&) {},
            [&](const std::exception& e) {
              auto* te = dynamic_cast<const mproc::TaskError*>(&e);
              error.set_value(te ? te->message() : std::string("another error: ") + e.what());
            });
  EXPECT_EQ(error.get_future().get(), "seven is not allowed");
  std::promise<int> chained;
  pool.apply_async(square, 3).then([&](const int& v) {
    pool.apply_async(square, v).then([&](const int& w) { chained.set_value(w); });
  });
  EXPECT_EQ(chained.get_future().get(), 81);
  auto stuck = pool.apply_async(hang_always, 0);
  EXPECT_THROW((void)stuck.get(50ms), mproc::TimeoutError);
  pool.terminate();
  EXPECT_THROW((void)stuck.get(), mproc::CancelledError);
  pool.join();
}

// The bar of an imap over ranks counts every rank's results and ends at total/total.
TEST(MpiFrontEnd, ImapProgressBar) {
  mproc::mpi::Pool pool(1);
  std::vector<int> got;
  std::string text =
      capture_stderr([&] { got = collect(pool.imap_unordered(square, std::views::iota(0, 300), {4, true, "remote"})); });
  EXPECT_EQ(got.size(), 300u);
  ASSERT_FALSE(text.empty()) << "no bar was drawn";
  std::string last = last_line(text);
  EXPECT_NE(last.find("remote"), std::string::npos) << last;
  EXPECT_NE(last.find("300/300"), std::string::npos) << last;
}

// terminate() while an imap still feeds its endless input: the stream ends with
// CancelledError (PoolBackend's contract for a submit after terminate), never
// with a UsageError about a job that is not open.
TEST(MpiFrontEnd, TerminateDuringAnImapIsCancelledError) {
  mproc::mpi::Pool pool(1);
  auto results = pool.imap(square, std::views::iota(0), {1});
  ASSERT_EQ(results.next().value_or(-1), 0);
  pool.terminate();
  std::optional<std::string> other;
  int cancelled = 0;
  for (int i = 0; i < 100'000; ++i) {
    try {
      if (!results.next()) break;
    } catch (const mproc::CancelledError&) {
      ++cancelled;
    } catch (const std::exception& e) {
      other = e.what();
      break;
    }
  }
  EXPECT_GT(cancelled, 0);
  EXPECT_FALSE(other) << *other;
  pool.join();
}

// ProcessPoolExecutor over ranks: submit, as_completed, wait, map; a remote
// crash is that future's WorkerLostError; a call no rank has taken yet can be
// cancelled (every rank's room, two chunks per worker, is held by gated tasks).
TEST(MpiFrontEnd, ProcessPoolExecutorOverRanks) {
  Gate gate;
  mproc::ProcessPoolExecutor ex(mproc::mpi::backend({.processes = 1}));
  EXPECT_EQ(ex.submit(square, 9).get(), 81);
  EXPECT_EQ(collect(ex.map(square, std::views::iota(0, 200))), squares(200));
  EXPECT_THROW(ex.submit(crash_on_3, 3).get(), mproc::WorkerLostError);
  std::vector<mproc::Future<int>> held;
  for (int i = 0; i < 4; ++i) held.push_back(ex.submit(wait_gate, gate.path(), i));
  auto queued = ex.submit(square, 5);
  EXPECT_TRUE(queued.cancel()) << "no rank had room for it";
  EXPECT_TRUE(queued.cancelled());
  EXPECT_THROW(queued.get(), mproc::CancelledError);
  gate.open(4);
  int sum = 0;
  for (auto& f : mproc::as_completed(held)) sum += f.get();
  EXPECT_EQ(sum, 0 + 1 + 2 + 3);
  std::vector<mproc::Future<int>> more;
  for (int i = 0; i < 20; ++i) more.push_back(ex.submit(square, i));
  auto [done, not_done] = mproc::wait(more);
  EXPECT_EQ(done.size(), 20u);
  EXPECT_TRUE(not_done.empty());
  ex.shutdown(true);
}

}  // namespace

int main(int argc, char** argv) {
  mproc::mpi::init(argc, argv);  // ranks 1.. serve here and exit
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
