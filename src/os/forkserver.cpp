// The forkserver: a single-threaded process, started by re-executing the program,
// that forks children on request. Forking from it is safe however many threads the
// client runs, because the server never has more than one.
//
// Protocol (SOCK_SEQPACKET, one message per request and per reply):
//   request: Request header; SCM_RIGHTS [payload memfd, status pipe write end, task fds...]
//   reply:   Reply header;   SCM_RIGHTS [pidfd of the child] when pid > 0
// The server reaps its children and writes their exit code as a StatusTag::exit
// record on their status pipe. When the client goes away (EOF on the socket) the
// server exits; daemon children die with it through their parent-death signal.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <new>

#include "internal.hpp"

namespace mproc::detail {
namespace {

constexpr std::uint32_t kMagic = 0x6d70666b;  // "mpfk"
constexpr std::size_t kMaxFds = 64;

struct Request {
  std::uint32_t magic;
  std::uint32_t daemon;
  std::uint32_t nfds;
};

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
};

namespace {

using Client = ForkServerClient;

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
  close_fd(c.sock);
  c.sock = -1;
  if (c.server > 0) {
    // The server is our child; once its socket is closed it exits on its own.
    ::waitpid(c.server, nullptr, 0);
    c.server = 0;
  }
}

void ensure_server_locked(Client& c) {
  if (c.sock >= 0) return;
  int sv[2];
  if (sys().socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) throw_errno("socketpair");
  std::string spec = "MPROC_FORKSERVER=" + std::to_string(sv[1]) + "," + std::to_string(::getpid());
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
}

}  // namespace

void forkserver_forget_after_fork() noexcept {
  Client& c = client();
  new (&c.mu) std::mutex;
  close_fd(c.sock);  // that server belongs to the parent; a child starts its own
  c.sock = -1;
  c.server = 0;
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

Launched launch_via(ForkServerClient& c, std::span<const std::byte> payload, std::span<const int> fds, bool daemon) {
  if (fds.size() + 1 > kMaxFds) throw UsageError("mproc: a task may carry at most 62 file descriptors");
  int memfd = sys().memfd_create("mproc-task", MFD_CLOEXEC);
  if (memfd < 0) throw_errno("memfd_create");
  struct Closer {
    int fd;
    ~Closer() { close_fd(fd); }
  } memfd_closer{memfd};
  if (!write_all(memfd, payload.data(), payload.size())) throw_errno("write(memfd)");

  std::vector<int> send_fds{memfd};
  send_fds.insert(send_fds.end(), fds.begin(), fds.end());
  Request req{kMagic, daemon ? 1u : 0u, static_cast<std::uint32_t>(send_fds.size())};

  std::lock_guard lock(c.mu);
  for (int attempt = 0;; ++attempt) {
    if (c.zygote) {
      if (c.sock < 0) throw StartError("mproc: the pool's fork zygote is gone; the pool cannot start workers");
    } else {
      ensure_server_locked(c);
    }
    Reply rep{};
    std::vector<int> got;
    bool ok = send_with_fds(c.sock, &req, sizeof req, send_fds);
    ssize_t n = ok ? recv_with_fds(c.sock, &rep, sizeof rep, got) : -1;
    if (n == static_cast<ssize_t>(sizeof rep)) {
      if (rep.pid <= 0 || got.size() != 1) {
        for (int fd : got) close_fd(fd);
        errno = rep.pid < 0 ? -rep.pid : EPROTO;
        throw_errno("fork (in the forkserver)");
      }
      return {rep.pid, got[0]};
    }
    // The server is gone (killed, or crashed): start a new one once, then give up.
    for (int fd : got) close_fd(fd);
    stop_server_locked(c);
    if (attempt >= 1 || c.zygote) {
      throw StartError("mproc: the forkserver process died and could not be restarted; "
                       "see its output on stderr");
    }
  }
}

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
    forkserver_main(sv[1], parent);
  }
  close_fd(sv[1]);
  auto c = std::make_shared<ForkServerClient>();
  c->sock = sv[0];
  c->server = pid;
  c->zygote = true;
  return c;
}

void shutdown_zygote(ForkServerClient& c) noexcept {
  std::lock_guard lock(c.mu);
  stop_server_locked(c);
}

// ---- the server --------------------------------------------------------------------

void forkserver_main(int sock, pid_t client_pid) {
  // Interactive Ctrl-C reaches the whole process group; the server must survive it
  // (its children get the default action back). A client that stopped reading its
  // status pipe must not kill the server with SIGPIPE.
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGPIPE, SIG_IGN);
  pid_t self = ::getpid();
  if (::getppid() != client_pid) ::_exit(0);  // client already gone
  int client_pidfd = sys().pidfd_open(client_pid, 0);

  struct Kid {
    pid_t pid;
    int pidfd;
    int status_w;
  };
  std::vector<Kid> kids;
  std::vector<pollfd> pfds;

  for (;;) {
    pfds.assign(1, pollfd{sock, POLLIN, 0});
    for (const Kid& k : kids) pfds.push_back(pollfd{k.pidfd, POLLIN, 0});
    if (::poll(pfds.data(), pfds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      ::_exit(71);
    }
    for (std::size_t i = kids.size(); i-- > 0;) {
      if (!(pfds[i + 1].revents & (POLLIN | POLLHUP | POLLERR))) continue;
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
    if (!(pfds[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;

    Request req{};
    std::vector<int> fds;
    ssize_t n = recv_with_fds(sock, &req, sizeof req, fds);
    if (n == 0) ::_exit(0);  // client exited: daemon children follow via PDEATHSIG
    if (n < 0) {
      if (errno == EMSGSIZE) continue;
      ::_exit(72);
    }
    if (n != sizeof req || req.magic != kMagic || fds.size() < 2 || fds.size() != req.nfds) {
      for (int fd : fds) close_fd(fd);
      Reply rep{-EPROTO};
      send_with_fds(sock, &rep, sizeof rep, {});
      continue;
    }
    pid_t pid = sys().fork();
    if (pid == 0) {
      close_fd(sock);
      for (const Kid& k : kids) {
        close_fd(k.pidfd);
        close_fd(k.status_w);
      }
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGPIPE, SIG_DFL);
      std::vector<std::byte> payload;
      std::byte buf[1 << 16];
      for (off_t off = 0;;) {
        ssize_t r = ::pread(fds[0], buf, sizeof buf, off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        payload.insert(payload.end(), buf, buf + r);
        off += r;
      }
      close_fd(fds[0]);
      child_main(payload, std::span<const int>(fds).subspan(1), client_pidfd, self);
    }
    Reply rep{pid > 0 ? pid : -errno};
    int status_w = fds[1];
    close_fd(fds[0]);
    for (std::size_t i = 2; i < fds.size(); ++i) close_fd(fds[i]);
    if (pid < 0) {
      close_fd(status_w);
      send_with_fds(sock, &rep, sizeof rep, {});
      continue;
    }
    int pidfd = sys().pidfd_open(pid, 0);
    int send[] = {pidfd};
    send_with_fds(sock, &rep, sizeof rep, std::span<const int>(send, pidfd >= 0 ? 1 : 0));
    kids.push_back(Kid{pid, pidfd, status_w});
  }
}

}  // namespace mproc::detail
