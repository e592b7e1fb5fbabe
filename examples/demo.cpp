// demo — the README's tour of mproc (`make demo`), in scenes:
//
//   1. start-up: this process, the start method, what starting processes costs;
//   2. a live progress bar over imap_unordered;
//   3. serial vs std::thread vs mproc processes on the articles' three workloads
//      (CPU-bound prime counting, I/O-like waiting, a matrix product on shared
//      memory), as a table of times and speedups;
//   4. a pool with a per-task timeout surviving a task that segfaults and one that
//      never ends, and still usable afterwards;
//   5. that pool's timeline: a summary table, and timeline.html (a Gantt chart of
//      which worker ran what, when) plus a Chrome trace written to --out.
//
// Everything runs on this machine with the default start method (forkserver): no
// server, nothing to set up. The full tour takes under 10 s on 2 cores; --quick
// (the CTest test) runs the same scenes with smaller work in about 2 s.
//
//   demo [--quick] [--workers=N] [--out DIR]
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <numeric>
#include <ranges>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <mproc/mproc.hpp>

#include "common.hpp"
#include "primes.hpp"

namespace {

using namespace std::chrono_literals;
using examples::format;
using examples::human_time;

/// The sizes of every scene; --quick divides the work.
struct Sizes {
  int workers;                 // threads and processes in scenes 2 and 3
  int pages;                   // scene 2: items of the progress bar
  int page_ms;                 // scene 2: mean wait per item
  std::uint64_t prime_limit;   // scene 3: count the primes below this
  int wait_ms;                 // scene 3: one I/O-like task
  int dim;                     // scene 3: matrix size
  std::chrono::milliseconds timeout;  // scene 4: the pool's per-task limit
};

constexpr int kScenes = 5;

/// A scene's one-line heading: what it shows.
void heading(int scene, const char* what) { std::printf("\n== %d/%d  %s\n", scene, kScenes, what); }

// ---- scene 1: start-up -----------------------------------------------------------------

void nothing() {}

/// Starts and joins `n` processes that do nothing; the seconds it took.
double start_cost(mproc::StartMethod method, int n) {
  examples::Stopwatch sw;
  std::vector<mproc::Process> children;
  for (int i = 0; i < n; ++i) {
    children.emplace_back(mproc::ProcessOptions{.start_method = method}, nothing);
    children.back().start();
  }
  for (auto& p : children) p.join();
  return sw.seconds();
}

// ---- scene 2: a progress bar -----------------------------------------------------------

/// A stand-in for fetching page `page`: waits 0.25x to 1.75x `mean_ms`, unevenly,
/// and says who did it.
std::pair<int, int> fetch(int mean_ms, int page) {
  int ms = mean_ms * (1 + (page * 3) % 7) / 4;
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return {page, static_cast<int>(::getpid())};
}

// ---- scene 3: the articles' workloads ---------------------------------------------------

/// CPU-bound: the primes in block `task` of [0, limit) cut into `tasks` blocks,
/// by trial division.
std::uint64_t count_primes(std::uint64_t limit, int tasks, int task) {
  std::uint64_t lo = limit * static_cast<std::uint64_t>(task) / static_cast<std::uint64_t>(tasks);
  std::uint64_t hi = limit * static_cast<std::uint64_t>(task + 1) / static_cast<std::uint64_t>(tasks);
  std::uint64_t n = 0;
  for (std::uint64_t k = lo; k < hi; ++k) n += examples::is_prime_trial(k);
  return n;
}

/// I/O-like: waits `ms` (a request, a disk, a device), using no CPU meanwhile.
int wait_for_io(int ms, int task) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return task;
}

/// Shared memory: rows [band * rows, (band + 1) * rows) of c = a · b, all three
/// dim x dim matrices in SharedArrays that every worker maps (nothing is copied:
/// the handles travel, the data stays put). Returns the sum of the rows written.
double matmul_band(mproc::SharedArray<double> a, mproc::SharedArray<double> b, mproc::SharedArray<double> c, int dim,
                   int rows, int band) {
  auto n = static_cast<std::size_t>(dim);
  const double* A = a.data();
  const double* B = b.data();
  double* C = c.data();
  double sum = 0;
  std::size_t end = std::min(n, static_cast<std::size_t>(band + 1) * static_cast<std::size_t>(rows));
  for (std::size_t i = static_cast<std::size_t>(band) * static_cast<std::size_t>(rows); i < end; ++i) {
    double* ci = C + i * n;
    std::fill(ci, ci + n, 0.0);
    for (std::size_t k = 0; k < n; ++k) {
      double aik = A[i * n + k];
      const double* bk = B + k * n;
      for (std::size_t j = 0; j < n; ++j) ci[j] += aik * bk[j];
    }
    sum = std::accumulate(ci, ci + n, sum);
  }
  return sum;
}

/// One workload run three ways: `task(t)` serially and on threads, `bound`
/// (the same function with its data bound) mapped over the tasks by the pool.
/// Returns {serial, threads, processes} seconds; `same` is cleared if the
/// results differ.
template <class R, class Task, class Bound>
std::array<double, 3> three_ways(mproc::Pool& pool, int workers, int tasks, const Task& task, const Bound& bound,
                                 bool& same) {
  std::vector<R> serial(static_cast<std::size_t>(tasks)), threaded(serial.size());
  examples::Stopwatch sw;
  for (int t = 0; t < tasks; ++t) serial[static_cast<std::size_t>(t)] = task(t);
  double s = sw.seconds();
  sw.reset();
  examples::run_on_threads(workers, tasks, [&](int t) { threaded[static_cast<std::size_t>(t)] = task(t); });
  double th = sw.seconds();
  sw.reset();
  std::vector<R> processed = pool.map(bound, std::views::iota(0, tasks), 1);
  double p = sw.seconds();
  same &= serial == threaded && serial == processed;
  return {s, th, p};
}

// ---- scene 4: crash and timeout -------------------------------------------------------

/// Item `crash` segfaults, item `runaway` never returns, the others take 50 ms.
int risky(int crash, int runaway, int x) {
  if (x == crash) {
    // Sanitizer builds install a SIGSEGV handler that reports and exit(1)s; the
    // default action makes this the same crash in every build: killed by SIGSEGV.
    std::signal(SIGSEGV, SIG_DFL);
    std::raise(SIGSEGV);
  }
  if (x == runaway) {
    volatile std::uint64_t spin = 0;  // volatile: a loop without side effects may be assumed to end
    for (;;) spin = spin + 1;
  }
  std::this_thread::sleep_for(50ms);
  return x * x;
}

int square(int x) { return x * x; }

/// Waits at the barrier (with a deadline) and returns this worker's pid: a map of
/// one such task per worker returns once every worker slot has a live process,
/// so it waits for the replacements of the workers scene 4 lost.
pid_t meet(mproc::Barrier everyone, int) {
  everyone.wait_for(10s);  // BrokenBarrierError if a replacement never came
  return ::getpid();
}

std::string pid_list(const std::vector<pid_t>& pids) {
  std::string s;
  for (pid_t p : pids) {
    if (!s.empty()) s += ' ';
    s += std::to_string(p);
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);  // first thing: workers started by forkserver and spawn begin here
  examples::Flags flags(argc, argv);
  bool quick = flags.has("quick", "smaller work, same scenes (the CTest test)");
  int workers = static_cast<int>(flags.get("workers", std::clamp(mproc::cpu_count(), 4, 16),
                                           "threads and processes in the comparisons"));
  const char* tmpdir = std::getenv("TMPDIR");
  std::filesystem::path out = flags.get_string("out", tmpdir && *tmpdir ? tmpdir : "/tmp",
                                               "where timeline.html and timeline.json are written");
  flags.check();
  // Line-buffered even into a pipe, so the progress bar (stderr) and the text
  // (stdout) come out in order in a log.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  Sizes z = quick ? Sizes{workers, 16, 60, 300'000, 40, 256, 500ms}
                  : Sizes{workers, 48, 150, 8'000'000, 100, 1024, 1000ms};
  const int cores = mproc::cpu_count();
  examples::Stopwatch total;
  bool ok = true;

  // 1 -----------------------------------------------------------------------------------
  heading(1, "Start-up: this program is the main process; workers are processes it starts");
  std::printf("  main process pid %d, cpu_count() = %d, start method %s (the default)\n",
              static_cast<int>(::getpid()), cores, std::string(mproc::to_string(mproc::get_start_method())).c_str());
  std::printf("  start + join of 4 empty processes:");
  for (mproc::StartMethod m : mproc::get_all_start_methods()) {
    std::printf("  %s %s", std::string(mproc::to_string(m)).c_str(), human_time(start_cost(m, 4)).c_str());
  }
  std::printf("\n");
  examples::Stopwatch sw;
  mproc::Pool pool({.processes = z.workers});
  std::printf("  Pool({.processes = %d}) started in %s: worker pids %s\n", z.workers, human_time(sw.seconds()).c_str(),
              pid_list(pool.worker_pids()).c_str());

  // 2 -----------------------------------------------------------------------------------
  heading(2, "Progress bar: imap_unordered yields results as they finish; the bar counts them (stderr)");
  std::printf("  %d uneven 'page fetches' (%d ms on average) on %d workers\n", z.pages, z.page_ms, z.workers);
  std::fflush(stdout);
  sw.reset();
  std::vector<int> order;
  std::map<int, int> per_pid;
  for (auto [page, pid] :
       pool.imap_unordered(mproc::bind(fetch, z.page_ms), std::views::iota(0, z.pages), {0, true, "pages"})) {
    order.push_back(page);
    ++per_pid[pid];
  }
  std::printf("  %zu pages in %s; the first ten in the order they finished: %s\n", order.size(),
              human_time(sw.seconds()).c_str(),
              examples::to_list(std::vector<int>(order.begin(), order.begin() + std::min<std::size_t>(10, order.size())))
                  .c_str());
  std::string spread;
  for (auto [pid, n] : per_pid) spread += format("  %d: %d", pid, n);
  std::printf("  pages per worker pid:%s\n", spread.c_str());
  ok &= static_cast<int>(order.size()) == z.pages;

  // 3 -----------------------------------------------------------------------------------
  heading(3, "Serial vs std::thread vs mproc processes: the same tasks, timed three ways");
  std::printf("  this machine: cpu_count() = %d, so CPU-bound work gains at most ~%dx; waiting gains up to %dx\n",
              cores, std::min(cores, z.workers), z.workers);
  int tasks = 4 * z.workers;
  auto n = static_cast<std::size_t>(z.dim);
  mproc::SharedArray<double> a(n * n), b(n * n), c(n * n);
  for (std::size_t i = 0; i < n * n; ++i) {
    a[i] = static_cast<double>(i % 7);
    b[i] = static_cast<double>(i % 5);
  }
  // One band of rows per worker: each process task maps the arrays afresh and
  // faults in the pages it reads (all of b), so bands must be big to pay for that.
  int rows = (z.dim + z.workers - 1) / z.workers;
  bool same = true;
  auto primes = three_ways<std::uint64_t>(
      pool, z.workers, tasks, [&](int t) { return count_primes(z.prime_limit, tasks, t); },
      mproc::bind(count_primes, z.prime_limit, tasks), same);
  auto io = three_ways<int>(
      pool, z.workers, 2 * z.workers, [&](int t) { return wait_for_io(z.wait_ms, t); },
      mproc::bind(wait_for_io, z.wait_ms), same);
  auto matmul = three_ways<double>(
      pool, z.workers, z.workers, [&](int t) { return matmul_band(a, b, c, z.dim, rows, t); },
      mproc::bind(matmul_band, a, b, c, z.dim, rows), same);

  examples::Table table({"workload", "serial", format("%d threads", z.workers), format("%d processes", z.workers),
                         "threads speedup", "processes speedup"});
  auto row = [&](const std::string& name, const std::array<double, 3>& t) {
    table.row({name, human_time(t[0]), human_time(t[1]), human_time(t[2]), format("%.2fx", t[0] / t[1]),
               format("%.2fx", t[0] / t[2])});
  };
  row(format("cpu: primes below %llu", static_cast<unsigned long long>(z.prime_limit)), primes);
  row(format("io: %d waits of %d ms", 2 * z.workers, z.wait_ms), io);
  row(format("shared memory: %dx%d matmul", z.dim, z.dim), matmul);
  table.print();
  std::printf("  every way computed the same results: %s\n", same ? "yes" : "NO");
  std::printf("  (C++ has no GIL: threads and processes both scale with the cores; a process task pays a\n"
              "  message each way, and maps the SharedArrays it is given: their data is never copied)\n");
  ok &= same;

  // 4 -----------------------------------------------------------------------------------
  heading(4, "Crash and timeout: one task segfaults, one never ends; the others finish, the pool lives on");
  const int items = 8, crash = 3, runaway = 5;
  mproc::Pool risky_pool({.processes = 2, .timeout = z.timeout, .timeline = true});
  std::printf("  Pool({.processes = 2, .timeout = %lld ms}); imap over %d items: item %d raises SIGSEGV, item %d "
              "loops forever\n",
              static_cast<long long>(z.timeout.count()), items, crash, runaway);
  std::vector<pid_t> before = risky_pool.worker_pids();
  sw.reset();
  auto results = risky_pool.imap(mproc::bind(risky, crash, runaway), std::views::iota(0, items), 1);
  int good = 0, lost = 0, timed_out = 0;
  for (int i = 0;; ++i) {
    try {
      auto v = results.next();  // the next item's result, or its error
      if (!v) break;
      std::printf("  item %d: %d\n", i, *v);
      good += *v == i * i;
    } catch (const mproc::WorkerLostError& e) {
      std::printf("  item %zu: WorkerLostError, exitcode %d: %s\n", e.index(), e.exitcode(), e.what());
      lost += e.index() == static_cast<std::size_t>(crash) && e.exitcode() == -SIGSEGV;
    } catch (const mproc::TaskTimeoutError& e) {
      std::printf("  item %zu: TaskTimeoutError: %s\n", e.index(), e.what());
      timed_out += e.index() == static_cast<std::size_t>(runaway);
    }
  }
  std::printf("  %d results, 1 crash, 1 timeout in %s\n", good, human_time(sw.seconds()).c_str());
  // The pool reports a lost task before its worker's replacement is up: wait for
  // every slot to have a live worker (each of two tasks meets the other at a barrier),
  // then list the pids.
  std::vector<pid_t> met = risky_pool.map(mproc::bind(meet, mproc::Barrier(2)), std::views::iota(0, 2), 1);
  std::vector<pid_t> after = risky_pool.worker_pids();
  std::printf("  workers were pids %s, now %s\n", pid_list(before).c_str(), pid_list(after).c_str());
  std::ranges::sort(before);
  std::ranges::sort(met);
  std::ranges::sort(after);
  ok &= after.size() == 2 && met == after && after != before;
  auto squares = risky_pool.map(square, std::views::iota(0, 10));
  std::printf("  pool still usable: map(square, 0..9) = %s\n", examples::to_list(squares).c_str());
  ok &= good == items - 2 && lost == 1 && timed_out == 1 && squares[9] == 81;

  // 5 -----------------------------------------------------------------------------------
  heading(5, "Timeline: where and when each task of scene 4 ran (PoolOptions::timeline), to read or open");
  mproc::Timeline timeline = risky_pool.timeline();
  std::string summary = timeline.summary();
  for (std::size_t at = 0; at < summary.size();) {  // indented like the other scenes
    std::size_t nl = std::min(summary.find('\n', at), summary.size());
    std::printf("%s%.*s\n", nl > at ? "  " : "", static_cast<int>(nl - at), summary.data() + at);
    at = nl + 1;
  }
  std::filesystem::create_directories(out);
  std::filesystem::path html = std::filesystem::absolute(out / "timeline.html");
  std::filesystem::path trace = std::filesystem::absolute(out / "timeline.json");
  timeline.write_html(html, "mproc demo: a pool surviving a segfault and a runaway task");
  timeline.write_chrome_trace(trace);
  std::printf("  timeline chart: %s (open it in a browser)\n", html.c_str());
  std::printf("  Chrome trace:   %s (chrome://tracing or ui.perfetto.dev)\n", trace.c_str());
  ok &= std::filesystem::exists(html) && std::filesystem::exists(trace);

  std::printf("\ndemo finished in %s\n", human_time(total.seconds()).c_str());
  return examples::verdict(ok, "every scene did what it says");
}
