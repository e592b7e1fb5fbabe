// Anonymous shared mappings (see mproc/detail/segment.hpp).
#include "mproc/detail/segment.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "mproc/error.hpp"

namespace mproc::detail {
namespace {

[[noreturn]] void fail(const char* call) {
  int e = errno;
  throw std::system_error(e, std::generic_category(), std::string("mproc: ") + call + " failed");
}

// The counted layout (SharedArray's): the data, rounded up to a page, then one
// page whose start is a Trailer. `live` counts the handles (Segment::Impl objects)
// to the file in every process: 1 from create_counted, +1 per handle a receiver
// makes, -1 per handle destroyed. It only decides how long a receiver's cache keeps
// an unused mapping, never what data a handle sees: a handle always maps the file
// its message's fd names. A process killed while holding handles leaves the count
// above zero (its peers' caches then keep the mapping until they exit); a fork
// child that destroys handles it inherited lowers it early (an entry dropped early
// is mapped again when next received).
struct Trailer {
  std::uint64_t magic;
  std::atomic<std::int64_t> live;
};
static_assert(std::atomic<std::int64_t>::is_always_lock_free,
              "mproc: the handle count is shared between processes");
constexpr std::uint64_t kTrailerMagic = 0x6d70726f632d6172ULL;  // "mproc-ar"

std::size_t page_bytes() noexcept {
  static const std::size_t p = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return p;
}

/// Where the trailer starts for a segment of `size` bytes (at least 1 byte of data).
std::size_t trailer_offset(std::uint64_t size) noexcept {
  std::uint64_t s = size == 0 ? 1 : size;
  return static_cast<std::size_t>((s + page_bytes() - 1) / page_bytes() * page_bytes());
}

void* map_shared(int fd, std::size_t len) {
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) fail("mmap");
  return p;
}

}  // namespace

/// One mapping of a counted file in this process's cache; it owns the fd and the
/// mapping, shared by every handle made from it.
struct SegmentCacheEntry {
  int fd = -1;
  std::byte* addr = nullptr;
  std::size_t size = 0, map_len = 0;
  Trailer* trailer = nullptr;
  ~SegmentCacheEntry() {
    if (addr) ::munmap(addr, map_len);
    if (fd >= 0) ::close(fd);
  }
};

namespace {

struct CacheKey {
  dev_t dev;
  ino_t ino;
  auto operator<=>(const CacheKey&) const = default;
};

struct Cache {
  std::mutex mu;
  std::map<CacheKey, std::shared_ptr<SegmentCacheEntry>> entries;

  /// Moves the entries nobody uses out (under mu): only the map holds them (no
  /// handle here can gain a reference without mu) and no handle anywhere is left.
  void collect(std::vector<std::shared_ptr<SegmentCacheEntry>>& out) {
    for (auto it = entries.begin(); it != entries.end();) {
      if (it->second.use_count() == 1 && it->second->trailer->live.load(std::memory_order_acquire) <= 0) {
        out.push_back(std::move(it->second));
        it = entries.erase(it);
      } else {
        ++it;
      }
    }
  }
};

Cache& cache() {
  // Never destroyed: handles in static objects may go away after it would be.
  static Cache* c = new Cache;
  return *c;
}

const bool kCacheForkSafe = [] {
  // A fork child keeps the entries (the mappings and fds are inherited with them)
  // but not a lock some other thread of the parent held.
  pthread_atfork(nullptr, nullptr, [] { new (&cache().mu) std::mutex; });
  return true;
}();

std::size_t sweep_cache() noexcept {
  std::vector<std::shared_ptr<SegmentCacheEntry>> dead;
  std::size_t left;
  {
    std::lock_guard lock(cache().mu);
    cache().collect(dead);
    left = cache().entries.size();
  }
  return left;  // `dead` unmaps outside the lock
}

}  // namespace

std::size_t SegmentCache::size() noexcept {
  std::lock_guard lock(cache().mu);
  return cache().entries.size();
}
std::size_t SegmentCache::sweep() noexcept { return sweep_cache(); }

Segment::Impl::~Impl() {
  if (live) live->fetch_sub(1, std::memory_order_acq_rel);
  if (cached) {
    cached.reset();
    (void)sweep_cache();
    return;
  }
  if (addr) ::munmap(addr, map_len ? map_len : size);
  if (fd >= 0) ::close(fd);
  // This process may cache a mapping of the same file (it received its own array).
  if (live) (void)sweep_cache();
}

Segment Segment::create_counted(std::size_t size, const char* tag) {
  const std::size_t at = trailer_offset(size);
  Segment s = create(at + page_bytes(), tag);
  auto* t = new (s.impl_->addr + at) Trailer{kTrailerMagic, {1}};
  s.impl_->map_len = s.impl_->size;
  s.impl_->size = size == 0 ? 1 : size;
  s.impl_->live = &t->live;
  return s;
}

Segment Segment::adopt_received_cached(int fd, std::uint64_t size) {
  struct stat st;
  if (::fstat(fd, &st) < 0) fail("fstat");
  const std::uint64_t at = size > (std::uint64_t{1} << 62) ? 0 : trailer_offset(size);
  if (!S_ISREG(st.st_mode) || at == 0 || static_cast<std::uint64_t>(st.st_size) < at + page_bytes()) {
    return adopt_received(fd, size);  // refuses what is wrong; maps a plain file outside the cache
  }
  const CacheKey key{st.st_dev, st.st_ino};
  const std::size_t need = size == 0 ? 1 : static_cast<std::size_t>(size);
  std::vector<std::shared_ptr<SegmentCacheEntry>> dead;
  auto impl = std::make_shared<Impl>();
  std::lock_guard lock(cache().mu);
  cache().collect(dead);
  auto it = cache().entries.find(key);
  if (it == cache().entries.end() || it->second->size != need) {
    // Not mapped here yet, or mapped for another size (the file was resized): a
    // new entry; an old one lives on in the handles that use it.
    auto e = std::make_shared<SegmentCacheEntry>();
    e->fd = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (e->fd < 0) fail("fcntl(F_DUPFD_CLOEXEC)");
    e->map_len = static_cast<std::size_t>(at) + page_bytes();
    e->addr = static_cast<std::byte*>(map_shared(e->fd, e->map_len));
    e->size = need;
    e->trailer = reinterpret_cast<Trailer*>(e->addr + at);
    if (e->trailer->magic != kTrailerMagic) {
      // Large enough, but not laid out by create_counted: an ordinary mapping.
      impl->fd = std::exchange(e->fd, -1);
      impl->addr = std::exchange(e->addr, nullptr);
      impl->size = need;
      impl->map_len = e->map_len;
      Segment s;
      s.impl_ = std::move(impl);
      return s;
    }
    it = cache().entries.insert_or_assign(key, std::move(e)).first;
  }
  const auto& e = it->second;
  e->trailer->live.fetch_add(1, std::memory_order_acq_rel);
  impl->fd = e->fd;
  impl->addr = e->addr;
  impl->size = e->size;
  impl->live = &e->trailer->live;
  impl->cached = e;
  Segment s;
  s.impl_ = std::move(impl);
  return s;
}

Segment Segment::create(std::size_t size, const char* tag) {
  if (size == 0) size = 1;
  int fd = ::memfd_create(tag, MFD_CLOEXEC);
  if (fd < 0) fail("memfd_create");
  if (::ftruncate(fd, static_cast<off_t>(size)) < 0) {
    int e = errno;
    ::close(fd);
    errno = e;
    fail("ftruncate");
  }
  return adopt(fd, size, false);
}

Segment Segment::adopt(int fd, std::size_t size, bool dup_fd) {
  auto impl = std::make_shared<Impl>();
  impl->fd = dup_fd ? ::fcntl(fd, F_DUPFD_CLOEXEC, 0) : fd;
  if (impl->fd < 0) fail("fcntl(F_DUPFD_CLOEXEC)");
  if (size == 0) size = 1;
  impl->addr = static_cast<std::byte*>(map_shared(impl->fd, size));
  impl->size = size;
  Segment s;
  s.impl_ = std::move(impl);
  return s;
}

Segment Segment::adopt_received(int fd, std::uint64_t size) {
  struct stat st;
  if (::fstat(fd, &st) < 0) fail("fstat");
  if (!S_ISREG(st.st_mode)) {
    throw SerializationError(
        "mproc: a received shared-memory handle's descriptor is not a memory file (memfd or /dev/shm): the "
        "message is corrupt, or was not written by mproc");
  }
  // A mapping is at least one byte (create() makes such files 1 byte long).
  const std::uint64_t need = size == 0 ? 1 : size;
  if (need > static_cast<std::uint64_t>(st.st_size)) {
    throw SerializationError("mproc: a received shared-memory handle says " + std::to_string(size) +
                             " bytes, but its file has " + std::to_string(st.st_size) +
                             ": the message is corrupt, or the file was truncated by another process");
  }
  return adopt(fd, static_cast<std::size_t>(size));
}

}  // namespace mproc::detail
