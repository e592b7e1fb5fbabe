// Starting children: fork, spawn, and what every child does first (child_main).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iostream>

#include "internal.hpp"

extern char** environ;

namespace mproc::detail {

void child_exit(int code) noexcept {
  std::fflush(nullptr);
  try {
    std::cout.flush();
    std::cerr.flush();
    std::clog.flush();
  } catch (...) {
  }
  ::_exit(code);
}

namespace {

void write_status_record(int fd, StatusTag tag, const std::vector<std::byte>& body) {
  // One write() of at most ~33 KiB into an otherwise empty pipe (64 KiB): never blocks.
  std::vector<std::byte> rec(5 + body.size());
  auto len = static_cast<std::uint32_t>(1 + body.size());
  std::memcpy(rec.data(), &len, 4);
  rec[4] = static_cast<std::byte>(tag);
  std::memcpy(rec.data() + 5, body.data(), body.size());
  write_all(fd, rec.data(), rec.size());
}

void set_parent_death_signal(pid_t expected_parent) {
  // PR_SET_PDEATHSIG fires when the *thread* that created us exits (Linux semantics);
  // see docs/process.md. If the parent is already gone, the signal will never come:
  // behave as if it had.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != expected_parent) ::raise(SIGKILL);
}

}  // namespace

void child_main(std::span<const std::byte> payload, std::span<const int> fds, int parent_pidfd, pid_t real_parent) {
  int status_fd = fds.empty() ? -1 : fds[0];
  int code = 0;
  ChildMeta meta;
  try {
    Reader r(payload, fds.subspan(1));
    meta = load<ChildMeta>(r);
    if (meta.daemon) set_parent_death_signal(real_parent ? real_parent : meta.parent_pid);
    become_child(meta, parent_pidfd);
    Entry entry = decode_entry(r);
    entry(&r, nullptr);
  } catch (...) {
    ExceptionInfo info = capture_current_exception();
    // Like Python's traceback print in a child: the error is visible even if the
    // parent never asks for it.
    std::fflush(stdout);
    std::fprintf(stderr, "Process %s (pid %d):\nmproc: the target raised %s: %s\n", meta.name.c_str(),
                 static_cast<int>(::getpid()), info.type_name.c_str(), info.message.c_str());
    if (status_fd >= 0) write_status_record(status_fd, StatusTag::exception, to_bytes(info));
    code = 1;
  }
  // The task's fds were duplicated by whatever decoded them; the originals go now.
  for (std::size_t i = 1; i < fds.size(); ++i) close_fd(fds[i]);
  library_exit();
  child_exit(code);
}

std::vector<std::byte> read_payload(int memfd) {
  std::vector<std::byte> payload;
  std::byte buf[1 << 16];
  for (off_t off = 0;;) {
    ssize_t n = ::pread(memfd, buf, sizeof buf, off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    payload.insert(payload.end(), buf, buf + n);
    off += n;
  }
  return payload;
}

// ---- fork ------------------------------------------------------------------------

Launched launch_fork(std::span<const std::byte> payload, std::span<const int> fds, bool /*daemon*/) {
  pid_t parent = ::getpid();
  pid_t pid = sys().fork();
  if (pid < 0) throw_errno("fork");
  if (pid == 0) {
    // The payload and fds are valid here: the child has a copy of the parent's memory
    // and every fd (fork ignores close-on-exec).
    int ppidfd = ::getppid() == parent ? sys().pidfd_open(parent, 0) : -1;
    child_main(payload, fds, ppidfd);
  }
  // Our own child, not yet waited for: its pid cannot be reused, so the pidfd
  // opened now refers to it for good.
  int pidfd = sys().pidfd_open(pid, 0);
  if (pidfd < 0) {
    int e = errno;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    errno = e;
    throw_errno("pidfd_open");
  }
  return {pid, pidfd};
}

// ---- spawn -----------------------------------------------------------------------

std::vector<std::string> child_environment(std::initializer_list<std::string> extra) {
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) {
    if (std::strncmp(*e, "MPROC_SPAWN=", 12) == 0 || std::strncmp(*e, "MPROC_FORKSERVER=", 17) == 0) continue;
    env.emplace_back(*e);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

pid_t spawn_self(const std::vector<std::string>& env, std::span<const int> keep_fds) {
  const auto& args = saved_argv();
  std::vector<char*> argv;
  std::string fallback = "mproc-child";
  if (args.empty()) {
    argv.push_back(fallback.data());
  } else {
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  }
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  // The child gets the std streams and keep_fds[i] as passed_fd(i), nothing else:
  // a descriptor the program left inheritable (no FD_CLOEXEC) stays behind, as in
  // Python's spawn. Each kept fd is first copied to a temporary number (the
  // smallest ones past the targets that are not kept fds), then down to its place
  // (dup2 to another number clears FD_CLOEXEC there), so no copy overwrites a kept
  // fd not yet copied; closefrom then closes the rest, temporaries included.
  const std::size_t k = keep_fds.size();
  std::vector<int> temp;
  for (int n = passed_fd(k); temp.size() < k; ++n) {
    if (std::find(keep_fds.begin(), keep_fds.end(), n) == keep_fds.end()) temp.push_back(n);
  }
  for (std::size_t i = 0; i < k; ++i) posix_spawn_file_actions_adddup2(&fa, keep_fds[i], temp[i]);
  for (std::size_t i = 0; i < k; ++i) posix_spawn_file_actions_adddup2(&fa, temp[i], passed_fd(i));
  // A kept fd that sat on a std stream's number (the parent had closed that
  // stream) must not stay there as the child's stdin/stdout/stderr.
  for (int fd : keep_fds) {
    if (fd < passed_fd(0)) posix_spawn_file_actions_addclose(&fa, fd);
  }
  posix_spawn_file_actions_addclosefrom_np(&fa, passed_fd(k));
  // A fresh program starts with default signal handling and nothing blocked,
  // whatever the spawning thread had.
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  // Exec the file itself rather than /proc/self/exe, so the child's name in ps/top
  // is the program's and not "exe"; fall back when the file was deleted or replaced.
  std::string exe = "/proc/self/exe";
  char path[4096];
  ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
  if (n > 0) {
    std::string p(path, static_cast<std::size_t>(n));
    if (p.find(" (deleted)") == std::string::npos && ::access(p.c_str(), X_OK) == 0) exe = p;
  }
  pid_t pid = 0;
  // posix_spawn uses clone(CLONE_VM|CLONE_VFORK) + exec: safe in a multi-threaded
  // parent, unlike fork followed by arbitrary code.
  int rc = sys().posix_spawn(&pid, exe.c_str(), &fa, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    errno = rc;
    throw_errno("posix_spawn(/proc/self/exe)");
  }
  return pid;
}

namespace {

int make_payload_memfd(std::span<const std::byte> payload) {
  int fd = sys().memfd_create("mproc-task", MFD_CLOEXEC);
  if (fd < 0) throw_errno("memfd_create");
  if (!write_all(fd, payload.data(), payload.size())) {
    int e = errno;
    close_fd(fd);
    errno = e;
    throw_errno("write(memfd)");
  }
  return fd;
}

}  // namespace

Launched launch_spawn(std::span<const std::byte> payload, std::span<const int> fds, bool /*daemon*/) {
  int memfd = make_payload_memfd(payload);
  // The numbers the child will have them under (spawn_self renumbers).
  std::string spec = "MPROC_SPAWN=" + std::to_string(passed_fd(0));
  std::vector<int> keep{memfd};
  for (int fd : fds) {
    spec += ',';
    spec += std::to_string(passed_fd(keep.size()));
    keep.push_back(fd);
  }
  pid_t pid;
  try {
    pid = spawn_self(child_environment({spec}), keep);
  } catch (...) {
    close_fd(memfd);
    throw;
  }
  close_fd(memfd);
  int pidfd = sys().pidfd_open(pid, 0);
  if (pidfd < 0) {
    int e = errno;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    errno = e;
    throw_errno("pidfd_open");
  }
  return {pid, pidfd};
}

}  // namespace mproc::detail
