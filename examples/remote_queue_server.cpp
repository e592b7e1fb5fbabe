// remote_queue_server — Python docs' QueueManager server ("Using a remote manager"):
// a manager on a TCP address that publishes a job queue and a result queue under
// names, then serves until a client stops it.
//
//   remote_queue_server --port=50000 --authkey=secret [--host=127.0.0.1]
//
// Prints "listening on tcp:HOST:PORT" once clients may connect (with --port=0, the
// port the kernel chose). Workers (remote_queue_worker) and a client
// (remote_queue_client) on this or other machines connect with the same authkey.
// Across machines: listen on 127.0.0.1 and tunnel (docs/manager.md), or on a
// private interface behind a firewall; the traffic is authenticated, not encrypted.
#include <cstdio>

#include <mproc/manager.hpp>

#include "common.hpp"
#include "remote_queue.hpp"

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  remote_queue::Endpoint e = remote_queue::endpoint_flags(flags);
  flags.check();
  if (e.authkey.empty()) {
    std::fprintf(stderr, "remote_queue_server: --authkey is required on a network address\n");
    return 2;
  }
  mproc::Manager m({.address = {e.host, e.port}, .authkey = e.authkey});
  m.publish("jobs", m.JoinableQueue<remote_queue::Job>());
  m.publish("results", m.Queue<remote_queue::Result>());
  m.publish("count", m.Value<long long>(0));  // for the tests: apply() from another program is refused
  std::printf("listening on %s\n", m.address().str().c_str());
  std::fflush(stdout);
  m.serve_forever();  // until a client calls shutdown_server()
  std::printf("server stopped\n");
  return 0;
}
