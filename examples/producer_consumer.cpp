// producer_consumer — worker processes fed through a Queue, their lifetime
// controlled by poison pills.
//
// The articles' favourite pattern ("many scenarios are producer/consumer; use a
// Queue"), and the High Performance Python work queue for a prime search: the
// parent creates a task queue and a result queue, passes both to a few Process
// workers, puts the work, then one poison pill per worker. A worker loops on
// get() and returns when it takes a pill; nothing else ever stops it. The parent
// collects exactly as many results as it put tasks, then joins the workers.
//
// The items are typed: Queue<std::optional<std::uint64_t>>, where an empty
// optional is the pill (Python uses a sentinel such as None or -1). A result is a
// plain struct, sent by value.
//
// What to look for:
//   * how the tasks spread over the workers (the counts add up to the number of tasks);
//   * the number of primes found equals the one counted here, serially;
//   * each worker says it took its pill and exited, and every exit code is 0.
//
//   producer_consumer [--workers=3] [--tasks=2000] [--start=100000000]
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include <mproc/mproc.hpp>

#include "common.hpp"
#include "primes.hpp"

namespace {

using Task = std::optional<std::uint64_t>;  // std::nullopt: the poison pill

struct Result {  // trivially copyable: sent as its bytes
  int worker;
  std::uint64_t n;
  bool prime;
};

void worker(int id, mproc::Queue<Task> tasks, mproc::Queue<Result> results) {
  int done = 0;
  for (;;) {
    Task t = tasks.get();  // blocks while the queue is empty
    if (!t) break;         // the pill: this worker's work is over
    results.put({id, *t, examples::is_prime_trial(*t)});
    ++done;
  }
  std::printf("  worker %d (pid %d) took its pill after %d tasks\n", id, static_cast<int>(::getpid()), done);
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  int workers = static_cast<int>(flags.get("workers", 3, "consumer processes"));
  auto ntasks = static_cast<std::uint64_t>(flags.get("tasks", 2000, "numbers to test"));
  auto start = static_cast<std::uint64_t>(flags.get("start", 100'000'000, "first number"));
  flags.check();

  // maxsize bounds the queue like Python's Queue(maxsize): the producer waits when
  // the consumers fall behind instead of growing memory.
  mproc::Queue<Task> tasks(256);
  mproc::Queue<Result> results;

  std::vector<mproc::Process> procs;
  for (int i = 0; i < workers; ++i) {
    procs.emplace_back(worker, i, tasks, results);  // both queues travel as handles
    procs.back().start();
  }

  examples::Stopwatch sw;
  // Produce from a thread so that the main thread can consume at the same time:
  // with a bounded task queue and an unread result queue, putting everything
  // first could wait forever (the results would fill up and stop the workers).
  std::thread producer([&] {
    for (std::uint64_t k = 0; k < ntasks; ++k) tasks.put(start + k);
    for (int i = 0; i < workers; ++i) tasks.put(std::nullopt);  // one pill per worker
  });

  std::map<int, int> per_worker;
  std::uint64_t primes = 0;
  for (std::uint64_t k = 0; k < ntasks; ++k) {
    Result r = results.get();
    ++per_worker[r.worker];
    primes += r.prime;
  }
  producer.join();
  for (auto& p : procs) p.join();
  double elapsed = sw.seconds();

  std::printf("\n%llu tasks done by %d workers in %s:\n", static_cast<unsigned long long>(ntasks), workers,
              examples::human_time(elapsed).c_str());
  examples::Table table({"worker", "tasks", "exitcode"});
  bool ok = true;
  int total = 0;
  for (int i = 0; i < workers; ++i) {
    int code = procs[static_cast<std::size_t>(i)].exitcode().value_or(-1);
    table.row({std::to_string(i), std::to_string(per_worker[i]), std::to_string(code)});
    total += per_worker[i];
    ok &= code == 0;
  }
  table.print();

  std::uint64_t expected = 0;
  for (std::uint64_t k = 0; k < ntasks; ++k) expected += examples::is_prime_trial(start + k);
  std::printf("primes found: %llu (counted serially: %llu), results collected: %d\n",
              static_cast<unsigned long long>(primes), static_cast<unsigned long long>(expected), total);
  ok &= primes == expected && static_cast<std::uint64_t>(total) == ntasks;
  return examples::verdict(ok, "every task done once, every worker stopped by its pill");
}
