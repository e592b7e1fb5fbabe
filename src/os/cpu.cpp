// cpu_count(): CPUs this process may really use.
#include <sched.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>

#include "internal.hpp"

namespace mproc {
namespace detail {

std::optional<int> parse_cpu_max(std::string_view text) {
  // cgroup v2 cpu.max: "<quota|max> <period>"
  std::istringstream in{std::string(text)};
  std::string quota;
  long long period = 0;
  if (!(in >> quota >> period) || period <= 0 || quota == "max") return std::nullopt;
  char* end = nullptr;
  long long q = std::strtoll(quota.c_str(), &end, 10);
  if (end == quota.c_str() || *end != '\0' || q <= 0) return std::nullopt;
  return static_cast<int>((q + period - 1) / period);
}

namespace {

std::optional<std::string> read_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) return std::nullopt;
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The tightest cgroup CPU quota on the path from this process's cgroup to the root.
std::optional<int> cgroup_cpu_limit() {
  std::optional<int> best;
  auto take = [&best](std::optional<int> v) {
    if (v && (!best || *v < *best)) best = v;
  };
  auto cg = read_file("/proc/self/cgroup");
  if (!cg) return std::nullopt;
  std::istringstream lines(*cg);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("0::", 0) == 0) {  // cgroup v2
      std::string path = line.substr(3);
      for (;;) {
        if (auto t = read_file("/sys/fs/cgroup" + path + "/cpu.max")) take(parse_cpu_max(*t));
        if (path.empty() || path == "/") break;
        path = path.substr(0, path.rfind('/'));
      }
    }
  }
  // cgroup v1
  auto q = read_file("/sys/fs/cgroup/cpu/cpu.cfs_quota_us");
  auto p = read_file("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  if (q && p) take(parse_cpu_max(std::string(*q).erase(q->find_last_not_of(" \n") + 1) + " " + *p));
  return best;
}

}  // namespace
}  // namespace detail

int cpu_count() {
  int n = 0;
  cpu_set_t set;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) {
    n = CPU_COUNT(&set);
  } else {
    n = static_cast<int>(std::thread::hardware_concurrency());
  }
  if (auto lim = detail::cgroup_cpu_limit(); lim && *lim < n) n = *lim;
  return n < 1 ? 1 : n;
}

}  // namespace mproc
