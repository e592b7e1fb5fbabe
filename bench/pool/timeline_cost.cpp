// What PoolOptions::timeline costs (docs/timeline.md): map over N trivial items
// with the timeline off and on, alternating which goes first in each round, and
// the median time of each; then what reading the records and the exports take.
//
//   timeline_cost [--items N] [--rounds R] [--workers W] [--threads] [--no-exports]
//
// --threads measures a ThreadPool instead of a Pool.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mproc/pool.hpp>
#include <mproc/thread_pool.hpp>
#include <ranges>
#include <string_view>
#include <vector>

using Clock = std::chrono::steady_clock;

namespace {

int inc(int x) { return x + 1; }

double secs_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

template <class P>
double run(bool timeline, int workers, int items) {
  P pool({.processes = workers, .timeline = timeline});
  (void)pool.map(inc, std::views::iota(0, 1000));  // workers up and warm
  auto t0 = Clock::now();
  auto r = pool.map(inc, std::views::iota(0, items));
  double s = secs_since(t0);
  if (r.size() != static_cast<std::size_t>(items) || r.back() != items) std::abort();
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  int items = 1'000'000, rounds = 7, workers = 4;
  bool exports = true, threads = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    bool has_value = i + 1 < argc;
    if (arg == "--no-exports") exports = false;
    if (arg == "--threads") threads = true;
    if (arg == "--items" && has_value) items = std::atoi(argv[++i]);
    if (arg == "--rounds" && has_value) rounds = std::atoi(argv[++i]);
    if (arg == "--workers" && has_value) workers = std::atoi(argv[++i]);
  }
  auto run_one = threads ? run<mproc::ThreadPool> : run<mproc::Pool>;
  std::vector<double> off, on, ratio;
  for (int r = 0; r < rounds; ++r) {
    double a, b;
    if (r % 2) {
      b = run_one(true, workers, items);
      a = run_one(false, workers, items);
    } else {
      a = run_one(false, workers, items);
      b = run_one(true, workers, items);
    }
    off.push_back(a);
    on.push_back(b);
    ratio.push_back(b / a);
    std::printf("round %d: off %.3f s, on %.3f s, on/off %.3f\n", r + 1, a, b, b / a);
  }
  std::printf(
      "%s map of %d trivial items on %d workers, %d rounds: median off %.3f s, on %.3f s; "
      "median of the rounds' on/off ratios %.3f\n",
      threads ? "ThreadPool" : "Pool", items, workers, rounds, median(off), median(on), median(ratio));
  if (!exports) return 0;

  mproc::Pool pool({.processes = workers, .timeline = true});
  (void)pool.map(inc, std::views::iota(0, items));
  auto t = pool.timeline();
  auto t0 = Clock::now();
  auto recs = t.tasks();
  double snap = secs_since(t0);
  t0 = Clock::now();
  auto text = t.summary();
  double ins = secs_since(t0);
  t0 = Clock::now();
  auto json = t.chrome_trace_json();
  double js = secs_since(t0);
  t0 = Clock::now();
  auto html = t.html();
  double ht = secs_since(t0);
  std::printf(
      "%zu records: tasks() %.3f s, summary() %.3f s, chrome_trace_json() %.3f s (%.1f MB), "
      "html() %.3f s (%.1f KB)\n",
      recs.size(), snap, ins, js, static_cast<double>(json.size()) / 1e6, ht,
      static_cast<double>(html.size()) / 1e3);
}
