// Process, mirroring CPython's _TestProcess scenarios, under every start method.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mproc/process.hpp>
#include <mproc/shared_memory.hpp>
#include <numeric>
#include <thread>

#include "util.hpp"

using namespace std::chrono_literals;
using mproc::Process;
using mproc::ProcessOptions;
using mproc::StartMethod;
using mproc_test::publish_file;
using mproc_test::read_file;
using mproc_test::TempDir;

namespace {

// ---- targets (free functions, lambdas, functors) ----------------------------------

void exit_with(int code) { std::exit(code); }
void return_normally() {}
void throw_runtime(std::string msg) { throw std::runtime_error(msg); }
void throw_int() { throw 42; }
void pause_forever() {
  for (;;) ::pause();
}
void die_by_signal(int sig) {
  // Reset first: a sanitizer runtime installs its own SIGSEGV handler, and the
  // test is about what the parent sees when the kernel kills a child.
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

void report_identity(std::string path) {
  auto self = mproc::current_process();
  auto parent = mproc::parent_process();
  publish_file(path, self.name() + " " + std::to_string(self.pid() == ::getpid()) + " " +
                         std::to_string(self.daemon()) + " " + std::to_string(parent ? parent->pid() : -1) + " " +
                         std::to_string(parent && parent->is_alive()));
}

void write_args(std::string path, std::vector<int> v, std::map<std::string, double> m, std::optional<std::string> o) {
  std::string s = std::to_string(std::accumulate(v.begin(), v.end(), 0)) + " " + std::to_string(m.at("pi")) + " " +
                  o.value_or("none");
  publish_file(path, s);
}

struct Point {
  int x, y;  // trivially copyable: memcpy'd
};

struct Labelled {
  std::string label;
  std::vector<Point> points;
  template <class A>
  void serialize(A& ar) {
    ar(label, points);
  }
};

void write_labelled(std::string path, Labelled l) {
  publish_file(path, l.label + ":" + std::to_string(l.points.size()) + ":" + std::to_string(l.points.back().y));
}

struct Scale {  // a functor with state, declared through serialize()
  double factor = 1;
  void operator()(std::string path, double x) const { publish_file(path, std::to_string(x * factor)); }
  template <class A>
  void serialize(A& ar) {
    ar(factor);
  }
};

struct Stateless {
  void operator()(std::string path) const { publish_file(path, "stateless"); }
};

void sum_big(std::vector<std::uint64_t> v, std::uint64_t expect) {
  std::exit(std::accumulate(v.begin(), v.end(), std::uint64_t{0}) == expect ? 0 : 3);
}

void print_partial_line(std::string path) {
  // No newline: stays in the stdio buffer until the library flushes at child exit.
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ::dup2(fd, 1);
  ::close(fd);
  std::printf("child-output-without-newline");
}

void redirect_stderr_then_throw(std::string path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ::dup2(fd, 2);
  ::close(fd);
  throw std::invalid_argument("visible on stderr");
}

// Starts a grandchild that pauses forever, publishes its pid, then dies by SIGKILL
// (or exits normally) without any chance to clean up.
void start_grandchild_then_die(std::string pid_path, bool daemon, bool sigkill, std::uint8_t method) {
  ProcessOptions o;
  o.daemon = daemon;
  o.start_method = static_cast<StartMethod>(method);
  Process gc(o, pause_forever);
  gc.start();
  publish_file(pid_path, std::to_string(gc.pid()));
  if (sigkill) std::raise(SIGKILL);
}

// Starts a daemon that pauses forever and a non-daemon that finishes its work after
// a while, then calls exit(): the library's exit handler must terminate the first and
// wait for the second (Python's semantics).
void exit_with_children(std::string dir, std::uint8_t method) {
  ProcessOptions d;
  d.daemon = true;
  d.start_method = static_cast<StartMethod>(method);
  Process daemon(d, pause_forever);
  daemon.start();
  publish_file(dir + "/daemon.pid", std::to_string(daemon.pid()));
  ProcessOptions n;
  n.start_method = static_cast<StartMethod>(method);
  Process worker(n, [](std::string path) {
    ::usleep(200 * 1000);
    publish_file(path, "done");
  }, dir + "/worker.done");
  worker.start();
  std::exit(0);
}

// ---- Python's semantics (issue 10, section 2) -----------------------------------------

void report_self(std::string path) {
  auto self = mproc::current_process();
  auto code = self.exitcode();
  publish_file(path, std::string(mproc::to_string(mproc::get_start_method())) + " " +
                         (code ? std::to_string(*code) : std::string("none")) + " " +
                         std::to_string(self.is_alive()));
}

std::string g_atexit_path;
void atexit_writer() { publish_file(g_atexit_path, "ran"); }
// Registers an atexit handler, then ends by returning (the normal end of a
// target) or by calling std::exit itself.
void register_atexit(std::string path, bool call_exit) {
  g_atexit_path = path;
  std::atexit(atexit_writer);
  if (call_exit) std::exit(0);
}

// Exit code: how many of `fds` are open here on the file (dev, ino) (0: none
// inherited; the number itself may be reused by the child's own fds), or 100 + n
// when a std stream n is closed.
void count_inherited(std::vector<int> fds, std::uint64_t dev, std::uint64_t ino) {
  for (int n = 0; n < 3; ++n) {
    if (::fcntl(n, F_GETFD) < 0) std::exit(100 + n);
  }
  int open = 0;
  for (int fd : fds) {
    struct stat st;
    open += ::fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
  }
  std::exit(open);
}

}  // namespace

class ProcessTest : public ::testing::TestWithParam<StartMethod> {
 protected:
  ProcessOptions opts(std::string name = {}, bool daemon = false) const {
    ProcessOptions o;
    o.name = std::move(name);
    o.daemon = daemon;
    o.start_method = GetParam();
    return o;
  }
  template <class F, class... A>
  Process run(F&& f, A&&... a) {
    Process p(opts(), std::forward<F>(f), std::forward<A>(a)...);
    p.start();
    p.join();
    return p;
  }
};

TEST_P(ProcessTest, ExitCodes) {
  EXPECT_EQ(run(return_normally).exitcode(), 0);
  EXPECT_EQ(run(exit_with, 7).exitcode(), 7);
  EXPECT_EQ(run(exit_with, 0).exitcode(), 0);
  EXPECT_EQ(run(die_by_signal, SIGSEGV).exitcode(), -SIGSEGV);
  EXPECT_EQ(run(die_by_signal, SIGABRT).exitcode(), -SIGABRT);
}

TEST_P(ProcessTest, ExitCodeIsEmptyUntilTheProcessEnds) {
  Process p(opts(), pause_forever);
  EXPECT_EQ(p.exitcode(), std::nullopt);
  EXPECT_EQ(p.pid(), 0);
  EXPECT_EQ(p.sentinel(), -1);
  p.start();
  EXPECT_GT(p.pid(), 0);
  EXPECT_GE(p.sentinel(), 0);
  EXPECT_EQ(p.exitcode(), std::nullopt);
  EXPECT_TRUE(p.is_alive());
  p.kill();
  p.join();
  EXPECT_FALSE(p.is_alive());
  EXPECT_EQ(p.exitcode(), -SIGKILL);
}

TEST_P(ProcessTest, ExceptionReachesTheParent) {
  Process p = run(throw_runtime, "boom");
  EXPECT_EQ(p.exitcode(), 1);
  auto e = p.exception();
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->type_name(), "std::runtime_error");
  EXPECT_EQ(e->message(), "boom");
  EXPECT_EQ(std::string(e->what()), "std::runtime_error: boom");

  Process q = run(throw_int);
  ASSERT_TRUE(q.exception().has_value());
  EXPECT_EQ(q.exception()->type_name(), "int");

  EXPECT_FALSE(run(return_normally).exception().has_value());
}

TEST_P(ProcessTest, ExceptionIsPrintedOnTheChildsStderr) {
  TempDir dir;
  Process p = run(redirect_stderr_then_throw, dir.file("err"));
  EXPECT_EQ(p.exitcode(), 1);
  std::string err = read_file(dir.file("err"));
  EXPECT_NE(err.find("std::invalid_argument: visible on stderr"), std::string::npos) << err;
  EXPECT_NE(err.find(p.name()), std::string::npos) << err;
}

TEST_P(ProcessTest, TerminateAndKill) {
  Process p(opts(), pause_forever);
  p.start();
  EXPECT_FALSE(p.join(50ms));
  EXPECT_TRUE(p.is_alive());
  p.terminate();
  EXPECT_TRUE(p.join(10s));
  EXPECT_EQ(p.exitcode(), -SIGTERM);
  p.terminate();  // no effect once ended, like Python
  p.kill();
  EXPECT_EQ(p.exitcode(), -SIGTERM);
}

TEST_P(ProcessTest, JoinWithTimeoutWaitsForTheEnd) {
  Process p(opts(), [] { ::usleep(100 * 1000); });
  p.start();
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(p.join(30s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 20s);
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_TRUE(p.join(0s));  // joining again is fine
}

TEST_P(ProcessTest, NamesAndIdentity) {
  TempDir dir;
  Process a(opts(), report_identity, dir.file("a"));
  Process b(opts("worker-b", true), report_identity, dir.file("b"));
  EXPECT_EQ(a.name().rfind("Process-", 0), 0u) << a.name();
  EXPECT_EQ(b.name(), "worker-b");
  EXPECT_TRUE(b.daemon());
  a.start();
  b.start();
  a.join();
  b.join();
  std::string me = std::to_string(::getpid());
  EXPECT_EQ(read_file(dir.file("a")), a.name() + " 1 0 " + me + " 1\n");
  EXPECT_EQ(read_file(dir.file("b")), "worker-b 1 1 " + me + " 1\n");
  EXPECT_EQ(mproc::current_process().name(), "MainProcess");
  EXPECT_EQ(mproc::current_process().pid(), ::getpid());
  EXPECT_FALSE(mproc::parent_process().has_value());
}

TEST_P(ProcessTest, ArgumentsOfManyTypes) {
  TempDir dir;
  EXPECT_EQ(run(write_args, dir.file("args"), std::vector<int>{1, 2, 3}, std::map<std::string, double>{{"pi", 3.5}},
                std::optional<std::string>("text"))
                .exitcode(),
            0);
  EXPECT_EQ(read_file(dir.file("args")), "6 3.500000 text\n");

  Labelled l{"pts", {{1, 2}, {3, 4}}};
  EXPECT_EQ(run(write_labelled, dir.file("lab"), l).exitcode(), 0);
  EXPECT_EQ(read_file(dir.file("lab")), "pts:2:4\n");

  // "literal" converts to the parameter's std::string in this process.
  EXPECT_EQ(run(Scale{2.5}, dir.file("scale"), 4).exitcode(), 0);
  EXPECT_EQ(read_file(dir.file("scale")), "10.000000\n");

  EXPECT_EQ(run(Stateless{}, dir.file("st")).exitcode(), 0);
  EXPECT_EQ(read_file(dir.file("st")), "stateless\n");

  auto bound = mproc::bind([](std::string path, int a, int b) { publish_file(path, std::to_string(a * b)); },
                           dir.file("bound"), 6);
  EXPECT_EQ(run(bound, 7).exitcode(), 0);
  EXPECT_EQ(read_file(dir.file("bound")), "42\n");
}

TEST_P(ProcessTest, LargeArgument) {
  std::vector<std::uint64_t> v(4 << 20);  // 32 MiB
  std::iota(v.begin(), v.end(), 1);
  std::uint64_t expect = std::accumulate(v.begin(), v.end(), std::uint64_t{0});
  EXPECT_EQ(run(sum_big, v, expect).exitcode(), 0);
}

TEST_P(ProcessTest, ChildStdoutIsFlushedAtExit) {
  TempDir dir;
  EXPECT_EQ(run(print_partial_line, dir.file("out")).exitcode(), 0);
  EXPECT_EQ(read_file(dir.file("out")), "child-output-without-newline");
}

TEST_P(ProcessTest, ParentStdioBufferIsNotPrintedTwice) {
  // The classic fork bug: text buffered in the parent's stdout is inherited by the
  // child and printed again when the child flushes. Point fd 1 at a file, buffer a
  // line in the parent, start a child that prints, and count.
  TempDir dir;
  std::fflush(stdout);
  int saved = ::dup(1);
  int fd = ::open(dir.file("out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ::dup2(fd, 1);
  ::close(fd);
  char buf[BUFSIZ];
  std::setvbuf(stdout, buf, _IOFBF, sizeof buf);
  std::printf("parent-line\n");  // sits in the buffer
  Process p(opts(), [] { std::printf("child-line\n"); });
  p.start();
  p.join();
  std::fflush(stdout);
  ::dup2(saved, 1);
  ::close(saved);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::string out = read_file(dir.file("out"));
  ASSERT_NE(out.find("parent-line"), std::string::npos) << out;
  EXPECT_EQ(out.find("parent-line"), out.rfind("parent-line")) << out;
  EXPECT_EQ(out.find("child-line"), out.rfind("child-line")) << out;
  // forkserver children write to the stdout the server was started with, which is
  // this file only if this test happened to start the server.
  if (GetParam() != StartMethod::forkserver) {
    EXPECT_NE(out.find("child-line"), std::string::npos) << out;
  }
}

TEST_P(ProcessTest, ActiveChildren) {
  Process p(opts(), pause_forever);
  EXPECT_TRUE(mproc::active_children().empty());
  p.start();
  auto kids = mproc::active_children();
  ASSERT_EQ(kids.size(), 1u);
  EXPECT_TRUE(kids[0] == p);
  EXPECT_EQ(kids[0].pid(), p.pid());
  p.kill();
  p.join();
  EXPECT_TRUE(mproc::active_children().empty());
}

TEST_P(ProcessTest, DaemonChildDiesWhenItsParentIsKilled) {
  mproc_test::OrphanReaper reaper;
  TempDir dir;
  Process parent(opts(), start_grandchild_then_die, dir.file("gc"), true, true,
                 static_cast<std::uint8_t>(GetParam()));
  parent.start();
  parent.join();
  EXPECT_EQ(parent.exitcode(), -SIGKILL);
  pid_t gc = std::stoi(read_file(dir.file("gc")));
  EXPECT_TRUE(mproc_test::wait_pid_gone(gc, 20s)) << "daemon grandchild " << gc << " outlived its parent";
  EXPECT_TRUE(reaper.reap(10s));
}

TEST_P(ProcessTest, NonDaemonChildOutlivesItsParent) {
  mproc_test::OrphanReaper reaper;
  TempDir dir;
  Process parent(opts(), start_grandchild_then_die, dir.file("gc"), false, true,
                 static_cast<std::uint8_t>(GetParam()));
  parent.start();
  parent.join();
  pid_t gc = std::stoi(read_file(dir.file("gc")));
  // Documented behaviour: a non-daemon child keeps running (re-parented) and can
  // see that its parent is gone; we clean it up ourselves.
  EXPECT_FALSE(mproc_test::wait_pid_gone(gc, 200ms));
  ::kill(gc, SIGKILL);
  EXPECT_TRUE(mproc_test::wait_pid_gone(gc, 20s));
  EXPECT_TRUE(reaper.reap(10s));
}

TEST_P(ProcessTest, ExitTerminatesDaemonsAndJoinsOthers) {
  TempDir dir;
  Process p(opts(), exit_with_children, dir.file(""), static_cast<std::uint8_t>(GetParam()));
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(read_file(dir.file("worker.done")), "done\n");  // joined before exit finished
  pid_t d = std::stoi(read_file(dir.file("daemon.pid")));
  EXPECT_TRUE(mproc_test::wait_pid_gone(d, 20s));
}

TEST_P(ProcessTest, Misuse) {
  Process p(opts(), return_normally);
  EXPECT_THROW(p.join(), mproc::UsageError);
  EXPECT_THROW(p.terminate(), mproc::UsageError);
  p.start();
  EXPECT_THROW(p.start(), mproc::UsageError);
  EXPECT_THROW(p.join(-1ms), mproc::UsageError);
  EXPECT_THROW(p.set_daemon(true), mproc::UsageError);
  p.join();
  p.close();
  p.close();  // idempotent
  EXPECT_THROW(p.start(), mproc::UsageError);
  EXPECT_THROW(p.join(), mproc::UsageError);
  EXPECT_THROW((void)p.exitcode(), mproc::UsageError);
  EXPECT_THROW((void)p.pid(), mproc::UsageError);
  EXPECT_THROW((void)p.is_alive(), mproc::UsageError);  // was false
  EXPECT_THROW((void)p.exception(), mproc::UsageError);
  EXPECT_THROW((void)p.sentinel(), mproc::UsageError);
  EXPECT_THROW(p.kill(), mproc::UsageError);
  EXPECT_EQ(p.start_method(), GetParam());  // what Python keeps readable: name, daemon
  (void)p.name();
  (void)p.daemon();

  Process running(opts(), pause_forever);
  running.start();
  EXPECT_THROW(running.close(), mproc::UsageError);
  running.kill();
  running.join();
  running.close();

  auto self = mproc::current_process();
  EXPECT_THROW(self.join(), mproc::UsageError);
  EXPECT_THROW(self.start(), mproc::UsageError);
  try {
    Process q(opts(), return_normally);
    q.start();
    q.start();
    FAIL();
  } catch (const mproc::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("twice"), std::string::npos) << e.what();
  }
}

TEST_P(ProcessTest, ManyStartsLeakNothing) {
  // Warm up (the forkserver starts on first use and keeps its socket).
  run(return_normally);
  int fds = mproc_test::fd_count();
  for (int i = 0; i < 40; ++i) {
    Process p = run(exit_with, i % 5);
    EXPECT_EQ(p.exitcode(), i % 5);
  }
  {
    Process p(opts(), pause_forever);
    p.start();
    p.kill();
  }  // handle dropped without join: the registry still reaps it
  for (auto& k : mproc::active_children()) k.join();
  EXPECT_LE(mproc_test::fd_count(), fds);  // growth is a leak; earlier tests may still close theirs
  EXPECT_EQ(mproc_test::zombie_children(), 0);
}

TEST_P(ProcessTest, StartFromManyThreadsWhileOthersAllocate) {
  // The default start method must be safe in a multi-threaded program. (Plain fork
  // is documented as unsafe there, so this runs for the re-exec methods only.)
  if (GetParam() == StartMethod::fork) GTEST_SKIP() << "fork is documented as unsafe with threads";
  std::atomic<bool> stop{false};
  std::vector<std::thread> noise;
  for (int i = 0; i < 2; ++i) {
    noise.emplace_back([&] {
      while (!stop) {
        std::vector<std::string> junk(64, std::string(100, 'x'));
        std::fprintf(stderr, "%s", junk.size() == 0 ? "never" : "");
      }
    });
  }
  std::vector<std::thread> starters;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t) {
    starters.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        Process p(opts(), exit_with, t + i);
        p.start();
        p.join();
        if (p.exitcode() == t + i) ++ok;
      }
    });
  }
  for (auto& t : starters) t.join();
  stop = true;
  for (auto& t : noise) t.join();
  EXPECT_EQ(ok, 20);
}

TEST_P(ProcessTest, ContextAndSentinel) {
  auto ctx = mproc::get_context(GetParam());
  EXPECT_EQ(ctx.start_method(), GetParam());
  Process p = ctx.process(exit_with, 3);
  EXPECT_EQ(p.start_method(), GetParam());
  p.start();
  pollfd pf{p.sentinel(), POLLIN, 0};
  ASSERT_EQ(::poll(&pf, 1, 20000), 1);  // readable when the process ends
  p.join();
  EXPECT_EQ(p.exitcode(), 3);
}

TEST_P(ProcessTest, ChildSeesItsOwnStartMethodAndAnEmptyExitcode) {
  // Python: a child's get_start_method() is the method it was started with; its
  // current_process().exitcode is None while it runs. Started through a context,
  // so the parent's default (forkserver) differs for fork and spawn.
  TempDir dir;
  auto p = mproc::get_context(GetParam()).process(report_self, dir.file("self"));
  p.start();
  p.join();
  ASSERT_EQ(p.exitcode(), 0);
  EXPECT_EQ(read_file(dir.file("self")), std::string(mproc::to_string(GetParam())) + " none 1\n");
}

TEST_P(ProcessTest, AtexitHandlersOfAChildRunOnlyIfItCallsExit) {
  // As in Python, a child ends with _exit() once its target returns (after
  // flushing stdio and joining its own children): handlers registered with
  // std::atexit in the child do not run. A target that calls std::exit() itself
  // runs them, as C++ does (docs/process.md, "How a child ends").
  TempDir dir;
  EXPECT_EQ(run(register_atexit, dir.file("returned"), false).exitcode(), 0);
  EXPECT_EQ(read_file(dir.file("returned")), "");
  EXPECT_EQ(run(register_atexit, dir.file("exited"), true).exitcode(), 0);
  EXPECT_EQ(read_file(dir.file("exited")), "ran\n");
}

INSTANTIATE_TEST_SUITE_P(AllMethods, ProcessTest,
                         ::testing::Values(StartMethod::fork, StartMethod::forkserver, StartMethod::spawn),
                         [](const auto& i) { return std::string(mproc::to_string(i.param)); });

// ---- method-independent -----------------------------------------------------------

TEST(StartMethods, SetGetAndContexts) {
  EXPECT_EQ(mproc::parse_start_method("spawn"), StartMethod::spawn);
  EXPECT_THROW(mproc::parse_start_method("threads"), mproc::UsageError);
  EXPECT_THROW(mproc::get_context("bogus"), mproc::UsageError);
  EXPECT_EQ(mproc::get_all_start_methods().size(), 3u);
  mproc::set_start_method(StartMethod::spawn, true);
  EXPECT_EQ(mproc::get_start_method(), StartMethod::spawn);
  EXPECT_THROW(mproc::set_start_method("fork"), mproc::UsageError);  // already set
  mproc::set_start_method("fork", true);
  EXPECT_EQ(mproc::get_start_method(), StartMethod::fork);
  EXPECT_EQ(mproc::get_context().start_method(), StartMethod::fork);
  Process p(exit_with, 0);
  EXPECT_EQ(p.start_method(), StartMethod::fork);
  mproc::set_start_method(StartMethod::forkserver, true);
}

TEST(MainProcess, ExitcodeIsEmptyAndItIsAlive) {
  // Python: current_process().exitcode is None in the main program (was 255).
  auto self = mproc::current_process();
  EXPECT_EQ(self.exitcode(), std::nullopt);
  EXPECT_TRUE(self.is_alive());
  EXPECT_EQ(self.exception(), std::nullopt);
}

// A descriptor the parent left inheritable (no FD_CLOEXEC) does not reach a
// spawned child, nor a forkserver child (the server is spawned too): like Python,
// such a child starts with the std streams and what mproc passes (its task's fds,
// here a SharedArray's memfd) only. Under fork it is inherited, as in Python.
TEST(StartMethods, SpawnedChildrenInheritOnlyWhatTheTaskCarries) {
  TempDir dir;
  int low = ::open(dir.file("inheritable").c_str(), O_RDWR | O_CREAT, 0600);  // lowest free number, no O_CLOEXEC
  ASSERT_GE(low, 0);
  struct stat st;
  ASSERT_EQ(::fstat(low, &st), 0);
  int high = ::fcntl(low, F_DUPFD, 200);  // F_DUPFD: not close-on-exec either
  ASSERT_GE(high, 200);
  ASSERT_EQ(::fcntl(low, F_GETFD) & FD_CLOEXEC, 0);
  mproc::SharedArray<int> carried(4);  // a task fd: still delivered
  for (StartMethod m : {StartMethod::spawn, StartMethod::forkserver, StartMethod::fork}) {
    // A server started before the fds were opened could not have them: start a new one.
    if (m == StartMethod::forkserver) mproc::detail::forkserver_shutdown();
    ProcessOptions o;
    o.start_method = m;
    Process p(o, count_inherited, std::vector<int>{low, high}, std::uint64_t{st.st_dev}, std::uint64_t{st.st_ino});
    p.start();
    p.join();
    EXPECT_EQ(p.exitcode(), m == StartMethod::fork ? 2 : 0) << m;
    Process q(o, [](mproc::SharedArray<int> a) { a[3] = 7; }, carried);
    q.start();
    q.join();
    EXPECT_EQ(q.exitcode(), 0) << m;
    EXPECT_EQ(carried[3], 7) << m;
    carried[3] = 0;
  }
  ::close(low);
  ::close(high);
}

TEST(CpuCount, ParsesCgroupQuota) {
  using mproc::detail::parse_cpu_max;
  EXPECT_EQ(parse_cpu_max("max 100000\n"), std::nullopt);
  EXPECT_EQ(parse_cpu_max("200000 100000\n"), 2);
  EXPECT_EQ(parse_cpu_max("150000 100000"), 2);
  EXPECT_EQ(parse_cpu_max("50000 100000"), 1);
  EXPECT_EQ(parse_cpu_max("garbage"), std::nullopt);
  EXPECT_EQ(parse_cpu_max(""), std::nullopt);
}

TEST(CpuCount, HonoursTheAffinityMask) {
  int n = mproc::cpu_count();
  EXPECT_GE(n, 1);
  EXPECT_LE(n, static_cast<int>(std::thread::hardware_concurrency()));
  // In a child pinned to one CPU, cpu_count() must say 1.
  Process p(ProcessOptions{.start_method = StartMethod::fork}, [] {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    if (::sched_setaffinity(0, sizeof set, &set) != 0) std::exit(2);
    std::exit(mproc::cpu_count() == 1 ? 0 : 1);
  });
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}
