// shared_array_sum — one large array in shared memory, read and written by every
// worker in place, never copied.
//
// High Performance Python (chapter 9) shares a 6.4 GB numpy array between four
// processes to split a big job "without copying data". mproc::SharedArray<T> is
// that array: anonymous shared memory (a memfd, nothing in /dev/shm to clean up),
// passed to a task as a handle — its file descriptor and size — so sending it
// costs the same for 1 KiB and for 8 GiB, and every process maps the same pages.
//
// Here the array is bound to the task function with mproc::bind (the handle
// travels with every chunk of work), and a Pool runs one task per slice:
//   1. each worker sums its slice; the partial sums add up to the parent's sum;
//   2. each worker negates its slice in place; the parent, which never copied
//      anything back, sums again and finds the negated total.
// The values are small integers stored as doubles, so every sum is exact and
// "equal" means equal.
//
// What to look for: the time to fill the array (page faults: the memory is
// touched for the first time) against the time to hand it to a task (well under a
// millisecond, whatever the size); "sum by workers == sum here". No copy is not
// no cost: a task's first pass over its slice maps the pages into the worker (a
// page fault per few pages), several times slower than a second pass.
//
//   shared_array_sum [--mib=256] [--processes=cpu_count] [--slices=16]
//   shared_array_sum --mib=6400       (the book's 6.4 GB; needs that much free RAM)
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <ranges>
#include <vector>

#include <mproc/mproc.hpp>

#include "common.hpp"

namespace {

struct Slice {  // trivially copyable: sent as its bytes
  std::size_t begin, end;
};

struct PartialSum {
  double sum;
  double first_pass;   // seconds
  double second_pass;  // seconds
};

double sum_of(const mproc::SharedArray<double>& a, Slice s) {
  double sum = 0;
  for (std::size_t i = s.begin; i < s.end; ++i) sum += a[i];
  return sum;
}

// Runs in a worker: reads the slice straight from the shared pages, twice. The
// first pass also pays for mapping the pages into this process (a page fault per
// few pages: the handle arrived with this task and was mapped just now); the
// second pass reads memory that is already mapped.
PartialSum sum_slice(mproc::SharedArray<double> a, Slice s) {
  examples::Stopwatch sw;
  double sum = sum_of(a, s);
  double first = sw.seconds();
  sw.reset();
  double again = sum_of(a, s);
  double second = sw.seconds();
  return {sum == again ? sum : -1, first, second};
}

// Runs in a worker: only looks at the handle.
std::size_t size_of(mproc::SharedArray<double> a) { return a.size(); }

// Runs in a worker: writes the slice in place; the parent sees the change.
void negate_slice(mproc::SharedArray<double> a, Slice s) {
  for (std::size_t i = s.begin; i < s.end; ++i) a[i] = -a[i];
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  auto mib = static_cast<std::size_t>(flags.get("mib", 256, "array size in MiB"));
  int processes = static_cast<int>(flags.get("processes", mproc::cpu_count(), "worker processes"));
  auto nslices = static_cast<std::size_t>(flags.get("slices", 16, "tasks the array is cut into"));
  flags.check();

  std::size_t n = mib * (std::size_t{1} << 20) / sizeof(double);
  std::printf("SharedArray<double> of %zu elements (%zu MiB), %d worker processes, %zu slices\n", n, mib, processes,
              nslices);

  examples::Stopwatch sw;
  mproc::SharedArray<double> a(n);  // zero-filled, not yet touched
  for (std::size_t i = 0; i < n; ++i) a[i] = static_cast<double>(i % 1000);
  double fill = sw.seconds();
  sw.reset();
  double here = std::accumulate(a.begin(), a.end(), 0.0);
  double sum_here = sw.seconds();
  std::printf("  filled in %s, summed here in %s (%.2f GB/s): %.0f\n", examples::human_time(fill).c_str(),
              examples::human_time(sum_here).c_str(), static_cast<double>(n * sizeof(double)) / sum_here / 1e9, here);

  std::vector<Slice> slices;
  for (std::size_t k = 0; k < nslices; ++k) slices.push_back({n * k / nslices, n * (k + 1) / nslices});

  mproc::Pool pool({.processes = processes});
  mproc::SharedArray<double> tiny(1);
  (void)pool.apply(size_of, tiny);  // warm-up: the first task of a worker pays for its start
  sw.reset();
  std::size_t seen = pool.apply(size_of, a);  // the whole array as an argument
  std::printf("  handing all %zu MiB to a task and back: %s (the worker saw %zu elements)\n", mib,
              examples::human_time(sw.seconds()).c_str(), seen);

  // 1. Sum the slices in the workers. chunksize 1: one slice per message.
  sw.reset();
  std::vector<PartialSum> parts = pool.map(mproc::bind(sum_slice, a), slices, 1);
  double t_sum = sw.seconds();
  double by_workers = 0, first = 0, second = 0;
  for (const auto& p : parts) {
    by_workers += p.sum;
    first += p.first_pass;
    second += p.second_pass;
  }
  double bytes = static_cast<double>(n * sizeof(double));
  std::printf("  summed by the workers in %s: %.0f\n", examples::human_time(t_sum).c_str(), by_workers);
  std::printf("  read rate in a worker: %.2f GB/s on the first pass over its slice (mapping the pages), "
              "%.2f GB/s on the second\n", bytes / first / 1e9, bytes / second / 1e9);
  std::printf("  sum by workers %s sum here\n", by_workers == here ? "==" : "!=");

  // 2. Negate in place in the workers; read the result here, without a copy.
  sw.reset();
  pool.map(mproc::bind(negate_slice, a), slices, 1);
  double t_neg = sw.seconds();
  double after = std::accumulate(a.begin(), a.end(), 0.0);
  std::printf("  negated by the workers in %s; summed here again: %.0f\n", examples::human_time(t_neg).c_str(), after);
  std::printf("  the parent sees the workers' writes: %s\n", after == -here ? "yes" : "no");

  bool ok = seen == n && by_workers == here && after == -here;
  return examples::verdict(ok, "workers read and wrote the one shared array");
}
