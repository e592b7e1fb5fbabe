// bench/common/work.hpp — the busy work the benchmarks hand to workers, the same
// in every C++ program (the Python scripts do the same in bench/common/mp_common.py).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>

namespace bench {

/// `iters` steps of one dependent multiply-add chain: CPU work the compiler can
/// neither fold into a formula nor vectorize (the articles' `count += i` loop,
/// which a C++ compiler would fold). Returns the chain's end so it is used.
inline std::uint64_t spin(std::uint64_t iters, std::uint64_t seed = 0) {
  std::uint64_t x = seed;
  for (std::uint64_t i = 0; i < iters; ++i) x = x * 6364136223846793005ULL + i;
  return x;
}

/// spin() iterations per microsecond on this machine: the fastest of a few
/// timed runs (the slower ones were interrupted by other work on the machine).
inline double spin_iters_per_us() {
  using Clock = std::chrono::steady_clock;
  constexpr std::uint64_t n = 2'000'000;
  double best = 1e300;
  volatile std::uint64_t sink = 0;
  for (int i = 0; i < 5; ++i) {
    auto t0 = Clock::now();
    sink = sink + spin(n, static_cast<std::uint64_t>(i));
    best = std::min(best, std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  return static_cast<double>(n) / best;
}

/// Monte Carlo pi: points inside the unit quarter circle out of n, from a
/// generator seeded with `seed`.
inline long long pi_part(std::uint64_t seed, long long n) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  long long inside = 0;
  for (long long i = 0; i < n; ++i) {
    double x = u(rng), y = u(rng);
    inside += x * x + y * y <= 1.0;
  }
  return inside;
}

}  // namespace bench
