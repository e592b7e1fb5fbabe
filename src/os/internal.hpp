// Internals shared by the os/ sources: process state, the syscall seam, and the
// child-side entry points. Not installed.
#pragma once

#include <spawn.h>
#include <sys/types.h>

#include <chrono>
#include <memory>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "mproc/detail/exception.hpp"
#include "mproc/process.hpp"

namespace mproc::detail {

// ---- syscall seam ------------------------------------------------------------
// Every call that starts or waits for a process goes through this table so tests
// can inject failures (fmt's posix-mock idea). Defaults are the real calls.
struct SysOps {
  pid_t (*fork)();
  int (*pipe2)(int fds[2], int flags);
  int (*memfd_create)(const char* name, unsigned flags);
  int (*pidfd_open)(pid_t pid, unsigned flags);
  int (*posix_spawn)(pid_t* pid, const char* path, const posix_spawn_file_actions_t* fa,
                     const posix_spawnattr_t* attr, char* const argv[], char* const envp[]);
  int (*socketpair)(int domain, int type, int protocol, int sv[2]);
};
SysOps& sys();

/// Throws std::system_error(errno) saying which call failed.
[[noreturn]] void throw_errno(const char* call);
/// Closes fd if >= 0, ignoring errors (EINTR on close must not be retried on Linux).
void close_fd(int fd) noexcept;
/// Retries on EINTR.
template <class F>
auto retry_eintr(F f) {
  for (;;) {
    auto r = f();
    if (r != -1 || errno != EINTR) return r;
  }
}
int pidfd_send_signal(int pidfd, int sig) noexcept;
/// Waits until fd is readable or the timeout (negative = forever) passes. EINTR-safe.
bool wait_readable(int fd, std::optional<std::chrono::nanoseconds> timeout);
/// Writes all of buf (blocking). Returns false on error.
bool write_all(int fd, const void* buf, std::size_t n) noexcept;

// ---- process state -------------------------------------------------------------

/// A connection to a fork server (see forkserver.cpp).
struct ForkServerClient;

struct ProcessState {
  ProcessState() = default;
  ProcessState(const ProcessState&) = delete;
  ProcessState& operator=(const ProcessState&) = delete;
  ~ProcessState();

  mutable std::mutex mu;
  std::string name;
  bool daemon = false;
  StartMethod method = StartMethod::forkserver;
  bool is_self = false;  // current_process()

  std::vector<std::byte> task;  // encoded entry + callable + args
  std::vector<int> task_fds;    // our own duplicates of fds the task carries

  enum class Phase { created, running, ended, closed } phase = Phase::created;
  pid_t pid = 0;
  int pidfd = -1;
  int status_fd = -1;  // read end of the child's status pipe (non-blocking)
  std::vector<std::byte> status_buf;
  std::optional<int> exitcode;
  std::optional<ExceptionInfo> exception;
  std::shared_ptr<ForkServerClient> via;  // start through this fork server (a pool's zygote)
};

/// The state behind a Process handle (for library code that configures it).
ProcessState& process_state(const Process& p);

/// What a child learns about itself before it runs its task.
struct ChildMeta {
  std::string name;
  bool daemon = false;
  std::int32_t parent_pid = 0;
  std::uint8_t method = 0;

  template <class A>
  void serialize(A& ar) {
    ar(name, daemon, parent_pid, method);
  }
};

/// A start request as the forkserver receives it (forkserver.cpp, "Protocol"); its
/// SCM_RIGHTS carry the payload memfd, the status pipe and the task's fds.
inline constexpr std::uint32_t kForkRequestMagic = 0x6d70666b;  // "mpfk"
struct ForkRequest {
  std::uint32_t magic;
  std::uint32_t daemon;  // 0 or 1
  std::uint32_t nfds;    // fds attached, at least 2
};
/// The forkserver's (and a spare's) decoding of one received request: `msg` is what
/// recvmsg returned, `nfds` how many fds came with it. nullopt for anything but a
/// well-formed request (answered with EPROTO). Fuzzed by fuzz/fuzz_forkserver.cpp.
std::optional<ForkRequest> decode_fork_request(std::span<const std::byte> msg, std::size_t nfds) noexcept;

/// Records a child (or the forkserver) writes on its status pipe: u32 length, u8 tag, body.
enum class StatusTag : std::uint8_t { exception = 1, exit = 2 };

struct Launched {
  pid_t pid;
  int pidfd;
};

/// Starts a child that runs `payload` (ChildMeta + task). `fds[0]` is the write
/// end of its status pipe, the rest are the fds the task carries (index order).
Launched launch_fork(std::span<const std::byte> payload, std::span<const int> fds, bool daemon);
Launched launch_spawn(std::span<const std::byte> payload, std::span<const int> fds, bool daemon);
Launched launch_forkserver(std::span<const std::byte> payload, std::span<const int> fds, bool daemon);

/// Starts a child through a specific fork server.
Launched launch_via(ForkServerClient& server, std::span<const std::byte> payload, std::span<const int> fds,
                    bool daemon);

/// One start request of a batch: the arguments of a launch_* call, and its outcome.
struct Launch {
  std::span<const std::byte> payload;
  std::span<const int> fds;
  bool daemon = false;
  Launched result{};         // the child, when it started
  std::exception_ptr error;  // why it did not
};
/// Starts every child of `batch` through one fork server (launch_many_forkserver:
/// the program's), sending the requests before reading the replies (pipelined), so
/// the server forks them back to back. Never throws: each request's outcome is in
/// its Launch.
void launch_many_via(ForkServerClient& server, std::span<Launch> batch);
void launch_many_forkserver(std::span<Launch> batch);
/// A fork server made by fork() of the calling process (a "zygote"): children it
/// starts see this process's memory as it is now, and it is single-threaded, so
/// it can fork later whatever threads this process starts meanwhile.
std::shared_ptr<ForkServerClient> make_zygote();
/// Closes the connection; the zygote exits and is reaped.
void shutdown_zygote(ForkServerClient& server) noexcept;

/// Runs a child payload and exits; never returns. `fds[0]` is the status pipe,
/// the rest the task's fds. `parent_pidfd` (may be -1) backs parent_process().
/// `real_parent` is the pid a daemon's parent-death signal is tied to; 0 means
/// the parent named in the payload (fork, spawn); the forkserver passes its own pid.
[[noreturn]] void child_main(std::span<const std::byte> payload, std::span<const int> fds, int parent_pidfd,
                             pid_t real_parent = 0);

/// The whole task payload in `memfd` (a child reads it before it runs the task).
std::vector<std::byte> read_payload(int memfd);

/// Flushes C and C++ stdio, then _exit(code): a child never runs its parent's
/// atexit handlers or static destructors (Python's os._exit after flush).
[[noreturn]] void child_exit(int code) noexcept;

/// Idle children ("spares", see forkserver.cpp) a fork server keeps ready: the
/// program's forkserver two, so a 2-worker pool starts without a fork on its path;
/// a pool's zygote (a fork of a possibly large process, whose later starts are
/// one-at-a-time replacements) one.
inline constexpr std::size_t kForkserverSpares = 2;
inline constexpr std::size_t kZygoteSpares = 1;

/// A fork server's loop: the forkserver process (role selected by init()) or a
/// pool's zygote. Serves `client` on `sock`, keeping `spares` idle children.
[[noreturn]] void forkserver_main(int sock, pid_t client, std::size_t spares);

/// Called in a fresh child (any start method) before its task runs.
void become_child(const ChildMeta& meta, int parent_pidfd);

/// argv recorded by init(), for spawn/forkserver re-exec.
const std::vector<std::string>& saved_argv();

/// Environment for a re-executed child: the current environ plus `extra`.
std::vector<std::string> child_environment(std::initializer_list<std::string> extra);

/// posix_spawn of /proc/self/exe with saved argv and environment `env`. The child has the
/// std streams and keep_fds only, keep_fds[i] as fd passed_fd(i); every other
/// descriptor is closed in it, inheritable or not.
pid_t spawn_self(const std::vector<std::string>& env, std::span<const int> keep_fds);
/// The number keep_fds[i] has in a child started by spawn_self.
constexpr int passed_fd(std::size_t i) noexcept { return 3 + static_cast<int>(i); }

/// Throws StartError if `m` needs init() and it has not run, or if this process
/// is a spawned child still bootstrapping.
void check_can_start(StartMethod m);

/// The forkserver client's state in a freshly forked child must not be shared.
void forkserver_forget_after_fork() noexcept;
/// Closes the connection to this process's forkserver and reaps it (it exits on EOF).
void forkserver_shutdown() noexcept;
/// Pid of this process's forkserver, 0 if none is running (for tests).
pid_t forkserver_pid() noexcept;

/// What a process does on its way out (Python's util._exit_function): terminate
/// daemon children, join the others, stop the forkserver. Runs from atexit in the
/// main program and before _exit in a child whose target returned or threw.
void library_exit() noexcept;
/// Registers f to run at the end of library_exit() (e.g. stopping helper processes).
void add_exit_hook(void (*f)() noexcept);

}  // namespace mproc::detail
