// mproc/process_executor.hpp — concurrent.futures.ProcessPoolExecutor for C++,
// on mproc::Pool (mproc/pool.hpp). Future, as_completed() and wait() come with
// it (mproc/futures.hpp); mproc/executor.hpp includes this and
// mproc/thread_executor.hpp (docs/executor.md).
#pragma once

#include "mproc/detail/config.hpp"

#include <memory>
#include <utility>

#include "mproc/detail/encoded_task.hpp"
#include "mproc/detail/pool_backend.hpp"
#include "mproc/futures.hpp"
#include "mproc/pool.hpp"

namespace mproc {

/// concurrent.futures.ProcessPoolExecutor on mproc::Pool: tasks run in worker
/// processes, with Pool's crash handling (a task whose worker dies fails with
/// WorkerLostError; the executor never breaks). Tasks and their arguments follow
/// Pool's rules (sendable callables, serializable values). All members may be
/// called from several threads. The destructor calls shutdown(true), like the end
/// of Python's `with` block.
class ProcessPoolExecutor : public detail::BasicExecutor<Pool> {
 public:
  /// Starts the workers. Throws UsageError for invalid options, StartError /
  /// std::system_error if processes cannot be started.
  explicit ProcessPoolExecutor(ExecutorOptions options = {}) { start(options, {}); }
  /// `max_workers` processes (0: cpu_count()), as Python's ProcessPoolExecutor(4).
  explicit ProcessPoolExecutor(int max_workers) : ProcessPoolExecutor(ExecutorOptions{.max_workers = max_workers}) {}
  /// With an initializer run in each worker process before its first task
  /// (Python's initializer/initargs). If it keeps failing, pending futures fail
  /// with its error and submit() throws UsageError (Python: BrokenProcessPool).
  template <class F, class... Args>
  ProcessPoolExecutor(ExecutorOptions options, F&& initializer, Args&&... initargs) {
    start(options, detail::encode_initializer(std::forward<F>(initializer), std::forward<Args>(initargs)...));
  }
  /// On another backend than the local worker processes (docs/design.md, "The
  /// pool's backend seam"; e.g. the cluster's MPI ranks), owned from here on.
  /// Future::cancel() works as far as the backend's cancel_job does (false from
  /// a backend without cancellation). Throws UsageError if it is null.
  explicit ProcessPoolExecutor(std::unique_ptr<detail::PoolBackend> backend) {
    pool_.reset(new Pool(std::move(backend)));
    gate_ = std::make_shared<detail::PoolGate>(pool_->backend_.get());
  }
  ProcessPoolExecutor(const ProcessPoolExecutor&) = delete;
  ProcessPoolExecutor& operator=(const ProcessPoolExecutor&) = delete;
  /// shutdown(true): waits for every submitted task. Never throws.
  ~ProcessPoolExecutor();

  /// Schedules f(args...) in a worker; never blocks on the workers. Throws
  /// UsageError after shutdown().
  template <class F, class... Args>
  [[nodiscard]] auto submit(F&& f, Args&&... args) {
    check_open();
    auto [core, job] = pool_->apply_job<detail::FutureCore>(std::forward<F>(f), std::forward<Args>(args)...);
    // Set before anyone else can see the future (cancel() reads them).
    core->gate = gate_;
    core->job = job;
    return Future<typename decltype(core)::element_type::result_type>(std::move(core));
  }

 private:
  void start(const ExecutorOptions& options, detail::EncodedTask initializer);

  std::shared_ptr<detail::PoolGate> gate_;
};

}  // namespace mproc
