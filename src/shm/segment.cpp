// Anonymous shared mappings (see mproc/detail/segment.hpp).
#include "mproc/detail/segment.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

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

}  // namespace mproc::detail
