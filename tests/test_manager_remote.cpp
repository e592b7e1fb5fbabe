// The remote work queue, as separate programs over TCP on 127.0.0.1: the server
// example on a free port, three worker programs, a client that submits and
// collects, then stops the server. The example binaries' paths come from CMake.
#include <gtest/gtest.h>
#include <mproc/manager.hpp>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

extern char** environ;

namespace {

void add1(long long& v) { v += 1; }

struct Child {
  pid_t pid = -1;
  int out = -1;  // its stdout
};

Child spawn(const std::vector<std::string>& args) {
  int fds[2];
  EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  Child c;
  EXPECT_EQ(::posix_spawn(&c.pid, argv[0], &fa, nullptr, argv.data(), environ), 0) << args[0];
  posix_spawn_file_actions_destroy(&fa);
  ::close(fds[1]);
  c.out = fds[0];
  return c;
}

/// Reads c's stdout until EOF or `stop_at` appears (deadline 60 s).
std::string read_output(Child& c, const std::string& stop_at = {}) {
  std::string s;
  char buf[4096];
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < end) {
    pollfd p{c.out, POLLIN, 0};
    if (::poll(&p, 1, 1000) != 1) continue;
    ssize_t n = ::read(c.out, buf, sizeof buf);
    if (n <= 0) break;
    s.append(buf, static_cast<std::size_t>(n));
    if (!stop_at.empty() && s.find(stop_at) != std::string::npos && s.back() == '\n') break;
  }
  return s;
}

/// Waits (60 s at most, then kills) and returns the exit status.
int finish(Child& c) {
  int status = -1;
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (;;) {
    pid_t r = ::waitpid(c.pid, &status, WNOHANG);
    if (r == c.pid) break;
    if (std::chrono::steady_clock::now() > end) {
      ::kill(c.pid, SIGKILL);
      ::waitpid(c.pid, &status, 0);
      ADD_FAILURE() << "a program did not finish in 60 s";
      break;
    }
    ::usleep(2000);
  }
  if (c.out >= 0) ::close(c.out);
  c.out = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

TEST(ManagerRemote, ThreeWorkerProgramsDrainAJobQueueOverTcp) {
  const std::string key = "--authkey=test-secret-" + std::to_string(::getpid());
  Child server = spawn({MPROC_REMOTE_SERVER, "--port=0", key});
  std::string line = read_output(server, "listening on ");
  auto at = line.find("tcp:127.0.0.1:");
  ASSERT_NE(at, std::string::npos) << line;
  std::string port = "--port=" + std::to_string(std::stoi(line.substr(at + 14)));

  std::vector<Child> workers;
  for (int i = 0; i < 3; ++i) workers.push_back(spawn({MPROC_REMOTE_WORKER, port, key}));
  Child client = spawn({MPROC_REMOTE_CLIENT, port, key, "--jobs=60", "--workers=3", "--stop"});
  std::string out = read_output(client);
  EXPECT_EQ(finish(client), 0) << out;
  EXPECT_NE(out.find("results: 60 of 60, 0 wrong"), std::string::npos) << out;
  EXPECT_NE(out.find("OK"), std::string::npos) << out;
  int jobs_done = 0;
  for (auto& w : workers) {
    std::string wout = read_output(w);
    EXPECT_EQ(finish(w), 0) << wout;
    auto j = wout.find(": ");
    if (j != std::string::npos) jobs_done += std::stoi(wout.substr(j + 2));
  }
  EXPECT_EQ(jobs_done, 60);
  std::string rest = read_output(server);
  EXPECT_EQ(finish(server), 0) << rest;
  EXPECT_NE(rest.find("server stopped"), std::string::npos) << rest;
}

TEST(ManagerRemote, AWrongAuthkeyIsRefused) {
  Child server = spawn({MPROC_REMOTE_SERVER, "--port=0", "--authkey=right"});
  std::string line = read_output(server, "listening on ");
  auto at = line.find("tcp:127.0.0.1:");
  ASSERT_NE(at, std::string::npos) << line;
  std::string port = "--port=" + std::to_string(std::stoi(line.substr(at + 14)));
  // This test program is not the server's program: it may use the published
  // objects, but not run its own code on the server.
  {
    auto m = mproc::Manager::connect({"127.0.0.1", static_cast<std::uint16_t>(std::stoi(port.substr(7)))}, "right");
    auto count = m.lookup<mproc::ValueProxy<long long>>("count");
    count.set(41);
    EXPECT_EQ(count.get(), 41);
    try {
      count.apply(add1);
      ADD_FAILURE() << "apply ran code of another program on the server";
    } catch (const mproc::ManagerError& e) {
      EXPECT_NE(std::string(e.what()).find("another program"), std::string::npos) << e.what();
    }
  }
  Child bad = spawn({MPROC_REMOTE_CLIENT, port, "--authkey=wrong", "--jobs=1"});
  read_output(bad);
  EXPECT_NE(finish(bad), 0);  // ManagerError: authentication failed
  Child good = spawn({MPROC_REMOTE_CLIENT, port, "--authkey=right", "--jobs=0", "--workers=0", "--stop"});
  std::string out = read_output(good);
  EXPECT_EQ(finish(good), 0) << out;
  read_output(server);
  EXPECT_EQ(finish(server), 0);
}
