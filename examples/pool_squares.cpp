// pool_squares — the articles' first Pool example: square every number with
// map, imap and imap_unordered, count progress with a '\r' line, and the same
// with mproc's built-in progress bar.
//
// Python:
//   pool = multiprocessing.Pool(processes=cores)
//   pool.map(f, xs)              -> [0, 1, 4, 9, 16]      a list, in input order
//   for y in pool.imap(f, xs)    -> 0, 1, 4, 9, 16        lazily, in input order
//   for y in pool.imap_unordered(f, xs)  -> any order     lazily, as they finish
//   and a progress counter: sys.stdout.write('done %d/%d\r' % (cnt, len(xs)))
//
// mproc has the same three calls with the same meanings. map() returns a
// std::vector; imap() and imap_unordered() return ranges to iterate once, which
// start yielding as soon as the first results are in — that is what makes the
// progress counter possible. Here f sleeps 0, 5 or 10 ms depending on x, so that
// the finishing order differs from the input order.
//
// What to look for: map and imap print the squares in order; imap_unordered
// prints them in the order they finished; the counter line is rewritten in place
// on a terminal (each update ends in '\r') and ends at "done N/N"; the progress
// bar (stderr) ends at "squares: 100% N/N".
//
//   pool_squares [--n=20] [--processes=cpu_count]
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ranges>
#include <vector>

#include <mproc/mproc.hpp>

#include "common.hpp"

namespace {

int f(int x) {
  ::usleep(static_cast<useconds_t>((x * 7) % 3) * 5000);  // 0, 5 or 10 ms
  return x * x;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  int n = static_cast<int>(flags.get("n", 20, "how many numbers"));
  int processes = static_cast<int>(flags.get("processes", mproc::cpu_count(), "worker processes"));
  flags.check();

  mproc::Pool pool({.processes = processes});
  auto xs = std::views::iota(0, n);  // Python's range(n): any input range works
  std::vector<int> expected;
  for (int x : xs) expected.push_back(x * x);

  // method 1: map — blocks, returns everything in input order.
  std::vector<int> by_map = pool.map(f, xs);
  std::printf("map:            %s\n", examples::to_list(by_map).c_str());

  // method 2: imap — a lazy range; results in input order, each as soon as it and
  // all before it are done.
  std::vector<int> by_imap;
  for (int y : pool.imap(f, xs)) by_imap.push_back(y);
  std::printf("imap:           %s\n", examples::to_list(by_imap).c_str());

  // method 3: imap_unordered — a lazy range; results in the order they finish.
  // The article's progress counter: rewrite one line with '\r' after each result.
  std::vector<int> by_unordered;
  for (int y : pool.imap_unordered(f, xs)) {
    by_unordered.push_back(y);
    std::printf("done %zu/%d\r", by_unordered.size(), n);
    std::fflush(stdout);
  }
  std::printf("\n");
  std::printf("imap_unordered: %s\n", examples::to_list(by_unordered).c_str());

  // method 4: the built-in progress bar (tqdm's, on stderr): done/total, %, rate,
  // elapsed and ETA, redrawn in place on a terminal, a line per step in a log.
  std::vector<int> by_bar = pool.map(f, xs, {0, true, "squares"});
  std::printf("map with a progress bar: %s\n", by_bar == expected ? "same squares" : "WRONG");

  std::vector<int> sorted = by_unordered;
  std::sort(sorted.begin(), sorted.end());
  bool ok = by_map == expected && by_imap == expected && sorted == expected && by_bar == expected;
  std::printf("imap_unordered order %s input order\n", by_unordered == expected ? "matched" : "differed from");
  pool.close();
  pool.join();
  return examples::verdict(ok, "map and imap in input order, imap_unordered a permutation");
}
