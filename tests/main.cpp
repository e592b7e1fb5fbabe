// Test entry point: mproc::init() first, so spawned children and the forkserver
// run their role instead of the test suite.
#include <gtest/gtest.h>

#include <mproc/process.hpp>

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
