// The forkserver's spares (idle children forked ahead of need) and pipelined starts
// (detail::start_all). See docs/process.md, "The forkserver".
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <latch>
#include <mproc/process.hpp>
#include <set>
#include <thread>

#include "util.hpp"

using namespace std::chrono_literals;
using mproc::Process;
using mproc::ProcessOptions;
using mproc::StartMethod;
using mproc_test::publish_file;
using mproc_test::read_file;
using mproc_test::TempDir;
using mproc_test::wait_for_file;

namespace {

constexpr std::size_t kSpares = 2;  // detail::kForkserverSpares

void exit_with(int code) { std::exit(code); }
void pause_forever() {
  for (;;) ::pause();
}

// What a child can tell about how it was made: pid, the argument it got, an
// environment variable, its cwd, and whether SIGINT and SIGPIPE have their
// default actions.
void report(std::string path, int arg) {
  const char* late = std::getenv("MPROC_TEST_LATE_VAR");
  struct sigaction si{}, sp{};
  ::sigaction(SIGINT, nullptr, &si);
  ::sigaction(SIGPIPE, nullptr, &sp);
  publish_file(path, std::to_string(::getpid()) + " " + std::to_string(arg) + " " + (late ? late : "unset") + " " +
                         std::filesystem::current_path().string() + " " +
                         std::to_string(si.sa_handler == SIG_DFL && sp.sa_handler == SIG_DFL));
}

// Report and wait: the child stays alive so its pid cannot be reused meanwhile.
void report_then_pause(std::string path, int arg) {
  report(path, arg);
  pause_forever();
}

ProcessOptions forkserver() { return ProcessOptions{.start_method = StartMethod::forkserver}; }

std::set<pid_t> children_of(pid_t parent) {
  std::set<pid_t> out;
  std::ifstream f("/proc/" + std::to_string(parent) + "/task/" + std::to_string(parent) + "/children");
  for (pid_t p; f >> p;) out.insert(p);
  return out;
}

// Starts the forkserver if needed and waits (bounded) until it has its spares:
// its only children once every child it ran has ended. Returns them.
std::set<pid_t> wait_for_spares() {
  Process warm(forkserver(), exit_with, 0);
  warm.start();
  warm.join();
  pid_t server = mproc::detail::forkserver_pid();
  auto deadline = std::chrono::steady_clock::now() + 20s;
  for (;;) {
    std::set<pid_t> kids = children_of(server);
    if (kids.size() == kSpares) return kids;
    if (std::chrono::steady_clock::now() > deadline) return kids;
    ::usleep(2000);
  }
}

void stop(Process& p) {
  p.kill();
  p.join();
}

}  // namespace

TEST(Forkserver, HandsOutEachSpareOnce) {
  std::set<pid_t> spares = wait_for_spares();
  ASSERT_EQ(spares.size(), kSpares);
  TempDir dir;
  std::vector<Process> procs;
  for (int i = 0; i < 3; ++i) {
    procs.emplace_back(forkserver(), report_then_pause, dir.file(std::to_string(i)), i);
    procs.back().start();
  }
  // The first request always finds a spare (the second does too unless this
  // thread was descheduled long enough for the server to fork a new one in between);
  // however they came, no child runs two tasks.
  std::set<pid_t> got;
  for (int i = 0; i < 3; ++i) {
    std::string s = wait_for_file(dir.file(std::to_string(i)), 20s);
    ASSERT_FALSE(s.empty()) << "child " << i << " never ran";
    std::istringstream in(s);
    pid_t pid;
    int arg;
    in >> pid >> arg;
    EXPECT_EQ(pid, procs[i].pid()) << "the pid reported to the parent is the child's";
    EXPECT_EQ(arg, i) << "each child runs its own task";
    got.insert(pid);
  }
  EXPECT_EQ(got.size(), 3u);
  EXPECT_TRUE(spares.count(procs[0].pid()));
  EXPECT_LE(spares.count(procs[1].pid()) + spares.count(procs[2].pid()), 1u) << "both spares were already used";
  for (auto& p : procs) stop(p);
  for (auto& p : procs) EXPECT_EQ(p.exitcode(), -SIGKILL);
  EXPECT_EQ(mproc_test::zombie_children(), 0);
}

TEST(Forkserver, ChildrenSeeTheServersEnvironmentAndCwdAndDefaultSignals) {
  // Documented: a forkserver child starts from the server's state, i.e. the
  // parent's environment and cwd when the server started, not at start(). A spare
  // must not differ from a child forked for the request.
  std::set<pid_t> spares = wait_for_spares();
  ASSERT_EQ(spares.size(), kSpares);
  std::string cwd = std::filesystem::current_path().string();
  TempDir dir;
  ASSERT_EQ(::setenv("MPROC_TEST_LATE_VAR", "set-after-the-server-started", 1), 0);
  std::filesystem::current_path(dir.file(""));
  std::vector<Process> procs;
  for (int i = 0; i < 3; ++i) procs.emplace_back(forkserver(), report, dir.file(std::to_string(i)), i);
  mproc::detail::start_all(procs);  // two spares and a fresh fork, pipelined
  ::unsetenv("MPROC_TEST_LATE_VAR");
  std::filesystem::current_path(cwd);
  for (int i = 0; i < 3; ++i) {
    procs[i].join();
    EXPECT_EQ(procs[i].exitcode(), 0);
    std::istringstream in(read_file(dir.file(std::to_string(i))));
    std::string pid, arg, late, child_cwd, dfl;
    in >> pid >> arg >> late >> child_cwd >> dfl;
    EXPECT_EQ(late, "unset") << "child " << i;
    EXPECT_EQ(child_cwd, cwd) << "child " << i;
    EXPECT_EQ(dfl, "1") << "child " << i << ": SIGINT and SIGPIPE must be back to their default actions";
  }
}

TEST(Forkserver, ShutdownKillsAndReapsTheSpares) {
  std::set<pid_t> spares = wait_for_spares();
  ASSERT_EQ(spares.size(), kSpares);
  std::vector<int> pidfds;
  for (pid_t s : spares) pidfds.push_back(static_cast<int>(::syscall(SYS_pidfd_open, s, 0)));
  mproc::detail::forkserver_shutdown();  // returns once the server is reaped
  for (std::size_t i = 0; i < pidfds.size(); ++i) {
    ASSERT_GE(pidfds[i], 0);
    pollfd p{pidfds[i], POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 0), 1) << "spare still running after the server exited";
    ::close(pidfds[i]);
  }
  // Reaped by the server before it exited: no zombie left anywhere.
  for (pid_t s : spares) EXPECT_FALSE(std::filesystem::exists("/proc/" + std::to_string(s))) << s;
  // The next start makes a new server.
  Process p(forkserver(), exit_with, 4);
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 4);
}

TEST(Forkserver, SparesExitWhenTheServerIsKilled) {
  mproc_test::OrphanReaper reaper;  // the orphaned spares come to us, and are reaped
  std::set<pid_t> spares = wait_for_spares();
  ASSERT_EQ(spares.size(), kSpares);
  pid_t server = mproc::detail::forkserver_pid();
  ASSERT_EQ(::kill(server, SIGKILL), 0);
  for (pid_t s : spares) EXPECT_TRUE(mproc_test::wait_pid_gone(s, 20s)) << "spare " << s << " outlived its server";
  Process p(forkserver(), exit_with, 5);  // reaps the dead server, starts a new one
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 5);
  EXPECT_TRUE(reaper.reap(10s));
  EXPECT_EQ(mproc_test::zombie_children(), 0);
}

TEST(Forkserver, AKilledServerIsReapedAtOnceNotAtTheNextStart) {
  // Regression (issue 11): a dead forkserver stayed a zombie (and its socket
  // looked usable) until the next start noticed. Nothing starts here.
  mproc_test::OrphanReaper reaper;  // the orphaned spares come to us, and are reaped
  ASSERT_EQ(wait_for_spares().size(), kSpares);
  pid_t server = mproc::detail::forkserver_pid();
  ASSERT_GT(server, 0);
  ASSERT_EQ(::kill(server, SIGKILL), 0);
  const std::string proc = "/proc/" + std::to_string(server);
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (::access(proc.c_str(), F_OK) == 0 && std::chrono::steady_clock::now() < deadline) ::usleep(2000);
  EXPECT_NE(::access(proc.c_str(), F_OK), 0) << "the killed forkserver " << server << " was not reaped";
  EXPECT_EQ(mproc::detail::forkserver_pid(), 0);
  Process p(forkserver(), exit_with, 7);  // a new server
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 7);
  EXPECT_TRUE(reaper.reap(10s));
  EXPECT_EQ(mproc_test::zombie_children(), 0);
}

TEST(Forkserver, ASpareThatDiedIdleIsReplaced) {
  std::set<pid_t> spares = wait_for_spares();
  ASSERT_EQ(spares.size(), kSpares);
  for (pid_t s : spares) {
    ASSERT_EQ(::kill(s, SIGKILL), 0);
    EXPECT_TRUE(mproc_test::wait_pid_gone(s, 20s));
  }
  // Whether or not the server has noticed yet, the start succeeds with a live child.
  Process p(forkserver(), exit_with, 6);
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 6);
  EXPECT_FALSE(spares.count(p.pid()));
}

TEST(Forkserver, ConcurrentStartsFromTwoThreads) {
  wait_for_spares();
  constexpr int kEach = 4;
  std::latch go(2);
  std::vector<Process> procs[2];
  std::thread t[2];
  for (int k = 0; k < 2; ++k) {
    t[k] = std::thread([&, k] {
      for (int i = 0; i < kEach; ++i) procs[k].emplace_back(forkserver(), exit_with, 10 * k + i);
      go.arrive_and_wait();
      for (auto& p : procs[k]) p.start();
    });
  }
  for (auto& th : t) th.join();
  std::set<pid_t> pids;
  for (int k = 0; k < 2; ++k) {
    for (int i = 0; i < kEach; ++i) {
      procs[k][i].join();
      EXPECT_EQ(procs[k][i].exitcode(), 10 * k + i);
      pids.insert(procs[k][i].pid());
    }
  }
  EXPECT_EQ(pids.size(), 2u * kEach);
}

// start_all under every start method: pipelined through the forkserver, one after
// the other otherwise; more processes than the server has spares.
class StartAllTest : public ::testing::TestWithParam<StartMethod> {};

TEST_P(StartAllTest, StartsEveryProcess) {
  std::vector<Process> procs;
  for (int i = 0; i < 11; ++i) procs.emplace_back(ProcessOptions{.start_method = GetParam()}, exit_with, i);
  mproc::detail::start_all(procs);
  std::set<pid_t> pids;
  for (int i = 0; i < 11; ++i) {
    procs[i].join();
    EXPECT_EQ(procs[i].exitcode(), i);
    pids.insert(procs[i].pid());
  }
  EXPECT_EQ(pids.size(), 11u);
  EXPECT_EQ(mproc_test::zombie_children(), 0);
}

TEST_P(StartAllTest, StartsNoneWhenOneCannotStart) {
  Process started(ProcessOptions{.start_method = GetParam()}, exit_with, 0);
  started.start();
  std::vector<Process> procs{Process(ProcessOptions{.start_method = GetParam()}, exit_with, 1), started};
  EXPECT_THROW(mproc::detail::start_all(procs), mproc::UsageError);
  EXPECT_EQ(procs[0].pid(), 0);
  procs[0].start();  // still startable
  procs[0].join();
  EXPECT_EQ(procs[0].exitcode(), 1);
  started.join();
  Process fresh(ProcessOptions{.start_method = GetParam()}, exit_with, 2);
  std::vector<Process> twice{fresh, fresh};
  EXPECT_THROW(mproc::detail::start_all(twice), mproc::UsageError);
  EXPECT_EQ(fresh.pid(), 0);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, StartAllTest,
                         ::testing::Values(StartMethod::fork, StartMethod::forkserver, StartMethod::spawn),
                         [](const auto& i) { return std::string(mproc::to_string(i.param)); });
