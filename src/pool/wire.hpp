// The pool's wire layout: what the parent and its workers share, as bytes —
// the worker table in shared memory (one slot per worker, then the ticket
// words) and the result messages' header. Layout only; the behaviour lives in
// worker.cpp (writes slots, sends results), supervisor.cpp (reads slots) and
// result_receiver.cpp (reads results). Task messages start with ChunkHeader
// (mproc/detail/pool_core.hpp).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>

#include "mproc/detail/channel.hpp"
#include "mproc/detail/pool_core.hpp"
#include "mproc/detail/segment.hpp"
#include "ticket_table.hpp"

namespace mproc::detail {

using clock = std::chrono::steady_clock;

/// The wire's times (WorkerSlot::started_ns, ResultHeader's start_ns/end_ns):
/// steady_clock (CLOCK_MONOTONIC) nanoseconds, comparable across processes.
inline std::int64_t now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now().time_since_epoch()).count();
}

// One per worker, in shared memory: what the worker holds right now. Written
// only by the worker, read by the supervisor after the worker died or to check
// timeouts. Relaxed/acquire-release is enough: the supervisor reads a dead
// worker's slot after reaping it (the reap orders everything the worker wrote),
// and a live worker's slot only for a timeout, where a stale value costs at
// most one extra check.
//
// The phase is the worker's half of a task's state machine (docs/pool.md, "A
// task's life"): a death in any phase but idle and claimed is charged to the
// item in `index`, whatever the item was doing (its argument being decoded, its
// body running, its result being encoded or sent): one event, one rule.
//   claimed  - the chunk's record may still be in the channel (the receive): a
//              death re-queues the chunk, charging nothing (no task code ran);
//   decoding - `index` is the next item: its argument (or the chunk's callable)
//              is being decoded;
//   running  - `index` runs (started_ns: since when, for the timeout);
//   sending  - a batch of results ending with `index` is being sent.
enum class SlotPhase : std::uint32_t { idle = 0, claimed = 1, decoding = 2, running = 3, sending = 4 };
struct alignas(64) WorkerSlot {
  std::atomic<std::uint64_t> job;
  std::atomic<std::uint64_t> begin;  // the items held: [begin, end)
  std::atomic<std::uint64_t> end;
  std::atomic<std::uint64_t> index;  // the item in hand (phases decoding, running, sending)
  std::atomic<std::int64_t> started_ns;
  std::atomic<std::uint32_t> phase;
  // The ticket of the send held (ChunkHeader::ticket; 0: none): a death notice
  // settles that send's ticket, not whichever ticket its chunk had last.
  std::atomic<std::uint64_t> ticket;
};

enum class ResultKind : std::uint8_t {
  batch = 1,
  batch_ok = 2,
  lost = 3,
  timeout = 4,
  wake = 5,
  init_failed = 6,
  batch_timed = 7,
};

inline bool is_batch(ResultKind k) {
  return k == ResultKind::batch || k == ResultKind::batch_ok || k == ResultKind::batch_timed;
}

// Result messages. batch: items [first, first + count): each item's result or
// ExceptionInfo, then `count` status bytes (1: failed). batch_ok: every item
// succeeded, and no status bytes follow. batch_timed (PoolOptions::timeline): a
// batch followed by its items' times (detail::ItemTimes) and their size in bytes
// (uint32). lost/timeout: the worker held [first, first + count), was in `phase`
// with item `index` in hand, and had been running it since start_ns (0: not
// running).
struct ResultHeader {
  ResultKind kind;
  SlotPhase phase;  // lost/timeout: the dead worker's phase
  std::uint32_t worker;
  std::int32_t exitcode;
  std::uint64_t job;
  std::uint64_t first;
  std::uint64_t count;
  std::uint64_t index;
  std::int64_t start_ns;
  std::int64_t end_ns;
  std::uint64_t ticket = 0;  // lost/timeout: the ticket of the send the worker held (0: none)
};

// The worker table: `processes` WorkerSlots, then TicketTable::kWords ticket words.
struct PoolTable {
  static std::size_t bytes(std::size_t processes) noexcept {
    return sizeof(WorkerSlot) * processes + TicketTable::kWords * sizeof(std::uint64_t);
  }
  static WorkerSlot* slots(const Segment& table) noexcept { return reinterpret_cast<WorkerSlot*>(table.data()); }
  static std::atomic<std::uint64_t>* tickets(const Segment& table) noexcept {
    return reinterpret_cast<std::atomic<std::uint64_t>*>(table.data() + table.size()) - TicketTable::kWords;
  }
};

// The worker claims a chunk from its header alone (ChannelEnd::recv's claim step).
static_assert(sizeof(ChunkHeader) <= kClaimPrefixBytes, "a chunk's header must fit in the channel's claim prefix");

}  // namespace mproc::detail
