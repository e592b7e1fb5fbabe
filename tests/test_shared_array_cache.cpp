// The mapping cache of SharedArray segments (detail::SegmentCache): a process that
// receives the same array again and again maps it once, and drops the mapping when
// the array's last handle is gone everywhere. In-process (the cache alone, fed the
// encoded messages a receiver gets) and end to end through a Pool worker, under
// 1,000 create/destroy cycles: no growth of the cache, of /proc/self/maps or of
// the open fds, and every re-created array reads its own data.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <mproc/pool.hpp>
#include <mproc/shared_memory.hpp>
#include <string>
#include <vector>

#include "util.hpp"

using mproc::SharedArray;
using mproc::detail::SegmentCache;

namespace {

/// A mapping kept per cycle would add a line of /proc/self/maps per cycle (1,000);
/// the allocator (ASan's and TSan's most) maps a few regions of its own meanwhile.
constexpr int kMapsSlack = 32;

int maps_lines() {
  std::ifstream f("/proc/self/maps");
  int n = 0;
  for (std::string line; std::getline(f, line);) ++n;
  return n;
}

/// A SharedArray's message as a receiver gets it (the fds are the sender's own,
/// borrowed; the decoder takes duplicates, as from a socket).
struct Message {
  std::vector<std::byte> bytes;
  std::vector<int> fds;
};

template <class T>
Message encode(const SharedArray<T>& a) {
  mproc::Writer w;
  mproc::dump(w, a);
  return {{w.bytes().begin(), w.bytes().end()}, {w.fds().begin(), w.fds().end()}};
}

template <class T>
SharedArray<T> decode(const Message& m) {
  mproc::Reader r(m.bytes, m.fds);
  return mproc::load<SharedArray<T>>(r);
}

// ---- tasks ----
std::uint64_t read_and_bump(SharedArray<std::uint64_t> a) {
  std::uint64_t v = a[0];
  a[a.size() - 1] = v + 1;
  return v;
}
std::uint64_t cache_size_holding(SharedArray<std::uint64_t>) { return SegmentCache::size(); }
/// The worker's cache entries after a sweep, its /proc/self/maps lines and open fds.
std::vector<std::int64_t> worker_state(int) {
  return {static_cast<std::int64_t>(SegmentCache::sweep()), maps_lines(), mproc_test::fd_count()};
}

}  // namespace

TEST(SharedArrayCache, AReceiverMapsAnArrayOnce) {
  const std::size_t base = SegmentCache::sweep();
  {
    SharedArray<int> a(1024);
    a[5] = 7;
    const Message m = encode(a);
    auto b = decode<int>(m);
    auto c = decode<int>(m);
    EXPECT_EQ(b.data(), c.data());  // one mapping for both handles
    EXPECT_NE(b.data(), a.data());  // not the sender's handle: a mapping of its own
    EXPECT_EQ(c[5], 7);
    c[6] = 8;
    EXPECT_EQ(a[6], 8);
    EXPECT_EQ(SegmentCache::size(), base + 1);
    const int* mapped = b.data();
    b = {};
    c = {};
    // No handle here uses it, but the array lives (a): kept, and found again.
    EXPECT_EQ(SegmentCache::sweep(), base + 1);
    auto d = decode<int>(m);
    EXPECT_EQ(d.data(), mapped);
    EXPECT_EQ(d[6], 8);
  }
  // a, the last handle anywhere, went last: the entry went with it.
  EXPECT_EQ(SegmentCache::size(), base);
}

TEST(SharedArrayCache, TheLastHandleMayBeTheReceiversOwn) {
  const std::size_t base = SegmentCache::sweep();
  SharedArray<int> a(10);
  a[9] = 3;
  auto b = decode<int>(encode(a));
  a = {};
  EXPECT_EQ(SegmentCache::sweep(), base + 1);  // b still uses it
  EXPECT_EQ(b[9], 3);
  b = {};
  EXPECT_EQ(SegmentCache::size(), base);
}

TEST(SharedArrayCache, ThousandCreateDestroyCyclesLeaveNothing) {
  const std::size_t base = SegmentCache::sweep();
  { auto warm = decode<std::uint64_t>(encode(SharedArray<std::uint64_t>(512))); }
  const int fds = mproc_test::fd_count(), maps = maps_lines();
  for (std::uint64_t i = 0; i < 1000; ++i) {
    // The same fd numbers (and maybe inode numbers) come back cycle after cycle:
    // every decode must map the new file, never a stale entry of an old one.
    SharedArray<std::uint64_t> a(512 + i % 7 * 1000);
    a[0] = i;
    a[a.size() - 1] = ~i;
    auto b = decode<std::uint64_t>(encode(a));
    ASSERT_EQ(b.size(), a.size());
    ASSERT_EQ(b[0], i);
    ASSERT_EQ(b[b.size() - 1], ~i);
    ASSERT_LE(SegmentCache::size(), base + 1);
  }
  EXPECT_EQ(SegmentCache::size(), base);
  EXPECT_EQ(mproc_test::fd_count(), fds);
  EXPECT_LE(maps_lines(), maps + kMapsSlack);
}

TEST(SharedArrayCache, AFileNotLaidOutByCreateIsMappedOutsideTheCache) {
  const std::size_t base = SegmentCache::sweep();
  int fd = ::memfd_create("mproc-test", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 3 * 4096), 0);  // room for a trailer page, but no trailer
  std::vector<std::byte> bytes(4 + 8 + 8);
  std::uint32_t idx = 0;
  std::uint64_t size = 16, n = 16;
  std::memcpy(bytes.data(), &idx, 4);
  std::memcpy(bytes.data() + 4, &size, 8);
  std::memcpy(bytes.data() + 12, &n, 8);
  {
    auto a = mproc::detail::decode_shared_array<std::uint8_t>(bytes, std::span<const int>(&fd, 1));
    a[15] = 1;
    EXPECT_EQ(SegmentCache::size(), base);
  }
  ::close(fd);
}

TEST(SharedArrayCache, APoolWorkerMapsAnArrayOnceAndDropsItWithTheArray) {
  mproc::Pool pool(mproc::PoolOptions{.processes = 1});
  SharedArray<std::uint64_t> a(std::size_t{1} << 20);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(pool.apply(cache_size_holding, a), 1u);
  SharedArray<std::uint64_t> b(16);
  EXPECT_EQ(pool.apply(cache_size_holding, b), 2u);  // a's mapping is still there
  a = {};
  b = {};
  EXPECT_EQ(pool.apply(worker_state, 0).at(0), 0);  // gone with the arrays
}

TEST(SharedArrayCache, ThousandArraysThroughAPoolLeaveNothing) {
  mproc::Pool pool(mproc::PoolOptions{.processes = 1});
  auto cycle = [&](std::uint64_t i) {
    SharedArray<std::uint64_t> a(512 + i % 5 * 4096);
    a[0] = i;
    ASSERT_EQ(pool.apply(read_and_bump, a), i);
    ASSERT_EQ(a[a.size() - 1], i + 1);
  };
  for (std::uint64_t i = 0; i < 5; ++i) cycle(i);
  const auto before = pool.apply(worker_state, 0);
  const int fds = mproc_test::fd_count();
  for (std::uint64_t i = 0; i < 1000; ++i) {
    cycle(i);
    if (HasFatalFailure()) return;
  }
  const auto after = pool.apply(worker_state, 0);
  EXPECT_EQ(after.at(0), 0);                          // no cache entry left in the worker
  EXPECT_LE(after.at(1), before.at(1) + kMapsSlack);  // its mappings did not grow
  EXPECT_EQ(after.at(2), before.at(2));               // nor its fds
  EXPECT_EQ(mproc_test::fd_count(), fds);             // nor ours
}
