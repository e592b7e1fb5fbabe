// mproc/detail/segment.hpp — an anonymous shared-memory mapping that travels by fd.
//
// Backing store for everything mproc shares between processes (Value, Array,
// SharedArray, locks, queues). It is a memfd: it has no name, so there is nothing
// in /dev/shm to leak; the kernel frees it when the last process unmaps it and closes
// its fd, including after a kill -9. It crosses a process boundary as a file
// descriptor (inherited under fork, passed by posix_spawn or SCM_RIGHTS otherwise),
// so handing a 8 GiB array to a child costs the same as handing a 1 KiB one.
#pragma once

#include "mproc/detail/config.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "mproc/serial.hpp"

namespace mproc::detail {

struct SegmentCacheEntry;

class Segment {
 public:
  Segment() = default;

  /// A new zero-filled mapping of `size` bytes (at least 1). `tag` names it in
  /// /proc/PID/maps and fdinfo for debugging. Throws std::system_error.
  static Segment create(std::size_t size, const char* tag = "mproc");
  /// Maps an existing memfd/shm fd (dup'd; the caller keeps `fd`). Throws std::system_error.
  static Segment adopt(int fd, std::size_t size, bool dup_fd = true);
  /// adopt() for a handle another process sent (fd borrowed, dup'd): first checks
  /// that fd is a memory file (regular: memfd, /dev/shm) of at least `size` bytes
  /// (fstat), so a corrupt or hostile message is a SerializationError instead of a
  /// mapping past the end of the file (SIGBUS at the first touch). A file that its
  /// other holders shrink later is not guarded against (that needs memfd seals).
  static Segment adopt_received(int fd, std::uint64_t size);

  /// create() for a SharedArray: the memfd gets one more page, after the data
  /// (rounded up to a page), holding a count of the live handles to it in every
  /// process (see SegmentCache). size() is still `size`.
  static Segment create_counted(std::size_t size, const char* tag);
  /// adopt_received() through this process's mapping cache (SegmentCache): a file
  /// this process maps already (same st_dev/st_ino, same size) is not mapped
  /// again; the handle shares that mapping. A file without the counted layout (made
  /// by other code) is mapped as adopt_received() does, outside the cache.
  static Segment adopt_received_cached(int fd, std::uint64_t size);

  std::byte* data() const noexcept { return impl_ ? impl_->addr : nullptr; }
  std::size_t size() const noexcept { return impl_ ? impl_->size : 0; }
  int fd() const noexcept { return impl_ ? impl_->fd : -1; }
  explicit operator bool() const noexcept { return impl_ != nullptr; }
  /// Unmaps and closes this handle's share (others keep theirs).
  void reset() noexcept { impl_.reset(); }

 private:
  struct Impl {
    int fd = -1;
    std::byte* addr = nullptr;
    std::size_t size = 0;
    std::size_t map_len = 0;                    // what munmap takes (size, or more when counted)
    std::atomic<std::int64_t>* live = nullptr;  // the counted layout's handle count, or null
    std::shared_ptr<SegmentCacheEntry> cached;  // set: fd and mapping belong to that entry
    ~Impl();
  };
  std::shared_ptr<Impl> impl_;
};

/// The mapping cache of counted segments (SharedArray's), one per process: a
/// process that receives the same array again and again (a pool worker handed it
/// by every task) maps it once. An entry is dropped (unmapped, its fd closed) once
/// no handle in this process uses it and the segment's handle count, kept in the
/// segment itself by every process's handles, is zero: the array is gone
/// everywhere. That is checked whenever a handle of a counted segment goes away in
/// this process and whenever one is received, and by sweep(). For tests and
/// diagnostics.
struct SegmentCache {
  /// Entries held (mapped files), live or not yet swept.
  static std::size_t size() noexcept;
  /// Drops the entries nobody uses any more; returns how many are left.
  static std::size_t sweep() noexcept;
};

}  // namespace mproc::detail

namespace mproc {

/// A Segment is sent as its fd plus its size; the receiver maps it again.
template <>
struct codec<detail::Segment> {
  static void encode(Writer& w, const detail::Segment& s) {
    if (!s) throw UsageError("mproc: cannot send an empty shared-memory handle");
    std::uint32_t idx = w.add_fd(s.fd());
    std::uint64_t size = s.size();
    w.write(&idx, sizeof idx);
    w.write(&size, sizeof size);
  }
  static detail::Segment decode(Reader& r) {
    auto [fd, size] = read_handle(r);
    return detail::Segment::adopt_received(fd, size);
  }
  /// decode() through the mapping cache (SharedArray's; the same bytes).
  static detail::Segment decode_cached(Reader& r) {
    auto [fd, size] = read_handle(r);
    return detail::Segment::adopt_received_cached(fd, size);
  }

 private:
  struct Handle {
    int fd;
    std::uint64_t size;
  };
  static Handle read_handle(Reader& r) {
    std::uint32_t idx;
    std::uint64_t size;
    r.read(&idx, sizeof idx);
    r.read(&size, sizeof size);
    return {r.fd(idx), size};
  }
};

}  // namespace mproc
