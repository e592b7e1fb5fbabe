// Manager benchmark: mproc::Manager beside Python's multiprocessing.Manager
// (bench/manager/mp_manager.py, run by this program with the system python3):
// starting a manager, a dict set/get round trip, creating a proxy, and 8
// processes each incrementing one shared counter (mproc: apply(), one atomic
// step on the server; Python: `d[k] += 1` under a manager Lock, its only exact
// way), plus a TCP loopback round trip beside a bare TCP ping-pong.
//
//   manager_bench [--quick] [--json FILE] [--python PATH]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include <mproc/manager.hpp>
#include <mproc/mproc.hpp>

#include "../common/report.hpp"

using Clock = std::chrono::steady_clock;

namespace {

double us_since(Clock::time_point t0) { return std::chrono::duration<double, std::micro>(Clock::now() - t0).count(); }

void add(long long& v, long long k) { v += k; }

void incr(mproc::DictProxy<int, long long> d, int n) {
  for (int i = 0; i < n; ++i) d.apply(0, add, 1LL);
}

/// Median of a set/get pair's per-op time (µs) on `d`.
double op_us(const mproc::DictProxy<int, long long>& d, int n) {
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    auto t0 = Clock::now();
    d.set(i % 64, i);
    (void)d.get(i % 64);
    lat.push_back(us_since(t0) / 2);
  }
  return bench::percentile(lat, 50);
}

/// A bare TCP ping-pong of 8 bytes between two threads over 127.0.0.1 (µs per round trip).
double tcp_floor_us(int n) {
  int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::listen(l, 1);
  socklen_t len = sizeof a;
  ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len);
  std::thread echo([&] {
    int c = ::accept(l, nullptr, nullptr);
    int one = 1;
    ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char b[8];
    for (int i = 0; i < n; ++i) {
      if (::recv(c, b, 8, MSG_WAITALL) != 8 || ::send(c, b, 8, 0) != 8) break;
    }
    ::close(c);
  });
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  int one = 1;
  ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  char b[8] = {};
  std::vector<double> lat;
  for (int i = 0; i < n; ++i) {
    auto t0 = Clock::now();
    if (::send(s, b, 8, 0) != 8 || ::recv(s, b, 8, MSG_WAITALL) != 8) break;
    lat.push_back(us_since(t0));
  }
  ::close(s);
  echo.join();
  ::close(l);
  return bench::percentile(lat, 50);
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  bench::Args args(argc, argv, "bench/results/manager.json");
  bench::Report r("Manager", args);
  const int n_ops = args.quick ? 2000 : 20000;
  auto py = bench::run_python(args, "bench/manager/mp_manager.py");

  std::vector<double> starts;
  { mproc::Manager warm; }  // the program's first start also starts the forkserver
  for (int i = 0; i < (args.quick ? 3 : 9); ++i) {
    auto t0 = Clock::now();
    mproc::Manager m;
    starts.push_back(us_since(t0) / 1e3);
  }

  mproc::Manager m;
  auto d = m.dict<int, long long>();
  double op = op_us(d, n_ops);
  std::vector<double> create;
  for (int i = 0; i < (args.quick ? 200 : 2000); ++i) {
    auto t0 = Clock::now();
    auto x = m.dict<int, int>();
    create.push_back(us_since(t0));
  }

  const int procs = 8, each = args.quick ? 1000 : 10000;
  auto counter = m.dict<int, long long>();
  std::vector<mproc::Process> ps;
  for (int i = 0; i < procs; ++i) ps.emplace_back(incr, counter, each);
  auto t0 = Clock::now();
  for (auto& p : ps) p.start();
  for (auto& p : ps) p.join();
  double secs = us_since(t0) / 1e6;
  bool exact = counter.at(0) == static_cast<long long>(procs) * each;

  mproc::Manager tcp({.address = {"127.0.0.1", 0}, .authkey = "bench-secret"});
  auto td = tcp.dict<int, long long>();
  double tcp_op = op_us(td, n_ops / 4);
  double floor = tcp_floor_us(n_ops / 4);

  r.section("Manager, local (Unix socket)");
  r.row("Manager() start", bench::percentile(starts, 50), "ms", {{"Python Manager()", py.num("start_ms")}},
        bench::lower_is_better);
  r.row("dict set/get round trip median", op, "µs", {{"Python DictProxy", py.num("op_us")}}, bench::lower_is_better);
  r.row("proxy creation (m.dict())", bench::percentile(create, 50), "µs", {{"Python m.dict()", py.num("create_us")}},
        bench::lower_is_better);
  r.row("8 procs x increments, apply() (exact: " + std::string(exact ? "yes" : "NO") + ")", procs * each / secs,
        "ops/s", {{"Python d[k] += 1 under a Lock", py.num("incr_per_s")}}, bench::higher_is_better);
  r.section("Manager, TCP loopback");
  r.row("dict set/get round trip median", tcp_op, "µs", {{"bare TCP ping-pong", floor}}, bench::lower_is_better);
  r.finish();
  return exact ? 0 : 1;
}
