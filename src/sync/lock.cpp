// Lock and RLock: robust process-shared pthread mutexes (see mproc/sync.hpp).
#include <string>

#include "internal.hpp"

namespace mproc::detail {
namespace {

const char* kind_name(const MutexState* st) noexcept {
  return st->kind == SyncKind::rlock ? "RLock" : "Lock";
}

}  // namespace

void throw_owner_died(const MutexState* st, std::int32_t pid, bool still_held) {
  std::string who = pid > 0 ? "(pid " + std::to_string(pid) + ")" : "(pid unknown)";
  throw OwnerDiedError(std::string("mproc: the previous owner of this ") + kind_name(st) + " " + who +
                       " ended while holding it, so the data it protects may be inconsistent. " +
                       (still_held ? "The caller holds the lock now: repair the data, then release it"
                                   : "The lock has been released; acquire it again (lock_checked() gives "
                                     "you this news with the lock held, to repair the data first)"));
}

MutexBase::MutexBase(bool recursive)
    : MutexBase(init_mutex_state(new_sync_page(recursive ? SyncKind::rlock : SyncKind::lock,
                                               recursive ? "mproc-rlock" : "mproc-lock"),
                                 recursive)) {}

MutexBase::Locked MutexBase::lock_until(deadline_t deadline, bool block) {
  MutexState* st = mutex_state(state_);
  MutexResult r = robust_lock(&st->mu, deadline, block);
  std::int32_t dead_pid = 0;
  switch (r) {
    case MutexResult::busy:
    case MutexResult::timed_out:
      return {LockStatus::timed_out, 0};
    case MutexResult::deadlock:
      // The caller holds this Lock. Trying once just fails (Python: acquire(False)
      // returns False); waiting would be forever.
      if (!block) return {LockStatus::timed_out, 0};
      throw UsageError(
          "mproc: this thread already holds this Lock; acquiring it again would wait forever "
          "(use an RLock to acquire it recursively)");
    case MutexResult::owner_died:
      // We hold the mutex now; the dead owner's last write of its pid is visible
      // (the kernel handed the mutex over). glibc resets a recursive mutex's count to 1.
      dead_pid = st->owner_pid.load(std::memory_order_relaxed);
      robust_consistent(&st->mu);
      st->depth = 0;
      break;
    case MutexResult::ok:
      break;
  }
  const ThreadIds& me = thread_ids();
  if (st->depth++ == 0) {
    st->owner_pid.store(me.pid, std::memory_order_relaxed);
    st->owner_tid.store(me.tid, std::memory_order_relaxed);
  }
  return {r == MutexResult::owner_died ? LockStatus::owner_died : LockStatus::acquired, dead_pid};
}

bool MutexBase::acquire_impl(deadline_t deadline, bool block) {
  Locked l = lock_until(deadline, block);
  if (l.status == LockStatus::owner_died) {
    // Release before throwing so an RAII guard that never got constructed (the
    // throw leaves std::lock_guard's constructor) does not leave the lock held.
    release();
    throw_owner_died(mutex_state(state_), l.dead_pid, false);
  }
  return l.status == LockStatus::acquired;
}

LockStatus MutexBase::lock_checked() { return lock_until(std::nullopt, true).status; }

bool MutexBase::is_owned() const noexcept {
  const MutexState* st = mutex_state(state_);
  const ThreadIds& me = thread_ids();
  return st->owner_tid.load(std::memory_order_relaxed) == me.tid &&
         st->owner_pid.load(std::memory_order_relaxed) == me.pid;
}

bool MutexBase::locked() const noexcept {
  // The owner stores its pid right after acquiring and clears it before
  // releasing (MutexState), so a nonzero pid is a held lock. Relaxed: a reader
  // that learned of the acquisition through a release/acquire pair (an Event the
  // holder set afterwards) sees the store by happens-before; any other reader
  // gets a snapshot, which is all locked() promises. A dead owner's pid stays
  // until the next owner takes the mutex over.
  return mutex_state(state_)->owner_pid.load(std::memory_order_relaxed) != 0;
}

void MutexBase::release() {
  MutexState* st = mutex_state(state_);
  if (!is_owned() || st->depth == 0) {
    throw UsageError(std::string("mproc: release() of a ") + kind_name(st) +
                     " that the calling thread does not hold");
  }
  if (--st->depth == 0) {
    st->owner_tid.store(0, std::memory_order_relaxed);
    st->owner_pid.store(0, std::memory_order_relaxed);
  }
  ::pthread_mutex_unlock(&st->mu);
}

std::uint32_t MutexBase::release_all() {
  MutexState* st = mutex_state(state_);
  std::uint32_t depth = st->depth;
  for (std::uint32_t i = 0; i < depth; ++i) release();
  return depth;
}

MutexBase::Locked MutexBase::reacquire(std::uint32_t depth) {
  Locked first = lock_until(std::nullopt, true);
  for (std::uint32_t i = 1; i < depth; ++i) lock_until(std::nullopt, true);  // recursive: immediate
  return first;
}

}  // namespace mproc::detail
