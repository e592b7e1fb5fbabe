// Failure injection through the syscall seam (src/os/internal.hpp): when the OS
// refuses, start() throws std::system_error naming the call, leaks no fd, and the
// Process can be retried after the fault clears.
#include <gtest/gtest.h>

#include <cerrno>
#include <mproc/process.hpp>
#include <system_error>

#include "../src/os/internal.hpp"
#include "util.hpp"

namespace {

void noop() {}

pid_t failing_fork() {
  errno = EAGAIN;
  return -1;
}
int failing_pipe2(int*, int) {
  errno = EMFILE;
  return -1;
}
int failing_memfd(const char*, unsigned) {
  errno = ENOMEM;
  return -1;
}
int failing_spawn(pid_t*, const char*, const posix_spawn_file_actions_t*, const posix_spawnattr_t*, char* const*,
                  char* const*) {
  return EAGAIN;
}

// Restores the real syscall table however the test ends.
struct SeamGuard {
  mproc::detail::SysOps saved = mproc::detail::sys();
  ~SeamGuard() { mproc::detail::sys() = saved; }
};

void expect_system_error(mproc::Process& p, const char* call) {
  try {
    p.start();
    FAIL() << "start() succeeded despite the injected fault";
  } catch (const std::system_error& e) {
    EXPECT_NE(std::string(e.what()).find(call), std::string::npos) << e.what();
  }
}

class FaultTest : public ::testing::TestWithParam<mproc::StartMethod> {};

TEST_P(FaultTest, FailedStartLeaksNothingAndCanBeRetried) {
  mproc::Process warm(mproc::ProcessOptions{.start_method = GetParam()}, noop);
  warm.start();  // the forkserver, if used, is running before we count fds
  warm.join();
  int fds = mproc_test::fd_count();
  {
    SeamGuard guard;
    mproc::detail::sys().pipe2 = failing_pipe2;
    mproc::Process p(mproc::ProcessOptions{.start_method = GetParam()}, noop);
    expect_system_error(p, "pipe2");
    EXPECT_EQ(mproc_test::fd_count(), fds);
  }
  {
    SeamGuard guard;
    const char* call = "fork";
    switch (GetParam()) {
      case mproc::StartMethod::fork: mproc::detail::sys().fork = failing_fork; break;
      case mproc::StartMethod::spawn: mproc::detail::sys().posix_spawn = failing_spawn; call = "posix_spawn"; break;
      case mproc::StartMethod::forkserver: mproc::detail::sys().memfd_create = failing_memfd; call = "memfd_create"; break;
    }
    mproc::Process p(mproc::ProcessOptions{.start_method = GetParam()}, noop);
    expect_system_error(p, call);
    EXPECT_EQ(mproc_test::fd_count(), fds);
    mproc::detail::sys() = guard.saved;
    p.start();  // the same Process starts once the fault is gone
    p.join();
    EXPECT_EQ(p.exitcode(), 0);
  }
  EXPECT_EQ(mproc_test::fd_count(), fds);
  EXPECT_EQ(mproc_test::zombie_children(), 0);
}

TEST(FaultTest, ForkserverIsRestartedAfterItDies) {
  mproc::Process a(mproc::ProcessOptions{.start_method = mproc::StartMethod::forkserver}, noop);
  a.start();
  a.join();
  pid_t server = mproc::detail::forkserver_pid();
  ASSERT_GT(server, 0);
  ASSERT_EQ(::kill(server, SIGKILL), 0);
  mproc::Process b(mproc::ProcessOptions{.start_method = mproc::StartMethod::forkserver}, noop);
  b.start();  // notices the dead server, reaps it, starts a new one
  b.join();
  EXPECT_EQ(b.exitcode(), 0);
  EXPECT_NE(mproc::detail::forkserver_pid(), server);
  EXPECT_EQ(mproc_test::zombie_children(), 0);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, FaultTest,
                         ::testing::Values(mproc::StartMethod::fork, mproc::StartMethod::forkserver,
                                           mproc::StartMethod::spawn),
                         [](const auto& i) { return std::string(mproc::to_string(i.param)); });

}  // namespace
