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
#include <new>

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

namespace {

/// Writes bytes at `offset` of fd (pwrite, not through a mapping: the kernel fills
/// the memfd's pages without a page fault per 4 KiB, which measured 3-4x faster
/// here for 64 MiB).
void write_at(int fd, std::span<const std::byte> bytes, std::size_t offset) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    std::size_t chunk = std::min<std::size_t>(bytes.size() - done, std::size_t{1} << 30);
    ssize_t n = ::pwrite(fd, bytes.data() + done, chunk, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("pwrite");
    }
    done += static_cast<std::size_t>(n);
  }
}

/// A new memfd of kOobDataOffset + `payload` bytes (pages allocated as written).
int new_oob_segment(std::size_t payload) {
  int fd = sys().memfd_create("mproc-msg", MFD_CLOEXEC);
  if (fd < 0) throw_errno("memfd_create");
  if (::ftruncate(fd, static_cast<off_t>(kOobDataOffset + payload)) < 0) {
    int e = errno;
    close_fd(fd);
    errno = e;
    throw_errno("ftruncate");
  }
  return fd;
}

/// Largest message a cached segment holds (a 64 MiB payload and its encoding
/// header); larger ones get a fresh segment each.
/// Every cached segment has this size from the start (pages are only allocated as
/// they are written), so one never has to grow.
constexpr std::size_t kOobCachedMax = (std::size_t{64} << 20) + 4096;
/// Segments cached per channel end and process, and the pages they may hold
/// together (high-water marks): beyond that, free ones are dropped.
constexpr std::size_t kOobCacheEntries = 4;
constexpr std::size_t kOobCacheBytes = std::size_t{128} << 20;

}  // namespace

OobLease::~OobLease() {
  if (busy) {
    if (!handed_over) busy->store(0, std::memory_order_release);
  } else if (fd >= 0) {
    close_fd(fd);
  }
}

OobCache::OobCache() noexcept : gen_(fork_generation()) {}

OobCache::~OobCache() {
  for (Entry& e : entries_) drop(e);
}

void OobCache::drop(Entry& e, bool fd_lost) noexcept {
  ::munmap(e.busy, kOobDataOffset);
  if (!fd_lost) close_fd(e.fd);
}

void OobCache::forget_after_fork() noexcept {
  // Single-threaded (pthread_atfork child): mu_ may have been held by a thread that
  // is gone, so it is made anew. The segments stay the parent's (its mappings and
  // fds in this child are closed; the parent's own are untouched).
  for (Entry& e : entries_) drop(e);
  new (&entries_) std::vector<Entry>;  // the old vector's memory is leaked, not freed under a foreign lock
  new (&mu_) std::mutex;
  gen_ = fork_generation();
}

void OobCache::fill(OobLease& lease, std::span<const std::byte> bytes, int fd_floor) {
  const std::size_t n = bytes.size();
  Entry* got = nullptr;
  // A fork child whose registry could not be reset (forget_after_fork not run):
  // the cache is the parent's; use fresh segments here.
  if (n <= kOobCachedMax && gen_ == fork_generation()) {
    std::lock_guard lock(mu_);
    // A task may close descriptors it does not own (the pool's "close 3..1024"):
    // a cached fd that no longer names its segment is forgotten, never written or
    // sent (its number may be another file's by now).
    for (std::size_t i = 0; i < entries_.size();) {
      struct stat st;
      Entry& e = entries_[i];
      if (::fstat(e.fd, &st) == 0 && static_cast<std::uint64_t>(st.st_dev) == e.dev &&
          static_cast<std::uint64_t>(st.st_ino) == e.ino) {
        ++i;
        continue;
      }
      drop(e, /*fd_lost=*/true);
      e = entries_.back();
      entries_.pop_back();
    }
    // A free segment, preferring one whose pages already cover n (no new page).
    auto claim = [](Entry& e) {
      std::uint32_t free = 0;
      return e.busy->compare_exchange_strong(free, 1, std::memory_order_acquire, std::memory_order_relaxed);
    };
    Entry* best = nullptr;
    for (Entry& e : entries_) {
      if (e.busy->load(std::memory_order_relaxed) != 0) continue;
      if (!best || (best->written < n && e.written > best->written) ||
          (e.written >= n && e.written < best->written)) {
        best = &e;
      }
    }
    if (best && claim(*best)) got = best;
    if (!got && entries_.size() < kOobCacheEntries) {
      int fd = new_oob_segment(kOobCachedMax);
      if (fd < fd_floor) {  // kept for long: above the range a task may sweep
        int high = ::fcntl(fd, F_DUPFD_CLOEXEC, fd_floor);
        if (high >= 0) {
          close_fd(fd);
          fd = high;
        }
      }
      struct stat st;
      void* m = ::fstat(fd, &st) == 0
                    ? ::mmap(nullptr, kOobDataOffset, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                    : MAP_FAILED;
      if (m == MAP_FAILED) {
        int e = errno;
        close_fd(fd);
        errno = e;
        throw_errno("mmap");
      }
      created_.fetch_add(1, std::memory_order_relaxed);
      auto* busy = static_cast<std::atomic<std::uint32_t>*>(m);
      busy->store(1, std::memory_order_relaxed);
      entries_.push_back({fd, busy, 0, static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)});
      got = &entries_.back();
    }
    if (got) {
      // Keep the pages held within bounds: drop free segments (largest first) while
      // over, else send this one in a fresh segment.
      std::size_t total = 0;
      for (Entry& e : entries_) total += &e == got ? std::max(e.written, n) : e.written;
      while (total > kOobCacheBytes) {
        Entry* victim = nullptr;
        for (Entry& e : entries_) {
          if (&e != got && e.written > 0 && e.busy->load(std::memory_order_relaxed) == 0 &&
              (!victim || e.written > victim->written)) {
            victim = &e;
          }
        }
        if (!victim || !claim(*victim)) break;
        total -= victim->written;
        std::size_t keep = static_cast<std::size_t>(got - entries_.data());
        drop(*victim);
        *victim = entries_.back();
        entries_.pop_back();
        if (keep == entries_.size()) keep = static_cast<std::size_t>(victim - entries_.data());
        got = &entries_[keep];
      }
      if (total > kOobCacheBytes) {
        got->busy->store(0, std::memory_order_release);
        got = nullptr;
      } else {
        got->written = std::max(got->written, n);
        lease.fd = got->fd;
        lease.busy = got->busy;
      }
    }
  }
  if (!got) {
    lease.fd = new_oob_segment(n);
  }
  // The copy runs outside the lock: the segment is ours (its word is set).
  write_at(lease.fd, bytes, kOobDataOffset);
}

void oob_release(int fd) noexcept {
  // Only the word's low byte changes (1 -> 0), so this write cannot be seen torn.
  const std::uint32_t zero = 0;
  (void)::pwrite(fd, &zero, sizeof zero, 0);
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
  struct stat st;
  if (::fstat(fd, &st) < 0) throw_errno("fstat");
  if (static_cast<std::uint64_t>(st.st_size) < kOobDataOffset + size) {
    throw Error("mproc: out-of-band message segment is smaller than its record says");
  }
  if (size > kKeepBytes) {
    // Mapped, and every page mapped in one call (instead of a fault per page).
    m.seg = Segment::adopt(fd, kOobDataOffset + size, true);
#ifdef MADV_POPULATE_READ
    ::madvise(m.seg.data() + kOobDataOffset, size, MADV_POPULATE_READ);
#endif
    m.bytes = {m.seg.data() + kOobDataOffset, size};
    return m;
  }
  // pread, not a mapping: the kernel copies through its own (huge-page) map of the
  // memfd, while reading a fresh 4 KiB-page user mapping took 3x longer here
  // (TLB misses under nested paging) and its munmap another 8 ms per 64 MiB.
  std::byte* dst = t_recv.get(size);
  std::size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(fd, dst + done, std::min<std::size_t>(size - done, std::size_t{1} << 30),
                        static_cast<off_t>(kOobDataOffset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("pread");
    if (n == 0) throw Error("mproc: out-of-band message segment ended early");
    done += static_cast<std::size_t>(n);
  }
  m.bytes = {dst, size};
  return m;
}

}  // namespace mproc::detail
