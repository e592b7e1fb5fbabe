// mpi_pi — Monte Carlo π across MPI ranks: the monte_carlo_pi example's darts,
// with the Pool replaced by mproc::mpi::Pool (the one-line change), so the chunks
// run on the other ranks' worker processes.
//
//   mpirun -np 3 ./mpi_pi [--samples=40000000] [--chunks=48]
//
// Rank 0 runs main() and sends the chunks; ranks 1.. each run theirs in their own
// local worker processes. Every chunk has its own seed, so the ranks count exactly
// the hits the serial loop on rank 0 counts: the check is equality, not "close to
// π". The efficiency line is speedup / workers; on a machine with fewer cores than
// ranks + workers (mpirun --oversubscribe on 2 cores) it is honest, not good: the
// ranks share the cores with each other and with rank 0's MPI thread.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numbers>
#include <numeric>
#include <ranges>
#include <vector>

#include <mproc/mpi.hpp>

#include "common.hpp"
#include "darts.hpp"

using examples::count_hits;

int main(int argc, char** argv) {
  mproc::mpi::init(argc, argv);  // ranks 1.. serve the chunks here, then exit
  examples::Flags flags(argc, argv);
  auto samples = static_cast<std::uint64_t>(flags.get("samples", 40'000'000, "darts in all"));
  int chunks = static_cast<int>(flags.get("chunks", 48, "pieces of work"));
  flags.check();
  const std::uint64_t per_chunk = samples / static_cast<std::uint64_t>(chunks);
  const std::uint64_t total = per_chunk * static_cast<std::uint64_t>(chunks);

  examples::Stopwatch sw;
  std::uint64_t reference = 0;
  for (int c = 0; c < chunks; ++c) reference += count_hits(per_chunk, c);
  const double serial = sw.seconds();

  sw.reset();
  mproc::mpi::Pool pool;  // each serving rank: its share of its node's cores
  const double startup = sw.seconds();
  sw.reset();
  std::vector<std::uint64_t> hits = pool.map(mproc::bind(count_hits, per_chunk), std::views::iota(0, chunks), 1);
  const double cluster = sw.seconds();
  const std::uint64_t sum = std::accumulate(hits.begin(), hits.end(), std::uint64_t{0});

  const double pi = 4.0 * static_cast<double>(sum) / static_cast<double>(total);
  std::printf("pi from %llu darts in %d chunks over %d ranks (%zu serving, %d workers in all)\n",
              static_cast<unsigned long long>(total), chunks, mproc::mpi::size(), pool.ranks().size(),
              pool.processes());
  std::printf("  serial on rank 0  %s\n", examples::human_time(serial).c_str());
  std::printf("  across the ranks  %s (pool start-up %s, not included)\n", examples::human_time(cluster).c_str(),
              examples::human_time(startup).c_str());
  std::printf("  speedup %.2fx, efficiency %.0f %% of %d workers (cpu_count() here: %d)\n", serial / cluster,
              100.0 * serial / cluster / pool.processes(), pool.processes(), mproc::cpu_count());
  std::printf("estimate %.6f, error %.6f\n", pi, pi - std::numbers::pi);
  const bool ok = sum == reference && std::abs(pi - std::numbers::pi) < 0.01;
  std::printf(ok ? "OK: the ranks counted exactly the serial hits\n" : "FAILED: hits differ (%llu vs %llu)\n",
              static_cast<unsigned long long>(sum), static_cast<unsigned long long>(reference));
  return ok ? 0 : 1;
}
