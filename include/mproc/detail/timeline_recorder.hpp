// mproc/detail/timeline_recorder.hpp — where a pool's collector and supervisor
// write task records (PoolOptions::timeline). Compiled in src/timeline/timeline.cpp.
#pragma once

#include "mproc/detail/config.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

#include "mproc/timeline.hpp"

namespace mproc::detail {

/// Per-item times as a worker sends them with a result batch, and as the
/// recorder keeps them: per item, LEB128 varints of (start - previous end) and
/// (end - start), in nanoseconds, where the first item's "previous end" is the
/// batch's start. 2 to 4 bytes an item instead of 16, so that timing a batch of
/// tiny items neither pushes it past the channel's out-of-band threshold nor
/// makes the parent's collector copy much more than it did.
struct ItemTimes {
  static void put(std::vector<std::uint8_t>& out, std::int64_t v) {
    auto u = static_cast<std::uint64_t>(std::max<std::int64_t>(v, 0));
    while (u >= 0x80) {
      out.push_back(static_cast<std::uint8_t>(u | 0x80));
      u >>= 7;
    }
    out.push_back(static_cast<std::uint8_t>(u));
  }
  /// Reads one value at `p`; false if `in` ends first or the value is too long.
  static bool get(std::span<const std::uint8_t> in, std::size_t& p, std::int64_t& v) {
    std::uint64_t u = 0;
    for (int shift = 0; shift < 63; shift += 7) {
      if (p >= in.size()) return false;
      std::uint8_t b = in[p++];
      u |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) {
        v = static_cast<std::int64_t>(u & (~std::uint64_t{0} >> 1));
        return true;
      }
    }
    return false;
  }
};

/// Where the items of one result batch (or one failed item) came from. Times are
/// steady_clock nanoseconds since its epoch (CLOCK_MONOTONIC: the same clock in
/// every process of the machine).
struct TimelineSource {
  std::uint64_t call = 0;   // the pool's job id
  std::uint64_t chunk = 0;  // first item of the chunk as submitted
  std::int64_t queued_ns = 0;
  std::int64_t received_ns = 0;
  int worker = -1;
};

/// The records of one pool. The collector appends a batch's bytes as they came
/// (one lock and a copy of a few bytes per item); readers decode snapshots.
class TimelineRecorder {
 public:
  explicit TimelineRecorder(int workers);
  ~TimelineRecorder();
  TimelineRecorder(const TimelineRecorder&) = delete;
  TimelineRecorder& operator=(const TimelineRecorder&) = delete;

  /// A worker process was started in `slot` at `at_ns`, before it could run
  /// anything (so a task's pid is found from its slot and start time).
  void worker_started(int slot, int pid, std::int64_t at_ns);
  /// Items [first, first + count) came back in one batch that the worker ran
  /// from batch_start to batch_end. status[k] != 0: item k raised. Items with
  /// fresh[k] == 0 were delivered before (re-runs): not recorded. `times` are the
  /// items' ItemTimes; empty (or malformed): the batch's time is shared out
  /// evenly. Never throws: records that find no memory are dropped.
  void ran(const TimelineSource& src, std::uint64_t first, std::uint64_t count, const std::uint8_t* status,
           const std::uint8_t* fresh, std::span<const std::uint8_t> times, std::int64_t batch_start,
           std::int64_t batch_end) noexcept;
  /// Item `index` did not run to its end. start_ns == 0: it never started (then
  /// start = end = end_ns). Never throws.
  void failed(const TimelineSource& src, std::uint64_t index, TaskOutcome outcome, std::int64_t start_ns,
              std::int64_t end_ns) noexcept;

  std::vector<TaskRecord> snapshot() const;
  int workers() const { return workers_; }
  int owner_pid() const { return owner_pid_; }
  std::int64_t origin_ns() const { return origin_ns_; }

 private:
  // Items [first, first + count), all fresh: `count` outcome bytes (TaskOutcome)
  // then their ItemTimes from `base`, at bytes [offset, offset + size) of the arena.
  struct Batch {
    std::uint64_t call, first, chunk;
    std::int64_t queued, received, base, end;
    int worker, pid;
    std::uint64_t count;
    const std::uint8_t* bytes;
    std::size_t size;
  };
  int pid_at(int slot, std::int64_t t) const;  // with mu_ held
  // With mu_ held: room for n bytes that stay put. Throws std::bad_alloc.
  std::uint8_t* reserve(std::size_t n);
  // With mu_ held: stores a batch whose bytes are outcomes + times.
  void add(Batch b, std::span<const std::uint8_t> outcomes, std::span<const std::uint8_t> times);

  const int workers_;
  const int owner_pid_;
  const std::int64_t origin_ns_;
  mutable std::mutex mu_;
  std::vector<std::vector<std::pair<std::int64_t, int>>> starts_;  // per slot: (started at, pid)
  std::vector<Batch> batches_;
  std::size_t items_ = 0;
  // The arena: blocks mapped with mmap (never moved, so batches point into them).
  // Pages are made present ahead of the writes with MADV_POPULATE_WRITE rather
  // than by one page fault each: on a VM we measured 15 us per fault, which made
  // faults the biggest cost of recording.
  struct Block {
    std::uint8_t* data;
    std::size_t size, used, populated;
  };
  std::vector<Block> blocks_;
};

}  // namespace mproc::detail
