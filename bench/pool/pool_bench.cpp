// Pool benchmark: mproc::Pool beside a C++ std::thread + condition_variable pool
// and Python's multiprocessing.Pool / ProcessPoolExecutor (bench/pool/mp_pool.py,
// run by this program), on the workloads of the Pool issue:
//   apply_async(f, x).get() round trip; imap with chunksize 1; map over 10 M ints
//   with the automatic chunk size; Monte Carlo pi on 2 workers (parallel
//   efficiency); time until a 2-worker pool has answered its first task, and the
//   memory of an idle worker.
//
//   pool_bench [--quick] [--json FILE] [--python PATH | --no-python]
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <mproc/executor.hpp>
#include <mproc/pool.hpp>
#include <mutex>
#include <numeric>
#include <random>
#include <ranges>
#include <thread>
#include <vector>

#include "../common/report.hpp"

using Clock = std::chrono::steady_clock;

namespace {

double secs_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

long long square(int x) { return static_cast<long long>(x) * x; }

// Points inside the unit quarter circle out of n, from a seeded generator.
long long pi_part(std::uint64_t seed, long long n) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  long long inside = 0;
  for (long long i = 0; i < n; ++i) {
    double x = u(rng), y = u(rng);
    inside += x * x + y * y <= 1.0;
  }
  return inside;
}

// The baseline the issue names: std::thread workers pulling std::function tasks
// from a mutex + condition_variable queue, results through std::future.
class ThreadPool {
 public:
  explicit ThreadPool(int n) {
    for (int i = 0; i < n; ++i) {
      threads_.emplace_back([this] {
        for (;;) {
          std::function<void()> job;
          {
            std::unique_lock l(mu_);
            cv_.wait(l, [&] { return stop_ || !q_.empty(); });
            if (stop_ && q_.empty()) return;
            job = std::move(q_.front());
            q_.pop_front();
          }
          job();
        }
      });
    }
  }
  ~ThreadPool() {
    {
      std::lock_guard l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  template <class F>
  auto submit(F f) {
    auto task = std::make_shared<std::packaged_task<decltype(f())()>>(std::move(f));
    auto fut = task->get_future();
    {
      std::lock_guard l(mu_);
      q_.emplace_back([task] { (*task)(); });
    }
    cv_.notify_one();
    return fut;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> q_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

long long rss_kib(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
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

  // Time until a 2-worker pool has answered its first task.
  double ready_ms = med([] {
    auto t0 = Clock::now();
    mproc::Pool pool(mproc::PoolOptions{.processes = 2});
    pool.apply(square, 1);
    return secs_since(t0) * 1e3;
  });

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

  r.section("map over 10 M ints, automatic chunksize (items/s, higher is better)");
  const int n_map = args.quick ? 1'000'000 : 10'000'000;
  double mp_map = med([&] {
    auto t0 = Clock::now();
    auto v = pool.map(square, std::views::iota(0, n_map));
    if (v.size() != static_cast<std::size_t>(n_map)) std::abort();
    return n_map / secs_since(t0);
  });
  r.row("map", mp_map, "items/s", {{"Python Pool", py.num("map_ints.items_per_s")}}, bench::higher_is_better);

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
  r.row("ProcessPoolExecutor", proc_exec, "tasks/s",
        {{"C++ thread pool", tp_exec}, {"Python ProcessPoolExecutor", py.num("executor.tasks_per_s")}},
        bench::higher_is_better);
  r.row("ThreadPoolExecutor", thread_exec, "tasks/s", {{"C++ thread pool", tp_exec}}, bench::higher_is_better);

  r.section("Start-up and footprint");
  r.row("2-worker pool ready (first result back)", ready_ms, "ms", {{"Python Pool", py.num("pool_ready.ms")}},
        bench::lower_is_better);
  long long rss = 0;
  auto pids = pool.worker_pids();
  for (pid_t p : pids) rss += rss_kib(p);
  r.row("resident memory per idle worker", pids.empty() ? 0 : static_cast<double>(rss) / pids.size(), "KiB", {},
        bench::lower_is_better);

  r.finish();
  return 0;
}
