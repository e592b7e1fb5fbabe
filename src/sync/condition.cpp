// Condition: one wait slot per waiter beside the user's Lock/RLock (see
// mproc/sync.hpp). No pthread condvar: a waiter killed inside glibc's
// process-shared condvar can leave it swallowing later wake-ups.
//
// A waiter takes a free slot (under the user's lock), stamps it with an arrival
// ticket, and sleeps on the slot's own futex word. notify(n) marks the n oldest
// waiting slots notified and wakes each one's word. So a notification goes only
// to a waiter that was already waiting when notify() ran: a thread that notifies
// and then waits at once cannot take the wake-up meant for another (the "stolen
// wake-up" that a shared permit counter allows), and notify(n) wakes exactly n.
//
// Dead waiters: while it waits, each waiter holds its slot's `alive` mutex, a
// robust one. notify() try-locks it: EBUSY means the waiter lives; success or
// EOWNERDEAD means it was killed, and the slot is freed instead of being given a
// notification nobody would see.
//
// More than kSlots simultaneous waiters: the extra ones share one overflow word
// that any notify() with notifications left over bumps, waking all of them (they
// see a spurious wake-up, which condition-variable users must expect anyway).
#include <climits>
#include <new>

#include "internal.hpp"

namespace mproc {
namespace {

constexpr int kSlots = 64;

enum SlotState : std::uint32_t { free_slot = 0, waiting = 1, notified = 2 };

struct Slot {
  // The waiter's futex word: 0 until notified. Stored with release by notify()
  // and loaded with acquire by the waiter, which re-takes the user's lock before
  // looking at anything else anyway.
  std::atomic<std::uint32_t> word;
  std::uint32_t state;   // SlotState; guarded by the user's lock
  std::uint64_t ticket;  // arrival order; guarded by the user's lock
  pthread_mutex_t alive;
};

struct CondState {
  detail::SyncKind kind;
  std::uint32_t n_waiting;         // slots in state `waiting`; guarded by the user's lock
  std::uint64_t next_ticket;       // guarded by the user's lock
  std::uint32_t overflow_waiters;  // guarded by the user's lock
  std::atomic<std::uint32_t> overflow_seq;
  Slot slots[kSlots];
};
static_assert(sizeof(CondState) <= 4096);

CondState* cond_state(const detail::SyncRef& ref) noexcept { return reinterpret_cast<CondState*>(ref.at()); }

detail::SyncRef new_condition_page() {
  auto ref = detail::new_sync_page(detail::SyncKind::condition, "mproc-condition");
  auto* cs = new (ref.at()) CondState{};
  cs->kind = detail::SyncKind::condition;
  for (Slot& s : cs->slots) detail::init_robust_mutex(&s.alive, false);
  return ref;
}

/// Whether the waiter holding `s` is gone; if so `s` is taken by the caller's
/// thread's try-lock, which is undone here. Under the user's lock.
bool waiter_gone(Slot& s) {
  detail::MutexResult r = detail::robust_lock(&s.alive, std::nullopt, false);
  // deadlock: the caller itself holds it, which cannot happen while it notifies.
  if (r == detail::MutexResult::busy || r == detail::MutexResult::deadlock) return false;
  if (r == detail::MutexResult::owner_died) detail::robust_consistent(&s.alive);
  ::pthread_mutex_unlock(&s.alive);
  return true;
}

void free_slot_of_gone_waiter(CondState* cs, Slot& s) {
  if (s.state == waiting) --cs->n_waiting;
  s.state = free_slot;
}

/// A free slot, locked for the calling waiter; nullptr when all are in use.
/// Under the user's lock.
Slot* take_slot(CondState* cs) {
  for (int pass = 0; pass < 2; ++pass) {
    for (Slot& s : cs->slots) {
      if (s.state != free_slot) {
        // Second pass only: reuse the slot of a waiter that was killed.
        if (pass == 0 || !waiter_gone(s)) continue;
        free_slot_of_gone_waiter(cs, s);
      }
      detail::MutexResult r = detail::robust_lock(&s.alive, std::nullopt, false);
      if (r == detail::MutexResult::owner_died) detail::robust_consistent(&s.alive);
      if (r != detail::MutexResult::ok && r != detail::MutexResult::owner_died) continue;
      s.state = waiting;
      s.ticket = cs->next_ticket++;
      s.word.store(0, std::memory_order_relaxed);
      ++cs->n_waiting;
      return &s;
    }
  }
  return nullptr;
}

/// The waiting slot with the oldest ticket. Under the user's lock; n_waiting > 0.
Slot* oldest_waiting(CondState* cs) {
  Slot* best = nullptr;
  for (Slot& s : cs->slots) {
    if (s.state == waiting && (!best || s.ticket < best->ticket)) best = &s;
  }
  return best;
}

}  // namespace

Condition::Condition() : Condition(RLock()) {}
Condition::Condition(Lock lock) : MutexBase(std::move(lock)), ref_(new_condition_page()) {}
Condition::Condition(RLock lock) : MutexBase(std::move(lock)), ref_(new_condition_page()) {}

bool Condition::wait_until(detail::deadline_t deadline) {
  if (!is_owned()) throw UsageError("mproc: Condition::wait() needs the condition's lock held by the caller");
  CondState* cs = cond_state(ref_);
  Slot* slot = take_slot(cs);
  std::atomic<std::uint32_t>* word = slot ? &slot->word : &cs->overflow_seq;
  std::uint32_t sleeping_on = slot ? 0 : cs->overflow_seq.load(std::memory_order_relaxed);
  if (!slot) ++cs->overflow_waiters;

  std::uint32_t depth = release_all();
  while (word->load(std::memory_order_acquire) == sleeping_on && !detail::passed(deadline)) {
    detail::futex_wait(word, sleeping_on, deadline);
  }
  Locked l = reacquire(depth);

  bool was_notified;
  if (slot) {
    // Decided under the lock: a notify() that ran after our deadline but before
    // we got the lock back counts (its notification is ours, not lost).
    was_notified = slot->state == notified;
    if (slot->state == waiting) --cs->n_waiting;
    slot->state = free_slot;
    ::pthread_mutex_unlock(&slot->alive);
  } else {
    was_notified = cs->overflow_seq.load(std::memory_order_relaxed) != sleeping_on;
    --cs->overflow_waiters;
  }
  if (l.status == LockStatus::owner_died) {
    detail::throw_owner_died(detail::mutex_state(MutexBase::state_), l.dead_pid, true);
  }
  return was_notified;
}

void Condition::notify(int n) {
  if (n < 0) throw UsageError("mproc: Condition::notify(n): n must be >= 0");
  if (!is_owned())
    throw UsageError("mproc: Condition::notify() needs the condition's lock held by the caller");
  CondState* cs = cond_state(ref_);
  while (n > 0 && cs->n_waiting > 0) {
    Slot* s = oldest_waiting(cs);
    if (waiter_gone(*s)) {
      free_slot_of_gone_waiter(cs, *s);
      continue;
    }
    s->state = notified;
    --cs->n_waiting;
    s->word.store(1, std::memory_order_release);
    detail::futex_wake(&s->word, 1);
    --n;
  }
  if (n > 0 && cs->overflow_waiters > 0) {
    cs->overflow_seq.fetch_add(1, std::memory_order_release);
    detail::futex_wake(&cs->overflow_seq, INT_MAX);
  }
}

void Condition::notify_all() { notify(INT_MAX); }

}  // namespace mproc
