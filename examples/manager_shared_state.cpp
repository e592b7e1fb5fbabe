// manager_shared_state — the articles' Manager examples: a dict and a list
// changed by a child Process (seed 003), a dict and a list filled by a Pool
// (seed 001), and a counter shared by pool tasks three ways: read-modify-write
// through the proxy (loses updates, as Python's `d[k] += 1` does), under a
// Manager Lock, and with apply() (one atomic step on the server); the tasks
// also report through a Manager Queue, which, unlike mproc::Queue in Python,
// can be handed to pool tasks.
//
//   manager_shared_state [--workers=4] [--tasks=200]
#include <cstdio>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include <mproc/manager.hpp>
#include <mproc/pool.hpp>

#include "common.hpp"

namespace {

using Dict = mproc::DictProxy<std::string, std::optional<int>>;

// Seed 003: f(d, l) sets three keys and reverses the list.
void f(Dict d, mproc::ListProxy<int> l) {
  d["1"] = 1;
  d["2"] = 2;
  d["0.25"] = std::nullopt;  // Python's None
  l.reverse();
}

// Seed 001: every task records its input and result.
int square(mproc::DictProxy<int, int> d, mproc::ListProxy<int> l, int x) {
  d[x] = x * x;
  l.append(x);
  return x * x;
}

void add(long long& v, long long k) { v += k; }

int count(mproc::ValueProxy<long long> racy, mproc::ValueProxy<long long> locked, mproc::ValueProxy<long long> atomic,
          mproc::LockProxy lock, mproc::QueueProxy<std::string> log, int x) {
  racy.set(racy.get() + 1);  // two round trips: another task can slip in between
  {
    std::lock_guard g(lock);
    locked.set(locked.get() + 1);
  }
  atomic.apply(add, 1LL);
  if (x % 50 == 0) log.put("task " + std::to_string(x) + " done");
  return x;
}

std::string show(const Dict& d) {
  std::string s = "{";
  for (auto& [k, v] : d.items()) {
    if (s.size() > 1) s += ", ";
    s += "'" + k + "': " + (v ? std::to_string(*v) : std::string("None"));
  }
  return s + "}";
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  int workers = static_cast<int>(flags.get("workers", 4, "pool processes"));
  int tasks = static_cast<int>(flags.get("tasks", 200, "counter tasks"));
  flags.check();

  mproc::Manager manager;  // Python's `with Manager() as manager:`

  auto d = manager.dict<std::string, std::optional<int>>();
  std::vector<int> ten(10);
  std::iota(ten.begin(), ten.end(), 0);
  auto l = manager.list<int>(ten);
  mproc::Process p(f, d, l);
  p.start();
  p.join();
  std::printf("dict: %s\n", show(d).c_str());
  std::printf("list: %s\n", examples::to_list(l.snapshot()).c_str());

  auto squares = manager.dict<int, int>();
  auto inputs = manager.list<int>();
  std::vector<int> xs(20);
  std::iota(xs.begin(), xs.end(), 0);
  mproc::Pool pool(mproc::PoolOptions{.processes = workers});
  auto results = pool.map(mproc::bind(square, squares, inputs), xs);
  std::printf("pool: %zu squares in the dict, %zu inputs in the list, squares[7] = %d\n", squares.size(),
              inputs.size(), squares.at(7));

  auto racy = manager.Value<long long>(0);
  auto locked = manager.Value<long long>(0);
  auto atomic = manager.Value<long long>(0);
  auto lock = manager.Lock();
  auto log = manager.Queue<std::string>();
  std::vector<int> ids(static_cast<std::size_t>(tasks));
  std::iota(ids.begin(), ids.end(), 0);
  examples::Stopwatch sw;
  pool.map(mproc::bind(count, racy, locked, atomic, lock, log), ids, 1);
  double secs = sw.seconds();
  pool.close();
  pool.join();
  std::vector<std::string> lines;
  while (!log.empty()) lines.push_back(log.get());
  std::printf("counter over %d tasks on %d workers (%s):\n", tasks, workers, examples::human_time(secs).c_str());
  std::printf("  read-modify-write: %lld (updates lost: %lld)\n", racy.get(), tasks - racy.get());
  std::printf("  under a Lock:      %lld\n", locked.get());
  std::printf("  apply():           %lld\n", atomic.get());
  std::printf("queue: %zu messages from the tasks\n", lines.size());
  bool ok = squares.size() == 20 && inputs.size() == 20 && locked.get() == tasks && atomic.get() == tasks &&
            static_cast<int>(lines.size()) == (tasks + 49) / 50 && d.size() == 3 && l.at(0) == 9;
  return examples::verdict(ok, "the dict and list changes arrived, the locked and atomic counters are exact");
}
