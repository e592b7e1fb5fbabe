// sleep_order — tasks of random length: imap_unordered hands results over as
// they finish, map in input order.
//
// The articles' sleep_func(n): print "Process n is sleeping", sleep a random 1..10
// seconds, print how long, return n*n. With imap_unordered the results come out
// in the order the tasks finished ([25, 9, 4, 0, 16, ...]); map returns
// [0, 1, 4, ..., 81] whatever the finishing order. Here the unit is 20 ms instead
// of a second, and the "random" lengths come from a fixed seed so that runs
// repeat (change it with --seed).
//
// What to look for: the workers' "sleeping"/"has slept" lines interleave; the
// imap_unordered list is a shuffle of the squares, short sleepers first; the map
// list is in order. chunksize 1 for both: one task per message, so that a worker
// that finishes early takes the next task at once (with larger chunks a short
// task can wait behind a long one in the same chunk).
//
//   sleep_order [--tasks=10] [--unit-ms=20] [--processes=4] [--seed=7]
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <ranges>
#include <string>
#include <vector>

#include <mproc/mproc.hpp>

#include "common.hpp"

namespace {

// Sleeps a random 1..10 units of `unit_ms`, saying so before and after; returns
// n*n. The length is drawn from (seed, n), so a run can be repeated.
int sleep_func(int unit_ms, unsigned seed, int n) {
  std::mt19937 rng(seed * 1000 + static_cast<unsigned>(n));
  int units = std::uniform_int_distribution<int>(1, 10)(rng);
  std::printf("  ==> Process %d is sleeping (worker %d)\n", n, static_cast<int>(::getpid()));
  std::fflush(stdout);  // the worker's stdout may be a pipe: flush so the line shows now
  for (int i = 0; i < units; ++i) ::usleep(static_cast<useconds_t>(unit_ms) * 1000);
  std::printf("  ==> Process %d has slept for %d units\n", n, units);
  std::fflush(stdout);
  return n * n;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  int tasks = static_cast<int>(flags.get("tasks", 10, "number of tasks"));
  int unit_ms = static_cast<int>(flags.get("unit-ms", 20, "one sleep unit (the article: 1 s)"));
  int processes = static_cast<int>(flags.get("processes", 4, "workers (sleeping needs no cores)"));
  auto seed = static_cast<unsigned>(flags.get("seed", 7, "seed of the sleep lengths"));
  flags.check();

  // sleep_func(n) with the unit and the seed bound to it (mproc::bind: the
  // values travel with the function; a capturing lambda would not compile).
  auto task = mproc::bind(sleep_func, unit_ms, seed);

  mproc::Pool pool({.processes = processes});
  std::vector<int> expected;
  for (int n = 0; n < tasks; ++n) expected.push_back(n * n);

  std::printf("imap_unordered:\n");
  std::fflush(stdout);
  std::vector<int> unordered;
  for (int r : pool.imap_unordered(task, std::views::iota(0, tasks), 1)) unordered.push_back(r);
  std::printf("Results: %s\n\n", examples::to_list(unordered).c_str());

  std::printf("map:\n");
  std::fflush(stdout);
  std::vector<int> ordered = pool.map(task, std::views::iota(0, tasks), 1);
  std::printf("Results: %s\n\n", examples::to_list(ordered).c_str());

  std::vector<int> sorted = unordered;
  std::sort(sorted.begin(), sorted.end());
  bool ok = ordered == expected && sorted == expected;
  std::printf("imap_unordered gave %s order; map gave input order: %s\n",
              unordered == expected ? "input" : "completion", ordered == expected ? "yes" : "no");
  return examples::verdict(ok, "both gave every square; map kept input order");
}
