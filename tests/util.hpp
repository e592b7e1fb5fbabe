// Helpers shared by the multi-process tests: a private temp directory, file
// round trips, and leak probes (fd count, zombie children, /dev/shm entries).
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <functional>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace mproc::detail {
pid_t forkserver_pid() noexcept;  // src/os/forkserver.cpp
void forkserver_shutdown() noexcept;  // src/os/forkserver.cpp: stops it, reaped
}

namespace mproc_test {

/// A fresh directory, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "mproc-test-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) std::abort();
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

/// Writes text + "\n" atomically (temp file + rename): a reader polling for the
/// file sees nothing or everything.
inline void publish_file(const std::string& path, const std::string& text) {
  write_file(path + ".tmp", text + "\n");
  std::filesystem::rename(path + ".tmp", path);
}

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

/// Number of open fds of this process.
inline int fd_count() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d)) ++n;
    ::closedir(d);
  }
  return n;
}

/// Calls f(pid, state) for every child of this process, running or zombie, as
/// /proc lists them (state is the letter of /proc/PID/stat: R, S, Z...).
template <class F>
void for_each_child(F f) {
  pid_t self = ::getpid();
  if (DIR* d = ::opendir("/proc")) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      std::ifstream in(std::string("/proc/") + e->d_name + "/stat");
      std::string line;
      std::getline(in, line);
      auto rp = line.rfind(')');  // the command name may hold spaces and parentheses
      if (rp == std::string::npos) continue;
      std::istringstream rest(line.substr(rp + 2));
      char state;
      int ppid;
      rest >> state >> ppid;
      if (ppid == self) f(static_cast<pid_t>(std::atoi(e->d_name)), state);
    }
    ::closedir(d);
  }
}

/// Children of this process in zombie state (exited, never reaped).
inline int zombie_children() {
  int n = 0;
  for_each_child([&n](pid_t, char state) { n += state == 'Z'; });
  return n;
}

/// Entries in /dev/shm whose name contains `needle`.
inline int shm_entries(const std::string& needle = "mproc") {
  int n = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) {
    if (e.path().filename().string().find(needle) != std::string::npos) ++n;
  }
  return n;
}

/// Waits until process `pid` (not necessarily our child) has exited, via a pidfd.
/// Returns true if it exited (or was already gone) within the timeout.
inline bool wait_pid_gone(pid_t pid, std::chrono::milliseconds timeout) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return true;  // already gone
  pollfd p{fd, POLLIN, 0};
  int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
  ::close(fd);
  return r == 1;
}

/// Pids of this process's children (from /proc), running or zombie.
inline std::vector<pid_t> children_of_self() {
  std::vector<pid_t> out;
  for_each_child([&out](pid_t pid, char) { out.push_back(pid); });
  return out;
}

/// For tests that orphan processes on purpose (a parent killed with its children
/// alive): makes this process the subreaper of its descendants, so the orphans are
/// re-parented here instead of to PID 1 (which does not reap in some containers),
/// and on destruction reaps them — waiting (bounded) until every child other than
/// our forkserver is gone. `clean()` says whether that happened in time.
class OrphanReaper {
 public:
  OrphanReaper() { ::prctl(PR_SET_CHILD_SUBREAPER, 1); }
  ~OrphanReaper() { reap(std::chrono::seconds(10)); ::prctl(PR_SET_CHILD_SUBREAPER, 0); }
  bool reap(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      bool others = false;
      pid_t server = mproc::detail::forkserver_pid();
      for (pid_t c : children_of_self()) {
        if (c == server) continue;
        siginfo_t si{};
        // Only zombies are reaped (WNOHANG): a live child is left to its owner.
        if (::waitid(P_PID, static_cast<id_t>(c), &si, WEXITED | WNOHANG) < 0 || si.si_pid == 0) others = true;
      }
      if (!others) return true;
      if (std::chrono::steady_clock::now() > deadline) return false;
      ::usleep(5000);
    }
  }
};

/// Waits (bounded) until `path` exists with non-empty content; the content is the
/// event another process signals. Returns the content, or empty on timeout.
inline std::string wait_for_file(const std::string& path, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::string s = read_file(path);
    if (!s.empty() && s.back() == '\n') return s;
    if (std::chrono::steady_clock::now() > deadline) return {};
    ::usleep(2000);
  }
}

/// Fault injection: a thread that SIGKILLs one of `pids()` (picked by a fixed
/// pseudo-random sequence, so a failing run can be replayed) every `every`, until
/// `max_kills` were sent or stop(). Used by the pool and executor tests.
class RandomKiller {
 public:
  RandomKiller(std::function<std::vector<pid_t>()> pids, int max_kills, std::chrono::microseconds every)
      : max_kills_(max_kills),
        thread_([this, pids = std::move(pids), max_kills, every] {
          unsigned seed = 12345;
          while (!stop_.load() && kills_.load() < max_kills) {
            auto p = pids();
            if (!p.empty()) {
              seed = seed * 1103515245 + 12345;
              ::kill(p[seed % p.size()], SIGKILL);
              kills_.fetch_add(1);
            }
            std::this_thread::sleep_for(every);
          }
        }) {}
  ~RandomKiller() { stop(); }
  RandomKiller(const RandomKiller&) = delete;
  RandomKiller& operator=(const RandomKiller&) = delete;
  /// Stops killing and joins the thread. Idempotent.
  void stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  int kills() const { return kills_.load(); }
  bool done() const { return kills_.load() >= max_kills_; }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int> kills_{0};
  int max_kills_ = 0;
  std::thread thread_;
};

}  // namespace mproc_test
