// apply_async_callbacks — one task at a time with Pool::apply_async: callbacks,
// error callbacks, and a get(timeout) that gives up while the pool stays usable.
//
// The articles' Pool "best practice" tour (with Pool(4) as pool: apply_async(f,
// (20,)); res.get(timeout=1); apply_async(time.sleep, (10,)) -> TimeoutError;
// "the pool remains available for more work"), and the "fire apply_async in a
// loop, print 'Mark~', close(), join()" pattern, in C++:
//
//   1. fire-and-forget: three apply_async calls whose tasks print from the worker;
//      the main program goes on at once;
//   2. apply_async(f, 20).get(1s) -> 400, and which worker pid ran it;
//   3. Python's callback= and error_callback=: AsyncResult::then(on_value, on_error).
//      The callbacks run in the parent, on the pool's result thread, as results
//      arrive; a task that throws reaches error_callback as an mproc::TaskError
//      carrying the exception's type, what() and the argument's index;
//   4. a task that sleeps longer than we are willing to wait: get(timeout) throws
//      mproc::TimeoutError, the task keeps running, and meanwhile the pool keeps
//      serving other work; a later get() picks the result up.
//
// What to look for: "main goes on" (usually) before the workers' "msg: hello" lines; the
// callbacks' lines; "TimeoutError after 100 ms"; "pool still usable"; the sleeper's
// result arriving at the end.
//
//   apply_async_callbacks [--sleep-ms=1000] [--processes=2]
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <latch>
#include <stdexcept>
#include <string>
#include <vector>

#include <mproc/mproc.hpp>

#include "common.hpp"

using namespace std::chrono_literals;

namespace {

int square(int x) { return x * x; }

int worker_pid() { return static_cast<int>(::getpid()); }

// Runs in a worker and prints there. Workers' stdout is the parent's stdout; when
// it is a pipe or a file it is block-buffered, so flush to see lines as they happen.
void say(std::string msg) {
  std::printf("  [worker %d] msg: %s\n", static_cast<int>(::getpid()), msg.c_str());
  std::fflush(stdout);
}

// Fails for odd inputs, to exercise error_callback.
int half(int x) {
  if (x % 2) throw std::invalid_argument("half(" + std::to_string(x) + "): odd number");
  return x / 2;
}

// The long task of step 4: sleeps, then answers.
int sleepy(int ms) {
  ::usleep(static_cast<useconds_t>(ms) * 1000);
  return ms;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);  // first: spawned children and the forkserver start here
  examples::Flags flags(argc, argv);
  int sleep_ms = static_cast<int>(flags.get("sleep-ms", 1000, "how long the impatient-get task sleeps"));
  int processes = static_cast<int>(flags.get("processes", 2, "worker processes (at least 2 for step 4)"));
  flags.check();
  bool ok = true;

  mproc::Pool pool({.processes = processes});
  std::printf("pool of %d workers: pids", pool.processes());
  for (pid_t p : pool.worker_pids()) std::printf(" %d", static_cast<int>(p));
  std::printf("\n");

  // 1. Fire and forget. apply_async returns at once. (AsyncResult is [[nodiscard]]:
  //    we keep the results to wait for the tasks below, as Python's close() + join()
  //    would.)
  std::printf("\n1. apply_async in a loop, without waiting\n");
  std::vector<mproc::AsyncResult<void>> fired;
  for (int i = 0; i < 3; ++i) fired.push_back(pool.apply_async(say, "hello " + std::to_string(i)));
  std::printf("  main goes on while the workers print\n");
  std::fflush(stdout);
  for (auto& r : fired) r.get();  // Python would close() + join() here; we keep the pool

  // 2. One result, with a bound on the wait.
  std::printf("\n2. apply_async(square, 20).get(1s)\n");
  int v = pool.apply_async(square, 20).get(1s);
  std::printf("  square(20) = %d\n", v);
  ok &= v == 400;
  std::printf("  ran in worker %d\n", pool.apply_async(worker_pid).get(1s));

  // 3. Callbacks instead of get(): Python's callback= / error_callback=.
  std::printf("\n3. then(callback, error_callback)\n");
  // Callbacks run on the pool's result thread (in the parent), before the result
  // is marked ready, as in Python. A latch tells us when all three have run; the
  // results become ready just after, so successful() waits for that first.
  std::atomic<int> values{0}, errors{0};
  std::latch callbacks_done(3);
  std::vector<mproc::AsyncResult<int>> results;
  for (int x : {4, 7, 10}) {
    results.push_back(pool.apply_async(half, x).then(
        [x, &values, &callbacks_done](const int& r) {  // on the pool's result thread, in the parent
          std::printf("  callback: half(%d) = %d\n", x, r);
          ++values;
          callbacks_done.count_down();
        },
        [&errors, &callbacks_done](const std::exception& e) {
          // e is an mproc::TaskError: the worker's exception, with its type name.
          if (auto* te = dynamic_cast<const mproc::TaskError*>(&e)) {
            std::printf("  error_callback: %s: %s\n", te->type_name().c_str(), te->message().c_str());
          } else {
            std::printf("  error_callback: %s\n", e.what());
          }
          ++errors;
          callbacks_done.count_down();
        }));
  }
  callbacks_done.wait();
  for (auto& r : results) r.wait();  // successful() before ready is a UsageError
  std::printf("  %d values, %d errors; successful(): %s %s %s\n", values.load(), errors.load(),
              results[0].successful() ? "true" : "false", results[1].successful() ? "true" : "false",
              results[2].successful() ? "true" : "false");
  ok &= values == 2 && errors == 1 && !results[1].successful();

  // 4. Impatience: get(timeout) gives up, the task does not.
  std::printf("\n4. a %d ms task, and get(100ms)\n", sleep_ms);
  examples::Stopwatch sw;
  auto slow = pool.apply_async(sleepy, sleep_ms);
  try {
    int r = slow.get(100ms);
    std::printf("  unexpected: got %d within 100 ms\n", r);
    ok = false;
  } catch (const mproc::TimeoutError&) {
    std::printf("  TimeoutError after 100 ms: we lacked patience (the task keeps running)\n");
  }
  // The other worker still takes work while the sleeper sleeps.
  int q = pool.apply(square, 12);
  std::printf("  pool still usable: square(12) = %d at %.0f ms, sleeper ready: %s\n", q, sw.ms(),
              slow.ready() ? "yes" : "no");
  ok &= q == 144;
  int r = slow.get();  // now wait as long as it takes
  std::printf("  later, get() = %d after %.0f ms\n", r, sw.ms());
  ok &= r == sleep_ms;

  // Python's `with Pool() as pool:` ends with terminate(); close() + join() let
  // queued work finish first.
  pool.close();
  pool.join();
  return examples::verdict(ok, "apply_async results, callbacks and timeouts as expected");
}
