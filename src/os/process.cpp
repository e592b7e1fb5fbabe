// Process handles, the process registry, init() and start-method selection.
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <new>
#include <system_error>

#include "internal.hpp"

namespace mproc {
namespace detail {
namespace {

// Library-wide state. Allocated once and never destroyed, so atexit handlers and
// late static destructors can still use it.
struct Globals {
  std::mutex mu;
  std::optional<StartMethod> default_method;  // set by set_start_method or first use
  bool initialized = false;
  bool bootstrapping = false;  // a spawned child or forkserver before init() ran
  std::vector<std::string> argv;
  std::string name = "MainProcess";
  bool daemon = false;
  pid_t parent_pid = 0;
  int parent_pidfd = -1;
  unsigned counter = 0;
  bool atexit_registered = false;
  std::vector<std::shared_ptr<ProcessState>> children;  // started, not yet reaped
  std::shared_ptr<ProcessState> self;
};

Globals& g() {
  static Globals* p = new Globals;
  return *p;
}

void after_fork_child() noexcept {
  // Runs in the child of every fork() in this program (ours, the forkserver's, or a
  // user's raw fork). The parent's children are not ours. If no thread held the
  // registry lock at fork time the registry is consistent and is emptied normally
  // (closing the inherited pidfds). Otherwise a thread that does not exist here was
  // changing it: the lock is re-created and the containers are abandoned (a small
  // leak) rather than freed, since their heap state may be half-written.
  Globals& G = g();
  if (G.mu.try_lock()) {
    G.children.clear();
    G.self.reset();
    G.mu.unlock();
  } else {
    new (&G.mu) std::mutex;
    new (&G.children) std::vector<std::shared_ptr<ProcessState>>;
    new (&G.self) std::shared_ptr<ProcessState>;
  }
  forkserver_forget_after_fork();
}

// Detects, before main(), that this process was started by spawn or as the
// forkserver: such a process must not start processes until init() took over
// (Python's "bootstrapping phase" error), or a main() without init() could fork-bomb.
const bool kRegistered = [] {
  pthread_atfork(nullptr, nullptr, after_fork_child);
  g().bootstrapping = std::getenv("MPROC_SPAWN") != nullptr || std::getenv("MPROC_FORKSERVER") != nullptr;
  return true;
}();

void drain_status(ProcessState& s, bool* eof) {
  if (s.status_fd < 0) {
    if (eof) *eof = true;
    return;
  }
  std::byte buf[4096];
  for (;;) {
    ssize_t n = ::read(s.status_fd, buf, sizeof buf);
    if (n > 0) {
      s.status_buf.insert(s.status_buf.end(), buf, buf + n);
      continue;
    }
    if (n == 0) {
      if (eof) *eof = true;
      break;
    }
    if (errno == EINTR) continue;
    break;  // EAGAIN: nothing more for now
  }
  // Parse complete records: u32 length (tag + body), u8 tag, body.
  std::size_t off = 0;
  while (s.status_buf.size() - off >= 5) {
    std::uint32_t len;
    std::memcpy(&len, s.status_buf.data() + off, 4);
    if (s.status_buf.size() - off - 4 < len) break;
    auto tag = static_cast<StatusTag>(s.status_buf[off + 4]);
    std::span<const std::byte> body(s.status_buf.data() + off + 5, len - 1);
    try {
      if (tag == StatusTag::exception) {
        s.exception = from_bytes<ExceptionInfo>(body);
      } else if (tag == StatusTag::exit) {
        s.exitcode = from_bytes<std::int32_t>(body);
      }
    } catch (const SerializationError&) {
      // A child that died mid-write leaves a torn record; ignore it.
    }
    off += 4 + len;
  }
  s.status_buf.erase(s.status_buf.begin(), s.status_buf.begin() + static_cast<std::ptrdiff_t>(off));
}

// Exit status that could not be learned (someone else reaped the child, or the
// forkserver died before reporting it).
constexpr int kLostExitCode = 255;

void mark_ended(ProcessState& s, int code) {
  s.exitcode = code;
  s.phase = ProcessState::Phase::ended;
  close_fd(s.status_fd);
  s.status_fd = -1;
}

// With s.mu held: reaps s if it has ended. Returns true once it has.
bool try_reap(ProcessState& s) {
  if (s.phase != ProcessState::Phase::running) return s.phase != ProcessState::Phase::created;
  if (s.method == StartMethod::forkserver || s.via) {
    // Not our child: the fork server reaps it and reports the status on the pipe.
    bool eof = false;
    drain_status(s, &eof);
    if (s.exitcode) {
      mark_ended(s, *s.exitcode);
      return true;
    }
    if (eof) {  // child and server both gone without a status
      mark_ended(s, kLostExitCode);
      return true;
    }
    return false;
  }
  siginfo_t si{};
  if (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(s.pidfd), &si, WEXITED | WNOHANG) < 0) {
    if (errno == ECHILD) {  // reaped behind our back (SIGCHLD set to SIG_IGN, waitpid(-1))
      drain_status(s, nullptr);
      mark_ended(s, kLostExitCode);
      return true;
    }
    throw_errno("waitid");
  }
  if (si.si_pid == 0) return false;
  drain_status(s, nullptr);
  mark_ended(s, si.si_code == CLD_EXITED ? si.si_status : -si.si_status);
  return true;
}

void forget_child(const ProcessState* s) {
  Globals& G = g();
  std::lock_guard lock(G.mu);
  std::erase_if(G.children, [s](const auto& c) { return c.get() == s; });
}

void at_exit() { library_exit(); }

// The exit handler (library_exit: terminate daemon children, join the rest, stop
// the forkserver) must run after every destructor that may still use a child:
// a pool or executor held by a global or a static waits for its work in its
// destructor (issue 11, bug 5). exit() runs atexit handlers and static
// destructors in the reverse order of their registration, so the handler is
// registered before any C++ object of the program can be constructed: by a
// constructor of priority 101, the first priority a program may use, which
// runs before every unprioritized static initializer of the executable (GNU ld
// and lld sort .init_array by priority) and, in a shared libmproc, before the
// executable's initializers (dependencies initialize first). Registered at the
// first start instead, the handler ran before the destructors of every object
// constructed earlier (a global std::unique_ptr<ProcessPoolExecutor> assigned
// in main()), killing the workers under the tasks they were running. Every
// object it touches is leaked on purpose (g(), client(), exit_hooks()), so it
// may run after all static destructors.
[[gnu::constructor(101)]] void register_exit_handler_early() {
  Globals& G = g();
  G.atexit_registered = true;
  std::atexit(at_exit);
}

std::shared_ptr<ProcessState> self_state() {
  Globals& G = g();
  std::lock_guard lock(G.mu);
  if (!G.self || G.self->pid != ::getpid()) {
    auto s = std::make_shared<ProcessState>();
    s->is_self = true;
    s->name = G.name;
    s->daemon = G.daemon;
    s->pid = ::getpid();
    s->phase = ProcessState::Phase::running;
    G.self = s;
  }
  return G.self;
}

}  // namespace

std::vector<void (*)() noexcept>& exit_hooks();
void ensure_exit_handler_locked();

void library_exit() noexcept {
  // Python's _exit_function: terminate daemonic children, then join all. A daemon
  // that ignores SIGTERM gets SIGKILL after a grace period instead of hanging exit.
  try {
    std::vector<Process> kids = active_children();
    for (auto& p : kids) {
      if (p.daemon()) p.terminate();
    }
    for (auto& p : kids) {
      if (p.daemon() && !p.join(std::chrono::seconds(1))) p.kill();
      p.join();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mproc: while joining children at exit: %s\n", e.what());
  }
  forkserver_shutdown();
  for (auto hook : exit_hooks()) hook();
}

std::vector<void (*)() noexcept>& exit_hooks() {
  static auto* hooks = new std::vector<void (*)() noexcept>;
  return *hooks;
}

void ensure_exit_handler_locked() {
  Globals& G = g();
  if (!G.atexit_registered) {
    G.atexit_registered = true;
    std::atexit(at_exit);
  }
}

void add_exit_hook(void (*f)() noexcept) {
  Globals& G = g();
  std::lock_guard lock(G.mu);
  exit_hooks().push_back(f);
  ensure_exit_handler_locked();
}

const std::vector<std::string>& saved_argv() { return g().argv; }

void check_can_start(StartMethod m) {
  Globals& G = g();
  if (G.bootstrapping) {
    throw StartError(
        "mproc: this process was started by mproc (spawn or forkserver) and is still "
        "bootstrapping: main() tried to start a process before calling mproc::init(argc, argv). "
        "Make `mproc::init(argc, argv);` the first statement of main(), before any other code.");
  }
  if (m != StartMethod::fork && !G.initialized) {
    throw StartError(std::string("mproc: the '") + std::string(to_string(m)) +
                     "' start method re-executes this program, so main() must hand control to "
                     "mproc first: add `mproc::init(argc, argv);` as the first statement of "
                     "main(). (Or choose the 'fork' start method, which needs no init but is "
                     "unsafe in programs that run threads.)");
  }
}

void become_child(const ChildMeta& meta, int parent_pidfd) {
  Globals& G = g();
  std::lock_guard lock(G.mu);
  G.name = meta.name;
  G.daemon = meta.daemon;
  G.parent_pid = meta.parent_pid;
  G.parent_pidfd = parent_pidfd;
  G.bootstrapping = false;
  G.initialized = true;
  G.children.clear();
  G.self.reset();
  // Like Python's spawn preparation (set_start_method(..., force=True)): the child's
  // default is the method it was started with, already chosen.
  G.default_method = static_cast<StartMethod>(meta.method);
}

}  // namespace detail

using detail::g;
using detail::ProcessState;
using Phase = detail::ProcessState::Phase;

// ---- start methods -------------------------------------------------------------

std::string_view to_string(StartMethod m) noexcept {
  switch (m) {
    case StartMethod::fork: return "fork";
    case StartMethod::forkserver: return "forkserver";
    case StartMethod::spawn: return "spawn";
  }
  return "?";
}

std::ostream& operator<<(std::ostream& os, StartMethod m) { return os << to_string(m); }

StartMethod parse_start_method(std::string_view name) {
  for (auto m : get_all_start_methods()) {
    if (to_string(m) == name) return m;
  }
  throw UsageError("mproc: unknown start method '" + std::string(name) +
                   "'; use one of: fork, forkserver, spawn");
}

std::vector<StartMethod> get_all_start_methods() {
  return {StartMethod::forkserver, StartMethod::spawn, StartMethod::fork};
}

void set_start_method(StartMethod m, bool force) {
  auto& G = g();
  std::lock_guard lock(G.mu);
  if (G.default_method && !force && *G.default_method != m) {
    throw UsageError("mproc: the start method was already set to '" +
                     std::string(to_string(*G.default_method)) +
                     "'; pass force = true to change it, or use get_context() for one object");
  }
  G.default_method = m;
}

void set_start_method(std::string_view name, bool force) { set_start_method(parse_start_method(name), force); }

StartMethod get_start_method() {
  auto& G = g();
  std::lock_guard lock(G.mu);
  return G.default_method.value_or(StartMethod::forkserver);
}

Context get_context() { return Context(get_start_method()); }
Context get_context(StartMethod m) { return Context(m); }
Context get_context(std::string_view name) { return Context(parse_start_method(name)); }

bool initialized() noexcept { return g().initialized; }

// ---- Process -------------------------------------------------------------------

namespace {

[[noreturn]] void closed_error() {
  throw UsageError("mproc: this Process was closed; create a new one");
}

}  // namespace

detail::ProcessState& detail::process_state(const Process& p) { return p.state(); }

detail::ProcessState& Process::state() const {
  if (!st_) throw UsageError("mproc: this Process handle was moved from");
  return *st_;
}

void Process::create(ProcessOptions options, const Writer& task) {
  auto s = std::make_shared<ProcessState>();
  {
    auto& G = g();
    std::lock_guard lock(G.mu);
    s->name = options.name.empty() ? "Process-" + std::to_string(++G.counter) : std::move(options.name);
    s->method = options.start_method ? *options.start_method : G.default_method.value_or(StartMethod::forkserver);
  }
  s->daemon = options.daemon;
  s->task.assign(task.bytes().begin(), task.bytes().end());
  // Own duplicates of the task's fds, so the objects they came from may go away
  // before start().
  for (int fd : task.fds()) {
    int d = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) {
      for (int x : s->task_fds) detail::close_fd(x);
      detail::throw_errno("fcntl(F_DUPFD_CLOEXEC)");
    }
    s->task_fds.push_back(d);
  }
  st_ = std::move(s);
}

namespace detail {
namespace {

// A start in progress: the payload and the status pipe, made with the state's lock
// held, before the launch.
struct StartPlan {
  Writer payload;
  int pipefd[2] = {-1, -1};
  std::vector<int> fds;  // status pipe write end, then the task's fds
};

// With s.mu held: checks that s may start, and prepares its payload and pipe.
StartPlan plan_start(ProcessState& s) {
  if (s.is_self) throw UsageError("mproc: cannot start the current process");
  if (s.phase == ProcessState::Phase::closed) closed_error();
  if (s.phase != ProcessState::Phase::created) {
    throw UsageError("mproc: cannot start a process twice (" + s.name + ")");
  }
  check_can_start(s.method);
  {
    auto& G = g();
    std::lock_guard glock(G.mu);
    if (!G.default_method) G.default_method = StartMethod::forkserver;  // fixed by first use, like Python
  }
  StartPlan p;
  ChildMeta meta{s.name, s.daemon, static_cast<std::int32_t>(::getpid()), static_cast<std::uint8_t>(s.method)};
  dump(p.payload, meta);
  p.payload.write(s.task.data(), s.task.size());
  if (sys().pipe2(p.pipefd, O_CLOEXEC) < 0) throw_errno("pipe2");
  ::fcntl(p.pipefd[0], F_SETFL, O_NONBLOCK);
  p.fds.push_back(p.pipefd[1]);
  p.fds.insert(p.fds.end(), s.task_fds.begin(), s.task_fds.end());
  return p;
}

void abort_start(StartPlan& p) noexcept {
  close_fd(p.pipefd[0]);
  close_fd(p.pipefd[1]);
  p.pipefd[0] = p.pipefd[1] = -1;
}

// With s.mu held: records the launched child and registers it.
void commit_start(const std::shared_ptr<ProcessState>& st, StartPlan& p, Launched l) {
  ProcessState& s = *st;
  close_fd(p.pipefd[1]);
  for (int fd : s.task_fds) close_fd(fd);
  s.task_fds.clear();
  s.pid = l.pid;
  s.pidfd = l.pidfd;
  s.status_fd = p.pipefd[0];
  s.phase = ProcessState::Phase::running;
  auto& G = g();
  std::lock_guard glock(G.mu);
  G.children.push_back(st);
  ensure_exit_handler_locked();
}

// Whatever this process buffered in stdio must go out now, once: a forked child
// would otherwise inherit the buffer and print it a second time.
void flush_stdio() {
  std::fflush(nullptr);
  std::cout.flush();
  std::cerr.flush();
}

Launched launch_one(ProcessState& s, const StartPlan& p) {
  if (s.via) return launch_via(*s.via, p.payload.bytes(), p.fds, s.daemon);
  switch (s.method) {
    case StartMethod::fork: return launch_fork(p.payload.bytes(), p.fds, s.daemon);
    case StartMethod::spawn: return launch_spawn(p.payload.bytes(), p.fds, s.daemon);
    case StartMethod::forkserver: return launch_forkserver(p.payload.bytes(), p.fds, s.daemon);
  }
  throw UsageError("mproc: unknown start method");
}

}  // namespace

void start_all(std::span<Process> procs) {
  std::vector<std::shared_ptr<ProcessState>> states;
  std::vector<std::unique_lock<std::mutex>> locks;
  std::vector<StartPlan> plans;
  for (Process& p : procs) {
    for (const auto& st : states) {
      if (st.get() == &p.state()) throw UsageError("mproc: start_all() was given the same process twice");
    }
    states.push_back(p.st_);
  }
  try {
    for (auto& st : states) {
      locks.emplace_back(st->mu);
      plans.push_back(plan_start(*st));
    }
  } catch (...) {
    for (auto& p : plans) abort_start(p);
    throw;
  }
  flush_stdio();
  // One fork server for all (the program's forkserver, or one pool zygote): pipelined.
  bool batch = !states.empty();
  for (auto& st : states) {
    batch = batch && st->via == states[0]->via && (st->via || st->method == StartMethod::forkserver);
  }
  std::exception_ptr first_error;
  if (batch) {
    std::vector<Launch> launches;
    for (std::size_t i = 0; i < states.size(); ++i) {
      launches.push_back(Launch{plans[i].payload.bytes(), plans[i].fds, states[i]->daemon});
    }
    if (states[0]->via) {
      launch_many_via(*states[0]->via, launches);
    } else {
      launch_many_forkserver(launches);
    }
    for (std::size_t i = 0; i < states.size(); ++i) {
      if (launches[i].error) {
        abort_start(plans[i]);
        if (!first_error) first_error = launches[i].error;
      } else {
        commit_start(states[i], plans[i], launches[i].result);
      }
    }
  } else {
    for (std::size_t i = 0; i < states.size(); ++i) {
      if (first_error) {
        abort_start(plans[i]);
        continue;
      }
      try {
        commit_start(states[i], plans[i], launch_one(*states[i], plans[i]));
      } catch (...) {
        abort_start(plans[i]);
        first_error = std::current_exception();
      }
    }
  }
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace detail

void Process::start() {
  auto& s = state();
  std::lock_guard lock(s.mu);
  detail::StartPlan plan = detail::plan_start(s);
  detail::flush_stdio();
  detail::Launched l{};
  try {
    l = detail::launch_one(s, plan);
  } catch (...) {
    detail::abort_start(plan);
    throw;
  }
  detail::commit_start(st_, plan, l);
}

bool Process::join_for(std::chrono::nanoseconds timeout) {
  if (timeout < std::chrono::nanoseconds::zero()) {
    throw UsageError("mproc: join timeout must not be negative");
  }
  return join_impl(timeout);
}

void Process::join() { join_impl(std::nullopt); }

bool Process::join_impl(std::optional<std::chrono::nanoseconds> timeout) {
  auto& s = state();
  using clock = std::chrono::steady_clock;
  auto deadline = timeout ? clock::now() + *timeout : clock::time_point::max();
  for (;;) {
    int fd;
    {
      std::lock_guard lock(s.mu);
      if (s.is_self) throw UsageError("mproc: a process cannot join itself");
      if (s.phase == Phase::closed) closed_error();
      if (s.phase == Phase::created) throw UsageError("mproc: can only join a started process (" + s.name + ")");
      if (detail::try_reap(s)) {
        break;
      }
      fd = s.method == StartMethod::forkserver || s.via ? s.status_fd : s.pidfd;
    }
    std::optional<std::chrono::nanoseconds> left;
    if (timeout) {
      left = std::max(deadline - clock::now(), clock::duration::zero());
    }
    if (!detail::wait_readable(fd, left)) {
      std::lock_guard lock(s.mu);
      if (detail::try_reap(s)) break;
      return false;
    }
  }
  detail::forget_child(&s);
  return true;
}

bool Process::is_alive() const {
  auto& s = state();
  bool ended;
  {
    std::lock_guard lock(s.mu);
    if (s.is_self) return true;
    if (s.phase == Phase::closed) closed_error();
    if (s.phase != Phase::running) return false;
    ended = detail::try_reap(s);
  }
  if (ended) detail::forget_child(&s);
  return !ended;
}

std::optional<int> Process::exitcode() const {
  auto& s = state();
  bool ended = false;
  std::optional<int> code;
  {
    std::lock_guard lock(s.mu);
    if (s.is_self) return std::nullopt;  // running: Python's None (there is nothing to reap)
    if (s.phase == Phase::closed) closed_error();
    if (s.phase == Phase::running) ended = detail::try_reap(s);
    code = s.phase == Phase::ended ? s.exitcode : std::nullopt;
  }
  if (ended) detail::forget_child(&s);
  return code;
}

std::optional<RemoteError> Process::exception() const {
  auto& s = state();
  (void)exitcode();
  std::lock_guard lock(s.mu);
  if (s.phase != Phase::ended || !s.exception) return std::nullopt;
  return s.exception->to_error();
}

namespace {
void send_signal(detail::ProcessState& s, int sig) {
  std::lock_guard lock(s.mu);
  if (s.is_self) throw UsageError("mproc: use std::raise to signal the current process");
  if (s.phase == Phase::closed) closed_error();
  if (s.phase == Phase::created) throw UsageError("mproc: cannot signal a process that was never started");
  if (s.phase != Phase::running) return;
  // The pidfd names exactly our child even if it has exited and its pid was reused;
  // ESRCH (already exited) is fine, like Python's terminate() on a dead process.
  if (detail::pidfd_send_signal(s.pidfd, sig) < 0 && errno != ESRCH) detail::throw_errno("pidfd_send_signal");
}
}  // namespace

void Process::terminate() { send_signal(state(), SIGTERM); }
void Process::kill() { send_signal(state(), SIGKILL); }

void Process::close() {
  auto& s = state();
  {
    std::lock_guard lock(s.mu);
    if (s.is_self) throw UsageError("mproc: cannot close the current process");
    if (s.phase == Phase::closed) return;
    if (s.phase == Phase::running && !detail::try_reap(s)) {
      throw UsageError("mproc: cannot close a running process (" + s.name +
                       "); join() or terminate() it first");
    }
    detail::close_fd(s.pidfd);
    detail::close_fd(s.status_fd);
    for (int fd : s.task_fds) detail::close_fd(fd);
    s.pidfd = s.status_fd = -1;
    s.task_fds.clear();
    s.task.clear();
    s.phase = Phase::closed;
  }
  detail::forget_child(&s);
}

pid_t Process::pid() const {
  auto& s = state();
  std::lock_guard lock(s.mu);
  if (s.phase == Phase::closed) closed_error();
  return s.pid;
}

const std::string& Process::name() const {
  auto& s = state();
  std::lock_guard lock(s.mu);
  return s.name;
}

void Process::set_name(std::string name) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  s.name = std::move(name);
}

bool Process::daemon() const {
  auto& s = state();
  std::lock_guard lock(s.mu);
  return s.daemon;
}

void Process::set_daemon(bool daemon) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  if (s.phase != Phase::created || s.is_self) throw UsageError("mproc: set_daemon() must be called before start()");
  s.daemon = daemon;
}

StartMethod Process::start_method() const {
  auto& s = state();
  std::lock_guard lock(s.mu);
  return s.method;
}

int Process::sentinel() const {
  auto& s = state();
  std::lock_guard lock(s.mu);
  if (s.phase == Phase::closed) closed_error();
  return s.pidfd;
}

detail::ProcessState::~ProcessState() {
  detail::close_fd(pidfd);
  detail::close_fd(status_fd);
  for (int fd : task_fds) detail::close_fd(fd);
}

// ---- the current process and its relatives --------------------------------------

Process current_process() { return Process(detail::self_state()); }

std::optional<ParentProcess> parent_process() {
  auto& G = g();
  std::lock_guard lock(G.mu);
  if (G.parent_pid == 0) return std::nullopt;
  return ParentProcess(G.parent_pid, G.parent_pidfd);
}

bool ParentProcess::is_alive() const { return !join_for(std::chrono::nanoseconds::zero()); }

bool ParentProcess::join_for(std::chrono::nanoseconds timeout) const {
  if (timeout < std::chrono::nanoseconds::zero()) throw UsageError("mproc: join timeout must not be negative");
  if (pidfd_ < 0) return ::kill(pid_, 0) != 0 && errno == ESRCH;
  return detail::wait_readable(pidfd_, timeout);
}

std::vector<Process> active_children() {
  std::vector<std::shared_ptr<ProcessState>> kids;
  {
    auto& G = g();
    std::lock_guard lock(G.mu);
    kids = G.children;
  }
  std::vector<Process> out;
  for (auto& k : kids) {
    Process p(k);
    if (p.is_alive()) out.push_back(std::move(p));
  }
  return out;
}

// ---- init ------------------------------------------------------------------------

namespace {

std::vector<int> parse_fd_list(const char* s) {
  std::vector<int> out;
  while (*s) {
    char* end = nullptr;
    long v = std::strtol(s, &end, 10);
    if (end == s) break;
    out.push_back(static_cast<int>(v));
    s = *end == ',' ? end + 1 : end;
  }
  return out;
}

[[noreturn]] void run_spawned_child(const char* spec) {
  // spec: "payload_fd,status_fd,task_fd..."
  std::vector<int> fds = parse_fd_list(spec);
  ::unsetenv("MPROC_SPAWN");
  if (fds.size() < 2) {
    std::fprintf(stderr, "mproc: malformed MPROC_SPAWN in a spawned child\n");
    ::_exit(70);
  }
  int memfd = fds[0];
  std::vector<std::byte> payload = detail::read_payload(memfd);
  detail::close_fd(memfd);
  pid_t parent = ::getppid();
  int ppidfd = detail::sys().pidfd_open(parent, 0);
  detail::child_main(payload, std::span<const int>(fds).subspan(1), ppidfd);
}

}  // namespace

void init(int argc, char** argv) {
  auto& G = g();
  G.argv.clear();
  for (int i = 0; i < argc && argv && argv[i]; ++i) G.argv.emplace_back(argv[i]);
  G.initialized = true;
  if (const char* fs = std::getenv("MPROC_FORKSERVER")) {
    std::vector<int> v = parse_fd_list(fs);
    ::unsetenv("MPROC_FORKSERVER");
    G.bootstrapping = false;
    if (v.size() != 2) {
      std::fprintf(stderr, "mproc: malformed MPROC_FORKSERVER\n");
      ::_exit(70);
    }
    detail::forkserver_main(v[0], static_cast<pid_t>(v[1]), detail::kForkserverSpares);
  }
  if (const char* sp = std::getenv("MPROC_SPAWN")) {
    G.bootstrapping = false;
    run_spawned_child(sp);
  }
  G.bootstrapping = false;
}

}  // namespace mproc
