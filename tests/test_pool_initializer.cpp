// A pool's initializer whose arguments carry descriptors (issue 11, bug 9): a
// Value, a Queue, a Lock and a SharedArray given to the initializer reach every
// worker, replacements included (maxtasksperchild = 1: each task on a fresh
// worker), under each start method. Before, the initializer's encoding dropped
// the fds and every worker failed with "message refers to a missing file
// descriptor". ProcessPoolExecutor takes the same path.
#include <gtest/gtest.h>

#include <mproc/executor.hpp>
#include <mproc/pool.hpp>
#include <mproc/queue.hpp>
#include <mproc/shared_memory.hpp>
#include <mproc/sync.hpp>
#include <mproc/value.hpp>

#include "pool_test_tasks.hpp"

#include <optional>
#include <ranges>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

// Each worker's copy of what its initializer was given.
std::optional<mproc::Value<int>> g_value;
std::optional<mproc::Queue<int>> g_queue;
std::optional<mproc::Lock> g_lock;
std::optional<mproc::SharedArray<int>> g_array;

// Each initializer counts its run in the object it was given, and keeps it.
void init_value(mproc::Value<int> v) {
  {
    auto g = v.lock();
    v.raw() += 1;
  }
  g_value = v;
}
void init_queue(mproc::Queue<int> q) {
  q.put(1);
  g_queue = q;
}
void init_lock(mproc::Lock l, mproc::SharedArray<int> count) {
  {
    std::lock_guard g(l);
    count[0] += 1;
  }
  g_lock = l;
  g_array = count;
}
void init_array(mproc::SharedArray<int> a) {
  __atomic_fetch_add(&a[0], 1, __ATOMIC_SEQ_CST);
  g_array = a;
}

// A task uses the worker's object: it is live, the same as the parent's.
int bump_value(int) {
  auto g = g_value->lock();
  return ++g_value->raw();
}
int put_to_queue(int x) {
  g_queue->put(100 + x);
  return x;
}
int under_lock(int x) {
  std::lock_guard g(*g_lock);
  return x + (*g_array)[0] * 0;
}
int array_slot(int x) {
  __atomic_fetch_add(&(*g_array)[1], 1, __ATOMIC_SEQ_CST);
  return x;
}

constexpr int kTasks = 6;

mproc::PoolOptions opts(mproc::StartMethod m) {
  // One task per worker: the initializer runs in kTasks workers at least, all
  // but the first two of them replacements.
  return mproc::PoolOptions{.processes = 2, .start_method = m, .maxtasksperchild = 1};
}

std::vector<int> iota(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  return v;
}

}  // namespace

class PoolInitializerFds : public ::testing::TestWithParam<mproc::StartMethod> {};

TEST_P(PoolInitializerFds, Value) {
  mproc::Value<int> v(0);
  {
    mproc::Pool pool(opts(GetParam()), init_value, v);
    auto r = pool.map_async(bump_value, iota(kTasks), 1).get(60s);
    EXPECT_EQ(r.size(), static_cast<std::size_t>(kTasks));
    pool.close();
    pool.join();
  }
  // kTasks bumps, and one count per worker start (at least kTasks).
  EXPECT_GE(v.get(), 2 * kTasks);
}

TEST_P(PoolInitializerFds, Queue) {
  mproc::Queue<int> q;
  {
    mproc::Pool pool(opts(GetParam()), init_queue, q);
    EXPECT_EQ(pool.map_async(put_to_queue, iota(kTasks), 1).get(60s), iota(kTasks));
    pool.close();
    pool.join();
  }
  int inits = 0, puts = 0;
  for (;;) {
    try {
      (q.get_nowait() == 1 ? inits : puts) += 1;
    } catch (const mproc::Empty&) {
      break;
    }
  }
  EXPECT_GE(inits, kTasks);
  EXPECT_EQ(puts, kTasks);
}

TEST_P(PoolInitializerFds, Lock) {
  mproc::Lock l;
  mproc::SharedArray<int> count{0};
  {
    mproc::Pool pool(opts(GetParam()), init_lock, l, count);
    EXPECT_EQ(pool.map_async(under_lock, iota(kTasks), 1).get(60s), iota(kTasks));
    pool.close();
    pool.join();
  }
  EXPECT_GE(count[0], kTasks);
}

TEST_P(PoolInitializerFds, SharedArray) {
  mproc::SharedArray<int> a{0, 0};
  {
    mproc::Pool pool(opts(GetParam()), init_array, a);
    EXPECT_EQ(pool.map_async(array_slot, iota(kTasks), 1).get(60s), iota(kTasks));
    pool.close();
    pool.join();
  }
  EXPECT_GE(a[0], kTasks);
  EXPECT_EQ(a[1], kTasks);
}

TEST_P(PoolInitializerFds, ProcessPoolExecutor) {
  mproc::Value<int> v(0);
  {
    mproc::ProcessPoolExecutor ex(
        mproc::ExecutorOptions{.max_workers = 2, .max_tasks_per_child = 1, .start_method = GetParam()}, init_value,
        v);
    std::vector<mproc::Future<int>> fs;
    for (int i = 0; i < kTasks; ++i) fs.push_back(ex.submit(bump_value, i));
    for (auto& f : fs) EXPECT_GT(f.get(60s), 0);
  }
  EXPECT_GE(v.get(), 2 * kTasks);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, PoolInitializerFds,
                         ::testing::Values(mproc::StartMethod::fork, mproc::StartMethod::spawn,
                                           mproc::StartMethod::forkserver),
                         [](const auto& p) { return std::string(mproc::to_string(p.param)); });

// encode_process_task (a pool's initializer, a Process) encodes the caller's
// arguments as they are, not a copy of them first: a big argument was copied
// once more per initializer or Process, only to be encoded and dropped.
namespace {

using pool_tasks::CopyCounted;

std::string g_seen;
void take_by_value(CopyCounted c, std::string s) { g_seen = s + ":" + std::to_string(c.data.size()); }
void take_by_cref(const CopyCounted& c, int k) { g_seen = std::to_string(k) + ":" + std::to_string(c.data.size()); }

// Decodes and runs the task `w` holds, here (its entry point, as a child would).
void run_here(const mproc::Writer& w) {
  mproc::Reader r(w.bytes(), w.fds());
  mproc::detail::decode_entry(r)(&r, nullptr);
  EXPECT_TRUE(r.at_end());
}

}  // namespace

TEST(EncodeProcessTask, EncodesTheCallersArgumentsWithoutCopyingThem) {
  const CopyCounted big(std::vector<int>(1000, 7));
  const std::string name = "name";
  CopyCounted::copies = 0;
  {
    mproc::Writer w;  // an lvalue to a by-value parameter; a string literal converted
    mproc::detail::encode_process_task(w, take_by_value, big, "text");
    EXPECT_EQ(CopyCounted::copies, 0);
    run_here(w);
    EXPECT_EQ(g_seen, "text:1000");
  }
  {
    mproc::Writer w;  // to a const& parameter; a const lvalue string
    mproc::detail::encode_process_task(w, take_by_cref, big, 3);
    EXPECT_EQ(CopyCounted::copies, 0);
    run_here(w);
    EXPECT_EQ(g_seen, "3:1000");
  }
  CopyCounted::copies = 0;
  {
    mproc::Writer w;  // a bound callable, with arguments of the parameters' own types
    mproc::detail::encode_process_task(w, mproc::bind(take_by_value, big), name);
    EXPECT_EQ(CopyCounted::copies, 1);  // the one bind makes, by design
    run_here(w);
    EXPECT_EQ(g_seen, "name:1000");
  }
  CopyCounted::copies = 0;
  {
    // A pool's initializer takes the same path.
    mproc::detail::EncodedTask t = mproc::detail::encode_initializer(take_by_value, big, name);
    EXPECT_EQ(CopyCounted::copies, 0);
    EXPECT_FALSE(t.empty());
  }
}
