// A pool owned by a global or a static keeps its submitted work through exit
// (issue 11, bug 5): the global's destructor (shutdown(wait) / close + join) runs
// before mproc's own exit handler, which kills daemon children. Each case runs
// tests/pool_exit_helper.cpp, whose main() returns while two tasks are in flight
// (forced: see there), and checks that all four tasks finished.
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <sstream>
#include <string>
#include <vector>

#include "util.hpp"

extern char** environ;

namespace {

struct HelperRun {
  int status = -1;  // exit code, or 128 + signal
  std::string err;  // its stderr
};

// Runs the helper with `args` (60 s at most, then kills it).
HelperRun run_helper(const std::vector<std::string>& args, const std::string& err_path) {
  std::vector<std::string> all{MPROC_POOL_EXIT_HELPER};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  HelperRun r;
  if (rc != 0) {
    ADD_FAILURE() << "posix_spawn " << argv[0] << ": " << rc;
    return r;
  }
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() > end) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      ADD_FAILURE() << "pool_exit_helper did not finish in 60 s";
      break;
    }
    ::usleep(2000);
  }
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.err = mproc_test::read_file(err_path);
  return r;
}

std::vector<int> done_indices(const std::string& path) {
  std::vector<int> v;
  std::istringstream in(mproc_test::read_file(path));
  for (int i; in >> i;) v.push_back(i);
  std::sort(v.begin(), v.end());
  return v;
}

class PoolExit : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(PoolExit, GlobalOwnerFinishesSubmittedWork) {
  auto [kind, method] = GetParam();
  mproc_test::TempDir dir;
  std::string d = dir.file("");
  d.pop_back();  // no trailing '/'
  HelperRun r = run_helper({kind, method, d}, dir.file("stderr"));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(done_indices(dir.file("done")), (std::vector<int>{0, 1, 2, 3}))
      << "tasks in flight at exit were lost; stderr:\n" << r.err;
  EXPECT_EQ(r.err.find("mproc:"), std::string::npos) << r.err;
}

INSTANTIATE_TEST_SUITE_P(All, PoolExit,
                         ::testing::Combine(::testing::Values("executor", "pool"),
                                            ::testing::Values("fork", "spawn", "forkserver")),
                         [](const auto& p) { return std::get<0>(p.param) + "_" + std::get<1>(p.param); });

}  // namespace
