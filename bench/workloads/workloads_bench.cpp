// Workloads benchmark: the articles' workloads run serially, on a C++ thread pool
// and on an mproc::Pool of processes, beside Python doing the same serially, on
// multiprocessing.pool.ThreadPool and on multiprocessing.Pool
// (bench/workloads/mp_workloads.py, run by this program), with the speedup of
// each over the serial run in its own language.
//
// Workloads (8 tasks each, 4 workers as in the articles; on a 2-core machine no
// speedup can pass 2x for CPU-bound work):
//   cpu_heavy    a dependent multiply-add loop (calibrated to a duration per task)
//   io_heavy     write a text of a few MiB to a file of its own, then remove it
//   sleep        sleep (a stand-in for waiting on a network or a disk)
//   dot_product  a square matrix product, plain loops
//   monte_carlo  darts for Monte Carlo pi
//
// Each language's tasks are sized to take about the same time serially (C++ does
// more work per task: a larger matrix, more darts), so times are comparable across
// languages only through the speedups; the sizes are in the row names.
//
//   workloads_bench [--quick] [--json FILE] [--python PATH | --no-python]
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mproc/pool.hpp>
#include <numeric>
#include <ranges>
#include <string>
#include <thread>
#include <vector>

#include "../common/report.hpp"
#include "../common/thread_pool.hpp"
#include "../common/work.hpp"

using Clock = std::chrono::steady_clock;

namespace {

constexpr int kTasks = 8;
constexpr int kWorkers = 4;

std::uint64_t cpu_heavy(std::uint64_t iters, int task) { return bench::spin(iters, static_cast<std::uint64_t>(task)); }

// Writes `bytes` of text (lines of 64 characters) to a file of its own in /tmp,
// closes and removes it; returns the bytes written.
std::uint64_t io_heavy(std::size_t bytes, int task) {
  std::string text(bytes, 'x');
  for (std::size_t i = 63; i < text.size(); i += 64) text[i] = '\n';
  std::string path = "/tmp/mproc_bench_io_" + std::to_string(::getpid()) + "_" + std::to_string(task);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  std::uint64_t written = 0;
  if (fd < 0) return 0;
  while (written < bytes) {
    ssize_t n = ::write(fd, text.data() + written, bytes - written);
    if (n <= 0) break;
    written += static_cast<std::uint64_t>(n);
  }
  ::close(fd);
  ::unlink(path.c_str());
  return written;
}

std::uint64_t sleep_ms(int ms, int task) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return static_cast<std::uint64_t>(task);
}

// C = A B for dim x dim matrices made from the task number, each element the dot
// product of a row of A and a column of B (B kept transposed, so both are read
// in order; mp_workloads.py computes the same); returns C's trace.
std::uint64_t dot_product(int dim, int task) {
  auto n = static_cast<std::size_t>(dim);
  std::vector<double> a(n * n), bt(n * n), c(n * n);
  for (std::size_t r = 0; r < n; ++r) {
    for (std::size_t k = 0; k < n; ++k) {
      a[r * n + k] = static_cast<double>((r * n + k + static_cast<std::size_t>(task)) % 7);
      bt[r * n + k] = static_cast<double>((k * n + r) % 5);  // B[k][r]
    }
  }
  for (std::size_t r = 0; r < n; ++r) {
    for (std::size_t col = 0; col < n; ++col) {
      c[r * n + col] = std::inner_product(a.begin() + static_cast<std::ptrdiff_t>(r * n),
                                          a.begin() + static_cast<std::ptrdiff_t>((r + 1) * n),
                                          bt.begin() + static_cast<std::ptrdiff_t>(col * n), 0.0);
    }
  }
  double trace = 0;
  for (std::size_t i = 0; i < n; ++i) trace += c[i * n + i];
  return static_cast<std::uint64_t>(trace);
}

std::uint64_t monte_carlo(long long darts, int task) {
  return static_cast<std::uint64_t>(bench::pi_part(static_cast<std::uint64_t>(task) + 1, darts));
}

struct Times {
  double serial, threads, processes;  // seconds
};

// The three ways to run task(0..kTasks-1) in C++, each the median of `reps` runs;
// `bound` is the same task with its parameter bound for the process pool.
template <class Task, class Bound>
Times measure(int reps, mproc::Pool& pool, bench::ThreadPool& threads, Task task, Bound bound) {
  volatile std::uint64_t sink = 0;  // every result is used, so no run can be optimized away
  auto med = [&](auto run) {
    std::vector<double> t;
    for (int i = 0; i < reps; ++i) {
      auto t0 = Clock::now();
      sink = sink + run();
      t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    return bench::percentile(t, 50);
  };
  auto sum = [](const std::vector<std::uint64_t>& v) { return std::accumulate(v.begin(), v.end(), std::uint64_t{0}); };
  Times t{};
  t.serial = med([&] {
    std::uint64_t s = 0;
    for (int i = 0; i < kTasks; ++i) s += task(i);
    return s;
  });
  t.threads = med([&] { return sum(threads.map(task, kTasks, 1)); });
  t.processes = med([&] { return sum(pool.map(bound, std::views::iota(0, kTasks), 1)); });
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  bench::Args args(argc, argv, "bench/results/workloads.json");
  const bool q = args.quick;
  const int reps = q ? 3 : 5;
  auto py = bench::run_python(args, "bench/workloads/mp_workloads.py");
  bench::Report r("Workloads", args);

  // Sizes per task (mp_workloads.py has Python's; see the comment at the top).
  const double task_ms = q ? 10 : 40;
  const auto iters = static_cast<std::uint64_t>(task_ms * 1000 * bench::spin_iters_per_us());
  const std::size_t io_bytes = (q ? 2 : 4) << 20;
  const int sleep_for = q ? 20 : 50;
  const int dim = q ? 256 : 320;
  const long long darts = q ? 500'000 : 2'000'000;

  mproc::Pool pool(mproc::PoolOptions{.processes = kWorkers});  // started before the timed runs
  bench::ThreadPool threads(kWorkers);
  // Every worker up and running before the timed runs (as mp_workloads.py).
  (void)pool.map(mproc::bind(cpu_heavy, std::uint64_t{0}), std::views::iota(0, 4 * kWorkers), 1);
  (void)threads.map([](int i) { return cpu_heavy(0, i); }, 4 * kWorkers, 1);

  // Row names give the sizes; where the languages differ, the C++ rows give C++'s
  // and the Python rows Python's (so a row's name is the same with --no-python).
  struct Named {
    std::string name, py_name, key;
    Times t;
  };
  std::vector<Named> all;
  auto add = [&](std::string name, std::string py_name, std::string key, Times t) {
    all.push_back({std::move(name), std::move(py_name), std::move(key), t});
  };
  char ms_text[32];
  std::snprintf(ms_text, sizeof ms_text, "%g ms", task_ms);
  std::string cpu_name = std::string("cpu_heavy (") + ms_text + " per task)";
  add(cpu_name, cpu_name, "cpu_heavy",
      measure(reps, pool, threads, [&](int i) { return cpu_heavy(iters, i); }, mproc::bind(cpu_heavy, iters)));
  std::string io_name = "io_heavy (" + std::to_string(io_bytes >> 20) + " MiB per task)";
  add(io_name, io_name, "io_heavy",
      measure(reps, pool, threads, [&](int i) { return io_heavy(io_bytes, i); }, mproc::bind(io_heavy, io_bytes)));
  std::string sleep_name = "sleep (" + std::to_string(sleep_for) + " ms per task)";
  add(sleep_name, sleep_name, "sleep",
      measure(reps, pool, threads, [&](int i) { return sleep_ms(sleep_for, i); }, mproc::bind(sleep_ms, sleep_for)));
  auto py_dim = std::to_string(static_cast<int>(py.num("dot_product.dim")));
  add("dot_product (C++ " + std::to_string(dim) + "²)", "dot_product (Python " + py_dim + "²)", "dot_product",
      measure(reps, pool, threads, [&](int i) { return dot_product(dim, i); }, mproc::bind(dot_product, dim)));
  auto py_darts = std::to_string(static_cast<long long>(py.num("monte_carlo.darts")) / 1000);
  add("monte_carlo (C++ " + std::to_string(darts / 1000) + "k darts)", "monte_carlo (Python " + py_darts + "k darts)",
      "monte_carlo",
      measure(reps, pool, threads, [&](int i) { return monte_carlo(darts, i); }, mproc::bind(monte_carlo, darts)));

  const std::string procs = "mproc Pool (" + std::to_string(kWorkers) + " processes)";
  const std::string thr = "C++ thread pool (" + std::to_string(kWorkers) + " threads)";
  r.section("Speedup over serial in the same language, " + std::to_string(kTasks) + " tasks (higher is better)");
  for (auto& w : all) {
    auto pyk = [&](const char* what) { return py.num(w.key + "." + what); };
    auto speedup = [&](double serial, double par) { return serial > 0 && par > 0 ? serial / par : -1; };
    r.row(w.name + ": " + procs, w.t.serial / w.t.processes, "x",
          {{thr, w.t.serial / w.t.threads},
           {"Python Pool", speedup(pyk("serial_s"), pyk("processes_s"))},
           {"Python ThreadPool", speedup(pyk("serial_s"), pyk("threads_s"))}},
          bench::higher_is_better);
  }
  r.section("C++ times of " + std::to_string(kTasks) + " tasks (ms, lower is better)");
  for (auto& w : all) {
    r.row(w.name + ": " + procs, w.t.processes * 1e3, "ms", {{"C++ serial", w.t.serial * 1e3}, {thr, w.t.threads * 1e3}},
          bench::lower_is_better);
  }
  if (!py.empty()) {
    r.section("Python times of " + std::to_string(kTasks) + " tasks (ms, lower is better)");
    for (auto& w : all) {
      auto ms = [&](const char* what) { return py.num(w.key + "." + what) * 1e3; };
      r.row(w.py_name + ": Python Pool", ms("processes_s"), "ms",
            {{"Python serial", ms("serial_s")}, {"Python ThreadPool", ms("threads_s")}}, bench::lower_is_better);
    }
  }
  r.finish();
  return 0;
}
