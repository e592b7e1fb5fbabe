// The channel's side band: file descriptors (a message's own, and the memfd of an
// out-of-band message) sent through the channel's SOCK_SEQPACKET socketpair, one
// socket message per side-band record, in ring order.
#include <fcntl.h>
#include <pthread.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "../os/internal.hpp"
#include "internal.hpp"

namespace mproc::detail {

bool sideband_send(Channel& c, int sock, std::uint64_t seq, std::span<const int> fds, deadline_t deadline) {
  iovec iov{&seq, sizeof seq};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  std::vector<char> ctl(CMSG_SPACE(sizeof(int) * fds.size()));
  if (!fds.empty()) {
    m.msg_control = ctl.data();
    m.msg_controllen = ctl.size();
    cmsghdr* cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    // MSG_NOSIGNAL: a closed peer is an error to report, not a SIGPIPE.
    ssize_t n = ::sendmsg(sock, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n == static_cast<ssize_t>(sizeof seq)) return true;
    if (n >= 0) throw Error("mproc: short side-band send");
    if (errno == EINTR) continue;
    if (errno == EPIPE || errno == ECONNRESET) {
      throw BrokenPipeError("mproc: Connection.send(): the other end of the pipe is closed in every process");
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK) throw_errno("sendmsg");
    // The socket buffer is full (the receivers are behind): wait in slices, so a
    // deadline or a vanished peer is noticed. kMaxSideband keeps this rare.
    auto slice_end = std::chrono::steady_clock::now() + kSlice;
    auto until = deadline ? std::min(*deadline, slice_end) : slice_end;
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(until - std::chrono::steady_clock::now()).count();
    pollfd p{sock, POLLOUT, 0};
    if (retry_eintr([&] { return ::poll(&p, 1, static_cast<int>(std::max<long>(ms, 0))); }) < 0) throw_errno("poll");
    if (deadline && std::chrono::steady_clock::now() >= *deadline && !(p.revents & POLLOUT)) return false;
    if (c.peers_gone(false) && c.h->kind == ChannelKind::queue) {
      throw BrokenPipeError("mproc: Queue.put(): no other process can take from the queue any more");
    }
  }
}

namespace {

/// The sequence number of the socket message at the front (0: none, or the socket
/// is closed), without its fds: no control buffer, so the kernel installs none
/// (MSG_CTRUNC). flags 0: the message is taken and discarded, fds closed with it;
/// MSG_PEEK: it stays.
std::uint64_t front_message(int sock, int flags) noexcept {
  for (;;) {
    std::uint64_t got = 0;
    iovec iov{&got, sizeof got};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    ssize_t n = ::recvmsg(sock, &m, MSG_DONTWAIT | flags);
    if (n < 0 && (errno == EINTR || errno == ECONNRESET)) continue;
    return n == static_cast<ssize_t>(sizeof got) ? got : 0;
  }
}
std::uint64_t front_seq(int sock) noexcept { return front_message(sock, MSG_PEEK); }
void discard_front(int sock) noexcept { front_message(sock, 0); }

}  // namespace

std::vector<int> sideband_recv(int sock, std::uint64_t seq, std::size_t nfds, bool peek) {
  std::vector<char> ctl(CMSG_SPACE(sizeof(int) * (kMaxMessageFds + 1)));
  for (;;) {
    std::uint64_t got = 0;
    iovec iov{&got, sizeof got};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.data();
    m.msg_controllen = ctl.size();
    // Never blocks: the sender sent before it published the record we hold.
    ssize_t n = ::recvmsg(sock, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | (peek ? MSG_PEEK : 0));
    if (n < 0) {
      // ECONNRESET: the peer closed with messages unread on its side; the kernel
      // reports that once, then delivers what is queued for us.
      if (errno == EINTR || errno == ECONNRESET) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        throw Error("mproc: channel side band out of step: a message's file descriptors are missing");
      }
      throw_errno("recvmsg");
    }
    std::vector<int> fds;
    for (cmsghdr* cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
      if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
      std::size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char* d = CMSG_DATA(cm);
      for (std::size_t i = 0; i < k; ++i) {
        int fd;
        std::memcpy(&fd, d + i * sizeof(int), sizeof fd);
        fds.push_back(fd);
      }
    }
    if (n == 0) {
      close_fds(fds);
      throw Error("mproc: channel side band closed while a message's file descriptors were expected");
    }
    if (got < seq) {  // left behind by a process that died half-way through a send or receive
      close_fds(fds);
      if (peek) discard_front(sock);
      continue;
    }
    if (got != seq || fds.size() != nfds || (m.msg_flags & (MSG_CTRUNC | MSG_TRUNC))) {
      close_fds(fds);
      throw Error("mproc: channel side band out of step (sequence " + std::to_string(got) + ", expected " +
                  std::to_string(seq) + ")");
    }
    return fds;
  }
}

void sideband_drop(int sock, std::uint64_t seq, bool known_front) noexcept {
  if (known_front) {
    discard_front(sock);
    return;
  }
  for (;;) {
    std::uint64_t got = front_seq(sock);
    if (got == 0 || got > seq) return;
    discard_front(sock);
    if (got == seq) return;
  }
}

int oob_create(std::span<const std::byte> bytes) {
  // Written with pwrite, not through a mapping: the kernel fills the memfd's pages
  // without a page fault per 4 KiB, which measured 3-4x faster here for 64 MiB.
  int fd = sys().memfd_create("mproc-msg", MFD_CLOEXEC);
  if (fd < 0) throw_errno("memfd_create");
  struct Closer {
    int fd;
    ~Closer() {
      if (fd >= 0) close_fd(fd);
    }
  } closer{fd};
  if (::ftruncate(fd, static_cast<off_t>(bytes.size())) < 0) throw_errno("ftruncate");
  std::size_t done = 0;
  while (done < bytes.size()) {
    std::size_t chunk = std::min<std::size_t>(bytes.size() - done, std::size_t{1} << 30);
    ssize_t n = ::pwrite(fd, bytes.data() + done, chunk, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("pwrite");
    }
    done += static_cast<std::size_t>(n);
  }
  closer.fd = -1;
  return fd;
}

namespace {

/// Largest out-of-band message read into the per-thread buffer (and kept there
/// for the next one); larger ones are mapped instead.
constexpr std::size_t kKeepBytes = (std::size_t{64} << 20) + 4096;

/// A thread's buffer for out-of-band messages: its own mapping, so that it can be
/// asked for transparent huge pages (512x fewer faults and TLB misses where THP
/// is "madvise") and kept out of fork children (MADV_DONTFORK: no copy-on-write
/// of a buffer the child never uses; the child forgets it, see below).
struct RecvBuffer {
  std::byte* p = nullptr;
  std::size_t cap = 0;
  ~RecvBuffer() {
    if (p) ::munmap(p, cap);
  }
  std::byte* get(std::size_t n) {
    if (n <= cap) return p;
    if (p) ::munmap(p, cap);
    p = nullptr;
    cap = 0;
    std::size_t want = (n + (std::size_t{2} << 20) - 1) & ~((std::size_t{2} << 20) - 1);
    void* m = ::mmap(nullptr, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw_errno("mmap");
    ::madvise(m, want, MADV_HUGEPAGE);
    ::madvise(m, want, MADV_DONTFORK);
    p = static_cast<std::byte*>(m);
    cap = want;
    return p;
  }
};
thread_local RecvBuffer t_recv;

// The forking thread's buffer is not mapped in the child (MADV_DONTFORK): forget it.
[[maybe_unused]] const bool g_recv_atfork = [] {
  ::pthread_atfork(nullptr, nullptr, [] {
    t_recv.p = nullptr;
    t_recv.cap = 0;
  });
  return true;
}();

}  // namespace

OobMessage oob_read(int fd, std::size_t size) {
  OobMessage m;
  struct Closer {
    int fd;
    ~Closer() { close_fd(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) < 0) throw_errno("fstat");
  if (static_cast<std::uint64_t>(st.st_size) < size) {
    throw Error("mproc: out-of-band message segment is smaller than its record says");
  }
  if (size > kKeepBytes) {
    // Mapped, and every page mapped in one call (instead of a fault per page).
    closer.fd = -1;
    m.seg = Segment::adopt(fd, size, false);
#ifdef MADV_POPULATE_READ
    ::madvise(m.seg.data(), m.seg.size(), MADV_POPULATE_READ);
#endif
    m.bytes = {m.seg.data(), size};
    return m;
  }
  // pread, not a mapping: the kernel copies through its own (huge-page) map of the
  // memfd, while reading a fresh 4 KiB-page user mapping took 3x longer here
  // (TLB misses under nested paging) and its munmap another 8 ms per 64 MiB.
  std::byte* dst = t_recv.get(size);
  std::size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(fd, dst + done, std::min<std::size_t>(size - done, std::size_t{1} << 30),
                        static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("pread");
    if (n == 0) throw Error("mproc: out-of-band message segment ended early");
    done += static_cast<std::size_t>(n);
  }
  m.bytes = {dst, size};
  return m;
}

}  // namespace mproc::detail
