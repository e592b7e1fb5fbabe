// The pool's backend seam (docs/design.md, "The pool's backend seam"): the typed
// Pool front end on a backend that is not the local process engine, here the
// in-process FakePoolBackend (tests/fake_pool_backend.hpp). apply/apply_async
// and its callbacks, the lifecycle, the construction rules and ProcessPoolExecutor
// on a backend are tested here;
// the map methods run on the fake in test_map_contract.cpp's typed suite
// (subject "PoolOnFakeBackend"). Also detail::ChunkRunner on its own.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
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

// An item type for ChunkEncoder's exception safety: it may carry a descriptor
// (lent: the test keeps it open), and its encoding may throw after writing bytes
// or after adding its descriptor. The decoded side checks that the descriptor it
// receives is the one encoded (same inode), so a shifted fd index shows.
namespace chunk_items {
enum class Fail : std::uint8_t { none, after_bytes, after_fd };
struct FdItem {
  int value = 0;
  int fd = -1;
  Fail fail = Fail::none;
  bool fd_ok = false;  // decoded: the descriptor received is the one encoded
};
inline std::uint64_t inode_of(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return 0;
  return static_cast<std::uint64_t>(st.st_ino);
}
// Its value when the item arrived intact; -1 when its descriptor did not.
inline int fd_item_value(FdItem v) { return v.fd == -1 || v.fd_ok ? v.value : -1; }
}  // namespace chunk_items

template <>
struct mproc::codec<chunk_items::FdItem> {
  static void encode(Writer& w, const chunk_items::FdItem& v) {
    using chunk_items::Fail;
    w.write(&v.value, sizeof v.value);
    if (v.fail == Fail::after_bytes) throw SerializationError("test: this item cannot be sent (after its bytes)");
    const std::uint8_t has = v.fd >= 0;
    w.write(&has, 1);
    if (has) {
      const std::uint64_t ino = chunk_items::inode_of(v.fd);
      const std::uint32_t idx = w.add_fd(v.fd);
      w.write(&idx, sizeof idx);
      w.write(&ino, sizeof ino);
    }
    if (v.fail == Fail::after_fd) throw std::runtime_error("test: serializer failed after adding its descriptor");
  }
  static chunk_items::FdItem decode(Reader& r) {
    chunk_items::FdItem v;
    r.read(&v.value, sizeof v.value);
    std::uint8_t has = 0;
    r.read(&has, 1);
    if (has) {
      std::uint32_t idx = 0;
      std::uint64_t ino = 0;
      r.read(&idx, sizeof idx);
      r.read(&ino, sizeof ino);
      v.fd = -2;  // arrived with one
      v.fd_ok = chunk_items::inode_of(r.fd(idx)) == ino;
    }
    return v;
  }
};

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

namespace {
std::size_t open_fd_count() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}
// Runs chunk `msg` of `n` items (as job `job`) here, through a ChunkRunner, and
// returns the core its gathered results went to (checked to be ready, no error).
template <class V, bool Single>
auto run_chunk(mproc::detail::ChunkRunner& runner, mproc::detail::ChunkMessage& msg, std::uint64_t job,
               std::size_t n) {
  using Job = mproc::detail::GatherJob<V, Single>;
  auto core = std::make_shared<typename Job::CoreT>();
  auto sink = std::make_shared<Job>(n, core);
  mproc::detail::ChunkRunner::write_header(msg, job, 0);
  runner.run(msg.bytes, msg.fds);
  runner.deliver(*sink);
  EXPECT_TRUE(core->ready);
  EXPECT_FALSE(core->error);
  return core;
}
}  // namespace

// ChunkEncoder::add is exception-safe: an item whose encoding throws (after
// writing bytes, or after adding a descriptor) leaves the chunk exactly as it
// was (no offset, no bytes, no descriptor of it), so the items before and after
// it decode intact and every descriptor arrives once, at its own index. Before,
// the failed item kept its offset and bytes (a phantom item decoding garbage) and
// its descriptor stayed in the Writer's list, shifting every later item's index.
TEST(ChunkEncoder, AnItemThatFailsToEncodeLeavesTheChunkAsItWas) {
  using namespace mproc::detail;
  using chunk_items::Fail;
  using chunk_items::FdItem;
  int p1[2], p2[2], p3[2];
  ASSERT_EQ(::pipe(p1), 0);
  ASSERT_EQ(::pipe(p2), 0);
  ASSERT_EQ(::pipe(p3), 0);
  const std::size_t fds_before = open_fd_count();
  {
    ChunkEncoder<int (*)(FdItem), FdItem, false> enc(chunk_items::fd_item_value);
    enc.begin();
    enc.add(FdItem{.value = 1});
    enc.add(FdItem{.value = 2, .fd = p1[0]});
    const std::size_t items = enc.items(), bytes = enc.item_bytes();
    EXPECT_THROW(enc.add(FdItem{.value = 3, .fail = Fail::after_bytes}), mproc::SerializationError);
    EXPECT_EQ(enc.items(), items);
    EXPECT_EQ(enc.item_bytes(), bytes);
    EXPECT_THROW(enc.add(FdItem{.value = 4, .fd = p2[0], .fail = Fail::after_fd}), std::runtime_error);
    EXPECT_EQ(enc.items(), items);
    EXPECT_EQ(enc.item_bytes(), bytes);
    EXPECT_THROW(enc.add(FdItem{.value = 5, .fd = p2[0], .fail = Fail::after_bytes}), mproc::SerializationError);
    enc.add(FdItem{.value = 6, .fd = p3[0]});
    enc.add(FdItem{.value = 7});
    ChunkMessage msg = enc.finish();
    ASSERT_EQ(msg.items(), 4u);
    // One owned duplicate per descriptor of an item that went in: p1's and p3's.
    ASSERT_EQ(msg.fds.size(), 2u);
    EXPECT_EQ(chunk_items::inode_of(msg.fds[0]), chunk_items::inode_of(p1[0]));
    EXPECT_EQ(chunk_items::inode_of(msg.fds[1]), chunk_items::inode_of(p3[0]));

    ChunkRunner runner;
    auto core = run_chunk<int, false>(runner, msg, 1, 4);
    ASSERT_TRUE(core->value);
    EXPECT_EQ(*core->value, (std::vector<int>{1, 2, 6, 7}));
    for (int fd : msg.fds) ::close(fd);

    // The encoder goes on: a fresh chunk after the failures is whole too.
    enc.begin();
    EXPECT_THROW(enc.add(FdItem{.value = 8, .fd = p1[0], .fail = Fail::after_fd}), std::runtime_error);
    EXPECT_EQ(enc.items(), 0u);
    enc.add(FdItem{.value = 9, .fd = p2[0]});
    ChunkMessage next = enc.finish();
    ASSERT_EQ(next.items(), 1u);
    ASSERT_EQ(next.fds.size(), 1u);
    auto core2 = run_chunk<int, false>(runner, next, 2, 1);
    ASSERT_TRUE(core2->value);
    EXPECT_EQ(*core2->value, (std::vector<int>{9}));
    for (int fd : next.fds) ::close(fd);
  }
  EXPECT_EQ(open_fd_count(), fds_before);  // no duplicate leaked
  for (int fd : {p1[0], p1[1], p2[0], p2[1], p3[0], p3[1]}) ::close(fd);
}

// The pool encodes an apply's arguments and a map's items from the caller's
// values: an argument already of the parameter's type is not copied into a
// temporary first (before: one copy per argument, per item).
TEST(ChunkEncoder, EncodesTheCallersValuesWithoutCopyingThem) {
  using namespace mproc::detail;
  using pool_tasks::CopyCounted;
  const CopyCounted big(std::vector<int>(1000, 7));
  CopyCounted::copies = 0;
  // apply/submit: one chunk of the arguments as a tuple of references.
  ChunkMessage one = ChunkEncoder<int (*)(const CopyCounted&), std::tuple<CopyCounted>, true>::single(
      pool_tasks::counted_size, std::forward_as_tuple(big));
  // map: items read from the caller's range.
  ChunkEncoder<int (*)(const CopyCounted&), CopyCounted, false> enc(pool_tasks::counted_size);
  enc.begin();
  enc.add(big);
  enc.add(big);
  ChunkMessage two = enc.finish();
  EXPECT_EQ(CopyCounted::copies, 0);

  ChunkRunner runner;
  auto core = run_chunk<int, true>(runner, one, 1, 1);
  ASSERT_TRUE(core->value);
  EXPECT_EQ(*core->value, 1000);
  auto core2 = run_chunk<int, false>(runner, two, 2, 2);
  ASSERT_TRUE(core2->value);
  EXPECT_EQ(*core2->value, (std::vector<int>{1000, 1000}));
}
