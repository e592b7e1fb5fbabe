// Semaphore and BoundedSemaphore: a futex word for the value, a robust mutex for
// updates, and a table of holders so units of killed processes can be returned
// (see mproc/sync.hpp and docs/sync.md).
//
// Every change to the value and the table happens under the robust mutex, inside
// a small undo journal: if a process dies half-way through an update, the next one
// to take the mutex (told by EOWNERDEAD) rolls the update back, so the value and
// the table always agree. Waiters sleep on the value word without the mutex.
#include <algorithm>
#include <chrono>
#include <climits>
#include <new>

#include "internal.hpp"

namespace mproc::detail {
namespace {

using namespace std::chrono_literals;

constexpr int kSlots = 64;
constexpr std::uint32_t kMaxValue = 0x7fff'ffff;
// How long a waiter sleeps before it looks for dead holders, and how often it
// looks again: long enough that the /proc reads stay rare, short enough that a
// killed holder costs the others a fraction of a second.
constexpr std::chrono::nanoseconds kScanEvery = 100ms;

struct Holder {
  ProcessToken token;
  std::uint32_t count;  // units this process holds; 0 = free slot
};

struct Journal {
  std::uint32_t active;
  std::uint32_t value;
  std::int32_t slot;
  std::uint32_t untracked;
  Holder holder;
};

struct SemState {
  SyncKind kind;
  std::uint32_t bounded;
  std::uint32_t max_value;  // the initial value when bounded
  std::uint32_t reclaim;    // SemaphoreOptions::reclaim_dead_holders
  // The futex word. Changed only under mu; read without it by waiters. seq_cst
  // stores/loads pair with `waiters` (Dekker): a releaser that reads waiters == 0
  // is ordered before the waiter's increment, so that waiter's futex_wait sees the
  // new value and does not sleep.
  std::atomic<std::uint32_t> value;
  // Sleepers on `value` (a hint: a waiter killed while asleep leaves it one too
  // high, which costs only a needless wake-up call).
  std::atomic<std::uint32_t> waiters;
  std::uint32_t untracked;  // units taken while the table was full
  Journal journal;
  pthread_mutex_t mu;
  Holder holders[kSlots];
};
static_assert(sizeof(SemState) <= 4096);

SemState* sem_state(std::byte* at) noexcept { return reinterpret_cast<SemState*>(at); }

// Undo record for one update. A process reads it only after the kernel handed it
// a robust mutex whose owner died, i.e. after every store the dead process made
// has reached memory; so only the compiler's ordering matters here, which the
// signal fences pin: journal complete before the update starts, update complete
// before the journal is retired.
class Txn {
 public:
  Txn(SemState* st, int slot) : st_(st) {
    st->journal.value = st->value.load(std::memory_order_relaxed);
    st->journal.slot = slot;
    st->journal.untracked = st->untracked;
    st->journal.holder = slot >= 0 ? st->holders[slot] : Holder{};
    std::atomic_signal_fence(std::memory_order_seq_cst);
    st->journal.active = 1;
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }
  ~Txn() {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    st_->journal.active = 0;
  }
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;

 private:
  SemState* st_;
};

void rollback(SemState* st) {
  Journal& j = st->journal;
  if (!j.active) return;
  st->value.store(j.value);
  if (j.slot >= 0 && j.slot < kSlots) st->holders[j.slot] = j.holder;
  st->untracked = j.untracked;
  j.active = 0;
}

auto guard(SemState* st) {
  return RobustGuard(&st->mu, [st] { rollback(st); });
}

/// The caller's slot; with `allocate`, a free one is claimed if it has none. -1: none.
int find_slot(SemState* st, const ProcessToken& me, bool allocate) {
  int free_slot = -1;
  for (int i = 0; i < kSlots; ++i) {
    if (st->holders[i].token == me) return i;
    if (free_slot < 0 && st->holders[i].count == 0) free_slot = i;
  }
  return allocate ? free_slot : -1;
}

/// Takes one unit (value > 0), charging it to the caller. Under mu.
void take(SemState* st) {
  ProcessToken me = st->reclaim ? thread_ids().token : ProcessToken{};
  int slot = st->reclaim ? find_slot(st, me, true) : -1;
  Txn t(st, slot);
  st->value.store(st->value.load(std::memory_order_relaxed) - 1);
  if (slot >= 0) {
    st->holders[slot].token = me;
    ++st->holders[slot].count;
  } else if (st->reclaim) {
    ++st->untracked;
  }
}

/// Returns the units of holders that are no longer running. Under mu. Returns
/// how many units came back.
std::uint32_t reclaim_dead(SemState* st) {
  ProcessToken me = thread_ids().token;
  std::uint32_t back = 0;
  for (int i = 0; i < kSlots; ++i) {
    Holder& h = st->holders[i];
    if (h.count == 0 || h.token == me || token_alive(h.token)) continue;
    Txn t(st, i);
    std::uint32_t v = st->value.load(std::memory_order_relaxed);
    std::uint64_t nv = std::uint64_t{v} + h.count;
    // Units handed over (taken by one process, released by another) stay charged
    // to the taker; never let a bounded semaphore exceed its bound because of them.
    nv = std::min<std::uint64_t>(nv, st->max_value);
    st->value.store(static_cast<std::uint32_t>(nv));
    h.count = 0;
    back += static_cast<std::uint32_t>(nv - v);
  }
  return back;
}

}  // namespace

void semaphore_forget(const SyncRef& ref) noexcept {
  SemState* st = sem_state(ref.at());
  if (!st->reclaim) return;
  // This process lets go of the semaphore in an orderly way: what it still holds
  // was consumed (as in Python), so it must not be "returned" after it exits.
  try {
    auto g = guard(st);
    int slot = find_slot(st, thread_ids().token, false);
    if (slot >= 0 && st->holders[slot].count > 0) {
      Txn t(st, slot);
      st->holders[slot].count = 0;
    }
  } catch (...) {
    // Destructors do not throw; the worst case is a late, spurious return of units.
  }
}

Semaphore decode_semaphore(Reader& r, bool bounded_only) {
  SyncRef ref = decode_sync_ref(r, SyncKind::semaphore);
  if (bounded_only && !sem_state(ref.at())->bounded) {
    throw SerializationError("mproc: a Semaphore was received where a BoundedSemaphore was expected");
  }
  return SyncAccess::semaphore(std::move(ref));
}

}  // namespace mproc::detail

namespace mproc {

using detail::SemState;

Semaphore::Semaphore(int value, bool bounded, SemaphoreOptions options) {
  if (value < 0) throw UsageError("mproc: Semaphore: the initial value must be >= 0");
  auto ref = detail::new_sync_page(detail::SyncKind::semaphore, bounded ? "mproc-bsem" : "mproc-sem");
  auto* st = new (ref.at()) SemState{};
  st->kind = detail::SyncKind::semaphore;
  st->bounded = bounded;
  st->max_value = bounded ? static_cast<std::uint32_t>(value) : detail::kMaxValue;
  st->reclaim = options.reclaim_dead_holders;
  st->value.store(static_cast<std::uint32_t>(value), std::memory_order_relaxed);
  detail::init_robust_mutex(&st->mu, false);
  att_ = detail::attach(std::move(ref));
  state_ = att_->ref.at();
}

bool Semaphore::acquire_impl(detail::deadline_t deadline, bool block) {
  SemState* st = detail::sem_state(state_);
  auto g = detail::guard(st);
  auto next_scan = std::chrono::steady_clock::now() + detail::kScanEvery;
  for (;;) {
    if (st->value.load(std::memory_order_relaxed) > 0) {
      detail::take(st);
      return true;
    }
    if (!block || detail::passed(deadline)) return false;
    if (st->reclaim && std::chrono::steady_clock::now() >= next_scan) {
      std::uint32_t back = detail::reclaim_dead(st);
      next_scan = std::chrono::steady_clock::now() + detail::kScanEvery;
      if (back > 1) detail::futex_wake(&st->value, static_cast<int>(back - 1));  // one is ours
      continue;
    }
    st->waiters.fetch_add(1);
    g.unlock();
    // Sleep in slices: a wake-up given to a waiter that is killed before it takes
    // the unit is picked up by the others at their next slice.
    detail::futex_wait_slice(&st->value, 0, deadline, detail::kScanEvery);
    st->waiters.fetch_sub(1);
    if (!g.relock(deadline)) return false;
  }
}

void Semaphore::release() {
  SemState* st = detail::sem_state(state_);
  {
    auto g = detail::guard(st);
    std::uint32_t v = st->value.load(std::memory_order_relaxed);
    if (v >= st->max_value) {
      throw UsageError(st->bounded
                           ? "mproc: BoundedSemaphore released too many times (past its initial value)"
                           : "mproc: Semaphore value would overflow (2^31 - 1 units)");
    }
    int slot = -1;
    if (st->reclaim) {
      slot = detail::find_slot(st, detail::thread_ids().token, false);
      if (slot >= 0 && st->holders[slot].count == 0) slot = -1;  // releasing a unit it never took: allowed
    }
    detail::Txn t(st, slot);
    st->value.store(v + 1);
    if (slot >= 0) --st->holders[slot].count;
  }
  if (st->waiters.load() > 0) detail::futex_wake(&st->value, 1);
}

int Semaphore::get_value() const noexcept {
  // A snapshot; relaxed is enough for a value that may change right after.
  return static_cast<int>(detail::sem_state(state_)->value.load(std::memory_order_relaxed));
}

}  // namespace mproc
