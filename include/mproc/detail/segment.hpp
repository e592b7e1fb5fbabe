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

#include <cstddef>
#include <cstdint>
#include <memory>

#include "mproc/serial.hpp"

namespace mproc::detail {

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
    ~Impl();
  };
  std::shared_ptr<Impl> impl_;
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
    std::uint32_t idx;
    std::uint64_t size;
    r.read(&idx, sizeof idx);
    r.read(&size, sizeof size);
    return detail::Segment::adopt_received(r.fd(idx), size);
  }
};

}  // namespace mproc
