// TicketTable: every compare-and-swap of the pool's ticket protocol, in one class.
//
// Tickets make a chunk cancellable while it waits in the task channel
// (PoolConfig::cancellable: ProcessPoolExecutor's Future::cancel). The words
// live in shared memory (the worker table, wire.hpp); a chunk sent with ticket t
// owns word t % kWords, holding (t << 2) | state:
//
//   queued    - issued: the chunk's record is in the task channel, not claimed;
//   claimed   - a worker's claim step took it (the worker runs it);
//   cancelled - cancel() won (the chunk never runs), or a death notice re-queued
//               it (the parent runs it again without a ticket), or it was
//               withdrawn (its send failed: no record carries it);
//   reclaimed - a worker died inside the receive after its claim, the channel
//               handed the record to another worker, and that one took it over.
//
// Transitions (each one compare-and-swap, so of two racing sides exactly one wins):
//
//   issue()     parent  free -> queued(t)   free: claimed, cancelled, or never used
//   claim()     worker  queued -> claimed: run      | claimed -> reclaimed: run (takeover)
//                       anything else: cancelled (drop the chunk unrun)
//   cancel()    parent  queued -> cancelled: true   | else false (a worker has it)
//   on_death()  parent  claimed -> cancelled: requeue
//                       reclaimed -> claimed: taken_over (another worker runs it;
//                         a death of that worker then re-queues)
//                       anything else: requeue (the record was consumed long ago)
//   withdraw()  parent  -> cancelled (its send failed; the word is free again)
//
// A word is reused (issue) only once it is neither queued nor reclaimed, so a
// worker whose claim fails knows its chunk was cancelled, and a death notice
// never meets a newer ticket's takeover. Death notices of several claimants
// may come in any order: each takeover skips one notice, and the last
// claimant's death, if any, re-queues. Nothing but on_death writes a reclaimed
// word back (workers swap from queued or claimed, cancel from queued), and the
// parent calls issue/cancel/on_death/withdraw under one lock.
#pragma once

#include <atomic>
#include <cstdint>

namespace mproc::detail {

class TicketTable {
 public:
  static constexpr std::uint64_t kWords = 4096;
  enum State : std::uint64_t { reclaimed = 0, queued = 1, claimed = 2, cancelled = 3 };
  enum class Claim { run, took_over, cancelled };
  enum class Death { requeue, taken_over };

  TicketTable() = default;
  /// Over `words` words (kWords in a pool; fewer in tests, to force reuse).
  explicit TicketTable(std::atomic<std::uint64_t>* words, std::uint64_t n = kWords) noexcept : w_(words), n_(n) {}

  /// Parent: makes ticket t queued if its word is free (not queued for an older
  /// ticket); false otherwise (send without a ticket). Published by the send.
  bool issue(std::uint64_t t) noexcept {
    auto& w = word(t);
    // Busy while queued, and while reclaimed: a takeover whose death notice has
    // not come yet (reusing it then made that notice re-queue a chunk the taker
    // runs, a double run). 0 is a word never used (tickets start at 1).
    const std::uint64_t v = w.load(std::memory_order_relaxed);
    if ((v & 3) == queued || ((v & 3) == reclaimed && v != 0)) return false;
    w.store(value(t, queued), std::memory_order_relaxed);
    return true;
  }
  /// Parent: the chunk with ticket t was not sent after all; its word is free.
  void withdraw(std::uint64_t t) noexcept { word(t).store(value(t, cancelled), std::memory_order_relaxed); }
  /// Parent: cancels t if no worker claimed it.
  bool cancel(std::uint64_t t) noexcept {
    std::uint64_t expect = value(t, queued);
    return word(t).compare_exchange_strong(expect, value(t, cancelled));
  }
  /// Parent: whether a worker has (or may have) taken t.
  bool taken(std::uint64_t t) const noexcept { return word(t).load(std::memory_order_acquire) != value(t, queued); }

  /// Worker, in the claim step of its receive: whether to run the chunk.
  Claim claim(std::uint64_t t) noexcept {
    auto& w = word(t);
    std::uint64_t expect = value(t, queued);
    if (w.compare_exchange_strong(expect, value(t, claimed))) return Claim::run;
    // Already claimed: a worker died after its claim, before the record left the
    // ring, and the ring handed the record to us. Take it over unless the
    // parent re-queued it first (on_death: claimed -> cancelled).
    if (expect == value(t, claimed) && w.compare_exchange_strong(expect, value(t, reclaimed))) return Claim::took_over;
    return Claim::cancelled;
  }

  /// Parent: a worker that had claimed t died. requeue: run the chunk again
  /// (nobody else has it); taken_over: another worker runs it.
  Death on_death(std::uint64_t t) noexcept {
    auto& w = word(t);
    std::uint64_t expect = value(t, claimed);
    if (w.compare_exchange_strong(expect, value(t, cancelled))) return Death::requeue;
    if (expect == value(t, reclaimed)) {
      // This notice accounts for that takeover; back to claimed, so the taker's
      // own death, if it comes, re-queues.
      w.compare_exchange_strong(expect, value(t, claimed));
      return Death::taken_over;
    }
    return Death::requeue;
  }

  /// The raw word of t (tests).
  std::uint64_t load(std::uint64_t t) const noexcept { return word(t).load(std::memory_order_acquire); }
  static constexpr std::uint64_t value(std::uint64_t t, State s) noexcept { return t << 2 | s; }

 private:
  std::atomic<std::uint64_t>& word(std::uint64_t t) const noexcept { return w_[t % n_]; }
  std::atomic<std::uint64_t>* w_ = nullptr;
  std::uint64_t n_ = kWords;
};

}  // namespace mproc::detail
