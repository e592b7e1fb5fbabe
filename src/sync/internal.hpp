// Internals shared by the sync/ sources: the shared state of a Lock/RLock, the
// robust pthread mutex every object that needs mutual exclusion uses, and a cached
// thread identity. Not installed.
#pragma once

#include <pthread.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <utility>

#include "mproc/sync.hpp"

namespace mproc::detail {

/// The calling thread's pid and tid, cached per thread. Refreshed after fork()
/// (a pthread_atfork handler bumps a generation counter), because the child's only
/// thread inherits the forking thread's thread_local values, and getpid()/gettid()
/// are real system calls in current glibc: too slow for every lock().
struct ThreadIds {
  unsigned generation;
  std::int32_t pid;
  std::int32_t tid;
  ProcessToken token;  // self_token(), which costs a getpid() per call
};
const ThreadIds& thread_ids() noexcept;

/// A PTHREAD_PROCESS_SHARED + PTHREAD_MUTEX_ROBUST mutex in zero-filled shared
/// memory: recursive, or error-checking (relocking by the owner is EDEADLK).
void init_robust_mutex(pthread_mutex_t* m, bool recursive);

enum class MutexResult { ok, owner_died, timed_out, busy, deadlock };

/// Locks m: blocking (deadline empty), until the deadline, or once (block=false:
/// busy when held). On owner_died the caller holds m and must make the state
/// consistent, then call pthread_mutex_consistent (robust_consistent). Throws
/// mproc::Error for ENOTRECOVERABLE (a previous holder saw owner death and
/// unlocked without calling consistent; mproc never does that).
MutexResult robust_lock(pthread_mutex_t* m, deadline_t deadline, bool block = true);
/// Marks an owner_died mutex usable again.
void robust_consistent(pthread_mutex_t* m) noexcept;

/// Holds an internal robust mutex (Semaphore table, Barrier state) for a scope.
/// If its previous holder died, `repair()` puts the guarded state right before the
/// mutex is marked consistent, so callers never see a half-done update.
template <class Repair>
class RobustGuard {
 public:
  RobustGuard(pthread_mutex_t* m, Repair repair) : m_(m), repair_(std::move(repair)) { relock(std::nullopt); }
  RobustGuard(const RobustGuard&) = delete;
  RobustGuard& operator=(const RobustGuard&) = delete;
  ~RobustGuard() { unlock(); }

  /// Takes the mutex again after unlock(); false if the deadline passed first.
  bool relock(deadline_t deadline) {
    switch (robust_lock(m_, deadline)) {
      case MutexResult::timed_out:
        return false;
      case MutexResult::deadlock:
        throw UsageError(
            "mproc: an internal lock was re-entered: a Barrier's action may not call its own Barrier");
      case MutexResult::owner_died:
        repair_();
        robust_consistent(m_);
        break;
      default:
        break;
    }
    held_ = true;
    return true;
  }
  void unlock() noexcept {
    if (held_) ::pthread_mutex_unlock(m_);
    held_ = false;
  }

 private:
  pthread_mutex_t* m_;
  Repair repair_;
  bool held_ = false;
};

/// The shared state of a Lock or RLock (at SyncRef::at()).
struct MutexState {
  SyncKind kind;
  // The owner's ids, written by the owner right after acquiring and cleared
  // before releasing. Relaxed atomics: they are read without the mutex only to
  // ask "is it me?" (only the owner itself can find its own tid there, and it
  // sees its own writes in program order), by locked() for a snapshot, and,
  // under the mutex, for the dead owner's pid, where the kernel's hand-over of
  // the robust mutex orders them.
  std::atomic<std::int32_t> owner_pid;
  std::atomic<std::int32_t> owner_tid;
  // Recursion depth; touched only by the owner.
  std::uint32_t depth;
  pthread_mutex_t mu;
};
static_assert(sizeof(MutexState) <= mutex_state_size);

inline MutexState* mutex_state(std::byte* at) noexcept { return reinterpret_cast<MutexState*>(at); }

/// For ~Attachment: forgets the units this process holds in a Semaphore.
void semaphore_forget(const SyncRef& ref) noexcept;

/// OwnerDiedError for a Lock/RLock whose owner `pid` (0: unknown) died;
/// `still_held` says whether the caller holds the lock now (Condition::wait).
[[noreturn]] void throw_owner_died(const MutexState* st, std::int32_t pid, bool still_held);

/// Sleeps on `word` while it equals `expected`, at most until `deadline` and at
/// most `slice` from now (so the caller can look around, e.g. for dead holders).
FutexWait futex_wait_slice(std::atomic<std::uint32_t>* word, std::uint32_t expected, deadline_t deadline,
                           std::chrono::nanoseconds slice);

inline bool passed(const deadline_t& d) noexcept { return d && std::chrono::steady_clock::now() >= *d; }

}  // namespace mproc::detail
