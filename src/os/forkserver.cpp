// The forkserver: a single-threaded process, started by re-executing the program,
// that forks children on request. Forking from it is safe however many threads the
// client runs, because the server never has more than one.
//
// Protocol (SOCK_SEQPACKET, one message per request and per reply; the client may
// send several requests before reading their replies, which come in order):
//   request: Request header; SCM_RIGHTS [payload memfd, status pipe write end, task fds...]
//   reply:   Reply header;   SCM_RIGHTS [pidfd of the child] when pid > 0
// The server answers a request with a spare: a child it forked earlier that waits,
// idle, for the request to be relayed to it on its own socket (see Server). It
// reaps its children and writes their exit code as a StatusTag::exit record on
// their status pipe. When the client goes away (EOF on the socket) the server
// kills and reaps its spares and exits; daemon children die with it through their
// parent-death signal.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <new>
#include <optional>
#include <thread>

#include "internal.hpp"
#include "mproc/detail/code_ref.hpp"
#include "mproc/detail/futex.hpp"

namespace mproc::detail {
namespace {

constexpr std::uint32_t kMagic = kForkRequestMagic;
constexpr std::size_t kMaxFds = 64;
// How long after a request the server waits before forking its spares (see Server).
constexpr std::chrono::milliseconds kSpareDelay{2};

using Request = ForkRequest;

struct Reply {
  std::int32_t pid;  // > 0, or -errno
};

}  // namespace

// A connection to one fork server: the program's forkserver (an exec of the
// program, started on first use and restarted if it dies) or a pool's zygote (a
// fork of the pool's process, made once; it cannot be restarted).
struct ForkServerClient {
  std::mutex mu;
  int sock = -1;
  pid_t server = 0;
  bool zygote = false;
  int watch_fd = -1;  // the program's server: the pidfd its watcher polls (watch_server)
};

std::optional<ForkRequest> decode_fork_request(std::span<const std::byte> msg, std::size_t nfds) noexcept {
  ForkRequest req{};
  if (msg.size() != sizeof req) return std::nullopt;
  std::memcpy(&req, msg.data(), sizeof req);
  // At least the payload memfd and the status pipe; the fds that came are the ones it names.
  if (req.magic != kMagic || req.daemon > 1 || nfds < 2 || nfds != req.nfds) return std::nullopt;
  return req;
}

namespace {

using Client = ForkServerClient;

// Pool zygotes' client sockets, so that a fork child drops its inherited copies
// (forkserver_forget_after_fork): a zygote exits when its pool's process is gone,
// which it learns from EOF on this socket, and a copy held by another process
// (a non-daemon fork child that outlives a SIGKILLed parent) would keep the
// zygote and the pool's workers alive with it. Lock-free: the atfork handler
// may run where another thread held any lock. fd + 1; 0: an empty entry.
constexpr std::size_t kMaxZygotes = 256;
std::atomic<int> g_zygote_socks[kMaxZygotes];

void register_zygote_sock(int fd) noexcept {
  for (auto& e : g_zygote_socks) {
    int empty = 0;
    if (e.compare_exchange_strong(empty, fd + 1)) return;
  }
}
void unregister_zygote_sock(int fd) noexcept {
  for (auto& e : g_zygote_socks) {
    int mine = fd + 1;
    if (e.compare_exchange_strong(mine, 0)) return;
  }
}

Client& client() {
  static Client* c = new Client;
  return *c;
}

// Sends `data` with `fds` attached. Returns false on error (errno set).
bool send_with_fds(int sock, const void* data, std::size_t n, std::span<const int> fds) {
  iovec iov{const_cast<void*>(data), n};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> ctl(CMSG_SPACE(sizeof(int) * fds.size()));
  if (!fds.empty()) {
    msg.msg_control = ctl.data();
    msg.msg_controllen = ctl.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  return retry_eintr([&] { return ::sendmsg(sock, &msg, MSG_NOSIGNAL); }) == static_cast<ssize_t>(n);
}

// Receives one message into `data` (exactly n bytes expected) and its fds.
// Returns bytes received (0 on EOF), -1 on error.
ssize_t recv_with_fds(int sock, void* data, std::size_t n, std::vector<int>& fds) {
  iovec iov{data, n};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> ctl(CMSG_SPACE(sizeof(int) * kMaxFds));
  msg.msg_control = ctl.data();
  msg.msg_controllen = ctl.size();
  ssize_t r = retry_eintr([&] { return ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); });
  if (r <= 0) return r;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      std::size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const int* p = reinterpret_cast<const int*>(CMSG_DATA(c));
      fds.insert(fds.end(), p, p + k);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    for (int fd : fds) close_fd(fd);
    fds.clear();
    errno = EMSGSIZE;
    return -1;
  }
  return r;
}

void stop_server_locked(Client& c) {
  if (c.zygote && c.sock >= 0) unregister_zygote_sock(c.sock);
  close_fd(c.sock);
  c.sock = -1;
  if (c.server > 0) {
    // The server is our child; once its socket is closed it exits on its own.
    ::waitpid(c.server, nullptr, 0);
    c.server = 0;
  }
}

// Reaps the program's forkserver the moment it dies, not at the next start (a
// killed server stayed a zombie until then, and its socket looked usable): a
// detached thread per server, blocked on the server's pidfd. It acts only if
// that server is still the current one; a server stopped on purpose
// (stop_server_locked) was reaped already. Without a pidfd or a thread the
// server is reaped at the next use, as before.
void watch_server(Client& c, pid_t pid) noexcept {
  int pidfd = sys().pidfd_open(pid, 0);  // close-on-exec, as every pidfd
  if (pidfd < 0) return;
  c.watch_fd = pidfd;
  try {
    std::thread([&c, pid, pidfd] {
      pollfd p{pidfd, POLLIN, 0};
      while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
      }
      std::lock_guard lock(c.mu);
      if (c.server == pid) {
        siginfo_t si{};
        int r = ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &si, WEXITED | WNOHANG);
        if ((r == 0 && si.si_pid != 0) || (r < 0 && errno == ECHILD)) {
          close_fd(c.sock);
          c.sock = -1;
          c.server = 0;
        }
      }
      // Under the lock, cleared before it closes: a fork child's copy of watch_fd
      // never names a number that was reused meanwhile.
      if (c.watch_fd == pidfd) c.watch_fd = -1;
      close_fd(pidfd);
    }).detach();
  } catch (...) {
    c.watch_fd = -1;
    close_fd(pidfd);
  }
}

void ensure_server_locked(Client& c) {
  if (c.sock >= 0) return;
  int sv[2];
  if (sys().socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) throw_errno("socketpair");
  // sv[1] is the server's passed_fd(0) (spawn_self renumbers what it keeps).
  std::string spec = "MPROC_FORKSERVER=" + std::to_string(passed_fd(0)) + "," + std::to_string(::getpid());
  try {
    int keep[] = {sv[1]};
    c.server = spawn_self(child_environment({spec}), keep);
  } catch (...) {
    close_fd(sv[0]);
    close_fd(sv[1]);
    throw;
  }
  close_fd(sv[1]);
  c.sock = sv[0];
  watch_server(c, c.server);
}

}  // namespace

void forkserver_forget_after_fork() noexcept {
  // Zygote sockets inherited from the parent: replaced by a dead unconnected
  // socket (dup3), so the zygote sees EOF once the parent is gone, and a stale
  // copy of the pool here can never close someone else's fd under that number.
  for (auto& e : g_zygote_socks) {
    int v = e.exchange(0);
    if (v == 0) continue;
    int dead = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (dead >= 0) {
      ::dup3(dead, v - 1, O_CLOEXEC);
      close_fd(dead);
    } else {
      close_fd(v - 1);
    }
  }
  Client& c = client();
  new (&c.mu) std::mutex;
  close_fd(c.sock);  // that server belongs to the parent; a child starts its own
  c.sock = -1;
  c.server = 0;
  close_fd(c.watch_fd);  // the parent's watcher thread does not exist here
  c.watch_fd = -1;
}

void forkserver_shutdown() noexcept {
  Client& c = client();
  std::lock_guard lock(c.mu);
  stop_server_locked(c);
}

pid_t forkserver_pid() noexcept {
  Client& c = client();
  std::lock_guard lock(c.mu);
  return c.server;
}

void launch_many_via(ForkServerClient& c, std::span<Launch> batch) {
  // Each request's payload goes in its own memfd, made before the lock is taken.
  struct Memfd {
    int fd = -1;
    ~Memfd() { close_fd(fd); }
  };
  std::vector<Memfd> memfds(batch.size());
  std::vector<std::size_t> todo;  // requests not yet answered, in order
  for (std::size_t i = 0; i < batch.size(); ++i) {
    Launch& l = batch[i];
    try {
      if (l.fds.size() + 1 > kMaxFds) throw UsageError("mproc: a task may carry at most 62 file descriptors");
      memfds[i].fd = sys().memfd_create("mproc-task", MFD_CLOEXEC);
      if (memfds[i].fd < 0) throw_errno("memfd_create");
      if (!write_all(memfds[i].fd, l.payload.data(), l.payload.size())) throw_errno("write(memfd)");
      todo.push_back(i);
    } catch (...) {
      l.error = std::current_exception();
    }
  }

  std::lock_guard lock(c.mu);
  for (int attempt = 0; !todo.empty(); ++attempt) {
    try {
      if (c.zygote) {
        if (c.sock < 0) throw StartError("mproc: the pool's fork zygote is gone; the pool cannot start workers");
      } else {
        ensure_server_locked(c);
      }
    } catch (...) {
      for (std::size_t i : todo) batch[i].error = std::current_exception();
      return;
    }
    // Pipelined: up to kWindow requests wait in the socket while the server works,
    // so it serves them back to back. The window bounds the fds in flight (the
    // kernel limits them per user, ETOOMANYREFS) and keeps both directions of the
    // socket far from full, where two blocked sendmsg calls would deadlock.
    constexpr std::size_t kWindow = 8;
    std::size_t sent = 0, answered = 0;
    bool lost = false;
    while (answered < todo.size() && !lost) {
      while (sent < todo.size() && sent - answered < kWindow) {
        Launch& l = batch[todo[sent]];
        std::vector<int> send_fds{memfds[todo[sent]].fd};
        send_fds.insert(send_fds.end(), l.fds.begin(), l.fds.end());
        Request req{kMagic, l.daemon ? 1u : 0u, static_cast<std::uint32_t>(send_fds.size())};
        if (!send_with_fds(c.sock, &req, sizeof req, send_fds)) break;
        ++sent;
      }
      if (sent == answered) {  // nothing in flight: the send failed
        lost = true;
        break;
      }
      Reply rep{};
      std::vector<int> got;
      if (recv_with_fds(c.sock, &rep, sizeof rep, got) != static_cast<ssize_t>(sizeof rep)) {
        for (int fd : got) close_fd(fd);
        lost = true;
        break;
      }
      Launch& l = batch[todo[answered++]];
      if (rep.pid <= 0 || got.size() != 1) {
        for (int fd : got) close_fd(fd);
        errno = rep.pid < 0 ? -rep.pid : EPROTO;
        try {
          throw_errno("fork (in the forkserver)");
        } catch (...) {
          l.error = std::current_exception();
        }
      } else {
        l.result = {rep.pid, got[0]};
      }
    }
    todo.erase(todo.begin(), todo.begin() + static_cast<std::ptrdiff_t>(answered));
    if (!lost) break;
    // The server is gone (killed, or crashed): start a new one once, then give up.
    // The requests it did not answer are sent again (a child it had started but
    // not yet reported is unknown here, as it was before requests were pipelined).
    stop_server_locked(c);
    if (attempt >= 1 || c.zygote) {
      auto e = std::make_exception_ptr(StartError("mproc: the forkserver process died and could not be restarted; "
                                                  "see its output on stderr"));
      for (std::size_t i : todo) batch[i].error = e;
      return;
    }
  }
}

Launched launch_via(ForkServerClient& c, std::span<const std::byte> payload, std::span<const int> fds, bool daemon) {
  Launch l{payload, fds, daemon};
  launch_many_via(c, std::span<Launch>(&l, 1));
  if (l.error) std::rethrow_exception(l.error);
  return l.result;
}

void launch_many_forkserver(std::span<Launch> batch) { launch_many_via(client(), batch); }

Launched launch_forkserver(std::span<const std::byte> payload, std::span<const int> fds, bool daemon) {
  return launch_via(client(), payload, fds, daemon);
}

std::shared_ptr<ForkServerClient> make_zygote() {
  int sv[2];
  if (sys().socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) throw_errno("socketpair");
  std::fflush(nullptr);
  pid_t parent = ::getpid();
  pid_t pid = sys().fork();
  if (pid < 0) {
    close_fd(sv[0]);
    close_fd(sv[1]);
    throw_errno("fork (pool zygote)");
  }
  if (pid == 0) {
    close_fd(sv[0]);
    forkserver_main(sv[1], parent, kZygoteSpares);
  }
  close_fd(sv[1]);
  auto c = std::make_shared<ForkServerClient>();
  c->sock = sv[0];
  c->server = pid;
  c->zygote = true;
  register_zygote_sock(c->sock);
  return c;
}

void shutdown_zygote(ForkServerClient& c) noexcept {
  std::lock_guard lock(c.mu);
  stop_server_locked(c);
}

// ---- the server --------------------------------------------------------------------

namespace {

// The server's state. Every child starts as a spare: forked ahead of need, it
// waits on its own socket for one Request (the client's header and fds, relayed)
// and then runs it. Spares are made when the server has had no request for a
// moment, so a start request is answered without a fork on its path, and the
// forks that replace the spares do not compete for the CPU with the children just
// started (on a 2-core machine they would).
struct Server {
  struct Kid {  // a child running a task: reaped here, its exit code goes to status_w
    pid_t pid;
    int pidfd;
    int status_w;
  };
  struct Spare {  // an idle child
    pid_t pid;
    int pidfd;
    int sock;  // our end of its assignment socket
  };

  int sock;  // to the client
  int client_pidfd;
  pid_t self;
  std::vector<Kid> kids;
  std::vector<Spare> spares;
  std::size_t want;  // spares to keep
  bool fork_failed = false;  // the last fork failed: no new spare before the next request
  std::chrono::steady_clock::time_point last_request{};

  // Forks a spare. False (errno set) if the system refused. `held`: fds the server
  // holds for a request in progress, which the spare must not inherit (it gets its
  // own copies with the assignment; a stray copy of a pipe end keeps a pipe open).
  bool make_spare(std::span<const int> held = {}) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) return false;
    pid_t pid = sys().fork();
    if (pid == 0) {
      // The server's fds are not the child's: the client socket, the pidfds and
      // status pipes of the running children (a child holding another's status
      // pipe would hide that child's end from the client), and the other spares'
      // sockets (a spare holding one would keep that spare from seeing the server
      // go, and the other way round).
      close_fd(sock);
      for (const Kid& k : kids) {
        close_fd(k.pidfd);
        close_fd(k.status_w);
      }
      for (const Spare& sp : spares) {
        close_fd(sp.pidfd);
        close_fd(sp.sock);
      }
      for (int fd : held) close_fd(fd);
      close_fd(sv[0]);
      spare_main(sv[1]);
    }
    int e = errno;
    close_fd(sv[1]);
    if (pid < 0) {
      close_fd(sv[0]);
      errno = e;
      return false;
    }
    // Our child, not yet reaped: the pidfd names it for good.
    int pidfd = sys().pidfd_open(pid, 0);
    if (pidfd < 0) {
      e = errno;
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      close_fd(sv[0]);
      errno = e;
      return false;
    }
    spares.push_back(Spare{pid, pidfd, sv[0]});
    return true;
  }

  // Kills and reaps spare i (it holds no task). Blocks only until it is gone.
  void discard_spare(std::size_t i) noexcept {
    Spare sp = spares[i];
    spares.erase(spares.begin() + static_cast<std::ptrdiff_t>(i));
    close_fd(sp.sock);
    pidfd_send_signal(sp.pidfd, SIGKILL);
    siginfo_t si{};
    retry_eintr([&] { return ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(sp.pidfd), &si, WEXITED); });
    close_fd(sp.pidfd);
  }

  // Leaves no idle child behind: an exited server has no spare and no zombie.
  [[noreturn]] void exit_server(int code) noexcept {
    while (!spares.empty()) discard_spare(spares.size() - 1);
    ::_exit(code);
  }

  // A spare's life: wait for the one assignment, then be the child a fork at
  // this moment would have made. Nothing of the server changes between the fork
  // and the assignment (it is single-threaded and only serves requests), so the
  // child sees the same memory, environment, cwd, stdio and limits either way.
  // While idle it ignores SIGINT and SIGPIPE, like the server; it gets the default
  // actions back with its task, as a freshly forked child did. It has no
  // parent-death signal: when the server goes, the server's end of the socket
  // closes and the spare exits on EOF; a task that is not a daemon must not
  // inherit one either.
  [[noreturn]] void spare_main(int assign) {
    (void)self_token();  // warm-up, see forkserver_main
    std::byte msg[sizeof(Request)];
    std::vector<int> fds;
    ssize_t n = recv_with_fds(assign, msg, sizeof msg, fds);
    if (n <= 0 || !decode_fork_request(std::span(msg, static_cast<std::size_t>(n)), fds.size())) ::_exit(0);
    close_fd(assign);
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGPIPE, SIG_DFL);
    std::vector<std::byte> payload = read_payload(fds[0]);
    close_fd(fds[0]);
    child_main(payload, std::span<const int>(fds).subspan(1), client_pidfd, self);
  }

  void reply(std::int32_t pid, int pidfd) {
    Reply rep{pid};
    send_with_fds(sock, &rep, sizeof rep, std::span<const int>(&pidfd, pidfd >= 0 ? 1 : 0));
  }

  // Hands a validated request (fds: payload memfd, status pipe, task fds) to a
  // spare, forking one if there is none, and replies with its pid and pidfd.
  void launch(const Request& req, std::vector<int>& fds) {
    last_request = std::chrono::steady_clock::now();
    bool sent = false;
    // A spare that died idle (killed from outside) refuses with EPIPE: it is
    // discarded and the next one tried; at most one fresh fork per request.
    for (bool forked = false; !sent;) {
      if (spares.empty()) {
        if (forked || !make_spare(fds)) break;
        forked = true;
      }
      sent = send_with_fds(spares.back().sock, &req, sizeof req, fds);
      if (!sent) discard_spare(spares.size() - 1);
    }
    int e = errno;
    int status_w = fds[1];
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if (i != 1) close_fd(fds[i]);
    }
    if (!sent) {
      fork_failed = true;
      close_fd(status_w);
      reply(-(e ? e : EAGAIN), -1);
      return;
    }
    fork_failed = false;
    Spare sp = spares.back();
    spares.pop_back();
    reply(sp.pid, sp.pidfd);
    close_fd(sp.sock);
    kids.push_back(Kid{sp.pid, sp.pidfd, status_w});
  }

  // Reaps children that ended and reports their exit codes; reaps spares that
  // died idle. pfds: [client socket, kids' pidfds..., spares' pidfds...].
  void reap(const std::vector<pollfd>& pfds) {
    auto ended = [&](std::size_t k) { return (pfds[k].revents & (POLLIN | POLLHUP | POLLERR)) != 0; };
    for (std::size_t i = spares.size(); i-- > 0;) {
      if (ended(1 + kids.size() + i)) discard_spare(i);
    }
    for (std::size_t i = kids.size(); i-- > 0;) {
      if (!ended(i + 1)) continue;
      siginfo_t si{};
      if (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(kids[i].pidfd), &si, WEXITED | WNOHANG) < 0 ||
          si.si_pid == 0) {
        continue;
      }
      std::int32_t code = si.si_code == CLD_EXITED ? si.si_status : -si.si_status;
      auto body = to_bytes(code);
      std::byte rec[5 + sizeof code];
      std::uint32_t len = 1 + sizeof code;
      std::memcpy(rec, &len, 4);
      rec[4] = static_cast<std::byte>(StatusTag::exit);
      std::memcpy(rec + 5, body.data(), body.size());
      write_all(kids[i].status_w, rec, sizeof rec);
      close_fd(kids[i].status_w);
      close_fd(kids[i].pidfd);
      kids.erase(kids.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }

  // How long poll may sleep: until the spares are due (kSpareDelay after the
  // last request), or for ever when they are all there (or forking fails).
  int poll_timeout_ms() const {
    if (spares.size() >= want || fork_failed) return -1;
    auto due = last_request + kSpareDelay;
    auto left = std::chrono::ceil<std::chrono::milliseconds>(due - std::chrono::steady_clock::now());
    return left.count() > 0 ? static_cast<int>(left.count()) : 0;
  }

  [[noreturn]] void run() {
    std::vector<pollfd> pfds;
    for (;;) {
      pfds.assign(1, pollfd{sock, POLLIN, 0});
      for (const Kid& k : kids) pfds.push_back(pollfd{k.pidfd, POLLIN, 0});
      for (const Spare& sp : spares) pfds.push_back(pollfd{sp.pidfd, POLLIN, 0});
      int r = ::poll(pfds.data(), pfds.size(), poll_timeout_ms());
      if (r < 0) {
        if (errno == EINTR) continue;
        exit_server(71);
      }
      if (r == 0) {  // quiet since the last request: make the spares, one per turn
        if (!make_spare()) fork_failed = true;
        continue;
      }
      reap(pfds);
      if (!(pfds[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;

      std::byte msg[sizeof(Request)];
      std::vector<int> fds;
      ssize_t n = recv_with_fds(sock, msg, sizeof msg, fds);
      if (n == 0) exit_server(0);  // client exited: daemon children follow via PDEATHSIG
      if (n < 0) {
        if (errno == EMSGSIZE) continue;
        exit_server(72);
      }
      std::optional<Request> req = decode_fork_request(std::span(msg, static_cast<std::size_t>(n)), fds.size());
      if (!req) {
        for (int fd : fds) close_fd(fd);
        reply(-EPROTO, -1);
        continue;
      }
      launch(*req, fds);
    }
  }
};

}  // namespace

void forkserver_main(int sock, pid_t client_pid, std::size_t spares) {
  // Interactive Ctrl-C reaches the whole process group; the server must survive it
  // (its children get the default action back). A client that stopped reading its
  // status pipe must not kill the server with SIGPIPE.
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGPIPE, SIG_IGN);
  if (::getppid() != client_pid) ::_exit(0);  // client already gone
  // Warm-up: what every child would otherwise do first, each on its own pages
  // (about 0.3 ms of the 0.45 ms a worker took to start on the 2-core VM, mostly
  // copy-on-write faults). Here, the module table the task decoder looks code up
  // in is filled once for all children; in each spare, before it is needed, the
  // identity token (a read of /proc/self/stat) that the channels attach with.
  cache_loaded_modules();
  Server server{sock, sys().pidfd_open(client_pid, 0), ::getpid(), {}, {}, spares};
  server.run();
}

}  // namespace mproc::detail
