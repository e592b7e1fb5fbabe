// Executors (mproc/executor.hpp, docs/executor.md): the non-template parts.
#include "mproc/executor.hpp"

#include <algorithm>
#include <string>

#include "mproc/detail/pool_backend.hpp"

namespace mproc {

// ---- PoolGate (mproc/futures.hpp) -----------------------------------------------------

namespace detail {

bool PoolGate::cancel(std::uint64_t job) {
  return with_core([](PoolBackend& c, std::uint64_t j) { return c.cancel_job(j); }, job);
}

bool PoolGate::dispatched(std::uint64_t job) {
  return with_core([](PoolBackend& c, std::uint64_t j) { return c.job_dispatched(j); }, job);
}

void PoolGate::detach() {
  std::unique_lock lock(mu_);
  idle_.wait(lock, [&] { return users_ == 0; });
  core_ = nullptr;
}

bool PoolGate::with_core(bool (*op)(PoolBackend&, std::uint64_t), std::uint64_t job) {
  {
    std::lock_guard lock(mu_);
    if (!core_) return false;
    ++users_;
  }
  bool r = false;
  try {
    r = op(*core_, job);
  } catch (...) {
  }
  {
    std::lock_guard lock(mu_);
    --users_;
  }
  idle_.notify_all();
  return r;
}

}  // namespace detail

namespace {

PoolOptions pool_options(const ExecutorOptions& o, int default_workers) {
  if (o.max_workers < 0) {
    throw UsageError("mproc: max_workers must be >= 1 (or 0 for the default), got " + std::to_string(o.max_workers));
  }
  if (o.max_tasks_per_child < 0) {
    throw UsageError("mproc: max_tasks_per_child must be >= 1 (or 0 for no limit), got " +
                     std::to_string(o.max_tasks_per_child));
  }
  PoolOptions p;
  p.processes = o.max_workers ? o.max_workers : default_workers;
  p.maxtasksperchild = o.max_tasks_per_child;
  p.start_method = o.start_method;
  p.timeline = o.timeline;
  return p;
}

}  // namespace

// ---- ProcessPoolExecutor --------------------------------------------------------------

void ProcessPoolExecutor::start(const ExecutorOptions& options, detail::EncodedTask initializer) {
  PoolOptions p = pool_options(options, cpu_count());
  // Python keeps its call queue at max_workers + 1 calls, so that everything
  // behind it stays cancellable, and pays a thread hand-off per task for it. Here
  // a task stays cancellable in the task channel until a worker claims it (the
  // pool's tickets), so the channel can run far ahead: up to 1024 tasks.
  pool_.reset(new Pool(p, std::move(initializer), std::size_t{1024}));
  gate_ = std::make_shared<detail::PoolGate>(pool_->backend_.get());
}

ProcessPoolExecutor::~ProcessPoolExecutor() {
  shutdown_quietly();
  // Futures may outlive the executor: from now on their cancel() says false.
  gate_->detach();
}

// ---- ThreadPoolExecutor ---------------------------------------------------------------

void ThreadPoolExecutor::start(const ExecutorOptions& options, std::function<void()> initializer) {
  PoolOptions p = pool_options(options, std::min(32, cpu_count() + 4));  // Python's default
  pool_ = initializer ? std::make_unique<ThreadPool>(p, std::move(initializer)) : std::make_unique<ThreadPool>(p);
}

ThreadPoolExecutor::~ThreadPoolExecutor() { shutdown_quietly(); }

}  // namespace mproc
