// mproc/detail/pool_core.hpp — the untyped engine under Pool: workers, their
// supervision, and the task/result channels. Typed code (pool.hpp) encodes chunks
// and decodes results; everything here works on bytes and is compiled once.
#pragma once

#include "mproc/detail/config.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "mproc/detail/exception.hpp"
#include "mproc/detail/futex.hpp"
#include "mproc/detail/result_receiver.hpp"
#include "mproc/process.hpp"
#include "mproc/serial.hpp"

namespace mproc::detail {

class TimelineRecorder;  // mproc/detail/timeline_recorder.hpp

/// Layout of the fixed header at the start of every task message.
struct ChunkHeader {
  std::uint64_t job;         // 0: "stop" (the worker exits)
  std::uint64_t first;       // index of the first item in the job's input
  std::uint64_t count;       // items in this chunk
  std::uint64_t ticket = 0;  // cancellable until a worker claims it (0: not cancellable)
};

/// When and where an item ran (CLOCK_MONOTONIC ns, comparable across processes).
struct ItemTiming {
  std::uint32_t worker = 0;  // worker slot
  std::int64_t start_ns = 0;
  std::int64_t end_ns = 0;
};

/// How an item failed, when it did.
enum class Failure : std::uint8_t { raised, worker_lost, timeout, cancelled };

/// Receives the outcome of every item of one job, on the pool's result thread.
/// Implementations must not throw (they run in the pool's thread) and must be
/// quick (callbacks run here too).
class JobSink {
 public:
  virtual ~JobSink() = default;
  /// Items [first, first + count) ran. For each, in order, `payload` holds its
  /// encoded result (status[k] == 0) or an ExceptionInfo (status[k] == 1).
  /// Items with fresh[k] == 0 were already delivered (a re-run after a lost
  /// worker): decode and drop them. `status` is null when every item succeeded,
  /// `fresh` null when every item is fresh (the common case, with no per-item
  /// bytes to look at: see status_at / fresh_at).
  virtual void on_batch(std::uint64_t first, std::uint64_t count, const std::uint8_t* status,
                        const std::uint8_t* fresh, Reader& payload, const ItemTiming& t) noexcept = 0;
  /// Item `index` failed without running to the end (lost worker, timeout, cancel).
  virtual void on_failure(std::uint64_t index, Failure kind, const ExceptionInfo& info, int exitcode,
                          const ItemTiming& t) noexcept = 0;
};

/// status[k] and fresh[k] of JobSink::on_batch, where null means all 0 / all 1.
inline std::uint8_t status_at(const std::uint8_t* status, std::uint64_t k) noexcept { return status ? status[k] : 0; }
inline bool fresh_at(const std::uint8_t* fresh, std::uint64_t k) noexcept { return !fresh || fresh[k] != 0; }

/// What the typed layer hands the core for one chunk: the whole task message
/// (header, entry, callable, items) and where each item starts, so the core can
/// re-send the items after a lost one.
struct ChunkMessage {
  std::vector<std::byte> bytes;
  std::vector<int> fds;              // owned duplicates (closed by the core)
  std::size_t prefix = 0;            // header + entry + callable
  std::vector<std::size_t> offsets;  // item i starts at offsets[i] (empty when stride != 0)
  // Items of one fixed size (plain bytes): item i starts at prefix + i * stride,
  // and no offsets are kept. 0: offsets says where items start.
  std::size_t stride = 0;

  std::size_t items() const noexcept { return stride ? (bytes.size() - prefix) / stride : offsets.size(); }
  /// Where item i starts; i == items() gives the end of the message.
  std::size_t offset(std::size_t i) const noexcept {
    if (stride) return prefix + i * stride;
    return i < offsets.size() ? offsets[i] : bytes.size();
  }
};

struct PoolConfig {
  int processes = 1;
  StartMethod method = StartMethod::forkserver;
  std::size_t maxtasksperchild = 0;
  std::optional<std::chrono::nanoseconds> timeout;
  int retries = 0;
  std::size_t max_memory_mb = 0;
  std::vector<std::byte> initializer;  // an encoded process task, or empty
  // Most chunks waiting in the task channel at once; 0: only its bytes bound it.
  std::size_t max_queued = 0;
  // PoolOptions::timeline: where the collector and supervisor record each task,
  // and workers then send per-item times. Null: nothing is recorded or sent.
  std::shared_ptr<TimelineRecorder> timeline;
  // Jobs stay cancellable in the task channel until a worker claims them
  // (tickets; ProcessPoolExecutor's Future::cancel). Needs max_queued <= 1024.
  bool cancellable = false;
};

class PoolCore {
 public:
  explicit PoolCore(PoolConfig config);
  ~PoolCore();
  PoolCore(const PoolCore&) = delete;
  PoolCore& operator=(const PoolCore&) = delete;

  /// Registers a job of `items` items (may grow with add_items for lazy input).
  /// Throws UsageError when the pool no longer accepts work.
  std::uint64_t open_job(std::shared_ptr<JobSink> sink);
  /// Queues a chunk of job `job` covering items [first, first + chunk.items()).
  /// Never blocks on workers: a feeder thread moves chunks into the task channel.
  void submit(std::uint64_t job, std::uint64_t first, ChunkMessage chunk);
  /// No more chunks will come for `job`; it is forgotten once all its items are in.
  void seal_job(std::uint64_t job);

  // -- cancellation (ProcessPoolExecutor's Future::cancel and shutdown) --
  // A job can be cancelled while its chunks wait in the parent's feed queue and,
  // in a cancellable pool, while its one chunk waits in the task channel: it
  // carries a ticket, an entry in shared memory that the worker taking the chunk
  // and cancel_job race to flip (queued -> claimed, or queued -> cancelled); a
  // worker that finds it cancelled drops the chunk unrun.

  /// Cancels sealed job `job` if no worker has claimed any of it: it never runs,
  /// each item fails through the job's sink with Failure::cancelled, and true is
  /// returned. False if a worker took it, or the job is not sealed, finished or
  /// unknown.
  bool cancel_job(std::uint64_t job);
  /// cancel_job for every job it would succeed for; returns how many.
  std::size_t cancel_queued_jobs();
  /// Whether a worker has (or may have) taken a chunk of `job`: it runs, or ran.
  /// False for a job that is finished or unknown.
  bool job_dispatched(std::uint64_t job) const;

  /// Stop accepting work; workers exit once the queued work is done.
  void close();
  /// Stop now: kill workers, fail everything pending with CancelledError.
  void terminate();
  /// Wait for the workers to exit (after close() or terminate()).
  void join();
  bool accepting() const;
  int processes() const;
  /// How long this pool's waiters spin before sleeping: long (kPoolSpinNs) when
  /// the machine has a core for each worker plus the caller and the result
  /// thread, the channels' short default otherwise (docs/pool.md, latency).
  std::int64_t spin_ns() const;
  /// This pool's ResultReceiver (for the results it fills).
  const std::shared_ptr<ResultReceiver>& receiver() const;
  /// Pids of the current workers (for tests and tools).
  std::vector<pid_t> worker_pids() const;
  /// The timeline recorder (PoolConfig::timeline), or null.
  std::shared_ptr<TimelineRecorder> timeline() const;

 private:
  friend class ResultReceiver;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The worker side: what a pool task entry reports through its `ctx`. Results
/// are batched: an item's result is encoded into result_writer() and recorded by
/// ok(); the sink sends a batch at the end of the chunk, or sooner when the batch
/// grows large or old (so a crash re-runs little).
class ItemSink {
 public:
  virtual ~ItemSink() = default;
  /// The entry is about to run item `index` (for crash attribution and timeouts).
  virtual void starting(std::uint64_t index) noexcept = 0;
  /// Where to encode the result of the item being run.
  virtual Writer& result_writer() = 0;
  virtual void ok(std::uint64_t index) = 0;
  virtual void failed(std::uint64_t index, const ExceptionInfo& info) = 0;

  // -- the bulk path (plain-bytes arguments and results; docs/pool.md) --
  // Items run in runs of up to kRun: run_begin gives the room for the run's
  // results, running(i) precedes item i, run_end(n) says the first n results
  // are written and their items succeeded. An item that throws ends its run
  // early: run_end(items before it), then failed(it).

  /// Most items of one run: the batch is checked against its limits (bytes,
  /// age) between runs.
  static constexpr std::size_t kRun = 64;
  /// Whether runs may be used: not when a per-task timeout or the timeline needs
  /// each item's own start and end time.
  virtual bool bulk() const noexcept = 0;
  /// Starts a run at item `index` of at most `n` items whose results take `size`
  /// bytes each; returns where to write them: room for between 1 and min(n, kRun).
  virtual std::span<std::byte> run_begin(std::uint64_t index, std::size_t n, std::size_t size) = 0;
  virtual void run_end(std::size_t done) = 0;
  /// Item `index` of the run starts (a relaxed store, for crash attribution).
  void running(std::uint64_t index) noexcept { running_->store(index, std::memory_order_relaxed); }

 protected:
  std::atomic<std::uint64_t>* running_ = nullptr;  // set by the implementation
};

}  // namespace mproc::detail
