// The client side: sockets, the handshake, sessions (one per process and server
// instance, with a pool of connections so threads call concurrently), proxy
// states, and the errors a reply stands for.
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <map>
#include <mutex>
#include <system_error>

#include "internal.hpp"
#include "mproc/detail/exception.hpp"
#include "mproc/manager.hpp"

namespace mproc {

std::string Address::str() const {
  if (!path.empty()) return "unix:" + path;
  if (!host.empty()) return "tcp:" + host + ":" + std::to_string(port);
  return "(unset)";
}

namespace detail::mgr {

namespace {

using Ms = std::chrono::milliseconds;

[[noreturn]] void fail(const Address& a, const std::string& what) {
  throw ManagerError("mproc: manager at " + a.str() + ": " + what);
}
[[noreturn]] void fail_errno(const Address& a, const char* call) {
  fail(a, std::string(call) + " failed: " + std::strerror(errno));
}

socklen_t unix_addr(const Address& a, sockaddr_un& sa) {
  std::memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  bool abstract = a.path[0] == '@';
  std::size_t n = a.path.size();
  if (n >= sizeof sa.sun_path) fail(a, "socket path longer than " + std::to_string(sizeof sa.sun_path - 1) + " bytes");
  std::memcpy(sa.sun_path, a.path.data(), n);
  if (abstract) sa.sun_path[0] = '\0';
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n + (abstract ? 0 : 1));
}

struct AddrInfo {
  addrinfo* ai = nullptr;
  ~AddrInfo() {
    if (ai) ::freeaddrinfo(ai);
  }
};

void resolve(const Address& a, bool passive, AddrInfo& out) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  std::string port = std::to_string(a.port);
  int rc = ::getaddrinfo(a.host.c_str(), port.c_str(), &hints, &out.ai);
  if (rc != 0 || !out.ai) fail(a, std::string("cannot resolve the host: ") + ::gai_strerror(rc));
}

void tune_tcp(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  // A peer machine that disappears without a reset is noticed in about 25 s
  // instead of the kernel's two hours.
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  int idle = 10, intvl = 5, cnt = 3;
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

bool wait_fd(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::duration_cast<Ms>(deadline - std::chrono::steady_clock::now()).count();
    if (left < 0) left = 0;
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 60'000)));
    if (rc > 0) return true;
    if (rc < 0 && errno != EINTR) return false;
    if (rc == 0 && left == 0) return false;
  }
}

std::uint64_t this_tid() noexcept {
  thread_local std::uint64_t tid = static_cast<std::uint64_t>(::syscall(SYS_gettid));
  return tid;
}

// ---- every client fd of this process, so a fork child can close them ------------
// A forked child must not keep its parent's connections open: the server would
// not see the parent's session end when the parent dies.
std::mutex g_fds_mu;
std::vector<int> g_fds;
std::once_flag g_atfork_once;

void track_fd(int fd) {
  std::call_once(g_atfork_once, [] {
    ::pthread_atfork([] { g_fds_mu.lock(); }, [] { g_fds_mu.unlock(); },
                     [] {
                       for (int f : g_fds) ::close(f);
                       g_fds.clear();
                       g_fds_mu.unlock();
                     });
  });
  std::lock_guard g(g_fds_mu);
  g_fds.push_back(fd);
}
void untrack_close(int fd) {
  {
    std::lock_guard g(g_fds_mu);
    std::erase(g_fds, fd);
  }
  ::close(fd);
}

bool send_all(int fd, const std::byte* p, std::size_t n) {
  while (n > 0) {
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}
/// Reads exactly n bytes; false on EOF or error (errno 0 for EOF).
bool recv_all(int fd, void* out, std::size_t n) {
  auto* p = static_cast<char*>(out);
  while (n > 0) {
    ssize_t k = ::recv(fd, p, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k == 0) errno = 0;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}

// ---- bounded I/O for calls: a silent server is noticed ----------------------------

enum class Io { ok, closed, silent };

/// Waits until fd is ready for `events`, at most `limit_ms` (-1: forever).
/// Io::closed on a poll error (the socket is unusable).
Io await_fd(int fd, short events, std::int64_t limit_ms) {
  auto deadline = std::chrono::steady_clock::now() + Ms(limit_ms < 0 ? 0 : limit_ms);
  for (;;) {
    int wait = -1;
    if (limit_ms >= 0) {
      auto left = std::chrono::duration_cast<Ms>(deadline - std::chrono::steady_clock::now()).count();
      wait = static_cast<int>(std::clamp<long long>(left, 0, 60'000));
    }
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, wait);
    if (rc > 0) return Io::ok;  // ready, or POLLHUP/POLLERR: the send/recv that follows says which
    if (rc < 0 && errno != EINTR) return Io::closed;
    if (rc == 0 && limit_ms >= 0 && std::chrono::steady_clock::now() >= deadline) return Io::silent;
  }
}

/// send_all, with at most `limit_ms` of no progress (-1: no limit).
Io send_within(int fd, const std::byte* p, std::size_t n, std::int64_t limit_ms) {
  while (n > 0) {
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (Io io = await_fd(fd, POLLOUT, limit_ms); io != Io::ok) return io;
      continue;
    }
    if (k <= 0) return Io::closed;
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return Io::ok;
}

/// recv_all, with at most `limit_ms` of no progress (-1: no limit). Io::closed on
/// EOF or an error (errno 0 for EOF).
Io recv_within(int fd, void* out, std::size_t n, std::int64_t limit_ms) {
  auto* p = static_cast<char*>(out);
  while (n > 0) {
    if (Io io = await_fd(fd, POLLIN, limit_ms); io != Io::ok) return io;
    ssize_t k = ::recv(fd, p, n, MSG_DONTWAIT);
    if (k < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (k == 0) errno = 0;
    if (k <= 0) return Io::closed;
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return Io::ok;
}

/// Requests the server may park until something happens (a lock, an item, a
/// notify…): their answer may legitimately take longer than call_timeout.
bool may_wait(Op op) noexcept {
  switch (op) {
    case Op::lk_acquire:
    case Op::ev_wait:
    case Op::q_put:
    case Op::q_get:
    case Op::q_join:
    case Op::cond_wait:
    case Op::bar_wait: return true;
    default: return false;
  }
}

[[noreturn]] void fail_silent(const Address& a, std::int64_t limit_ms, bool pinged) {
  fail(a, "no answer from the server within " + std::to_string(limit_ms) + " ms (its call_timeout)" +
              (pinged ? ", nor to a ping on another connection" : "") +
              ": it is stopped (SIGSTOP, a debugger), hung or overloaded. The call was abandoned and its "
              "connection closed; if the server resumes, what it did for this call is not undone. If the "
              "server is only slow, raise ManagerOptions::call_timeout (Manager::connect's call_timeout)");
}

void send_frame(int fd, FrameType t, std::span<const std::byte> payload, const Address& a) {
  std::vector<std::byte> buf(kHeaderSize);
  encode_header(buf.data(), t, static_cast<std::uint32_t>(payload.size()));
  buf.insert(buf.end(), payload.begin(), payload.end());
  if (!send_all(fd, buf.data(), buf.size())) fail(a, "the server closed the connection");
}

/// The rest of a frame whose header was read already, with at most limit_ms of
/// silence (-1: none).
FrameHeader read_rest(int fd, const std::byte* hdr, std::vector<std::byte>& payload, const Address& a,
                      std::int64_t limit_ms, std::uint32_t limit = kMaxFrame) {
  std::string why;
  auto h = decode_header(std::span<const std::byte, kHeaderSize>(hdr, kHeaderSize), limit, why);
  if (!h) fail(a, "the server sent a bad frame: " + why);
  payload.resize(h->length);
  if (h->length) {
    Io io = recv_within(fd, payload.data(), h->length, limit_ms);
    if (io == Io::silent) fail_silent(a, limit_ms, false);
    if (io == Io::closed) fail(a, "the server closed the connection mid-frame");
  }
  return *h;
}

/// Reads one frame of the handshake, within the deadline.
FrameHeader read_frame(int fd, std::vector<std::byte>& payload, const Address& a, std::uint32_t limit,
                       std::chrono::steady_clock::time_point deadline) {
  std::byte hdr[kHeaderSize];
  if (!wait_fd(fd, POLLIN, deadline)) {
    fail(a, "no answer to the handshake in time (the connect timeout, or call_timeout if shorter): the server is "
            "stopped (SIGSTOP, a debugger), hung, overloaded, or not an mproc manager; if it is only slow, raise "
            "ManagerOptions::connect_timeout / call_timeout");
  }
  if (!recv_all(fd, hdr, kHeaderSize)) {
    fail(a, errno ? std::string("connection lost: ") + std::strerror(errno)
                  : std::string("the server closed the connection (it exited, was killed, or refused this client)"));
  }
  return read_rest(fd, hdr, payload, a, std::chrono::duration_cast<Ms>(deadline - std::chrono::steady_clock::now()).count() + 1, limit);
}

std::string key_of(const Endpoint& ep, const ServerId& id) {
  return ep.address.str() + '\0' + ep.authkey + '\0' + hex(id);
}

}  // namespace

int listen_on(Address& a) {
  int fd = -1;
  if (a.is_unix()) {
    sockaddr_un sa;
    socklen_t len = unix_addr(a, sa);
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fail_errno(a, "socket");
    if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0) {
      int e = errno;
      ::close(fd);
      errno = e;
      fail_errno(a, "bind");
    }
  } else if (a.is_tcp()) {
    AddrInfo ai;
    resolve(a, true, ai);
    fd = ::socket(ai.ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fail_errno(a, "socket");
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, ai.ai->ai_addr, ai.ai->ai_addrlen) != 0) {
      int e = errno;
      ::close(fd);
      errno = e;
      fail_errno(a, "bind");
    }
    if (a.port == 0) {
      sockaddr_storage ss{};
      socklen_t sl = sizeof ss;
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sl);
      a.port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6&>(ss).sin6_port
                                               : reinterpret_cast<sockaddr_in&>(ss).sin_port);
    }
  } else {
    throw UsageError("mproc: manager address has neither a Unix socket path nor a host and port");
  }
  if (::listen(fd, 1024) != 0) {
    int e = errno;
    ::close(fd);
    errno = e;
    fail_errno(a, "listen");
  }
  return fd;
}

int connect_to(const Address& a, Ms timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  if (a.is_unix()) {
    sockaddr_un sa;
    socklen_t len = unix_addr(a, sa);
    for (;;) {
      int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) fail_errno(a, "socket");
      if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), len) == 0) return fd;
      int e = errno;
      ::close(fd);
      // A full backlog (many clients at once) answers EAGAIN on Unix sockets: retry.
      if ((e == EAGAIN || e == EINTR) && std::chrono::steady_clock::now() < deadline) {
        ::usleep(1000);
        continue;
      }
      errno = e;
      fail(a, std::string("cannot connect: ") + std::strerror(e) +
                  (e == ECONNREFUSED || e == ENOENT ? " (no server there: not started, shut down or dead)" : ""));
    }
  }
  if (!a.is_tcp()) throw UsageError("mproc: manager address has neither a Unix socket path nor a host and port");
  AddrInfo ai;
  resolve(a, false, ai);
  int fd = ::socket(ai.ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) fail_errno(a, "socket");
  int rc = ::connect(fd, ai.ai->ai_addr, ai.ai->ai_addrlen);
  if (rc != 0 && errno != EINPROGRESS) {
    int e = errno;
    ::close(fd);
    fail(a, std::string("cannot connect: ") + std::strerror(e));
  }
  if (rc != 0) {
    if (!wait_fd(fd, POLLOUT, deadline)) {
      ::close(fd);
      fail(a, "connect timed out");
    }
    int err = 0;
    socklen_t sl = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl);
    if (err != 0) {
      ::close(fd);
      fail(a, std::string("cannot connect: ") + std::strerror(err));
    }
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  tune_tcp(fd);
  return fd;
}

// ---- sessions -------------------------------------------------------------------

class Session {
 public:
  /// Connects (and authenticates) once: the first connection is the session's
  /// lifeline, open for as long as the session lives. `expect`: the server
  /// instance a proxy names (ManagerError if another one answers).
  Session(Endpoint ep, Ms timeout, std::optional<ServerId> expect)
      : ep_(std::move(ep)), timeout_(timeout), pid_(::getpid()) {
    random_bytes(&sid_, sizeof sid_);
    // The lifeline carries no calls, only pings: a call abandoned for a silent
    // server closes its own connection, never the session's last one (the
    // server would end the session: its references and locks would go). Its
    // handshake fixes the server instance for the session's life.
    lifeline_ = open_conn(timeout_, expect ? &*expect : nullptr, &server_);
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() {
    if (::getpid() != pid_) return;  // a fork child's copy: the fds are not ours (closed at fork)
    for (int fd : idle_) untrack_close(fd);
    if (lifeline_ >= 0) untrack_close(lifeline_);
  }

  const ServerId& server() const noexcept { return server_; }
  const Endpoint& endpoint() const noexcept { return ep_; }
  pid_t pid() const noexcept { return pid_; }

  /// One request and its reply. `timeout`: the server-side wait of a blocking
  /// request (forever: -1). `limit_ms`: the endpoint's call_timeout (-1: none):
  /// how long the server may stay silent (see ManagerOptions::call_timeout).
  Reply call(const Token& t, Op op, std::span<const std::byte> args, std::int64_t timeout, std::int64_t limit_ms) {
    // A fork child's copy of its parent's session: its fds were closed at the
    // fork and their numbers may name other files now. Never write to them.
    if (::getpid() != pid_) {
      throw UsageError("mproc: a manager session inherited through fork was used; proxies and Managers rebind "
                       "by themselves, so this is a bug in mproc");
    }
    if (t.server != server_) throw_restarted(t.server);
    Writer w;
    w.reserve(kHeaderSize + kRequestHeaderSize + args.size());
    w.extend(kHeaderSize);
    encode_request(w, RequestHeader{op, t.id, this_tid(), timeout});
    if (!args.empty()) w.write(args.data(), args.size());
    std::size_t len = w.size() - kHeaderSize;
    if (len > kMaxFrame) {
      throw UsageError("mproc: manager request of " + std::to_string(len) + " bytes exceeds the frame limit of " +
                       std::to_string(kMaxFrame));
    }
    std::byte out_hdr[kHeaderSize];
    encode_header(out_hdr, FrameType::request, static_cast<std::uint32_t>(len));
    w.overwrite(0, out_hdr, kHeaderSize);
    Reply r;
    for (int attempt = 0;; ++attempt) {
      bool fresh = false;
      int fd = take(fresh, limit_ms);
      try {
        std::byte hdr[kHeaderSize];
        Io io = send_within(fd, w.bytes().data(), w.size(), limit_ms);
        if (io == Io::ok) io = await_reply(fd, op, limit_ms);
        if (io == Io::ok) io = recv_within(fd, hdr, kHeaderSize, limit_ms);
        if (io == Io::silent) {
          untrack_close(fd);  // a reply may still come: the connection is out of step now
          fd = -1;
          fail_silent(ep_.address, limit_ms, may_wait(op));
        }
        if (io == Io::closed) {
          // A pooled connection can have gone stale (the server died or restarted
          // since it was last used). Nothing can have run on a live server then
          // (a server closes a connection only with the server, or for a bad
          // frame), so one retry on a fresh connection is safe: it reaches the
          // same instance, or says there is none or another one.
          untrack_close(fd);
          fd = -1;
          if (!fresh && attempt == 0) continue;
          fail(ep_.address, "the server is gone (connection closed): it exited, was killed or shut down");
        }
        std::vector<std::byte> payload;
        FrameHeader h = read_rest(fd, hdr, payload, ep_.address, limit_ms);
        if (h.type != FrameType::reply || payload.empty()) fail(ep_.address, "the server sent an unexpected frame");
        r.status = static_cast<Status>(payload[0]);
        payload.erase(payload.begin());
        r.bytes = std::move(payload);
      } catch (...) {
        if (fd >= 0) untrack_close(fd);
        throw;
      }
      give(fd);
      return r;
    }
  }

  /// Best effort, never throws, never blocks on a busy session: a decref.
  void notify(const Token& t, Op op) noexcept {
    if (::getpid() != pid_) return;
    int fd = -1;
    {
      std::lock_guard g(mu_);
      if (idle_.empty()) return;  // every connection busy: the session's end frees it
      fd = idle_.back();
      idle_.pop_back();
    }
    Writer w;
    w.extend(kHeaderSize);
    encode_request(w, RequestHeader{op, t.id, this_tid(), forever});
    std::byte hdr[kHeaderSize];
    encode_header(hdr, FrameType::notify, static_cast<std::uint32_t>(w.size() - kHeaderSize));
    w.overwrite(0, hdr, kHeaderSize);
    // Never blocks: a stopped server's full socket buffer must not hang a proxy's
    // destructor. Not sent at all: the reference goes with the session instead.
    ssize_t k;
    do {
      k = ::send(fd, w.bytes().data(), w.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (k < 0 && errno == EINTR);
    if (k == static_cast<ssize_t>(w.size()) || (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) {
      give(fd);
    } else {
      untrack_close(fd);  // broken, or half a frame sent: the connection is out of step
    }
  }

  [[noreturn]] void throw_restarted(const ServerId& wanted) const {
    fail(ep_.address, "this proxy belongs to server instance " + hex(wanted) + ", but instance " + hex(server_) +
                          " answers there: the manager was shut down or restarted, and its objects are gone");
  }

 private:
  int take(bool& fresh, std::int64_t limit_ms = -1) {
    {
      std::lock_guard g(mu_);
      if (!idle_.empty()) {
        int fd = idle_.back();
        idle_.pop_back();
        fresh = false;
        return fd;
      }
    }
    fresh = true;
    // A new connection is bounded by the connect timeout, and by call_timeout:
    // a stopped server's kernel still accepts it, but no hello ever comes.
    return open_conn(limit_ms < 0 ? timeout_ : std::min(timeout_, Ms(limit_ms)), &server_, nullptr);
  }

  /// Waits for the reply to `op` on fd. A blocking request may wait as long as
  /// the server keeps it parked; every limit_ms of silence the server is pinged on
  /// another connection, and Io::silent comes back when that ping is not answered.
  Io await_reply(int fd, Op op, std::int64_t limit_ms) {
    for (;;) {
      Io io = await_fd(fd, POLLIN, limit_ms);
      if (io != Io::silent || !may_wait(op)) return io;
      if (!ping(limit_ms)) return Io::silent;
    }
  }

  /// Whether the server answers a ping on the lifeline within limit_ms (the
  /// caller's own connection waits on a parked request). A ping left unanswered
  /// stays owed: its reply is skipped before the next ping.
  bool ping(std::int64_t limit_ms) {
    std::lock_guard g(ping_mu_);
    if (lifeline_ < 0) return true;  // broken earlier: the waiting call sees the end of its own connection
    constexpr std::size_t kPingReply = kHeaderSize + 1;  // header, status byte
    std::byte in[kPingReply];
    while (pings_owed_ > 0 && ::recv(lifeline_, in, kPingReply, MSG_PEEK | MSG_DONTWAIT) ==
                                  static_cast<ssize_t>(kPingReply)) {
      (void)::recv(lifeline_, in, kPingReply, MSG_DONTWAIT);
      --pings_owed_;
    }
    Writer w;
    w.extend(kHeaderSize);
    encode_request(w, RequestHeader{Op::ping, 0, this_tid(), forever});
    std::byte hdr[kHeaderSize];
    encode_header(hdr, FrameType::request, static_cast<std::uint32_t>(w.size() - kHeaderSize));
    w.overwrite(0, hdr, kHeaderSize);
    Io io = send_within(lifeline_, w.bytes().data(), w.size(), limit_ms);
    if (io == Io::ok) {
      ++pings_owed_;
      // Earlier pings are answered first, in order.
      while (io == Io::ok && pings_owed_ > 0) {
        io = recv_within(lifeline_, in, kPingReply, limit_ms);
        if (io == Io::ok) --pings_owed_;
      }
    }
    if (io == Io::closed) {
      // The server is gone: the waiting call sees the end of its own connection next.
      untrack_close(lifeline_);
      lifeline_ = -1;
    }
    return io != Io::silent;
  }
  void give(int fd) {
    std::lock_guard g(mu_);
    idle_.push_back(fd);
  }

  /// A new authenticated connection. `instance`: the server instance that must
  /// answer (ManagerError for another), null for any; `proven`: where the
  /// constructor records the instance that answered. Only the constructor
  /// writes server_: every other connection is opened while the session is
  /// shared, and only compares.
  int open_conn(Ms timeout, const ServerId* instance, ServerId* proven) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    int fd = connect_to(ep_.address, timeout);
    track_fd(fd);
    try {
      std::vector<std::byte> payload;
      FrameHeader h = read_frame(fd, payload, ep_.address, kMaxHandshakeFrame, deadline);
      if (h.type == FrameType::refuse) fail(ep_.address, "refused: " + std::string(reinterpret_cast<char*>(payload.data()), payload.size()));
      if (h.type != FrameType::hello) fail(ep_.address, "the server did not start the handshake");
      Reader r(payload);
      Hello hello = load<Hello>(r);
      if (hello.build != build_id()) {
        fail(ep_.address, "the server was built differently (compiler, ABI or mproc version): values would not "
                          "decode; build both with the same toolchain and mproc");
      }
      if (instance && hello.server != *instance) throw_restarted_to(*instance, hello.server);
      Auth a;
      a.build = build_id();
      random_bytes(a.challenge.data(), a.challenge.size());
      a.mac = hmac(ep_.authkey, "mproc-client", hello.challenge);
      a.session = sid_;
      a.pid = ::getpid();
      a.program = program_id();
      Writer w;
      dump(w, a);
      send_frame(fd, FrameType::auth, w.bytes(), ep_.address);
      h = read_frame(fd, payload, ep_.address, kMaxHandshakeFrame, deadline);
      if (h.type == FrameType::refuse) {
        fail(ep_.address, "refused this client: " + std::string(reinterpret_cast<char*>(payload.data()), payload.size()));
      }
      Mac expect = hmac(ep_.authkey, "mproc-server", a.challenge);
      Mac got{};
      if (h.type != FrameType::welcome || payload.size() != got.size()) fail(ep_.address, "bad handshake answer");
      std::memcpy(got.data(), payload.data(), got.size());
      if (!mac_equal(got, expect)) {
        fail(ep_.address, "the server could not prove it knows the authkey: not the server you meant");
      }
      if (proven) *proven = hello.server;
    } catch (...) {
      untrack_close(fd);
      throw;
    }
    return fd;
  }
  [[noreturn]] void throw_restarted_to(const ServerId& was, const ServerId& now) const {
    fail(ep_.address, "server instance " + hex(now) + " answers where instance " + hex(was) +
                          " was: the manager was restarted, and the objects of the old one are gone");
  }

  Endpoint ep_;
  Ms timeout_;
  pid_t pid_;
  std::uint64_t sid_ = 0;
  ServerId server_{};  // the instance the lifeline's handshake proved; never written after the constructor
  std::mutex mu_;
  std::vector<int> idle_;
  std::mutex ping_mu_;  // the lifeline: pings only
  int lifeline_ = -1;
  int pings_owed_ = 0;  // sent on the lifeline, reply not read yet
};

namespace {
std::mutex g_reg_mu;
std::map<std::string, std::weak_ptr<Session>>& registry() {
  static auto* r = new std::map<std::string, std::weak_ptr<Session>>;  // never destroyed: used at exit
  return *r;
}
}  // namespace

/// This process's session with the server at ep (instance `id` if given).
std::shared_ptr<Session> get_session(const Endpoint& ep, std::optional<ServerId> id, Ms timeout) {
  std::lock_guard g(g_reg_mu);
  auto& reg = registry();
  if (id) {
    auto it = reg.find(key_of(ep, *id));
    if (it != reg.end()) {
      if (auto s = it->second.lock(); s && s->pid() == ::getpid()) return s;
    }
  }
  auto s = std::make_shared<Session>(ep, timeout, id);
  reg[key_of(ep, s->server())] = s;
  return s;
}

Reply session_call(Session& s, const Token& t, Op op, std::span<const std::byte> args, std::int64_t timeout,
                   std::int64_t limit_ms) {
  return s.call(t, op, args, timeout, limit_ms);
}

std::int64_t call_timeout_ms(std::chrono::milliseconds t, const char* where) {
  if (t == std::chrono::milliseconds::max()) return -1;
  if (t <= t.zero()) {
    throw UsageError(std::string("mproc: ") + where + ": call_timeout must be positive (" + std::to_string(t.count()) +
                     " ms given); std::chrono::milliseconds::max() means no limit");
  }
  return t.count();
}
const ServerId& session_server(const Session& s) noexcept { return s.server(); }
pid_t session_pid(const Session& s) noexcept { return s.pid(); }

// ---- proxies --------------------------------------------------------------------------

ProxyCore::ProxyCore(std::shared_ptr<Session> s, Endpoint ep, Token t) noexcept
    : session_(std::move(s)), ep_(std::move(ep)), token_(t), owner_pid_(::getpid()) {}

ProxyCore::~ProxyCore() {
  if (session_ && owner_pid_.load() == ::getpid()) session_->notify(token_, Op::decref);
}

std::shared_ptr<Session> ProxyCore::session() const {
  int pid = ::getpid();
  if (owner_pid_.load(std::memory_order_acquire) == pid) return session_;
  // Inherited through fork: this process takes a reference of its own.
  std::lock_guard g(mu_);
  if (owner_pid_.load(std::memory_order_relaxed) != pid) {
    auto s = get_session(ep_, token_.server, Ms(10'000));
    Reply r = s->call(token_, Op::incref, {}, forever, ep_.call_timeout_ms);
    if (r.status != Status::ok) throw_status(r, "proxy (inherited through fork)");
    std::shared_ptr<Session> old = std::move(session_);
    session_ = std::move(s);
    owner_pid_.store(pid, std::memory_order_release);
    // `old` is the parent's session, copied with its memory: its destructor does
    // nothing in this process.
  }
  return session_;
}

Reply ProxyCore::call(Op op, std::span<const std::byte> args, std::int64_t timeout) const {
  return session()->call(token_, op, args, timeout, ep_.call_timeout_ms);
}

void encode_proxy(Writer& w, const CorePtr& core) {
  if (!core) throw UsageError("mproc: cannot send a manager proxy that refers to no object");
  if (!core->pinned_.load(std::memory_order_acquire) || core->owner_pid_.load() != ::getpid()) {
    Reply r = core->call(Op::pin);
    if (r.status != Status::ok) throw_status(r, "sending a proxy");
    core->pinned_.store(true, std::memory_order_release);
  }
  dump(w, core->endpoint());
  dump(w, core->token());
}

CorePtr decode_proxy(Reader& r, Kind kind, std::uint64_t type) {
  auto ep = load<Endpoint>(r);
  auto t = load<Token>(r);
  if (t.kind != kind || t.type != type) {
    throw SerializationError("mproc: a manager proxy was received as another proxy type than it was sent as");
  }
  auto s = get_session(ep, t.server, Ms(10'000));
  Reply rep = s->call(t, Op::incref, {}, forever, ep.call_timeout_ms);
  if (rep.status != Status::ok) throw_status(rep, "receiving a proxy");
  return std::make_shared<ProxyCore>(std::move(s), std::move(ep), t);
}

CorePtr adopt_result(const ProxyCore& from, std::uint64_t id, std::uint64_t type) {
  Token t = from.token();
  t.id = id;
  t.kind = Kind::user;
  t.type = type;
  return std::make_shared<ProxyCore>(from.session(), from.endpoint(), t);
}

void throw_status(const Reply& r, const char* call) {
  std::string text(reinterpret_cast<const char*>(r.bytes.data()), r.bytes.size());
  std::string where = std::string("mproc: manager ") + call + ": ";
  switch (r.status) {
    case Status::ok: throw ManagerError(where + "unexpected success");
    case Status::timeout: throw TimeoutError(where + "timed out");
    case Status::not_found: throw KeyError(where + "not found");
    case Status::owner_died: throw OwnerDiedError(where + "the previous holder's process died holding it");
    case Status::empty: throw Empty(where + "empty");
    case Status::full: throw Full(where + "full");
    case Status::usage: throw UsageError(text.empty() ? where + "not allowed" : text);
    case Status::remote: {
      Reader rd = r.reader();
      ExceptionInfo info = load<ExceptionInfo>(rd);
      throw info.to_error();
    }
    case Status::error: throw ManagerError(where + text);
    case Status::broken: throw BrokenBarrierError(where + "the barrier is broken");
  }
  throw ManagerError(where + "unknown reply status " + std::to_string(static_cast<int>(r.status)));
}

}  // namespace detail::mgr
}  // namespace mproc
