// The typed front end's compiled parts (mproc/pool.hpp): Pool's non-template
// members, the errors a failed item becomes, and the helpers of chunk encoding.
// The backend under it is a PoolBackend: PoolCore (mproc/detail/pool_core.hpp,
// src/pool/) unless the Pool was given another.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <system_error>

#include "mproc/detail/pool_core.hpp"
#include "mproc/detail/timeline_recorder.hpp"
#include "mproc/pool.hpp"

namespace mproc {
namespace detail {

std::exception_ptr make_item_error(Failure kind, const ExceptionInfo& info, int exitcode, std::uint64_t index) {
  auto i = static_cast<std::size_t>(index);
  switch (kind) {
    case Failure::raised:
      return std::make_exception_ptr(TaskError(info.type_name, info.message, info.traceback, i));
    case Failure::worker_lost:
      return std::make_exception_ptr(WorkerLostError(info.message, exitcode, i));
    case Failure::timeout:
      return std::make_exception_ptr(TaskTimeoutError(info.message, i));
    case Failure::cancelled:
      return std::make_exception_ptr(CancelledError(info.message));
  }
  return std::make_exception_ptr(Error(info.message));
}

std::vector<int> dup_fds(std::span<const int> fds) {
  std::vector<int> out;
  out.reserve(fds.size());  // no duplicate is lost to a push_back that cannot allocate
  for (int fd : fds) {
    int d = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) {
      for (int x : out) ::close(x);
      throw std::system_error(errno, std::generic_category(), "mproc: fcntl(F_DUPFD_CLOEXEC) failed");
    }
    out.push_back(d);
  }
  return out;
}

std::size_t checked_chunksize(long long c) {
  if (c < 0) throw UsageError("mproc: chunksize must be >= 0 (0 picks one), got " + std::to_string(c));
  return static_cast<std::size_t>(c);
}

}  // namespace detail

// ---- Pool (non-template parts) -------------------------------------------------------

void Pool::start(const PoolOptions& options, detail::EncodedTask initializer, std::size_t max_queued) {
  if (options.processes < 0) {
    throw UsageError("mproc: Pool needs processes >= 1 (or 0 for cpu_count()), got " + std::to_string(options.processes));
  }
  if (options.maxtasksperchild < 0) {
    throw UsageError("mproc: maxtasksperchild must be >= 1 (or 0 for no limit), got " +
                     std::to_string(options.maxtasksperchild));
  }
  if (options.timeout && *options.timeout <= std::chrono::nanoseconds::zero()) {
    throw UsageError("mproc: the per-task timeout must be positive");
  }
  if (options.retries < 0) throw UsageError("mproc: retries must be >= 0");
  if (options.max_memory_mb < 0) throw UsageError("mproc: max_memory_mb must be >= 0 (0: no limit)");
  detail::PoolConfig cfg;
  cfg.processes = options.processes ? options.processes : cpu_count();
  cfg.method = options.start_method.value_or(get_start_method());
  cfg.maxtasksperchild = static_cast<std::size_t>(options.maxtasksperchild);
  cfg.timeout = options.timeout;
  cfg.retries = options.retries;
  cfg.max_memory_mb = static_cast<std::size_t>(options.max_memory_mb);
  cfg.initializer = std::move(initializer);
  cfg.max_queued = max_queued;
  if (options.timeline) cfg.timeline = std::make_shared<detail::TimelineRecorder>(cfg.processes);
  cfg.cancellable = max_queued > 0;  // ProcessPoolExecutor's pool
  processes_ = cfg.processes;
  backend_ = std::make_unique<detail::PoolCore>(std::move(cfg));
}

Pool::Pool(std::unique_ptr<detail::PoolBackend> backend) : backend_(std::move(backend)) {
  if (!backend_) throw UsageError("mproc: Pool(backend) needs a backend, got a null pointer");
  processes_ = backend_->processes();
  if (processes_ < 1) {
    throw UsageError("mproc: Pool(backend): the backend reports " + std::to_string(processes_) +
                     " workers; PoolBackend::processes() must be at least 1");
  }
}

Pool::~Pool() = default;  // the backend's destructor terminates and joins

void Pool::close() {
  feeds_->feed_all();  // lazy maps run every call, as in Python (issue 11, bug 4)
  backend_->close();
}
void Pool::terminate() { backend_->terminate(); }
void Pool::join() { backend_->join(); }
int Pool::processes() const { return processes_; }
std::vector<pid_t> Pool::worker_pids() const { return backend_->worker_pids(); }

Timeline Pool::timeline() const {
  auto rec = backend_->timeline();
  if (!rec) {
    throw UsageError("mproc: this pool records no timeline; create it with PoolOptions::timeline = true");
  }
  return Timeline(std::move(rec));
}

}  // namespace mproc
