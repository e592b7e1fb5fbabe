// prime_chunksize — a prime search whose items cost wildly different amounts, and
// how the chunk size and imap_unordered decide whether the workers share it.
//
// High Performance Python (chapter 9) searches for primes with a Pool and finds
// the work "unpredictable": most candidates are rejected after a division or two,
// a prime costs √n/2 divisions. How the input is cut into chunks then decides the
// wall time. Here the input is built to make that visible: many cheap numbers,
// then a tail of big primes (each ~1 ms of trial division). Whoever gets the tail
// does nearly all the work.
//
// Each run reports, per worker, the items it ran and the time it spent in them
// (measured inside the worker), and the imbalance: the busiest worker's time over
// the mean (1.00 = perfectly shared). Rows:
//   map, chunksize n/workers  one chunk per worker: the last worker gets every prime;
//   map, chunksize 0          Python's rule ceil(n / (4 * workers)): the tail still
//                             lands in one or two chunks;
//   map, chunksize 16, 1      smaller chunks spread the tail, at one message per chunk;
//   imap_unordered, 0         mproc's adaptive chunks, sized from the item times
//                             measured so far (about 2 ms of work per chunk);
//   imap_unordered, 1         one item per message: best balance, most messages.
//
// What to look for: the imbalance falling towards 1 and the wall time with it as
// chunks shrink; the "primes" column is the same on every row (checked).
//
//   prime_chunksize [--processes=2] [--cheap=4000] [--heavy=200] [--heavy-from=1000000000000]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <mproc/mproc.hpp>

#include "common.hpp"
#include "primes.hpp"

namespace {

// What a worker sends back per item: the answer, who computed it, and how long it took.
struct Checked {
  bool prime;
  int pid;
  std::int64_t ns;
};

Checked check(std::uint64_t n) {
  auto t0 = std::chrono::steady_clock::now();
  bool p = examples::is_prime_trial(n);  // the work: trial division, as in the book
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
  return {p, static_cast<int>(::getpid()), static_cast<std::int64_t>(ns)};
}

struct Run {
  std::string method;
  std::string chunksize;
  double seconds;
  std::vector<Checked> results;
};

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  int processes = static_cast<int>(flags.get("processes", 2, "worker processes"));
  int cheap = static_cast<int>(flags.get("cheap", 4000, "cheap candidates at the front"));
  int heavy = static_cast<int>(flags.get("heavy", 200, "big primes at the end"));
  auto heavy_from = static_cast<std::uint64_t>(flags.get("heavy-from", 1'000'000'000'000, "where big primes start"));
  flags.check();

  // The input: consecutive numbers from a million (cheap), then big primes (heavy).
  std::vector<std::uint64_t> input;
  for (int i = 0; i < cheap; ++i) input.push_back(1'000'000 + static_cast<std::uint64_t>(i));
  for (std::uint64_t n = heavy_from | 1; static_cast<int>(input.size()) < cheap + heavy; n += 2) {
    if (examples::is_prime_fast(n)) input.push_back(n);
  }
  auto expected = static_cast<std::size_t>(std::count_if(input.begin(), input.end(), examples::is_prime_fast));
  std::size_t n = input.size();
  std::printf("%zu candidates: %d cheap ones from 1000000, then %d primes from %llu; %d workers\n\n", n, cheap, heavy,
              static_cast<unsigned long long>(heavy_from), processes);

  examples::Stopwatch sw;
  std::size_t serial_primes = 0;
  for (auto x : input) serial_primes += examples::is_prime_trial(x);
  double serial = sw.seconds();

  mproc::Pool pool({.processes = processes});
  std::vector<Run> runs;
  auto per_worker = static_cast<long long>((n + static_cast<std::size_t>(processes) - 1) / static_cast<std::size_t>(processes));
  for (long long chunk : {per_worker, 0LL, 16LL, 1LL}) {
    sw.reset();
    auto results = pool.map(check, input, chunk);
    runs.push_back({"map", chunk == per_worker ? "n/workers" : std::to_string(chunk), sw.seconds(), std::move(results)});
  }
  for (long long chunk : {0LL, 1LL}) {
    sw.reset();
    std::vector<Checked> results;
    for (const Checked& c : pool.imap_unordered(check, input, chunk)) results.push_back(c);
    runs.push_back({"imap_unordered", std::to_string(chunk), sw.seconds(), std::move(results)});
  }

  // Workers in a fixed order, so that columns line up across runs.
  std::vector<pid_t> pids = pool.worker_pids();
  std::sort(pids.begin(), pids.end());
  auto worker_index = [&](int pid) {
    auto it = std::find(pids.begin(), pids.end(), static_cast<pid_t>(pid));
    return static_cast<std::size_t>(it - pids.begin());  // pids.size() if a worker was replaced
  };

  examples::Table table({"method", "chunksize", "time", "items per worker", "busy ms per worker", "imbalance",
                         "primes"});
  table.row({"serial", "-", examples::human_time(serial), std::to_string(n), examples::format("%.0f", serial * 1e3),
             "-", std::to_string(serial_primes)});
  bool ok = serial_primes == expected;
  for (const Run& r : runs) {
    std::vector<std::size_t> items(pids.size() + 1, 0);
    std::vector<double> busy(pids.size() + 1, 0);
    std::size_t primes = 0;
    for (const Checked& c : r.results) {
      std::size_t w = worker_index(c.pid);
      ++items[w];
      busy[w] += static_cast<double>(c.ns) / 1e6;
      primes += c.prime;
    }
    if (items.back() == 0) {  // no replaced worker: drop the spare column
      items.pop_back();
      busy.pop_back();
    }
    std::string items_s, busy_s;
    double max_busy = 0, sum_busy = 0;
    for (std::size_t w = 0; w < items.size(); ++w) {
      if (w) {
        items_s += '/';
        busy_s += '/';
      }
      items_s += std::to_string(items[w]);
      busy_s += examples::format("%.0f", busy[w]);
      max_busy = std::max(max_busy, busy[w]);
      sum_busy += busy[w];
    }
    double imbalance = sum_busy > 0 ? max_busy / (sum_busy / static_cast<double>(items.size())) : 0;
    table.row({r.method, r.chunksize, examples::human_time(r.seconds), items_s, busy_s,
               examples::format("%.2f", imbalance), std::to_string(primes)});
    ok &= primes == expected && r.results.size() == n;
  }
  table.print();
  std::printf("\nexpected primes: %zu (Miller-Rabin)\n", expected);
  return examples::verdict(ok, "every run found the same primes");
}
