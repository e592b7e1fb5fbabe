// mproc/detail/pool_backend.hpp — the seam between a pool's typed front end
// (mproc/pool.hpp: results, map methods, chunking, progress, timeline) and the
// backend that runs its chunks, which works on bytes only: PoolBackend, the
// messages that cross it (ChunkMessage, JobSink's batches) and the worker-side
// ItemSink. The local process engine (PoolCore, pool_core.hpp) is one backend;
// docs/design.md, "The pool's backend seam", says what another must implement.
#pragma once

#include "mproc/detail/config.hpp"

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "mproc/detail/exception.hpp"        // ExceptionInfo
#include "mproc/detail/result_receiver.hpp"  // ResultReceiver

// Light on purpose (no serializer, no cereal): a backend's own headers include it.
namespace mproc {
class Reader;  // mproc/serial.hpp
class Writer;
}  // namespace mproc

namespace mproc::detail {

class TimelineRecorder;  // mproc/detail/timeline_recorder.hpp

/// Layout of the fixed header at the start of every task message.
struct ChunkHeader {
  std::uint64_t job;         // 0: "stop" (the worker exits)
  std::uint64_t first;       // index of the first item in the job's input
  std::uint64_t count;       // items in this chunk
  std::uint64_t ticket = 0;  // the send's ticket: cancel vs claim, claim vs takeover (0: none)
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

/// What a pool's typed front end sits on (Pool, ProcessPoolExecutor): jobs of
/// encoded chunks in, each item's outcome out through the job's JobSink. PoolCore
/// (pool_core.hpp, worker processes on this machine) implements it; a Pool runs
/// on any other implementation given to Pool(std::unique_ptr<PoolBackend>).
///
/// Threading: every member may be called from any thread, concurrently, and from
/// inside a JobSink callback (a user's callback may submit more work): a backend
/// never calls a sink while holding a lock its members take. Ownership: the Pool
/// owns its backend; a backend owns the sinks it was given until each job is
/// finished (or the backend is destroyed), and the fds of each submitted chunk.
/// The destructor must terminate() and join() (a Pool's destructor is Python's
/// `with Pool()` exit): pending items fail with Failure::cancelled, and no sink
/// is called once it returns.
class PoolBackend {
 public:
  virtual ~PoolBackend() = default;

  // -- jobs ------------------------------------------------------------------
  /// Registers a job delivered to `sink`; returns its id (never 0). Throws
  /// UsageError once the backend accepts no work (after close() or terminate()).
  virtual std::uint64_t open_job(std::shared_ptr<JobSink> sink) = 0;
  /// Queues `chunk` (a message of ChunkHeader, entry, callable and items: the
  /// backend fills the header's job, first, count and ticket) as items
  /// [first, first + chunk.items()) of open job `job`. Never blocks on workers.
  /// Owns chunk.fds from the call on, whether it returns or throws (a backend
  /// that cannot carry fds throws UsageError). The front end submits a job's
  /// chunks before it seals it, never after. Throws CancelledError once terminated.
  virtual void submit(std::uint64_t job, std::uint64_t first, ChunkMessage chunk) = 0;
  /// No more chunks for `job`: it is forgotten once all its items are delivered.
  virtual void seal_job(std::uint64_t job) = 0;

  // Delivery (the backend's side of the contract): every submitted item reaches
  // its job's sink exactly once, through JobSink::on_batch (its result or its
  // task's exception, as the entry encoded them) or JobSink::on_failure
  // (worker_lost after the retries, timeout, cancelled), on a backend thread or,
  // through receiver(), on a thread waiting for that job.

  // -- cancellation (ProcessPoolExecutor's Future::cancel, executor map) --------
  /// Cancels sealed job `job` if no worker has taken any of it: its items fail
  /// with Failure::cancelled through its sink, and true is returned; false if a
  /// worker took it, or it is not sealed, finished or unknown (a backend without
  /// cancellation always answers false).
  virtual bool cancel_job(std::uint64_t job) = 0;
  /// cancel_job for every job it would succeed for; returns how many.
  virtual std::size_t cancel_queued_jobs() = 0;
  /// Whether a worker has (or may have) taken a chunk of `job`. False for a job
  /// that is finished or unknown.
  virtual bool job_dispatched(std::uint64_t job) const = 0;

  // -- lifecycle (Python's) ----------------------------------------------------
  /// No new jobs; queued work finishes (open jobs still take chunks), then the
  /// workers exit. Idempotent.
  virtual void close() = 0;
  /// Stop now: every pending item fails with Failure::cancelled. Idempotent.
  virtual void terminate() = 0;
  /// Waits for the workers to exit, after close() or terminate().
  virtual void join() = 0;
  /// Whether open_job would succeed now.
  virtual bool accepting() const = 0;

  // -- what the front end reads ------------------------------------------------
  /// Number of workers (chunk sizes and read-ahead windows follow it), >= 1.
  virtual int processes() const = 0;
  /// How long the front end's waiters spin before sleeping (0: never).
  virtual std::int64_t spin_ns() const = 0;
  /// The ResultReceiver waiters may use to receive their job's results on their
  /// own thread, or null: waiters then sleep until a backend thread delivers.
  virtual const std::shared_ptr<ResultReceiver>& receiver() const = 0;
  /// Pids of the current workers (tools, tests); empty where there are none here.
  virtual std::vector<pid_t> worker_pids() const = 0;
  /// The recorder the backend writes a TaskRecord per item to, or null.
  virtual std::shared_ptr<TimelineRecorder> timeline() const = 0;
};

}  // namespace mproc::detail
