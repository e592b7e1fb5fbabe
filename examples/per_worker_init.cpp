// per_worker_init — a library that must be set up inside each worker process (the
// articles' TensorFlow/CUDA case), set up right: in the Process target, or in the
// Pool's per-worker initializer, with the spawn or forkserver start method.
//
// The article: importing TensorFlow in the parent has side effects that fork
// copies into the children, which then fail with CUDA_ERROR_NOT_INITIALIZED; the
// fix is to import it only in the children — inside the Process target, or in a
// function passed to Pool(initializer=...). fake_gpu.hpp plays the library: a
// process-global context that works only in the process that created it.
//
//   1. Process: the target initialises the library, then serves names from a task
//      queue until the parent terminates it (the article's hello(taskq, resultq)).
//   2. Pool(initializer = fake_gpu::init): every worker sets up its own context
//      before its first task; map() runs "hello <name>" on each. Shown with the
//      default start method (forkserver) and with spawn.
//   3. What goes wrong without that:
//      a. no initializer: the workers never set the library up -> every task
//         fails with CUDA_ERROR_NOT_INITIALIZED (a TaskError naming it);
//      b. the parent initialises the library, then forks a pool (start method
//         fork): the workers inherit the parent's context and cannot create their
//         own, so even the initializer fails; after three workers fail in a row
//         the pool gives up and fails the pending work with that error instead of
//         respawning workers forever (Python's behaviour);
//      c. the same parent, now with forkserver: the workers start from a fresh
//         copy of the program that never saw the parent's context -> works.
//
// What to look for: every "hello" answer names a worker pid, never the main pid;
// the two failures name CUDA_ERROR_NOT_INITIALIZED and say why.
//
//   per_worker_init [--processes=2]
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include <mproc/mproc.hpp>

#include "common.hpp"
#include "fake_gpu.hpp"

namespace {

// 1. The Process target: set up in the child, then serve.
void hello_server(mproc::Queue<std::string> taskq, mproc::Queue<std::string> resultq) {
  fake_gpu::init(0);  // Python: `import tensorflow as tf; sess = tf.Session(...)` here, not at the top
  for (;;) {
    std::string name = taskq.get();
    resultq.put(fake_gpu::run("hello " + name));
  }
}

// 2. The Pool task: the worker's initializer has set the library up already.
std::string hello(std::string name) { return fake_gpu::run("hello " + name); }

// Prints map()'s results, or the error it raised. Returns whether it succeeded.
bool show_map(mproc::Pool& pool, const std::vector<std::string>& names) {
  try {
    for (const std::string& s : pool.map(hello, names)) std::printf("  %s\n", s.c_str());
    return true;
  } catch (const mproc::TaskError& e) {
    std::printf("  TaskError from item %llu: %s: %s\n", static_cast<unsigned long long>(e.index()),
                e.type_name().c_str(), e.message().c_str());
  } catch (const mproc::Error& e) {
    std::printf("  %s\n", e.what());
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  int processes = static_cast<int>(flags.get("processes", 2, "workers per pool"));
  flags.check();
  std::vector<std::string> names = {"world", "abcdabcd987", "Lequn Chen"};
  bool ok = true;
  std::printf("main process: pid %d\n", static_cast<int>(::getpid()));

  std::printf("\n1. Process target that initialises the library, then serves a queue\n");
  {
    mproc::Queue<std::string> taskq, resultq;
    mproc::Process p(hello_server, taskq, resultq);
    p.start();
    taskq.put("world");
    taskq.put("abcdabcd987");
    std::printf("  %s\n", resultq.get().c_str());
    std::printf("  %s\n", resultq.get().c_str());
    p.terminate();  // the server loops forever, as in the article
    p.join();
    std::printf("  server terminated: exitcode %d\n", p.exitcode().value_or(0));
  }

  std::printf("\n2. Pool with initializer = fake_gpu::init\n");
  for (auto method : {mproc::StartMethod::forkserver, mproc::StartMethod::spawn}) {
    std::printf("  start method %s:\n", std::string(mproc::to_string(method)).c_str());
    mproc::Pool pool({.processes = processes, .start_method = method}, fake_gpu::init, 0);
    ok &= show_map(pool, names);
  }

  std::printf("\n3a. Pool without the initializer\n");
  {
    mproc::Pool pool({.processes = processes});
    ok &= !show_map(pool, names);
  }

  std::printf("\n3b. the parent initialises the library, then forks a pool\n");
  fake_gpu::init(0);
  std::printf("  parent: %s\n", fake_gpu::run("hello parent").c_str());
  {
    mproc::Pool pool({.processes = processes, .start_method = mproc::StartMethod::fork}, fake_gpu::init, 0);
    ok &= !show_map(pool, names);
  }

  std::printf("\n3c. the same parent, forkserver pool with the initializer\n");
  {
    mproc::Pool pool({.processes = processes}, fake_gpu::init, 0);
    ok &= show_map(pool, names);
  }
  return examples::verdict(ok, "the library worked exactly where it was initialised in the worker");
}
