// The syscall seam and small fd helpers (see internal.hpp).
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include "internal.hpp"

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
