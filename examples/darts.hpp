// examples/darts.hpp — the Monte Carlo π examples' darts (monte_carlo_pi.cpp on
// one machine, mpi_pi.cpp across MPI ranks): one chunk of work, seeded by its
// index, so every way of running the chunks counts exactly the same hits.
#pragma once

#include <cstdint>

namespace examples {

// splitmix64: a small, fast generator, good enough for darts.
struct SplitMix64 {
  std::uint64_t s;
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
};

// One chunk: `n` darts from the generator seeded with the chunk's index.
inline std::uint64_t count_hits(std::uint64_t n, int chunk) {
  SplitMix64 rng{0x5eed0000ULL + static_cast<std::uint64_t>(chunk)};
  std::uint64_t hits = 0;
  for (std::uint64_t i = 0; i < n; ++i) {
    double x = rng.uniform(), y = rng.uniform();
    hits += x * x + y * y <= 1.0;
  }
  return hits;
}

}  // namespace examples
