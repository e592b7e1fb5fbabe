// A program whose main() does not call mproc::init(): the re-executing start
// methods must refuse with a message that names the fix, never hang or fork-bomb.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <mproc/process.hpp>

namespace {

void noop() {}

int g_argc;
char** g_argv;

TEST(NoInit, SpawnAndForkserverRefuseAndSayWhatToAdd) {
  for (auto m : {mproc::StartMethod::spawn, mproc::StartMethod::forkserver}) {
    mproc::Process p(mproc::ProcessOptions{.start_method = m}, noop);
    try {
      p.start();
      FAIL() << "started without init()";
    } catch (const mproc::StartError& e) {
      EXPECT_NE(std::strstr(e.what(), "mproc::init(argc, argv);"), nullptr) << e.what();
    }
  }
  mproc::Process d(noop);  // the default method is forkserver
  EXPECT_THROW(d.start(), mproc::StartError);
}

TEST(NoInit, ForkNeedsNoInit) {
  mproc::Process p(mproc::ProcessOptions{.start_method = mproc::StartMethod::fork}, noop);
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST(NoInit, SpawnedChildThatSkipsInitCannotStartProcesses) {
  // This parent registers argv (so spawn is allowed); the child re-runs this main(),
  // which skips init() and tries to start a process: it must get StartError (exit 42).
  mproc::init(g_argc, g_argv);
  mproc::Process p(mproc::ProcessOptions{.start_method = mproc::StartMethod::spawn}, noop);
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 42);
}

}  // namespace

int main(int argc, char** argv) {
  if (std::getenv("MPROC_SPAWN")) {
    // A spawned child whose main() forgot mproc::init().
    try {
      mproc::Process p(mproc::ProcessOptions{.start_method = mproc::StartMethod::fork}, noop);
      p.start();
    } catch (const mproc::StartError& e) {
      std::_Exit(std::strstr(e.what(), "bootstrapping") ? 42 : 43);
    }
    std::_Exit(44);
  }
  testing::InitGoogleTest(&argc, argv);
  g_argc = argc;
  g_argv = argv;
  return RUN_ALL_TESTS();
}
