// mproc/detail/pool_core.hpp — the local process engine, the PoolBackend
// (pool_backend.hpp) a Pool made from PoolOptions runs on: worker processes on
// this machine, their supervision, and the task/result channels. Typed code
// (pool.hpp) encodes chunks and decodes results; everything here works on bytes
// and is compiled once (src/pool/).
#pragma once

#include "mproc/detail/config.hpp"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "mproc/detail/encoded_task.hpp"
#include "mproc/detail/pool_backend.hpp"
#include "mproc/process.hpp"  // StartMethod

namespace mproc::detail {

struct PoolConfig {
  int processes = 1;
  StartMethod method = StartMethod::forkserver;
  std::size_t maxtasksperchild = 0;
  std::optional<std::chrono::nanoseconds> timeout;
  int retries = 0;
  std::size_t max_memory_mb = 0;
  EncodedTask initializer;  // an encoded process task (with its fds), or empty
  // Most chunks waiting in the task channel at once; 0: only its bytes bound it.
  std::size_t max_queued = 0;
  // PoolOptions::timeline: where the collector and supervisor record each task,
  // and workers then send per-item times. Null: nothing is recorded or sent.
  std::shared_ptr<TimelineRecorder> timeline;
  // Jobs stay cancellable in the task channel until a worker claims them
  // (tickets; ProcessPoolExecutor's Future::cancel). Needs max_queued <= 1024.
  bool cancellable = false;
};

/// The local process backend: `processes` worker processes started by
/// `method`, a task and a result channel in shared memory, a feeder, a collector
/// and a supervisor thread (src/pool/, docs/pool.md "Design"). PoolBackend's
/// contract, plus what is particular to it below.
class PoolCore final : public PoolBackend {
 public:
  /// Starts the workers, then the threads. Throws StartError/std::system_error.
  explicit PoolCore(PoolConfig config);
  /// Terminates and joins.
  ~PoolCore() override;
  PoolCore(const PoolCore&) = delete;
  PoolCore& operator=(const PoolCore&) = delete;

  std::uint64_t open_job(std::shared_ptr<JobSink> sink) override;
  /// A feeder thread moves chunks into the task channel.
  void submit(std::uint64_t job, std::uint64_t first, ChunkMessage chunk) override;
  void seal_job(std::uint64_t job) override;

  // Cancellation: a job can be cancelled while its chunks wait in the parent's
  // feed queue and, in a cancellable pool (PoolConfig::cancellable), while its
  // one chunk waits in the task channel: it carries a ticket, an entry in shared
  // memory that the worker taking the chunk and cancel_job race to flip (queued
  // -> claimed, or queued -> cancelled); a worker that finds it cancelled drops
  // the chunk unrun.
  bool cancel_job(std::uint64_t job) override;
  std::size_t cancel_queued_jobs() override;
  bool job_dispatched(std::uint64_t job) const override;

  /// Workers exit once the queued work is done (a stop message each).
  void close() override;
  /// Kills the workers.
  void terminate() override;
  void join() override;
  bool accepting() const override;
  int processes() const override;
  /// Long (kPoolSpinNs) when the machine has a core for each worker plus the
  /// caller and the result thread, the channels' short default otherwise
  /// (docs/pool.md, latency).
  std::int64_t spin_ns() const override;
  /// Receives straight off this pool's result channel.
  const std::shared_ptr<ResultReceiver>& receiver() const override;
  std::vector<pid_t> worker_pids() const override;
  /// PoolConfig::timeline, or null.
  std::shared_ptr<TimelineRecorder> timeline() const override;

 private:
  friend class ResultReceiver;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mproc::detail
