// A program whose pool is owned by a global: run by test_pool_exit (issue 11,
// bug 5). main() starts work and returns while two tasks are still running;
// the global's destructor must wait for them (close + join / shutdown).
//
//   pool_exit_helper executor|pool fork|spawn|forkserver DIR
//
// The race is forced, not hoped for: each task tells main it started (a byte on
// DIR/started, a FIFO) and then waits for a read lock on DIR/gate, whose write
// lock main holds until g_gate's destructor, which runs at exit before the
// holders' (it is defined after them). A task that finishes appends its index
// to DIR/done. Exit status: 0, or 2 on a usage or setup error.
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include <mproc/executor.hpp>
#include <mproc/pool.hpp>

namespace {

int task(std::string dir, int i) {
  // O_NONBLOCK: fails (ENXIO) instead of waiting once main closed its end.
  int s = ::open((dir + "/started").c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
  if (s >= 0) {
    (void)!::write(s, "x", 1);
    ::close(s);
  }
  int g = ::open((dir + "/gate").c_str(), O_RDONLY | O_CLOEXEC);
  struct flock rd{};
  rd.l_type = F_RDLCK;
  rd.l_whence = SEEK_SET;
  while (::fcntl(g, F_SETLKW, &rd) != 0 && errno == EINTR) {
  }  // until main's g_gate lets go
  ::close(g);
  std::string line = std::to_string(i) + "\n";
  int d = ::open((dir + "/done").c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  (void)!::write(d, line.data(), line.size());
  ::close(d);
  return i;
}

// The two ways a program keeps a pool in a global.
std::unique_ptr<mproc::ProcessPoolExecutor> g_executor;  // its destructor: shutdown(wait=true)
struct PoolHolder {
  std::optional<mproc::Pool> pool;
  ~PoolHolder() {
    if (pool) {
      pool->close();
      pool->join();
    }
  }
} g_pool;

// Destroyed before the holders above: lets the running tasks finish.
struct Gate {
  int fd = -1;
  ~Gate() {
    if (fd >= 0) ::close(fd);  // drops main's write lock
  }
} g_gate;

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  if (argc != 4) {
    std::fprintf(stderr, "usage: pool_exit_helper executor|pool fork|spawn|forkserver DIR\n");
    return 2;
  }
  std::string kind = argv[1], method = argv[2], dir = argv[3];
  mproc::StartMethod m = method == "fork"    ? mproc::StartMethod::fork
                         : method == "spawn" ? mproc::StartMethod::spawn
                                             : mproc::StartMethod::forkserver;
  // O_RDWR: opening never blocks, and the FIFO never reads EOF while main has it.
  if (::mkfifo((dir + "/started").c_str(), 0600) != 0) return 2;
  int started = ::open((dir + "/started").c_str(), O_RDWR | O_CLOEXEC);
  g_gate.fd = ::open((dir + "/gate").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  // A POSIX record lock (not flock): it belongs to this process alone, so a fork
  // child holding an inherited copy of the fd (the fork method's zygote) does not
  // keep it held.
  struct flock wr{};
  wr.l_type = F_WRLCK;
  wr.l_whence = SEEK_SET;
  if (started < 0 || g_gate.fd < 0 || ::fcntl(g_gate.fd, F_SETLK, &wr) != 0) return 2;

  // Two tasks that block (one per worker), two queued behind them.
  constexpr int kTasks = 4;
  if (kind == "executor") {
    g_executor = std::make_unique<mproc::ProcessPoolExecutor>(mproc::ExecutorOptions{.max_workers = 2, .start_method = m});
    for (int i = 0; i < kTasks; ++i) (void)g_executor->submit(task, dir, i);
  } else if (kind == "pool") {
    g_pool.pool.emplace(mproc::PoolOptions{.processes = 2, .start_method = m});
    for (int i = 0; i < kTasks; ++i) (void)g_pool.pool->apply_async(task, dir, i);
  } else {
    return 2;
  }
  // Both workers are inside a task: return now, with the work in flight.
  for (int got = 0; got < 2;) {
    pollfd p{started, POLLIN, 0};
    if (::poll(&p, 1, 30'000) != 1) return 2;
    char buf[2];
    ssize_t n = ::read(started, buf, sizeof buf);
    if (n > 0) got += static_cast<int>(n);
  }
  ::close(started);
  return 0;
}
