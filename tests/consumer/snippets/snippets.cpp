// The code snippets of README.md and docs/*.md, as a user pastes them, compiled by
// the packaging.warnings test with -Wall -Wextra -Wpedantic -Werror (g++, and clang++
// where installed) against mproc's headers given with -I, as pkg-config gives them (not
// -isystem, so a warning inside a header fails too).
//
// Each block below is one snippet, copied verbatim; only a snippet's `...` is filled
// in, and the names it takes for granted (square, xs, use, ...) are declared above it.
// When you change a snippet in the docs, change it here.
#include <mproc/mproc.hpp>

#include <chrono>
#include <cstdio>
#include <map>
#include <ranges>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace given {
inline int square(int x) { return x * x; }
inline int slow(int x) { return x; }
inline void on_value(const int&) {}
inline void on_error(const std::exception&) {}
inline void use(int) {}
inline void log(std::size_t) {}
inline std::string fetch(std::string url) { return url; }
inline void target(int) {}
inline std::vector<int> xs{1, 2, 3};
inline std::vector<int> inputs{1, 2, 3};
inline std::vector<std::string> urls{"a", "b"};
inline auto endless_input = std::views::iota(0);
inline int f(int x) { return x; }
struct Line {
  int sku;
  int count;
};
}  // namespace given

// ---- README.md: quick start ----------------------------------------------------------
namespace readme {
void work(std::string who, int n) { std::printf("%s: %d\n", who.c_str(), n * n); }

int main(int argc, char** argv) {
  mproc::init(argc, argv);              // our `if __name__ == "__main__":`
  mproc::Process p(work, "child", 7);   // checked and serialized here
  p.start();
  p.join();
  return *p.exitcode();                 // 0; 1 if work threw (see p.exception())
}
}  // namespace readme

// ---- docs/pool.md, docs/executor.md: positional worker counts, as in Python ----------
namespace readme_positional {
void run() {
  mproc::Pool pool(4);
  mproc::ThreadPool tp(4);
  mproc::ProcessPoolExecutor ex(4);
  mproc::ThreadPoolExecutor tx(4);
}
}  // namespace readme_positional

// ---- docs/executor.md ----------------------------------------------------------------
namespace executor_md {
using namespace given;
void run() {
  mproc::ProcessPoolExecutor ex({.max_workers = 4});          // or ThreadPoolExecutor
  mproc::Future<int> f = ex.submit(square, 7);
  int v = f.get();                                             // Python: f.result()
  for (int r : ex.map(square, xs, 5s)) use(r + v);             // TimeoutError 5 s after the call
  std::vector<mproc::Future<int>> fs;
  for (int x : xs) fs.push_back(ex.submit(square, x));
  for (auto& done : mproc::as_completed(fs)) use(done.get());
  auto [done, not_done] = mproc::wait(fs, 1s, mproc::FIRST_EXCEPTION);
  ex.shutdown();                                               // or let the destructor do it
}
}  // namespace executor_md

// ---- docs/pool.md ---------------------------------------------------------------------
namespace pool_md {
using namespace given;
void intro() {
  mproc::Pool pool({.processes = 4, .timeout = 30s, .retries = 1});
  std::vector<int> sq = pool.map(square, std::views::iota(0, 1000));        // ordered, blocks
  auto r = pool.apply_async(slow, 3).then(on_value, on_error);             // callbacks
  for (int v : pool.imap_unordered(square, endless_input, 16)) { use(v); break; }  // lazy, as completed
  pool.close();
  pool.join();
}
void worker_lost(mproc::Pool& pool) {
  auto results = pool.imap_unordered(f, inputs);
  for (;;) {
    try {
      auto v = results.next();
      if (!v) break;
      use(*v);
    } catch (const mproc::WorkerLostError& e) { log(e.index()); }
  }
}
void map_options(mproc::Pool& pool) {
  pool.map(f, xs, {0, true, "squares"});              // MapOptions(chunksize, progress, desc)
  mproc::MapOptions o; o.progress = true; o.desc = "pages";
  for (auto& page : pool.imap_unordered(fetch, urls, o)) std::puts(page.c_str());
}
void progress_bar(long n) {
  mproc::ProgressBar bar({.desc = "files", .total = n}); bar.update(1);
}
}  // namespace pool_md

// ---- docs/process.md ------------------------------------------------------------------
namespace process_md {
using namespace given;
void run() {
  mproc::Process p(target, 1);                           // default start method
  mproc::Process q({.name = "loader", .daemon = true,
                    .start_method = mproc::StartMethod::spawn}, target, 2);
  p.start();
  p.join();                 // or p.join(2s) -> bool
  (void)p.join(2s);
  p.exitcode();             // std::optional<int>: empty while running
  p.exception();            // std::optional<mproc::RemoteError>
}
}  // namespace process_md

// ---- docs/queue.md --------------------------------------------------------------------
namespace queue_md {
void worker(mproc::Queue<std::string> tasks, mproc::Queue<std::size_t> results) {
  for (;;) {
    std::string s = tasks.get();
    if (s.empty()) return;             // poison pill
    results.put(s.size());
  }
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Queue<std::string> tasks(100);  // maxsize 100
  mproc::Queue<std::size_t> results;
  mproc::Process p(worker, tasks, results);
  p.start();
  tasks.put("hello");
  tasks.put("");
  std::size_t n = results.get(5s);       // mproc::Empty after 5 s
  p.join();
  return n == 5 ? 0 : 1;
}
}  // namespace queue_md

// ---- docs/serialization.md ------------------------------------------------------------
namespace serialization_md {
using given::Line;
struct Order {
  std::string id;
  std::vector<Line> lines;       // Line: trivially copyable, or with its own serialize()
  std::map<std::string, int> tags;
  template <class Archive> void serialize(Archive& ar) { ar(id, lines, tags); }
};
void bind() {
  double threshold = 0.5;
  auto keep = mproc::bind([](double t, std::string path) { std::printf("%g %s\n", t, path.c_str()); }, threshold);
  mproc::Process p(keep, "data.csv");   // runs keep_fn(0.5, "data.csv") in the child
  mproc::Queue<Order> q;
}
}  // namespace serialization_md

// ---- docs/sync.md ---------------------------------------------------------------------
namespace sync_md {
void work(mproc::Lock lock, mproc::Value<long> total, int n) {
  for (int i = 0; i < n; ++i) total.fetch_add(i);  // one atomic step, no lock
  std::lock_guard g(lock);                          // several steps: take the lock
  std::printf("worker done, total so far %ld\n", total.get());
}

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Lock lock;
  mproc::Value<long> total(0);
  mproc::Process a(work, lock, total, 1000), b(work, lock, total, 1000);
  a.start(); b.start(); a.join(); b.join();
  return total.get() == 2 * 499500 ? 0 : 1;
}
void semaphore() { mproc::Semaphore s(1, mproc::SemaphoreOptions{.reclaim_dead_holders = false}); }
}  // namespace sync_md

// ---- docs/timeline.md -----------------------------------------------------------------
namespace timeline_md {
using namespace given;
void run() {
  mproc::Pool pool({.processes = 4, .timeline = true});
  auto squares = pool.map(square, xs);
  mproc::Timeline t = pool.timeline();       // a handle; valid after the pool is gone
  std::fputs(t.summary().c_str(), stdout);   // busy % per worker, slowest tasks, failures
  t.write_html("run.html");                  // Gantt chart + summary, one self-contained file
  t.write_chrome_trace("run.json");          // chrome://tracing or ui.perfetto.dev
  for (const mproc::TaskRecord& r : t.tasks()) use(r.worker);
}
}  // namespace timeline_md

// ---- any std::chrono::duration for a timeout (docs/pool.md, docs/design.md) ----------
namespace durations {
using namespace given;
void run(mproc::Pool& pool) {
  auto r = pool.apply_async(square, 3);
  use(r.get(std::chrono::duration<double>(0.1)));
  mproc::Pool timed({.processes = 2, .timeout = std::chrono::duration<double>(2.5)});
}
}  // namespace durations

int main(int argc, char** argv) { return readme::main(argc, argv); }
