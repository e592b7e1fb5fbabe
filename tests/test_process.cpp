#include <gtest/gtest.h>
#include <mproc/process.hpp>
#include <csignal>
#include <cstdlib>
#include <thread>

namespace {
void exit_with(int code) { std::exit(code); }
void throw_it(std::string msg) { throw std::runtime_error(msg); }
}

class ProcessTest : public ::testing::TestWithParam<mproc::StartMethod> {};

TEST_P(ProcessTest, ExitCode) {
  mproc::Process p(mproc::ProcessOptions{.start_method = GetParam()}, exit_with, 7);
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 7);
}

TEST_P(ProcessTest, Exception) {
  mproc::Process p(mproc::ProcessOptions{.start_method = GetParam()}, throw_it, "boom");
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 1);
  auto e = p.exception();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->type_name(), "std::runtime_error");
  EXPECT_EQ(e->message(), "boom");
}

TEST_P(ProcessTest, Lambda) {
  mproc::Process p(mproc::ProcessOptions{.start_method = GetParam()}, [](int a, int b) { if (a + b != 5) std::abort(); }, 2, 3);
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(ProcessTest, Kill) {
  mproc::Process p(mproc::ProcessOptions{.start_method = GetParam()}, [] { for (;;) pause(); });
  p.start();
  EXPECT_FALSE(p.join(std::chrono::milliseconds(50)));
  EXPECT_TRUE(p.is_alive());
  p.terminate();
  p.join();
  EXPECT_EQ(p.exitcode(), -SIGTERM);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, ProcessTest,
                         ::testing::Values(mproc::StartMethod::fork, mproc::StartMethod::forkserver,
                                           mproc::StartMethod::spawn),
                         [](const auto& i) { return std::string(mproc::to_string(i.param)); });
