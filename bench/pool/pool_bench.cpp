// Pool benchmark: mproc::Pool beside a C++ std::thread + condition_variable pool
// and Python's multiprocessing.Pool / ProcessPoolExecutor (bench/pool/mp_pool.py,
// run by this program), on the workloads of the Pool issue:
//   apply_async(f, x).get() round trip; imap with chunksize 1; map over 10 M ints
//   with the automatic chunk size; Monte Carlo pi on 2 workers (parallel
//   efficiency); time until a 2-worker pool has answered its first task, and the
//   memory of an idle worker; and throughput and parallel efficiency against task
//   size (0 to 1 ms of calibrated busy work per task) for Pool.map, Pool.imap with
//   chunksize 1, the C++ thread pool with map's chunks, and Python's Pool.
// Where TBB is installed, map and the executor rows also show TBB on 2 threads
// (parallel_for; task_group run + wait): what in-process work stealing does.
//
//   pool_bench [--quick] [--json FILE] [--python PATH | --no-python]
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <mproc/executor.hpp>
#include <mproc/pool.hpp>
#include <numeric>
#include <ranges>
#include <thread>
#include <vector>

#ifdef MPROC_BENCH_TBB  // libtbb-dev: set by bench/CMakeLists.txt when TBB is found
#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>
#endif

#include "../common/report.hpp"
#include "../common/thread_pool.hpp"
#include "../common/work.hpp"

using Clock = std::chrono::steady_clock;

namespace {

double secs_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

long long square(int x) { return static_cast<long long>(x) * x; }

using bench::pi_part;
using bench::ThreadPool;

// One task of the task-size sweep: `iters` steps of busy work (bench::spin).
std::uint64_t busy(std::uint64_t iters, int i) { return bench::spin(iters, static_cast<std::uint64_t>(i)); }

// Task durations of the sweep, in µs of busy work, and how many tasks each gets:
// about `budget_us` of work, between `least` and `most` tasks (as mp_pool.py).
const std::vector<double> kTaskUs{0, 1, 10, 100, 1000};
int sweep_tasks(double task_us, double budget_us, int least, int most) {
  if (task_us <= 0) return most;
  return std::clamp(static_cast<int>(budget_us / task_us), least, most);
}

// This process's resident memory, in KiB (/proc/self/statm).
long long self_rss_kib() {
  std::ifstream f("/proc/self/statm");
  long long size = 0, resident = 0;
  f >> size >> resident;
  return resident * (::sysconf(_SC_PAGESIZE) / 1024);
}

// A field of /proc/PID/smaps_rollup ("Rss:", "Pss:"), in KiB; -1 if unreadable.
long long smaps_kib(pid_t pid, const std::string& field) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(field, 0) == 0) return std::stoll(line.substr(field.size()));
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  bench::Args args(argc, argv, "bench/results/pool.json");
  const int reps = args.quick ? 1 : 3;
  auto med = [&](auto fn) {
    std::vector<double> v;
    for (int i = 0; i < reps; ++i) v.push_back(fn());
    return bench::percentile(v, 50);
  };
  auto py = bench::run_python(args, "bench/pool/mp_pool.py");
  bench::Report r("Pool", args);

  // Time until a 2-worker pool has answered its first task: once for the
  // program's first pool, which also starts the forkserver, then the median of
  // 9 (3 with --quick) pools.
  auto pool_ready_ms = [] {
    auto t0 = Clock::now();
    mproc::Pool pool(mproc::PoolOptions{.processes = 2});
    pool.apply(square, 1);
    return secs_since(t0) * 1e3;
  };
  double first_ready_ms = pool_ready_ms();
  std::vector<double> ready_runs;
  for (int i = 0; i < (args.quick ? 3 : 9); ++i) ready_runs.push_back(pool_ready_ms());
  double ready_ms = bench::percentile(ready_runs, 50);
  // Pool(64) on this machine: its workers' starts go to the forkserver together
  // (pipelined), so it should take far less than 32 times the 2-worker figure.
  // Goal (issue 14): <= 64 x the 2-worker figure / 4.
  std::vector<double> ready64_runs;
  for (int i = 0; i < (args.quick ? 1 : 3); ++i) {
    auto t0 = Clock::now();
    mproc::Pool big(mproc::PoolOptions{.processes = 64});
    big.apply(square, 1);
    ready64_runs.push_back(secs_since(t0) * 1e3);
  }
  double ready64_ms = bench::percentile(ready64_runs, 50);

  mproc::Pool pool(mproc::PoolOptions{.processes = 2});
  ThreadPool threads(2);
  pool.apply(square, 1);

  r.section("apply_async(f, x).get() round trip (µs, lower is better)");
  const int n_apply = args.quick ? 2000 : 20000;
  double mp_apply = med([&] {
    std::vector<double> lat;
    for (int i = 0; i < n_apply; ++i) {
      auto t0 = Clock::now();
      pool.apply_async(square, i).get();
      lat.push_back(secs_since(t0) * 1e6);
    }
    return bench::percentile(lat, 50);
  });
  double tp_apply = med([&] {
    std::vector<double> lat;
    for (int i = 0; i < n_apply; ++i) {
      auto t0 = Clock::now();
      threads.submit([i] { return square(i); }).get();
      lat.push_back(secs_since(t0) * 1e6);
    }
    return bench::percentile(lat, 50);
  });
  r.row("median", mp_apply, "µs", {{"C++ thread pool", tp_apply}, {"Python Pool", py.num("apply.median_us")}},
        bench::lower_is_better);

  r.section("imap, chunksize 1, trivial tasks (items/s, higher is better)");
  const int n_imap = args.quick ? 20000 : 200000;
  double mp_imap = med([&] {
    auto t0 = Clock::now();
    long long s = 0;
    for (long long v : pool.imap(square, std::views::iota(0, n_imap), 1)) s += v;
    if (s < 0) std::abort();
    return n_imap / secs_since(t0);
  });
  double mp_imap_auto = med([&] {
    auto t0 = Clock::now();
    long long s = 0;
    for (long long v : pool.imap(square, std::views::iota(0, n_imap))) s += v;
    if (s < 0) std::abort();
    return n_imap / secs_since(t0);
  });
  r.row("imap chunksize=1", mp_imap, "items/s", {{"Python Pool", py.num("imap_chunk1.items_per_s")}},
        bench::higher_is_better);
  r.row("imap adaptive chunksize (default)", mp_imap_auto, "items/s", {{"Python Pool (chunksize=1)", py.num("imap_chunk1.items_per_s")}},
        bench::higher_is_better);

  // imap over a long lazily generated input: the parent's resident memory after
  // the first second (read-ahead and buffers in place) must stay flat, i.e. the
  // input is read a bounded window ahead and consumed results are freed. Sampled
  // every 64 Ki items; the row is the largest change from the 1 s sample, in %.
  r.section("imap over a lazily generated input, default chunksize (parent memory)");
  const long long n_lazy = args.quick ? 10'000'000 : 100'000'000;
  double lazy_rate = 0, lazy_growth = 0, lazy_rss1 = 0;
  {
    auto t1 = Clock::now();
    long long rss_at_1s = -1, rss_min = 0, rss_max = 0, s = 0, k = 0;
    auto lazy = std::views::iota(0LL, n_lazy) | std::views::transform([](long long i) { return static_cast<int>(i); });
    for (long long v : pool.imap(square, lazy)) {
      s += v;
      if ((++k & 0xffff) != 0) continue;
      if (rss_at_1s < 0) {
        if (secs_since(t1) < 1.0) continue;
        rss_at_1s = rss_min = rss_max = self_rss_kib();
      } else {
        long long now = self_rss_kib();
        rss_min = std::min(rss_min, now);
        rss_max = std::max(rss_max, now);
      }
    }
    if (s < 0 || k != n_lazy) std::abort();
    lazy_rate = static_cast<double>(n_lazy) / secs_since(t1);
    if (rss_at_1s > 0) {
      lazy_rss1 = static_cast<double>(rss_at_1s);
      lazy_growth = 100.0 * static_cast<double>(std::max(rss_max - rss_at_1s, rss_at_1s - rss_min)) / lazy_rss1;
    } else {
      lazy_growth = -1;  // over within a second: n/a
    }
  }
  r.row("parent RSS change after the first second (largest, ± %)", lazy_growth, "%", {}, bench::lower_is_better);
  r.row("parent RSS at the first second", lazy_rss1, "KiB", {}, bench::lower_is_better);
  r.row("imap items/s over the lazy input", lazy_rate, "items/s", {}, bench::higher_is_better);

  r.section("map over 10 M ints, automatic chunksize (items/s, higher is better)");
  const int n_map = args.quick ? 1'000'000 : 10'000'000;
  double mp_map = med([&] {
    auto t0 = Clock::now();
    auto v = pool.map(square, std::views::iota(0, n_map));
    if (v.size() != static_cast<std::size_t>(n_map)) std::abort();
    return n_map / secs_since(t0);
  });
  double tbb_map = -1;  // n/a without TBB
#ifdef MPROC_BENCH_TBB
  tbb::task_arena arena(2);
  tbb_map = med([&] {
    auto t0 = Clock::now();
    std::vector<long long> v(static_cast<std::size_t>(n_map));
    arena.execute([&] {
      tbb::parallel_for(tbb::blocked_range<int>(0, n_map), [&](const tbb::blocked_range<int>& b) {
        for (int i = b.begin(); i != b.end(); ++i) v[static_cast<std::size_t>(i)] = square(i);
      });
    });
    if (v.back() != square(n_map - 1)) std::abort();
    return n_map / secs_since(t0);
  });
#endif
  r.row("map", mp_map, "items/s",
        {{"Python Pool", py.num("map_ints.items_per_s")}, {"TBB parallel_for, 2 threads", tbb_map}},
        bench::higher_is_better);

  r.section("Monte Carlo pi, 2 workers (parallel efficiency, higher is better)");
  const long long n_pi = args.quick ? 4'000'000 : 40'000'000;
  // Every result is used (summed into `sink`), so no call can be optimized away.
  volatile long long sink = 0;
  auto t0 = Clock::now();
  sink = sink + pi_part(1, n_pi);
  double serial = secs_since(t0);
  double mp_pi = med([&] {
    auto t1 = Clock::now();
    std::vector<std::tuple<std::uint64_t, long long>> parts{{1, n_pi / 2}, {2, n_pi / 2}};
    auto inside = pool.starmap(pi_part, parts, 1);
    sink = sink + inside[0] + inside[1];
    return secs_since(t1);
  });
  double th_pi = med([&] {
    auto t1 = Clock::now();
    long long a_inside = 0;
    std::thread a([&] { a_inside = pi_part(1, n_pi / 2); });
    long long b_inside = pi_part(2, n_pi / 2);
    a.join();
    sink = sink + a_inside + b_inside;
    return secs_since(t1);
  });
  r.row("efficiency = serial / (2 x parallel)", serial / (2 * mp_pi), "",
        {{"std::thread", serial / (2 * th_pi)}, {"Python Pool", py.num("monte_carlo.efficiency")}}, bench::higher_is_better);
  r.row("mproc time vs std::thread time", mp_pi / th_pi, "x", {}, bench::lower_is_better);

  r.section("Executor submit + get, many futures in flight (tasks/s, higher is better)");
  const int n_exec = args.quick ? 20000 : 100000;
  auto executor_rate = [&](auto& ex) {
    return med([&] {
      auto t1 = Clock::now();
      std::vector<decltype(ex.submit(square, 0))> fs;
      fs.reserve(static_cast<std::size_t>(n_exec));
      for (int i = 0; i < n_exec; ++i) fs.push_back(ex.submit(square, i));
      long long s = 0;
      for (auto& f : fs) s += f.get();
      if (s < 0) std::abort();
      return n_exec / secs_since(t1);
    });
  };
  double proc_exec, thread_exec;
  {
    mproc::ProcessPoolExecutor ex(mproc::ExecutorOptions{.max_workers = 2});
    proc_exec = executor_rate(ex);
  }
  {
    mproc::ThreadPoolExecutor ex(mproc::ExecutorOptions{.max_workers = 2});
    thread_exec = executor_rate(ex);
  }
  double tp_exec = med([&] {
    auto t1 = Clock::now();
    std::vector<std::future<long long>> fs;
    for (int i = 0; i < n_exec; ++i) fs.push_back(threads.submit([i] { return square(i); }));
    long long s = 0;
    for (auto& f : fs) s += f.get();
    if (s < 0) std::abort();
    return n_exec / secs_since(t1);
  });
  double tbb_exec = -1;  // n/a without TBB
#ifdef MPROC_BENCH_TBB
  tbb_exec = med([&] {
    auto t1 = Clock::now();
    std::vector<long long> out(static_cast<std::size_t>(n_exec));
    arena.execute([&] {
      tbb::task_group g;
      for (int i = 0; i < n_exec; ++i) g.run([&out, i] { out[static_cast<std::size_t>(i)] = square(i); });
      g.wait();
    });
    if (out.back() != square(n_exec - 1)) std::abort();
    return n_exec / secs_since(t1);
  });
#endif
  r.row("ProcessPoolExecutor", proc_exec, "tasks/s",
        {{"C++ thread pool", tp_exec},
         {"Python ProcessPoolExecutor", py.num("executor.tasks_per_s")},
         {"TBB task_group, 2 threads", tbb_exec}},
        bench::higher_is_better);
  r.row("ThreadPoolExecutor", thread_exec, "tasks/s", {{"C++ thread pool", tp_exec}, {"TBB task_group, 2 threads", tbb_exec}},
        bench::higher_is_better);

  // Against task size: n tasks of `us` µs of busy work each, 2 workers.
  {
    const double per_us = bench::spin_iters_per_us();
    const int sweep_reps = args.quick ? 3 : 5;
    const double budget_us = args.quick ? 100'000 : 500'000;
    const int least = args.quick ? 40 : 200, most = args.quick ? 4000 : 20000;
    struct Point {
      double us, serial_s, map_s, imap_s, threads_s;
      int n;
    };
    std::vector<Point> pts;
    for (double us : kTaskUs) {
      auto iters = static_cast<std::uint64_t>(us * per_us);
      int n = sweep_tasks(us, budget_us, least, most);
      Point p{us, 0, 0, 0, 0, n};
      // Median seconds of `sweep_reps` runs of fn(), whose result goes to `sink`
      // so no run can be optimized away.
      auto sweep_med = [&](auto fn) {
        std::vector<double> t;
        for (int i = 0; i < sweep_reps; ++i) {
          auto t1 = Clock::now();
          sink = sink + static_cast<long long>(fn());
          t.push_back(secs_since(t1));
        }
        return bench::percentile(t, 50);
      };
      p.serial_s = sweep_med([&] {
        std::uint64_t s = 0;
        for (int i = 0; i < n; ++i) s += busy(iters, i);
        return s;
      });
      p.map_s = sweep_med([&] {
        auto out = pool.map(mproc::bind(busy, iters), std::views::iota(0, n));
        return std::accumulate(out.begin(), out.end(), std::uint64_t{0});
      });
      p.imap_s = sweep_med([&] {
        std::uint64_t s = 0;
        for (std::uint64_t x : pool.imap(mproc::bind(busy, iters), std::views::iota(0, n), 1)) s += x;
        return s;
      });
      p.threads_s = sweep_med([&] {
        auto out = threads.map([iters](int i) { return busy(iters, i); }, n, bench::python_chunksize(n, 2));
        return std::accumulate(out.begin(), out.end(), std::uint64_t{0});
      });
      pts.push_back(p);
    }
    auto key = [](double us, const char* what) {
      return "task_sweep." + std::to_string(static_cast<int>(us)) + "." + what;
    };
    r.section("Throughput against task size, 2 workers (tasks/s, higher is better)");
    for (auto& p : pts) {
      r.point("Pool.map", p.us, "µs", p.n / p.map_s, "tasks/s",
              {{"C++ thread pool (map's chunks)", p.n / p.threads_s}, {"Python Pool.map", py.num(key(p.us, "map_per_s"))}},
              bench::higher_is_better);
    }
    for (auto& p : pts) {
      r.point("Pool.imap chunksize=1", p.us, "µs", p.n / p.imap_s, "tasks/s",
              {{"Python Pool.imap chunksize=1", py.num(key(p.us, "imap_per_s"))}}, bench::higher_is_better);
    }
    r.section("Parallel efficiency against task size: serial time / (2 x parallel time) (higher is better)");
    for (auto& p : pts) {
      r.point("Pool.map", p.us, "µs", p.serial_s / (2 * p.map_s), "",
              {{"C++ thread pool (map's chunks)", p.serial_s / (2 * p.threads_s)},
               {"Python Pool.map", py.num(key(p.us, "map_efficiency"))}},
              bench::higher_is_better);
    }
    for (auto& p : pts) {
      r.point("Pool.imap chunksize=1", p.us, "µs", p.serial_s / (2 * p.imap_s), "",
              {{"Python Pool.imap chunksize=1", py.num(key(p.us, "imap_efficiency"))}}, bench::higher_is_better);
    }
  }

  r.section("Start-up and footprint");
  r.row("2-worker pool ready (first result back)", ready_ms, "ms", {{"Python Pool", py.num("pool_ready.ms")}},
        bench::lower_is_better);
  r.row("64-worker pool ready (first result back)", ready64_ms, "ms", {{"goal: 64 x the 2-worker figure / 4", 16 * ready_ms}},
        bench::lower_is_better);
  r.row("the program's first 2-worker pool ready (starts the forkserver)", first_ready_ms, "ms", {},
        bench::lower_is_better);
  // RSS counts every page a worker maps, shared or not; PSS divides each shared
  // page among the processes sharing it: what a worker adds.
  long long rss = 0, pss = 0;
  auto pids = pool.worker_pids();
  for (pid_t p : pids) {
    rss += smaps_kib(p, "Rss:");
    pss += smaps_kib(p, "Pss:");
  }
  double n = pids.empty() ? 1.0 : static_cast<double>(pids.size());
  r.row("resident memory per idle worker", static_cast<double>(rss) / n, "KiB", {}, bench::lower_is_better);
  r.row("proportional memory per idle worker (PSS)", static_cast<double>(pss) / n, "KiB", {},
        bench::lower_is_better);

  r.finish();
  return 0;
}
