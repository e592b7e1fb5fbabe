// demo — a short tour of mproc: start processes with each start method, get their
// exit codes, and see an exception raised in a child come back to the parent.
//
//   make demo        (or: build/release/examples/demo)
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include <mproc/mproc.hpp>

namespace {

using Clock = std::chrono::steady_clock;

// The target of each child: says who it is, then exits with `code` (like sys.exit(code)).
void greet(int code) {
  std::printf("  %-12s pid %-7d parent %-7d exiting with %d\n", mproc::current_process().name().c_str(),
              static_cast<int>(::getpid()), static_cast<int>(mproc::parent_process()->pid()), code);
  std::exit(code);
}

void fail(const std::string& why) { throw std::runtime_error(why); }

void start_and_join(mproc::StartMethod method) {
  constexpr int kChildren = 4;
  std::printf("\n%.*s: starting %d processes\n", static_cast<int>(mproc::to_string(method).size()),
              mproc::to_string(method).data(), kChildren);

  auto t0 = Clock::now();
  std::vector<mproc::Process> children;
  for (int i = 0; i < kChildren; ++i) {
    mproc::ProcessOptions options{.start_method = method};
    children.emplace_back(options, greet, 10 + i);
    children.back().start();
  }
  for (auto& p : children) p.join();
  auto elapsed = std::chrono::duration<double, std::milli>(Clock::now() - t0);

  for (auto& p : children) std::printf("  %s -> exitcode %d\n", p.name().c_str(), p.exitcode().value_or(-1));
  std::printf("  start + join of %d processes: %.1f ms\n", kChildren, elapsed.count());
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);  // first thing: spawned children and the forkserver start here

  std::printf("mproc demo: main process pid %d, cpu_count() = %d\n", static_cast<int>(::getpid()),
              mproc::cpu_count());

  for (mproc::StartMethod method : mproc::get_all_start_methods()) start_and_join(method);

  std::printf("\nA child whose target throws:\n");
  mproc::Process p(fail, "something went wrong");
  p.start();
  p.join();
  if (auto e = p.exception()) {
    std::printf("  exitcode %d, exception %s: %s\n", p.exitcode().value_or(-1), e->type_name().c_str(),
                e->message().c_str());
  }
  return 0;
}
