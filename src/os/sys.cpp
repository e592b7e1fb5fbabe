// The syscall seam, small fd helpers (see internal.hpp) and advise_huge_pages
// (mproc/detail/huge_pages.hpp).
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <system_error>

#include "internal.hpp"
#include "mproc/detail/huge_pages.hpp"

namespace mproc::detail {
namespace {

int real_pidfd_open(pid_t pid, unsigned flags) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, flags));
}
int real_memfd_create(const char* name, unsigned flags) { return ::memfd_create(name, flags); }

}  // namespace

SysOps& sys() {
  static SysOps ops{::fork, ::pipe2, real_memfd_create, real_pidfd_open, ::posix_spawn, ::socketpair};
  return ops;
}

void advise_huge_pages(void* p, std::size_t bytes) noexcept {
  // Below a few huge pages the advice buys nothing; the range's whole pages only
  // (madvise wants a page-aligned start; the pages around the ends are shared
  // with other allocations).
  if (!p || bytes < (std::size_t{8} << 20)) return;
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = (reinterpret_cast<std::uintptr_t>(p) + page - 1) & ~(page - 1);
  const auto end = (reinterpret_cast<std::uintptr_t>(p) + bytes) & ~(page - 1);
  if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

void throw_errno(const char* call) {
  int e = errno;
  throw std::system_error(e, std::generic_category(), std::string("mproc: ") + call + " failed");
}

void close_fd(int fd) noexcept {
  if (fd >= 0) ::close(fd);
}

int pidfd_send_signal(int pidfd, int sig) noexcept {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

bool wait_readable(int fd, std::optional<std::chrono::nanoseconds> timeout) {
  using clock = std::chrono::steady_clock;
  auto deadline = timeout ? clock::now() + *timeout : clock::time_point::max();
  for (;;) {
    int ms = -1;
    if (timeout) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now() +
                                                                        std::chrono::microseconds(999));
      ms = left.count() < 0 ? 0 : static_cast<int>(std::min<long long>(left.count(), 1 << 30));
    }
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, ms);
    if (r > 0) return true;
    if (r == 0) {
      if (!timeout || clock::now() >= deadline) return false;
      continue;
    }
    if (errno != EINTR) throw_errno("poll");
  }
}

bool write_all(int fd, const void* buf, std::size_t n) noexcept {
  auto p = static_cast<const char*>(buf);
  while (n) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

}  // namespace mproc::detail
