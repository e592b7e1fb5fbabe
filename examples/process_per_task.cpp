// process_per_task — one Process per task, started together and joined together.
//
// The articles' fallback when Pool got in the way ("PicklingError: Can't pickle
// ..." with numpy functions): create a multiprocessing.Process per task, start()
// each one, then join() them all. Each child sleeps, then prints its own pid.
//
// In mproc there is no PicklingError to work around: a task that cannot be sent
// does not compile, with a message saying what to do instead. One process per
// task is still the right tool for a few long, independent jobs that each need
// their own process (isolation, their own exit code, killable one by one).
//
// What to look for:
//   * the parent prints "started Process-N pid P" for every child, and each child
//     prints the same pid for itself: Process::pid() is the child's real pid;
//   * every child names the main program as its parent (mproc::parent_process());
//     under the default start method (forkserver) the OS parent, getppid(), is the
//     fork server instead — the library keeps the logical parent for you;
//   * all children sleep at the same time: the whole run takes about one sleep,
//     not one per child;
//   * exit codes: 0 for each child (a child that finds something wrong exits
//     with 2, which the parent would report).
//
//   process_per_task [--tasks=5] [--sleep-ms=200] [--method=forkserver|fork|spawn]
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <mproc/mproc.hpp>

#include "common.hpp"

namespace {

// The target: sleep, then say who we are. `main_pid` is passed in so the child can
// check that parent_process() really is the main program.
void run_proc(std::string name, int sleep_ms, int main_pid) {
  ::usleep(static_cast<useconds_t>(sleep_ms) * 1000);
  int parent = static_cast<int>(mproc::parent_process()->pid());
  std::printf("  Run child process %s (pid %d, parent %d, OS parent %d)\n", name.c_str(),
              static_cast<int>(::getpid()), parent, static_cast<int>(::getppid()));
  if (parent != main_pid) std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  int tasks = static_cast<int>(flags.get("tasks", 5, "number of child processes"));
  int sleep_ms = static_cast<int>(flags.get("sleep-ms", 200, "how long each child sleeps"));
  auto method = mproc::parse_start_method(flags.get_string("method", "forkserver", "start method"));
  flags.check();

  int main_pid = static_cast<int>(::getpid());
  std::printf("Parent process %d, start method %s\n", main_pid, std::string(mproc::to_string(method)).c_str());

  examples::Stopwatch sw;
  std::vector<mproc::Process> processes;
  for (int i = 0; i < tasks; ++i) {
    // Arguments are checked against run_proc's parameters at compile time and
    // converted to them here ("test" becomes a std::string).
    processes.emplace_back(mproc::ProcessOptions{.start_method = method}, run_proc, "test", sleep_ms, main_pid);
    processes.back().start();
    std::printf("  started %s pid %d\n", processes.back().name().c_str(), static_cast<int>(processes.back().pid()));
  }
  std::fflush(stdout);  // before the children's lines, which arrive while we wait
  for (auto& p : processes) p.join();
  double elapsed = sw.seconds();

  bool ok = true;
  for (auto& p : processes) {
    int code = p.exitcode().value_or(-1);
    std::printf("  %s (pid %d) exitcode %d\n", p.name().c_str(), static_cast<int>(p.pid()), code);
    ok &= code == 0;
  }
  std::printf("Process end: %d children of %d ms each took %s in all (one after another: %d ms)\n", tasks, sleep_ms,
              examples::human_time(elapsed).c_str(), tasks * sleep_ms);
  return examples::verdict(ok, "every child ran and exited with 0");
}
