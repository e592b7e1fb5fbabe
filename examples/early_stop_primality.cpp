// early_stop_primality — one big number checked for primality by every worker at
// once, each trying its own range of divisors; the first to find a factor tells
// the others through a shared Event, and they stop.
//
// High Performance Python (chapter 9, "verifying primes using interprocess
// communication"): splitting one number's divisors over several CPUs only pays
// off for composites if the workers can stop early once any of them finds a
// factor; without a shared flag every worker finishes its range, so a composite
// costs as much as a prime. The book compares flags held in shared objects, OS
// primitives and Redis; here the flag is an mproc::Event (one shared page;
// is_set() is a plain atomic load, a few nanoseconds, cheap enough to check every
// few thousand divisions) and the factor travels back in a Value.
//
// Three runs, each with one Process per worker over equal slices of [3, √n]:
//   prime       n is prime: no early exit is possible, every worker does its slice;
//   composite   n = p·q with p a quarter of the way into the last worker's slice:
//               that worker finds p and sets the flag, the others stop at once;
//   no flag     the same composite without the flag: everyone finishes.
//
// What to look for: per worker, divisions done out of its slice and why it
// stopped ("found", "flag", "end"); in the composite run the others stop with
// "flag" having done a fraction of their slice, and the run takes a fraction of
// the no-flag time.
//
//   early_stop_primality [--workers=cpu_count] [--digits=16] [--check-every=4096]
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <mproc/mproc.hpp>

#include "common.hpp"
#include "primes.hpp"

namespace {

enum Stop : std::int64_t { kEnd = 0, kFound = 1, kFlag = 2 };

// Tries the odd divisors in [lo, hi). Every `check_every` divisors it looks at the
// flag (an atomic load). Reports in slot `id` of `work`: divisions done, and why it
// stopped. With use_flag false it never looks.
void search(int id, std::uint64_t n, std::uint64_t lo, std::uint64_t hi, std::uint64_t check_every, bool use_flag,
            mproc::Event found, mproc::Value<std::uint64_t> factor, mproc::RawArray<std::int64_t> work) {
  std::uint64_t tried = 0;
  Stop why = kEnd;
  for (std::uint64_t d = lo | 1; d < hi; d += 2) {
    if (use_flag && tried % check_every == 0 && found.is_set()) {
      why = kFlag;
      break;
    }
    ++tried;
    if (n % d == 0) {
      factor.set(d);
      found.set();  // wakes nobody here (no one waits); the others see it at their next check
      why = kFound;
      break;
    }
  }
  work[2 * static_cast<std::size_t>(id)] = static_cast<std::int64_t>(tried);
  work[2 * static_cast<std::size_t>(id) + 1] = why;
}

struct Outcome {
  double seconds;
  std::uint64_t factor;
  std::uint64_t total_work;
};

Outcome run(const char* title, std::uint64_t n, int workers, std::uint64_t check_every, bool use_flag) {
  std::uint64_t limit = examples::isqrt(n) + 1;
  mproc::Event found;
  mproc::Value<std::uint64_t> factor(0);
  mproc::RawArray<std::int64_t> work(2 * static_cast<std::size_t>(workers));

  examples::Stopwatch sw;
  std::vector<mproc::Process> procs;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> slices;
  for (int w = 0; w < workers; ++w) {
    std::uint64_t lo = 3 + (limit - 3) * static_cast<std::uint64_t>(w) / static_cast<std::uint64_t>(workers);
    std::uint64_t hi = 3 + (limit - 3) * static_cast<std::uint64_t>(w + 1) / static_cast<std::uint64_t>(workers);
    slices.emplace_back(lo, hi);
    procs.emplace_back(search, w, n, lo, hi, check_every, use_flag, found, factor, work);
    procs.back().start();
  }
  for (auto& p : procs) p.join();
  double seconds = sw.seconds();

  std::printf("%s: n = %llu, %d workers, %s\n", title, static_cast<unsigned long long>(n), workers,
              examples::human_time(seconds).c_str());
  examples::Table table({"worker", "divisors", "divisions", "of its slice", "stopped by"});
  std::uint64_t total = 0;
  for (int w = 0; w < workers; ++w) {
    auto [lo, hi] = slices[static_cast<std::size_t>(w)];
    auto tried = static_cast<std::uint64_t>(work[2 * static_cast<std::size_t>(w)]);
    auto why = work[2 * static_cast<std::size_t>(w) + 1];
    double share = static_cast<double>(tried) / static_cast<double>((hi - lo + 1) / 2);
    table.row({std::to_string(w), examples::format("%llu..%llu", static_cast<unsigned long long>(lo),
                                                   static_cast<unsigned long long>(hi)),
               std::to_string(tried), examples::format("%.0f%%", 100 * share),
               why == kFound ? "found" : why == kFlag ? "flag" : "end"});
    total += tried;
  }
  table.print();
  std::printf("  factor: %llu, divisions in all: %llu\n\n", static_cast<unsigned long long>(factor.get()),
              static_cast<unsigned long long>(total));
  return {seconds, factor.get(), total};
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  int workers = static_cast<int>(flags.get("workers", mproc::cpu_count(), "worker processes"));
  int digits = static_cast<int>(flags.get("digits", 16, "size of n (at most 18)"));
  auto check_every = static_cast<std::uint64_t>(flags.get("check-every", 4096, "divisions between flag checks"));
  flags.check();
  workers = std::max(workers, 2);

  // A prime of about `digits` digits, and a composite p·q of the same size whose
  // smallest factor p sits a quarter of the way into the last worker's slice.
  auto target = static_cast<std::uint64_t>(std::pow(10.0, digits));
  std::uint64_t s = examples::isqrt(target);
  double f = (workers - 1 + 0.25) / workers;  // p = f·√n, so q = n/p = p/f²
  std::uint64_t p = examples::next_prime(static_cast<std::uint64_t>(f * static_cast<double>(s)));
  std::uint64_t q = examples::next_prime(static_cast<std::uint64_t>(static_cast<double>(p) / (f * f)));
  std::uint64_t prime = examples::next_prime(target + 1);

  Outcome a = run("prime", prime, workers, check_every, true);
  Outcome b = run("composite", p * q, workers, check_every, true);
  Outcome c = run("composite, no flag", p * q, workers, check_every, false);

  std::printf("composite with the flag: %s and %.0f%% of the divisions of the run without it\n",
              examples::human_time(b.seconds).c_str(),
              100.0 * static_cast<double>(b.total_work) / static_cast<double>(c.total_work));
  bool ok = a.factor == 0 && b.factor == p && c.factor == p && b.total_work < c.total_work;
  return examples::verdict(ok, "the prime has no factor, the composite's factor was found, the others stopped early");
}
