// remote_queue_worker — connects to remote_queue_server, takes jobs (task_done() for each) until it gets
// the poison pill, and puts a result for each. Run as many as you like, on any
// machine that can reach the server.
//
//   remote_queue_worker --port=50000 --authkey=secret [--host=127.0.0.1]
#include <unistd.h>

#include <cstdio>

#include <mproc/manager.hpp>

#include "common.hpp"
#include "remote_queue.hpp"

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  remote_queue::Endpoint e = remote_queue::endpoint_flags(flags);
  flags.check();
  auto [m, jobs, results] = remote_queue::connect(e);
  int done = 0;
  for (;;) {
    remote_queue::Job job = jobs.get();
    if (job.id < 0) {
      jobs.task_done();  // the pill: after this the client may stop the server
      break;
    }
    results.put({job.id, job.n, remote_queue::smallest_factor(job.n), static_cast<std::int32_t>(::getpid())});
    jobs.task_done();
    ++done;
  }
  std::printf("worker %d: %d jobs\n", static_cast<int>(::getpid()), done);
  return 0;
}
