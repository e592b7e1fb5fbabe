// examples/remote_queue.hpp — what the remote work-queue programs share: the job
// and result types (the same names in every program, so their proxies match) and
// the work itself.
#pragma once

#include <cstdint>
#include <string>

#include <mproc/manager.hpp>

#include "common.hpp"

namespace remote_queue {

/// A number to factor; id < 0 is the poison pill that tells a worker to stop.
struct Job {
  std::int64_t id = 0;
  std::uint64_t n = 0;
};

struct Result {
  std::int64_t id = 0;
  std::uint64_t n = 0;
  std::uint64_t smallest_factor = 0;  // n itself when n is prime
  std::int32_t worker_pid = 0;
};

inline std::uint64_t smallest_factor(std::uint64_t n) {
  if (n % 2 == 0) return 2;
  for (std::uint64_t d = 3; d * d <= n; d += 2) {
    if (n % d == 0) return d;
  }
  return n;
}

/// --host, --port and --authkey, the flags every program of the three takes.
struct Endpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string authkey;
};
inline Endpoint endpoint_flags(examples::Flags& flags) {
  Endpoint e;
  e.host = flags.get_string("host", "127.0.0.1", "server address (the server: where to listen)");
  e.port = static_cast<std::uint16_t>(flags.get("port", 50000, "TCP port (the server: 0 for any free one)"));
  e.authkey = flags.get_string("authkey", "", "shared secret (required)");
  return e;
}

/// The server's two queues, as a worker or the client sees them.
struct Queues {
  mproc::Manager manager;
  mproc::JoinableQueueProxy<Job> jobs;  // joinable: the client waits until every job (pills too) is done
  mproc::QueueProxy<Result> results;
};
inline Queues connect(const Endpoint& e) {
  auto m = mproc::Manager::connect({e.host, e.port}, e.authkey);
  auto jobs = m.lookup<mproc::JoinableQueueProxy<Job>>("jobs");
  auto results = m.lookup<mproc::QueueProxy<Result>>("results");
  return Queues{std::move(m), std::move(jobs), std::move(results)};
}

}  // namespace remote_queue
