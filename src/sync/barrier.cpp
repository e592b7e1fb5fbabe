// Barrier: a robust mutex over the round's state, and a futex word (the round
// number) the waiters sleep on (see mproc/sync.hpp).
//
// Each round ends exactly once, released or broken, and bumps `round`. How round r
// ended is kept in bit r % 64 of `broken_rounds`, so a waiter that wakes late
// still learns its own round's outcome even if later rounds ended since (up to 63
// of them; a waiter descheduled for longer could misread it).
#include <climits>
#include <new>

#include "internal.hpp"

namespace mproc {
namespace {

struct BarrierState {
  detail::SyncKind kind;
  std::int32_t parties;
  std::int64_t timeout_ns;  // default timeout of wait(); -1: none
  // The futex word; changed only under mu. Loaded with acquire by waiters so the
  // outcome bit written before the bump is visible (they also re-take mu to read it).
  std::atomic<std::uint32_t> round;
  std::uint32_t count;          // parties arrived in this round; under mu
  std::uint32_t broken;         // under mu
  std::uint64_t broken_rounds;  // under mu
  pthread_mutex_t mu;
};

BarrierState* barrier_state(const detail::SyncRef& ref) noexcept {
  return reinterpret_cast<BarrierState*>(ref.at());
}

std::uint64_t bit(std::uint32_t round) noexcept { return std::uint64_t{1} << (round % 64); }

// Ends the current round (under mu); wake the sleepers after unlocking.
void end_round(BarrierState* st, bool broken) {
  std::uint32_t r = st->round.load(std::memory_order_relaxed);
  if (broken) {
    st->broken_rounds |= bit(r);
    st->broken = 1;
  } else {
    st->broken_rounds &= ~bit(r);
  }
  st->count = 0;
  st->round.store(r + 1, std::memory_order_release);
}

void wake_all(BarrierState* st) { detail::futex_wake(&st->round, INT_MAX); }

// A process that died holding mu died in the middle of wait() or of the action:
// a party is gone, so the round cannot complete. Break it.
auto guard(BarrierState* st) {
  return detail::RobustGuard(&st->mu, [st] {
    end_round(st, true);
    wake_all(st);
  });
}

[[noreturn]] void throw_broken() {
  throw BrokenBarrierError(
      "mproc: the Barrier is broken (aborted, reset, a party timed out, or its action "
      "failed); reset() it to use it again");
}

}  // namespace

Barrier::Barrier(int parties, void (*action)(), std::int64_t timeout_ns)
    : ref_(detail::new_sync_page(detail::SyncKind::barrier, "mproc-barrier")), action_(action) {
  if (parties < 1) throw UsageError("mproc: Barrier: parties must be >= 1");
  auto* st = new (ref_.at()) BarrierState{};
  st->kind = detail::SyncKind::barrier;
  st->parties = parties;
  st->timeout_ns = timeout_ns;
  detail::init_robust_mutex(&st->mu, false);
}

int Barrier::wait() {
  std::int64_t t = barrier_state(ref_)->timeout_ns;
  return wait_until(t < 0 ? detail::deadline_t{} : detail::deadline_after(std::chrono::nanoseconds(t)));
}

int Barrier::wait_until(detail::deadline_t deadline) {
  BarrierState* st = barrier_state(ref_);
  auto g = guard(st);
  if (st->broken) throw_broken();
  std::uint32_t r = st->round.load(std::memory_order_relaxed);
  int index = static_cast<int>(st->count++);
  if (static_cast<int>(st->count) == st->parties) {
    // Last to arrive: run the action (Python runs it under the barrier's lock too)
    // and release everyone.
    if (action_) {
      try {
        action_();
      } catch (...) {
        end_round(st, true);
        g.unlock();
        wake_all(st);
        throw;
      }
    }
    end_round(st, false);
    g.unlock();
    wake_all(st);
    return index;
  }
  g.unlock();
  for (;;) {
    detail::futex_wait(&st->round, r, deadline);
    bool ended = st->round.load(std::memory_order_acquire) != r;
    if (!ended && !detail::passed(deadline)) continue;  // spurious wake-up or signal
    g.relock(std::nullopt);
    if (st->round.load(std::memory_order_relaxed) == r) {
      // Timed out with the round still open: like Python, the timeout breaks it.
      end_round(st, true);
      g.unlock();
      wake_all(st);
      throw_broken();
    }
    bool broken = st->broken_rounds & bit(r);
    g.unlock();
    if (broken) throw_broken();
    return index;
  }
}

void Barrier::abort() {
  BarrierState* st = barrier_state(ref_);
  auto g = guard(st);
  end_round(st, true);
  g.unlock();
  wake_all(st);
}

void Barrier::reset() {
  BarrierState* st = barrier_state(ref_);
  auto g = guard(st);
  if (st->count > 0) end_round(st, true);  // the waiters of this round get BrokenBarrierError
  st->broken = 0;
  g.unlock();
  wake_all(st);
}

bool Barrier::broken() const {
  BarrierState* st = barrier_state(ref_);
  auto g = guard(st);
  return st->broken != 0;
}

int Barrier::parties() const noexcept { return barrier_state(ref_)->parties; }

int Barrier::n_waiting() const {
  BarrierState* st = barrier_state(ref_);
  auto g = guard(st);
  return st->broken ? 0 : static_cast<int>(st->count);
}

}  // namespace mproc
