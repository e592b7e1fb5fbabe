// mproc/process.hpp — Process, start methods and the process-level helpers,
// mirroring Python's multiprocessing.Process, get_context and friends.
//
//   int main(int argc, char** argv) {
//     mproc::init(argc, argv);            // our `if __name__ == "__main__":`
//     mproc::Process p(work, 42, "text");  // arguments are checked at compile time
//     p.start();
//     p.join();
//     return *p.exitcode();
//   }
//
// Start methods (details and trade-offs: docs/process.md):
//   forkserver (default) — children are forked from a single-threaded server process
//                           started from a fresh exec of the program; safe in programs
//                           that have threads.
//   fork                 — children are forked from the caller: copy-on-write view of
//                           all parent memory, fastest start, unsafe if other threads
//                           may hold locks (malloc, stdio, your own) at fork time.
//   spawn                — children re-execute the program: nothing inherited but
//                           what the task carries.
// forkserver and spawn need mproc::init(argc, argv) at the top of main().
#pragma once

#include "mproc/detail/config.hpp"

#include <sys/types.h>

#include <chrono>
#include <iosfwd>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mproc/detail/timeout.hpp"
#include "mproc/error.hpp"
#include "mproc/serial.hpp"
#include "mproc/task.hpp"

namespace mproc {

enum class StartMethod { fork, forkserver, spawn };

/// "fork", "forkserver" or "spawn".
std::string_view to_string(StartMethod m) noexcept;
/// Prints the method's name (for logs and test output).
std::ostream& operator<<(std::ostream& os, StartMethod m);
/// Parses a start method name; throws UsageError naming the valid ones.
StartMethod parse_start_method(std::string_view name);
/// All start methods available on this platform (all three on Linux).
std::vector<StartMethod> get_all_start_methods();

/// Call first thing in main(). In the main program it records argv (used to
/// re-execute the program for spawn and forkserver) and returns. In a process
/// started by spawn it runs that process's task and exits; in the forkserver it
/// serves fork requests until its parent exits. It never returns in those two.
/// Not thread-safe; call it before starting threads.
void init(int argc, char** argv);
/// Whether init() has run in this process.
bool initialized() noexcept;

/// Sets the default start method for processes created afterwards. Like Python,
/// throws UsageError if a default was already chosen (set, or used by a start)
/// unless force is true. Thread-safe.
void set_start_method(StartMethod m, bool force = false);
void set_start_method(std::string_view name, bool force = false);
/// The current default start method (forkserver unless set otherwise; in a child
/// started by mproc, the method it was started with). Thread-safe.
StartMethod get_start_method();

/// Per-process settings. `name` empty means "Process-N"; `start_method` empty
/// means the context's or global default.
struct ProcessOptions {
  std::string name{};
  bool daemon = false;
  std::optional<StartMethod> start_method{};
};

class Process;

/// The parent of the current process, as seen from a child (Python's
/// parent_process()). Valid for the child's lifetime, even after the parent exits.
class ParentProcess {
 public:
  pid_t pid() const noexcept { return pid_; }
  /// Whether the parent is still running. Non-blocking.
  bool is_alive() const;
  /// Waits until the parent exits; returns false if the timeout expired first.
  template <class Rep, class Period>
  bool join(std::chrono::duration<Rep, Period> timeout) const {
    return join_for(detail::checked_nanoseconds(timeout, "join").value_or(detail::kForeverTimeout));
  }

 private:
  friend std::optional<ParentProcess> parent_process();
  ParentProcess(pid_t pid, int pidfd) : pid_(pid), pidfd_(pidfd) {}
  bool join_for(std::chrono::nanoseconds timeout) const;
  pid_t pid_;
  int pidfd_;  // owned by the library for the life of the process
};

namespace detail {
struct ProcessState;
ProcessState& process_state(const Process& p);
/// Starts every process of `procs` (none started yet), as start() would each, but
/// with the forkserver (or a pool's zygote) asked for all of them at once: the
/// requests are pipelined and the server forks back to back. The processes that
/// could start are started; then the first error, if any, is thrown (callers check
/// pid() != 0 to tell which started). For the pool; not a public API.
void start_all(std::span<Process> procs);
}

/// A process that runs `f(args...)`, like multiprocessing.Process(target=f, args=args).
///
/// The callable and arguments are checked and serialized at construction (see
/// task.hpp for what may be sent); start() launches the process. Process is a
/// handle: copies refer to the same process. All members are safe to call from
/// several threads. Dropping every handle to a running process neither blocks
/// nor kills it: like Python, the library keeps track of it, terminates it at exit
/// if daemon, and joins it at exit if not.
class Process {
 public:
  /// Process(f, args...): checked at compile time; throws std::system_error only
  /// if memory for the message cannot be had.
  template <class F, class... Args>
    requires(!std::is_same_v<std::remove_cvref_t<F>, ProcessOptions> &&
             !std::is_same_v<std::remove_cvref_t<F>, Process>)
  explicit Process(F&& f, Args&&... args) : Process(ProcessOptions{}, std::forward<F>(f), std::forward<Args>(args)...) {}

  template <class F, class... Args>
  Process(ProcessOptions options, F&& f, Args&&... args) {
    Writer w;
    detail::encode_process_task(w, std::forward<F>(f), std::forward<Args>(args)...);
    create(std::move(options), w);
  }

  Process(const Process&) = default;
  Process& operator=(const Process&) = default;
  Process(Process&&) noexcept = default;
  Process& operator=(Process&&) noexcept = default;
  ~Process() = default;

  /// Starts the process. Returns once it exists (it may not have run anything yet).
  /// Throws UsageError if already started or closed, StartError if the start
  /// method cannot work in this program (e.g. spawn without mproc::init), and
  /// std::system_error if the OS refuses (fork, pipe, posix_spawn…).
  void start();

  /// Blocks until the process ends. Throws UsageError if it was never started,
  /// if it is the current process, or after close().
  void join();
  /// Blocks at most `timeout` (negative: UsageError). Returns true if the process
  /// ended, false on timeout (Python's join(timeout) followed by exitcode check).
  template <class Rep, class Period>
  bool join(std::chrono::duration<Rep, Period> timeout) {
    return join_for(detail::checked_nanoseconds(timeout, "join").value_or(detail::kForeverTimeout));
  }

  /// Started and not yet ended (true for current_process()). Non-blocking.
  bool is_alive() const;
  /// Empty while not started or running (always for current_process()); 0 on
  /// success; N after exit(N) (1 when the target threw); -SIG when killed by
  /// signal SIG. Non-blocking.
  std::optional<int> exitcode() const;
  /// The exception that ended the target, with its dynamic type name and what();
  /// empty if the target returned, or the process has not ended yet.
  std::optional<RemoteError> exception() const;

  /// Sends SIGTERM / SIGKILL. No effect once the process has ended. Throws
  /// UsageError if not started. Race-free: the signal goes through a pidfd, so a
  /// recycled pid can never be hit.
  void terminate();
  void kill();

  /// Releases the process's resources (pidfd, pipes). Throws UsageError while it
  /// is still running. Afterwards every other call throws UsageError, except
  /// close() and name(), daemon(), start_method() (which Python keeps readable too).
  void close();

  /// Process id; 0 before start().
  pid_t pid() const;
  const std::string& name() const;
  /// Renames (before or after start, like Python). Not seen by a running child.
  void set_name(std::string name);
  bool daemon() const;
  /// Daemon children are killed when their parent exits (also when it is killed).
  /// Throws UsageError after start().
  void set_daemon(bool daemon);
  StartMethod start_method() const;
  /// A file descriptor that becomes readable when the process ends (its pidfd),
  /// for poll()/epoll alongside other waits. -1 before start. Owned by the Process.
  int sentinel() const;

  friend bool operator==(const Process& a, const Process& b) noexcept { return a.st_ == b.st_; }

 private:
  friend Process current_process();
  friend std::vector<Process> active_children();
  friend detail::ProcessState& detail::process_state(const Process& p);
  friend void detail::start_all(std::span<Process> procs);
  explicit Process(std::shared_ptr<detail::ProcessState> st) : st_(std::move(st)) {}
  void create(ProcessOptions options, const Writer& task);
  bool join_for(std::chrono::nanoseconds timeout);
  bool join_impl(std::optional<std::chrono::nanoseconds> timeout);
  detail::ProcessState& state() const;

  std::shared_ptr<detail::ProcessState> st_;
};

/// A start method bound to object creation, like multiprocessing.get_context().
class Context {
 public:
  explicit Context(StartMethod m) noexcept : method_(m) {}
  StartMethod start_method() const noexcept { return method_; }

  /// ctx.process(f, args...): a Process using this context's start method.
  template <class F, class... Args>
  [[nodiscard]] Process process(F&& f, Args&&... args) const {
    ProcessOptions options;
    options.start_method = method_;
    return Process(std::move(options), std::forward<F>(f), std::forward<Args>(args)...);
  }
  template <class F, class... Args>
  [[nodiscard]] Process process(ProcessOptions options, F&& f, Args&&... args) const {
    if (!options.start_method) options.start_method = method_;
    return Process(std::move(options), std::forward<F>(f), std::forward<Args>(args)...);
  }

 private:
  StartMethod method_;
};

/// The default context, or one for a named method (UsageError for an unknown name).
Context get_context();
Context get_context(StartMethod m);
Context get_context(std::string_view name);

/// The Process object for the calling process ("MainProcess" in the main program).
/// join()/start() on it throw UsageError.
Process current_process();
/// The parent process in a child started by mproc; empty in the main program.
std::optional<ParentProcess> parent_process();
/// Children started by this process that have not been joined yet. Reaps those
/// that have finished as a side effect, like Python.
std::vector<Process> active_children();
/// CPUs this process may use: the affinity mask, further limited by a cgroup
/// (v2 cpu.max or v1 cfs quota) CPU quota, rounded up; at least 1.
int cpu_count();

namespace detail {
/// CPUs allowed by a cgroup v2 `cpu.max` line ("max 100000" or "150000 100000"),
/// rounded up; empty for no limit or unparsable text. Exposed for tests.
std::optional<int> parse_cpu_max(std::string_view text);
}  // namespace detail

}  // namespace mproc
