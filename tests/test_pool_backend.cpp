// The pool's backend seam (docs/design.md, "The pool's backend seam"): the typed
// Pool front end on a backend that is not the local process engine, here the
// in-process FakePoolBackend (tests/fake_pool_backend.hpp). apply/apply_async
// and its callbacks, the lifecycle, the construction rules and ProcessPoolExecutor
// on a backend are tested here;
// the map methods run on the fake in test_map_contract.cpp's typed suite
// (subject "PoolOnFakeBackend"). Also detail::ChunkRunner on its own.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <mproc/detail/chunk_encoder.hpp>
#include <mproc/detail/chunk_runner.hpp>
#include <mproc/detail/pool_jobs.hpp>
#include <mproc/executor.hpp>
#include <mproc/pool.hpp>
#include <mproc/sync.hpp>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "fake_pool_backend.hpp"
#include "pool_test_tasks.hpp"
#include "task_error_check.hpp"

using namespace std::chrono_literals;
using namespace pool_tasks;
using mproc_test::FakePoolBackend;

namespace pool_backend_header {
std::size_t header_bytes();  // pool_backend_header_alone.cpp
}

namespace {

std::string greet(std::string name, int times) {
  std::string out;
  for (int i = 0; i < times; ++i) out += "hello " + name + ";";
  return out;
}
void nothing(int) {}

struct OnFake {
  FakePoolBackend* fake;
  std::unique_ptr<mproc::Pool> pool;
  explicit OnFake(int workers) {
    auto b = std::make_unique<FakePoolBackend>(workers);
    fake = b.get();
    pool = std::make_unique<mproc::Pool>(std::move(b));
  }
};

}  // namespace

TEST(PoolBackend, ApplyAsyncRunsOnTheBackend) {
  OnFake p(2);
  EXPECT_EQ(p.pool->processes(), 2);
  EXPECT_TRUE(p.pool->worker_pids().empty());  // no processes: the fake's threads
  EXPECT_EQ(p.pool->apply(square, 7), 49);
  auto r = p.pool->apply_async(greet, std::string("fake"), 2);
  EXPECT_EQ(r.get(), "hello fake;hello fake;");
  EXPECT_TRUE(r.successful());
  auto v = p.pool->apply_async(nothing, 1);
  v.get();
  std::vector<mproc::AsyncResult<int>> many;
  for (int i = 0; i < 100; ++i) many.push_back(p.pool->apply_async(square, i));
  for (int i = 0; i < 100; ++i) EXPECT_EQ(many[static_cast<std::size_t>(i)].get(), i * i);
  EXPECT_EQ(p.fake->chunks_submitted(), 103u);  // one chunk per call, all through the fake
}

TEST(PoolBackend, ATaskExceptionIsATaskErrorWithItsType) {
  OnFake p(1);
  auto r = p.pool->apply_async(raise_on_7, 7);
  EXPECT_TRUE(r.wait(30s));
  EXPECT_FALSE(r.successful());
  try {
    r.get();
    ADD_FAILURE() << "no exception";
  } catch (...) {
    mproc_test::expect_invalid_argument(std::current_exception(), false, "seven is not allowed", 0);
  }
  EXPECT_EQ(p.pool->apply(square, 3), 9);  // the backend goes on
}

// then()'s callbacks run on the backend's delivery thread, which holds no lock
// the backend's members take: a callback may submit more work.
TEST(PoolBackend, ACallbackMaySubmitMoreWork) {
  OnFake p(2);
  std::mutex mu;
  std::vector<mproc::AsyncResult<int>> second;
  mproc::Event submitted;
  std::atomic<int> errors{0};
  auto first = p.pool->apply_async(square, 3);
  first.then(
      [&](const int& v) {
        std::lock_guard lock(mu);
        second.push_back(p.pool->apply_async(square, v));
        submitted.set();
      },
      [&](const std::exception&) { ++errors; });
  ASSERT_TRUE(submitted.wait_for(30s));
  std::lock_guard lock(mu);
  EXPECT_EQ(second.at(0).get(), 81);
  EXPECT_EQ(errors.load(), 0);
}

TEST(PoolBackend, Lifecycle) {
  {
    OnFake p(2);
    EXPECT_THROW(p.pool->join(), mproc::UsageError);  // join needs close or terminate first
    auto r = p.pool->map_async(square, std::vector<int>{1, 2, 3}, 1);
    p.pool->close();
    EXPECT_THROW((void)p.pool->apply_async(square, 1), mproc::UsageError);
    p.pool->join();
    EXPECT_EQ(r.get(), (std::vector<int>{1, 4, 9}));  // queued work finished
  }
  {
    // terminate(): what no worker took fails with CancelledError.
    OnFake p(1);
    mproc::Event started, go;
    auto busy = p.pool->apply_async(block, started, go, 5);
    ASSERT_TRUE(started.wait_for(30s));
    auto queued = p.pool->apply_async(square, 4);
    p.pool->terminate();
    EXPECT_THROW(queued.get(), mproc::CancelledError);
    go.set();
    p.pool->join();
    EXPECT_EQ(busy.get(), 5);  // the fake lets a running chunk finish
  }
  // The destructor terminates and joins (the fake's ~FakePoolBackend).
  OnFake p(2);
  EXPECT_EQ(p.pool->apply(square, 2), 4);
}

// ProcessPoolExecutor on a backend: submit, map and shutdown as usual; a
// backend without cancellation answers false to cancel().
TEST(PoolBackend, ProcessPoolExecutorOnABackend) {
  auto b = std::make_unique<FakePoolBackend>(2);
  FakePoolBackend* fake = b.get();
  mproc::ProcessPoolExecutor ex(std::move(b));
  EXPECT_EQ(ex.max_workers(), 2);
  auto f = ex.submit(square, 6);
  EXPECT_EQ(f.get(), 36);
  EXPECT_FALSE(f.cancel());  // done
  std::vector<int> got;
  for (int v : ex.map(square, std::vector<int>{1, 2, 3}, std::nullopt, 1)) got.push_back(v);
  EXPECT_EQ(got, (std::vector<int>{1, 4, 9}));
  EXPECT_GE(fake->chunks_submitted(), 4u);
  ex.shutdown(true);
  EXPECT_THROW((void)ex.submit(square, 1), mproc::UsageError);
  EXPECT_THROW(mproc::ProcessPoolExecutor(std::unique_ptr<mproc::detail::PoolBackend>{}), mproc::UsageError);
}

// The seam's header compiles alone, without the serializer (its TU #errors otherwise).
TEST(PoolBackendHeader, CompilesAloneWithoutTheSerializer) {
  EXPECT_EQ(pool_backend_header::header_bytes(), sizeof(mproc::detail::ChunkHeader));
}

TEST(PoolBackend, ConstructionRules) {
  EXPECT_THROW(mproc::Pool(std::unique_ptr<mproc::detail::PoolBackend>{}), mproc::UsageError);
  OnFake p(1);
  EXPECT_THROW((void)p.pool->timeline(), mproc::UsageError);  // the fake records none
}

// ChunkRunner alone: the front end's chunk message in, one batch out, in order,
// with each item's result or exception.
TEST(ChunkRunner, RunsAChunkAndDeliversOneBatch) {
  using namespace mproc::detail;
  auto core = std::make_shared<ResultCore<std::vector<int>>>();
  auto sink = std::make_shared<GatherJob<int, false>>(5, core);
  ChunkEncoder<int (*)(int), int, false> enc(square);
  enc.begin();
  for (int x : {0, 1, 2, 3, 4}) enc.add(x);
  ChunkMessage msg = enc.finish();
  ASSERT_EQ(msg.items(), 5u);
  ChunkRunner::write_header(msg, 1, 0);
  ChunkRunner runner;
  runner.run(msg.bytes, msg.fds);
  EXPECT_EQ(runner.header().count, 5u);
  runner.deliver(*sink);
  ASSERT_TRUE(core->ready);
  ASSERT_FALSE(core->error);
  EXPECT_EQ(*core->value, (std::vector<int>{0, 1, 4, 9, 16}));

  // An item that throws: the batch carries its ExceptionInfo at its place.
  auto core2 = std::make_shared<ResultCore<std::vector<int>>>();
  auto sink2 = std::make_shared<GatherJob<int, false>>(3, core2);
  ChunkEncoder<int (*)(int), int, false> enc2(raise_on_7);
  enc2.begin();
  for (int x : {6, 7, 8}) enc2.add(x);
  ChunkMessage msg2 = enc2.finish();
  ChunkRunner::write_header(msg2, 2, 0);
  runner.run(msg2.bytes, msg2.fds);
  runner.deliver(*sink2);
  ASSERT_TRUE(core2->ready);
  mproc_test::expect_invalid_argument(core2->error, false, "seven is not allowed", 1);

  EXPECT_THROW(runner.run(std::span<const std::byte>(msg.bytes).first(3)), mproc::SerializationError);
}
