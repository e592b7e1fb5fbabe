// Anonymous shared mappings (see mproc/detail/segment.hpp).
#include "mproc/detail/segment.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <system_error>

#include "mproc/error.hpp"

namespace mproc::detail {
namespace {

[[noreturn]] void fail(const char* call) {
  int e = errno;
  throw std::system_error(e, std::generic_category(), std::string("mproc: ") + call + " failed");
}

}  // namespace

Segment::Impl::~Impl() {
  if (addr) ::munmap(addr, size);
  if (fd >= 0) ::close(fd);
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
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, impl->fd, 0);
  if (p == MAP_FAILED) fail("mmap");
  impl->addr = static_cast<std::byte*>(p);
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
