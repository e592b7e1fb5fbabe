// Packaging test consumer: includes mproc, starts a child with fork and checks that
// its exit code comes back.
#include <cstdio>
#include <cstdlib>
#include <mproc/mproc.hpp>

namespace {
void child(int code) { std::exit(code); }
}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Process p(mproc::ProcessOptions{.start_method = mproc::StartMethod::fork}, child, 42);
  p.start();
  p.join();
  if (p.exitcode() != 42) {
    std::fprintf(stderr, "consumer: expected exit code 42, got %d\n", p.exitcode().value_or(-1000));
    return 1;
  }
  std::printf("consumer: ok\n");
  return 0;
}
