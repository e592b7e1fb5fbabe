// monte_carlo_pi — estimating π by throwing darts, serially, with std::thread and
// with a process Pool, and a table of the speedups.
//
// High Performance Python (chapter 9) opens with this: throw random points into
// the unit square, count those inside the quarter circle, π ≈ 4 · inside / total.
// In Python the thread version is no faster than the serial one (the GIL); the
// process pool scales with the cores. In C++ there is no GIL: threads and
// processes both scale, and the table shows what a process costs on top (start-up
// of the pool, one message per chunk each way) — small next to the work here.
//
// The work is cut into the same chunks for every method, each with its own seed,
// so every method counts exactly the same hits: the check is exact equality, not
// "close to π".
//
// What to look for: the "hits" column is the same on every row; the speedup of
// threads and processes with N workers approaches min(N, cores); the pool's
// start-up time is printed apart from the timed runs.
//
//   monte_carlo_pi [--samples=80000000] [--chunks=64] [--max-workers=4]
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numbers>
#include <numeric>
#include <ranges>
#include <thread>
#include <vector>

#include <mproc/mproc.hpp>

#include "common.hpp"
#include "darts.hpp"

namespace {

using examples::count_hits;

std::uint64_t serial(std::uint64_t per_chunk, int chunks) {
  std::uint64_t hits = 0;
  for (int c = 0; c < chunks; ++c) hits += count_hits(per_chunk, c);
  return hits;
}

// `workers` threads take chunks from a shared counter.
std::uint64_t threads(std::uint64_t per_chunk, int chunks, int workers) {
  std::atomic<int> next{0};
  std::atomic<std::uint64_t> hits{0};
  std::vector<std::jthread> pool;
  for (int w = 0; w < workers; ++w) {
    pool.emplace_back([&] {
      for (int c; (c = next++) < chunks;) hits += count_hits(per_chunk, c);
    });
  }
  pool.clear();  // joins
  return hits;
}

// The same chunks through a process pool: map() over the chunk indices, with the
// chunk size bound to the function (mproc::bind: a capturing lambda would not
// compile, since captures cannot cross a process boundary). chunksize 1: each
// chunk is a few milliseconds of work, so one per message balances best.
std::uint64_t processes(mproc::Pool& pool, std::uint64_t per_chunk, int chunks) {
  std::vector<std::uint64_t> hits = pool.map(mproc::bind(count_hits, per_chunk), std::views::iota(0, chunks), 1);
  return std::accumulate(hits.begin(), hits.end(), std::uint64_t{0});
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  auto samples = static_cast<std::uint64_t>(flags.get("samples", 80'000'000, "darts in all"));
  int chunks = static_cast<int>(flags.get("chunks", 64, "pieces of work"));
  int max_workers = static_cast<int>(flags.get("max-workers", 4, "workers: 1, 2, 4, ... up to this"));
  flags.check();

  std::uint64_t per_chunk = samples / static_cast<std::uint64_t>(chunks);
  std::uint64_t total = per_chunk * static_cast<std::uint64_t>(chunks);
  std::printf("pi from %llu darts in %d chunks; this machine: cpu_count() = %d\n\n",
              static_cast<unsigned long long>(total), chunks, mproc::cpu_count());

  examples::Table table({"method", "workers", "time", "speedup", "hits", "pi"});
  auto add_row = [&](const char* method, int workers, double seconds, double base, std::uint64_t hits) {
    table.row({method, workers ? std::to_string(workers) : "-", examples::human_time(seconds),
               examples::format("%.2fx", base / seconds), std::to_string(hits),
               examples::format("%.6f", 4.0 * static_cast<double>(hits) / static_cast<double>(total))});
  };

  (void)count_hits(per_chunk, 0);  // warm-up: page in the code, wake the CPU up
  examples::Stopwatch sw;
  std::uint64_t reference = serial(per_chunk, chunks);
  double base = sw.seconds();
  add_row("serial", 0, base, base, reference);
  bool same = true;

  for (int w = 1; w <= max_workers; w *= 2) {
    sw.reset();
    std::uint64_t h = threads(per_chunk, chunks, w);
    add_row("threads", w, sw.seconds(), base, h);
    same &= h == reference;
  }
  std::vector<std::string> startup;
  for (int w = 1; w <= max_workers; w *= 2) {
    sw.reset();
    mproc::Pool pool({.processes = w});  // started outside the timed run
    startup.push_back(examples::format("%d: %s", w, examples::human_time(sw.seconds()).c_str()));
    sw.reset();
    std::uint64_t h = processes(pool, per_chunk, chunks);
    add_row("processes", w, sw.seconds(), base, h);
    same &= h == reference;
  }
  table.print();
  std::printf("\npool start-up (not in the times above), by workers:");
  for (auto& s : startup) std::printf("  %s", s.c_str());
  std::printf("\n");

  double pi = 4.0 * static_cast<double>(reference) / static_cast<double>(total);
  std::printf("estimate %.6f, error %.6f\n", pi, pi - std::numbers::pi);
  bool ok = same && std::abs(pi - std::numbers::pi) < 0.01;
  return examples::verdict(ok, "every method counted the same hits, and the estimate is close to pi");
}
