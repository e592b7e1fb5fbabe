// threads_vs_processes — the articles' measurement: the same tasks run serially,
// on 4 threads and on 4 processes, for a CPU-bound loop, file writes and a matrix
// product, with a table of the times and a timeline of when each task ran.
//
// The article measured Python: cpu_heavy took 4.2 s serially, 6.5 s on 4 threads
// (the GIL lets one thread run at a time, and switching costs) and 1.9 s on 4
// processes; io_heavy gained from both; numpy's dot gained from neither (numpy
// already leaves the GIL and uses the cores itself). In C++ there is no GIL:
// threads scale like processes for CPU-bound work, and processes pay extra only
// where data must travel — here io_heavy's text, which each process task
// receives as a copy (Python pickles it the same way), while threads share it.
//
// Workloads (each run as --tasks independent tasks):
//   cpu_heavy    a dependent multiply-add loop (the article's `count += i`, which
//                a C++ compiler would fold into a formula)
//   io_heavy     write a text of --text-mib MiB to a file of its own, then close it
//   dot_product  a --dim x --dim matrix product (plain loops, one core per task);
//                the matrices live in SharedArrays, so processes read them in place
//
// What to look for: the table's speedups (bounded by the cores you have: on a
// 2-core machine 4 workers cannot beat 2x); the timeline bars, one row per task:
// serial tasks one after another, threads and processes overlapping.
//
//   threads_vs_processes [--workers=4] [--tasks=8] [--cpu-iters=20000000] [--text-mib=4]
//                        [--dim=192] [--dir=/tmp]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <ranges>
#include <string>
#include <thread>
#include <vector>

#include <mproc/mproc.hpp>

#include "common.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// Every task reports when it ran (steady_clock is CLOCK_MONOTONIC, one clock for
// every process on the machine, so the parent can compare the workers' times) and a
// value that proves the work was done.
struct Span {
  std::int64_t start_ns;
  std::int64_t stop_ns;
  std::uint64_t check;
};

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

Span cpu_heavy(std::uint64_t iters, int task) {
  std::int64_t t0 = now_ns();
  std::uint64_t count = static_cast<std::uint64_t>(task);
  for (std::uint64_t i = 0; i < iters; ++i) count = count * 6364136223846793005ULL + i;  // one long dependency chain
  return {t0, now_ns(), count};
}

Span io_heavy(std::string dir, std::string text, int task) {
  std::int64_t t0 = now_ns();
  std::string path = examples::format("%s/io_heavy_%d_%d.txt", dir.c_str(), static_cast<int>(::getpid()), task);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  std::uint64_t written = 0;
  if (fd >= 0) {
    for (std::size_t at = 0; at < text.size();) {
      ssize_t n = ::write(fd, text.data() + at, text.size() - at);
      if (n <= 0) break;
      at += static_cast<std::size_t>(n);
      written += static_cast<std::uint64_t>(n);
    }
    ::close(fd);
    ::unlink(path.c_str());
  }
  return {t0, now_ns(), written};
}

Span dot_product(mproc::SharedArray<double> a, mproc::SharedArray<double> b, int dim, int task) {
  std::int64_t t0 = now_ns();
  auto n = static_cast<std::size_t>(dim);
  std::vector<double> c(n * n, 0.0);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t k = 0; k < n; ++k) {
      double aik = a[i * n + k];
      for (std::size_t j = 0; j < n; ++j) c[i * n + j] += aik * b[k * n + j];
    }
  }
  double trace = 0;
  for (std::size_t i = 0; i < n; ++i) trace += c[i * n + i];
  (void)task;
  return {t0, now_ns(), static_cast<std::uint64_t>(trace)};
}

struct Measured {
  double seconds;
  std::int64_t base_ns;
  std::vector<Span> spans;
};

// Runs task(0..tasks-1) on `workers` threads that take indices from a counter
// (workers == 0: in this thread, one after another).
Measured run_here(int tasks, int workers, const std::function<Span(int)>& task) {
  Measured m{0, now_ns(), std::vector<Span>(static_cast<std::size_t>(tasks))};
  if (workers == 0) {
    for (int t = 0; t < tasks; ++t) m.spans[static_cast<std::size_t>(t)] = task(t);
  } else {
    std::atomic<int> next{0};
    std::vector<std::jthread> threads;
    for (int w = 0; w < workers; ++w) {
      threads.emplace_back([&] {
        for (int t; (t = next++) < tasks;) m.spans[static_cast<std::size_t>(t)] = task(t);
      });
    }
  }  // the jthreads join here
  m.seconds = static_cast<double>(now_ns() - m.base_ns) / 1e9;
  return m;
}

// The same through the pool: `bound` is the task function with its data bound
// (mproc::bind), mapped over the task indices, one per message.
template <class Bound>
Measured run_pool(mproc::Pool& pool, int tasks, const Bound& bound) {
  Measured m{0, now_ns(), {}};
  m.spans = pool.map(bound, std::views::iota(0, tasks), 1);
  m.seconds = static_cast<double>(now_ns() - m.base_ns) / 1e9;
  return m;
}

// One row per task: '#' while it ran, on a common time axis of `width` columns.
void timeline(const char* title, const Measured& m, double axis_s, int width = 60) {
  std::printf("  %s\n", title);
  for (std::size_t t = 0; t < m.spans.size(); ++t) {
    auto col = [&](std::int64_t ns) {
      double f = static_cast<double>(ns - m.base_ns) / 1e9 / axis_s;
      return std::clamp(static_cast<int>(f * width + 0.5), 0, width);
    };
    int a = col(m.spans[t].start_ns), b = std::max(col(m.spans[t].stop_ns), a + 1);
    std::printf("    task %zu |%s%s%s|\n", t, std::string(static_cast<std::size_t>(a), ' ').c_str(),
                std::string(static_cast<std::size_t>(std::min(b, width) - a), '#').c_str(),
                std::string(static_cast<std::size_t>(width - std::min(b, width)), ' ').c_str());
  }
}

bool same_checks(const Measured& a, const Measured& b) {
  if (a.spans.size() != b.spans.size()) return false;
  for (std::size_t i = 0; i < a.spans.size(); ++i) {
    if (a.spans[i].check != b.spans[i].check) return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  int workers = static_cast<int>(flags.get("workers", 4, "threads, and processes"));
  int tasks = static_cast<int>(flags.get("tasks", 8, "tasks per workload"));
  auto iters = static_cast<std::uint64_t>(flags.get("cpu-iters", 20'000'000, "loop iterations per cpu_heavy task"));
  auto text_mib = static_cast<std::size_t>(flags.get("text-mib", 4, "MiB written per io_heavy task"));
  int dim = static_cast<int>(flags.get("dim", 192, "matrix size of dot_product"));
  std::string dir = flags.get_string("dir", "/tmp", "where io_heavy writes (files are removed)");
  flags.check();

  std::printf("%d tasks per workload; %d threads vs %d processes; cpu_count() = %d\n\n", tasks, workers, workers,
              mproc::cpu_count());

  std::string text(text_mib << 20, 'x');
  for (std::size_t i = 0; i < text.size(); i += 64) text[i] = '\n';
  auto n = static_cast<std::size_t>(dim);
  mproc::SharedArray<double> a(n * n), b(n * n);
  for (std::size_t i = 0; i < n * n; ++i) {
    a[i] = static_cast<double>(i % 7);
    b[i] = static_cast<double>(i % 5);
  }

  examples::Stopwatch sw;
  mproc::Pool pool({.processes = workers});
  double startup = sw.seconds();

  examples::Table table({"workload", "serial", examples::format("%d threads", workers),
                         examples::format("%d processes", workers), "threads speedup", "processes speedup"});
  bool ok = true;
  auto add = [&](const char* name, const Measured& s, const Measured& t, const Measured& p) {
    table.row({name, examples::human_time(s.seconds), examples::human_time(t.seconds),
               examples::human_time(p.seconds), examples::format("%.2fx", s.seconds / t.seconds),
               examples::format("%.2fx", s.seconds / p.seconds)});
    ok &= same_checks(s, t) && same_checks(s, p);
  };

  auto cpu = [&](int t) { return cpu_heavy(iters, t); };
  Measured cs = run_here(tasks, 0, cpu), ct = run_here(tasks, workers, cpu);
  Measured cp = run_pool(pool, tasks, mproc::bind(cpu_heavy, iters));
  add("cpu_heavy", cs, ct, cp);

  auto io = [&](int t) { return io_heavy(dir, text, t); };
  Measured is = run_here(tasks, 0, io), it = run_here(tasks, workers, io);
  Measured ip = run_pool(pool, tasks, mproc::bind(io_heavy, dir, text));  // the text travels with every task
  add("io_heavy", is, it, ip);

  auto dot = [&](int t) { return dot_product(a, b, dim, t); };
  Measured ds = run_here(tasks, 0, dot), dt = run_here(tasks, workers, dot);
  Measured dp = run_pool(pool, tasks, mproc::bind(dot_product, a, b, dim));
  add("dot_product", ds, dt, dp);

  table.print();
  std::printf("  (pool start-up, not included: %s)\n\n", examples::human_time(startup).c_str());

  std::printf("cpu_heavy timelines, on one axis of %s:\n", examples::human_time(cs.seconds).c_str());
  timeline("serial", cs, cs.seconds);
  timeline(examples::format("%d threads", workers).c_str(), ct, cs.seconds);
  timeline(examples::format("%d processes", workers).c_str(), cp, cs.seconds);

  ok &= is.spans[0].check == text.size();
  return examples::verdict(ok, "every method computed the same results");
}
