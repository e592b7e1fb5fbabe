// mproc/timeline.hpp — per-task timelines of a pool, and what they say.
//
//   mproc::Pool pool({.processes = 4, .timeline = true});
//   pool.map(work, inputs);
//   mproc::Timeline t = pool.timeline();
//   std::puts(t.summary().c_str());           // busy % per worker, slowest tasks, failures
//   t.write_html("run.html");                 // a Gantt chart, one row per worker
//   t.write_chrome_trace("run.json");         // chrome://tracing, ui.perfetto.dev
//
// Recording is off by default and costs nothing then; docs/timeline.md says what
// it costs when on, what each field means and how the exports are drawn.
#pragma once

#include "mproc/detail/config.hpp"

#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mproc {

/// How a task ended.
enum class TaskOutcome : std::uint8_t { ok, raised, worker_lost, timeout, cancelled };

/// "ok", "raised", "worker_lost", "timeout", "cancelled".
std::string_view to_string(TaskOutcome outcome);

/// One task (one input item) of a pool call: where and when it ran.
struct TaskRecord {
  std::uint64_t call;   // 1, 2, ... : which pool call (map, apply_async, submit...) in submission order
  std::uint64_t index;  // the argument's index within that call
  std::uint64_t chunk;  // index of the first item of its chunk
  int worker;  // worker slot, 0 .. processes-1 (a replacement keeps the slot); -1: never ran (cancelled)
  int pid;     // the process that ran it (0 when unknown)
  // Since the timeline's origin (pool creation): when the parent queued the chunk,
  // when the worker started and ended the task, when the parent received its result.
  std::chrono::nanoseconds queued, start, end, received;
  TaskOutcome outcome;

  std::chrono::nanoseconds duration() const { return end - start; }
};

/// One worker slot's share of the work.
struct WorkerInsight {
  int worker = 0;
  std::uint64_t tasks = 0;           // tasks it ran (any outcome but cancelled)
  std::uint64_t failed = 0;          // of those, the ones that did not end ok
  std::chrono::nanoseconds busy{0};  // sum of its tasks' end - start
  double busy_percent = 0;           // busy / the pool's active span * 100
};

/// What a timeline says (Timeline::insights). Times of tasks that never ran
/// (cancelled) count in `tasks` and `outcomes` only.
struct Insights {
  std::uint64_t tasks = 0;  // records, all outcomes
  std::uint64_t calls = 0;  // distinct calls among them
  int workers = 0;          // the pool's worker slots
  /// The pool's active span: the first task's start to the last task's end.
  std::chrono::nanoseconds span{0};
  /// Time in tasks: the sum of end - start.
  std::chrono::nanoseconds work{0};
  /// Time workers spent getting their next chunk: per worker, from the end of
  /// its previous task (or the chunk's queueing, if later) to the start of the
  /// chunk's first task (the parent's send, the hop, the worker's decoding). A
  /// worker's first chunk counts from its queueing, so it includes the start-up.
  std::chrono::nanoseconds dispatch{0};
  /// Chunks that ran, and the sum over them of first start - queued: how long
  /// work waited in the queue, mostly behind other work (grows with the input).
  std::uint64_t chunks = 0;
  std::chrono::nanoseconds queue_wait{0};
  /// Time in the workers between tasks of a chunk (decoding arguments, encoding
  /// results): per worker process and chunk, last end - first start - the tasks' work.
  std::chrono::nanoseconds worker_overhead{0};
  /// Time from the end of a result batch's last task to the parent having it:
  /// per batch, received - last end.
  std::chrono::nanoseconds result_latency{0};
  /// Over tasks that ran: mean, 99th percentile (nearest rank) and largest duration.
  std::chrono::nanoseconds mean_task{0}, p99_task{0}, max_task{0};
  std::vector<WorkerInsight> per_worker;    // one per slot, 0 .. workers-1
  std::vector<TaskRecord> slowest;          // the slowest tasks that ran, slowest first
  std::array<std::uint64_t, 5> outcomes{};  // tasks per outcome, indexed by TaskOutcome

  std::uint64_t count(TaskOutcome o) const { return outcomes[static_cast<std::size_t>(o)]; }
  std::uint64_t failures() const { return tasks - count(TaskOutcome::ok); }
  /// work / (work + dispatch + worker_overhead + result_latency) * 100: the share
  /// of the pool's own time that went into tasks (queue_wait is left out: it grows
  /// with the input, not with the pool's cost).
  double work_percent() const;
};

namespace detail {
class TimelineRecorder;
}

/// The per-task timeline of a pool (PoolOptions::timeline; Pool, ThreadPool and
/// the executors' timeline()).
/// A cheap copyable handle on the records: it stays valid after the pool is gone,
/// and reads what has been recorded so far whenever it is asked. Safe to use from
/// several threads. Exports never include anything but numbers and the title,
/// which is escaped.
class Timeline {
 public:
  /// An empty timeline (no tasks, no workers).
  Timeline() = default;
  explicit Timeline(std::shared_ptr<const detail::TimelineRecorder> recorder);

  /// The records so far, sorted by start (then call, then index).
  std::vector<TaskRecord> tasks() const;
  /// Per-worker and overall numbers, with the 5 (or `slowest`) slowest tasks.
  Insights insights() const;
  Insights insights(std::size_t slowest) const;
  /// insights() as a fixed-width text table.
  std::string summary() const;

  /// Chrome's trace-event JSON (chrome://tracing, ui.perfetto.dev): one complete
  /// event ("ph":"X") per task, pid = the pool's process, tid = worker slot
  /// (named "worker N"), timestamps in microseconds since the pool was created.
  std::string chrome_trace_json() const;
  /// Throws std::system_error when the file cannot be written.
  void write_chrome_trace(const std::filesystem::path& path) const;

  /// A self-contained HTML page (no scripts, no external resources): the summary
  /// and the SVG Gantt chart.
  std::string html() const;
  std::string html(std::string_view title) const;
  void write_html(const std::filesystem::path& path) const;
  void write_html(const std::filesystem::path& path, std::string_view title) const;

  /// A Gantt chart: one row per worker, one bar per task (merged per chunk, then
  /// per pixel, past 5000 tasks; docs/timeline.md), failures in their own colours,
  /// a legend, a time axis, and a hover title on every bar.
  std::string svg() const;
  std::string svg(std::string_view title) const;
  void write_svg(const std::filesystem::path& path) const;
  void write_svg(const std::filesystem::path& path, std::string_view title) const;

  /// The pool's worker slots (0 for an empty timeline).
  int workers() const;

 private:
  std::shared_ptr<const detail::TimelineRecorder> rec_;
};

}  // namespace mproc
