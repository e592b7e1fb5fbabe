// remote_queue_client — submits jobs to remote_queue_server, one poison pill per
// worker, collects every result, checks them, and (with --stop) stops the server.
//
//   remote_queue_client --port=50000 --authkey=secret [--jobs=30] [--workers=3] [--stop]
#include <cstdio>
#include <map>
#include <set>

#include <mproc/manager.hpp>

#include "common.hpp"
#include "remote_queue.hpp"

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  remote_queue::Endpoint e = remote_queue::endpoint_flags(flags);
  int njobs = static_cast<int>(flags.get("jobs", 30, "jobs to submit"));
  int workers = static_cast<int>(flags.get("workers", 3, "poison pills to send (one per worker)"));
  bool stop = flags.has("stop", "stop the server afterwards");
  flags.check();
  auto [m, jobs, results] = remote_queue::connect(e);
  for (int i = 0; i < njobs; ++i) jobs.put({i, 1'000'000'007ull * static_cast<std::uint64_t>(i % 7 + 1)});
  for (int i = 0; i < workers; ++i) jobs.put({-1, 0});
  std::map<std::int64_t, remote_queue::Result> got;
  std::set<std::int32_t> pids;
  int wrong = 0;
  for (int i = 0; i < njobs; ++i) {
    auto r = results.get(std::chrono::seconds(60));
    if (r.smallest_factor != remote_queue::smallest_factor(r.n)) ++wrong;
    pids.insert(r.worker_pid);
    got[r.id] = r;
  }
  std::printf("results: %zu of %d, %d wrong, from %zu worker processes\n", got.size(), njobs, wrong, pids.size());
  for (auto& [id, r] : got) {
    if (id < 3) {
      std::printf("  job %lld: %llu = %llu x ...\n", static_cast<long long>(id), static_cast<unsigned long long>(r.n),
                  static_cast<unsigned long long>(r.smallest_factor));
    }
  }
  // Every job and pill taken and done: no worker talks to the server any more.
  if (stop) {
    jobs.join();
    m.shutdown_server();
  }
  bool ok = static_cast<int>(got.size()) == njobs && wrong == 0;
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}
