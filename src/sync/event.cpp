// Event: one futex word holding the flag (bit 0) and a set() counter (the other
// bits), so a waiter also returns for a set() followed at once by clear().
#include <climits>
#include <new>

#include "internal.hpp"

namespace mproc {
namespace {

struct EventState {
  detail::SyncKind kind;
  // (number of set() calls << 1) | flag. seq_cst where it pairs with `waiters`
  // (Dekker): set() stores the word then reads waiters, wait() bumps waiters then
  // lets the kernel compare the word, so either set() sees the waiter and wakes
  // it, or the waiter sees the new word and does not sleep.
  std::atomic<std::uint32_t> word;
  // Sleepers (a hint: a waiter killed while asleep leaves it one too high,
  // which costs set() a needless wake-up call).
  std::atomic<std::uint32_t> waiters;
};

EventState* event_state(const detail::SyncRef& ref) noexcept {
  return reinterpret_cast<EventState*>(ref.at());
}

}  // namespace

Event::Event() : ref_(detail::new_sync_page(detail::SyncKind::event, "mproc-event")) {
  new (ref_.at()) EventState{detail::SyncKind::event, {0}, {0}};
}

void Event::set() {
  EventState* es = event_state(ref_);
  std::uint32_t w = es->word.load();
  do {
    if (w & 1) return;  // already set: nobody can be waiting for it
  } while (!es->word.compare_exchange_weak(w, (w + 2) | 1));
  if (es->waiters.load() > 0) detail::futex_wake(&es->word, INT_MAX);
}

void Event::clear() {
  // release: a process that sees the flag clear also sees what preceded clear().
  event_state(ref_)->word.fetch_and(~1u, std::memory_order_release);
}

bool Event::is_set() const noexcept {
  // acquire: pairs with set(), so what the setter wrote before set() is visible.
  return event_state(ref_)->word.load(std::memory_order_acquire) & 1;
}

bool Event::wait_until(detail::deadline_t deadline) {
  EventState* es = event_state(ref_);
  std::uint32_t w = es->word.load(std::memory_order_acquire);
  if (w & 1) return true;
  es->waiters.fetch_add(1);
  bool set = false;
  for (;;) {
    // From an unset word, the only change is a set() (clear() of a clear word
    // changes nothing), so any difference means we were set.
    if (es->word.load() != w) {
      set = true;
      break;
    }
    if (detail::passed(deadline)) break;
    detail::futex_wait(&es->word, w, deadline);
  }
  es->waiters.fetch_sub(1);
  return set;
}

}  // namespace mproc
