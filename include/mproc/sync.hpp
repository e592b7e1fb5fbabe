// mproc/sync.hpp — process-shared synchronization primitives, mirroring
// multiprocessing.Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event and
// Barrier.
//
//   mproc::Lock lock;
//   mproc::Process p(work, lock);        // the child gets a handle to the same lock
//   { std::lock_guard g(lock); ... }     // Lockable: lock_guard, unique_lock, scoped_lock
//
// Every object is a handle: copies (in this process, in a forked child, or sent to
// a Process as an argument under any start method) share one state, which lives in
// its own anonymous shared page (memfd, one page and one fd per object per process;
// nothing in /dev/shm, freed by the kernel when the last process lets go).
// All members are safe to call from several threads and several processes.
//
// Owner death (details and limits: docs/sync.md):
//   * Lock/RLock are robust pthread mutexes: when the owning thread or process ends
//     while holding one, the next acquirer is told, once: lock()/acquire() release
//     the lock again and throw OwnerDiedError; lock_checked() returns
//     LockStatus::owner_died with the lock held, for repairing the data under it.
//   * A Semaphore remembers which processes hold its units; a waiter blocked for
//     more than ~100 ms returns the units of holders that were killed.
//   * Condition, Event and Barrier never sleep on a pthread condvar (a waiter killed
//     inside glibc's shared condvar can swallow wake-ups); they use futex words.
//     Condition skips waiters that were killed; a Barrier breaks when a process dies
//     inside it.
//
// Timeouts are std::chrono durations; a negative one is a UsageError, except in the
// std TimedLockable calls (try_lock_for/try_lock_until), where, as the standard
// says, a non-positive timeout means "try once".
#pragma once

#include "mproc/detail/config.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <type_traits>

#include "mproc/detail/code_ref.hpp"
#include "mproc/detail/futex.hpp"
#include "mproc/detail/segment.hpp"
#include "mproc/detail/timeout.hpp"
#include "mproc/error.hpp"
#include "mproc/serial.hpp"

namespace mproc {

/// What lock_checked() found.
enum class LockStatus {
  acquired,    // the lock is held by the caller
  owner_died,  // held by the caller; the previous owner ended while holding it
  timed_out,   // not held (timed variants only)
};

class Condition;

namespace detail {

/// Tags written at the start of each object's shared state; a received handle is
/// checked against the type it is decoded as.
enum class SyncKind : std::uint32_t {
  lock = 0x6d70'0001,
  rlock,
  semaphore,
  condition,
  event,
  barrier,
};

/// Where an object's shared state lives: a mapping and a byte offset into it
/// (non-zero when the state is embedded in a larger object, like Value's lock).
struct SyncRef {
  Segment seg;
  std::uint32_t offset = 0;
  std::byte* at() const noexcept { return seg.data() + offset; }
};

/// Room a Lock/RLock's state takes when embedded in another object (Value, Array).
inline constexpr std::size_t mutex_state_size = 128;

/// One process's hold on an object's shared state, shared by the handles in this
/// process. When the last of them goes away:
///   * a Lock/RLock that a thread of this process still holds stays mapped for
///     good (a small, deliberate leak): glibc keeps the mutex on that thread's
///     robust list, and unmapping it would make later lock calls walk freed memory;
///   * a Semaphore forgets the units this process holds: an orderly exit consumed
///     them (only processes that die without letting go have units reclaimed).
struct Attachment {
  SyncRef ref;
  Attachment() = default;
  explicit Attachment(SyncRef r) noexcept : ref(std::move(r)) {}
  Attachment(const Attachment&) = delete;
  Attachment& operator=(const Attachment&) = delete;
  ~Attachment();
};
using AttachmentPtr = std::shared_ptr<Attachment>;
inline AttachmentPtr attach(SyncRef ref) { return std::make_shared<Attachment>(std::move(ref)); }

/// A fresh page for an object of `kind` (the caller initializes the state).
SyncRef new_sync_page(SyncKind kind, const char* tag);
/// Initializes a Lock/RLock state at ref (zero-filled memory) and returns ref.
SyncRef init_mutex_state(SyncRef ref, bool recursive);
void encode_sync_ref(Writer& w, const SyncRef& ref);
/// Decodes a SyncRef and checks the kind tag found there against the accepted
/// ones; throws SerializationError on a mismatch (corrupt message, other binary).
SyncRef decode_sync_ref(Reader& r, SyncKind a, SyncKind b);
inline SyncRef decode_sync_ref(Reader& r, SyncKind a) { return decode_sync_ref(r, a, a); }

/// Deadline for a time point of any clock (measured once against that clock);
/// a time point in the past means "now".
template <class Clock, class Duration>
deadline_t deadline_until(std::chrono::time_point<Clock, Duration> tp) {
  auto d = tp - Clock::now();
  return timeout_deadline(d < d.zero() ? decltype(d)::zero() : d, "try_lock_until");
}

/// Python's acquire(block, timeout) family and the std Lockable/TimedLockable
/// names, written once over D's `bool acquire_impl(deadline_t, bool block)` and
/// `void release()`.
template <class D>
class Acquirable {
 public:
  /// Python's acquire(block=True): blocks until acquired (returns true), or with
  /// block=false tries once.
  bool acquire(bool block = true) { return self().acquire_impl(std::nullopt, block); }
  /// acquire(block, timeout): waits at most `timeout` (negative: UsageError);
  /// returns whether it acquired. With block=false the timeout is ignored, as in Python.
  template <class Rep, class Period>
  bool acquire(bool block, std::chrono::duration<Rep, Period> timeout) {
    if (!block) return self().acquire_impl(std::nullopt, false);
    return self().acquire_impl(timeout_deadline(timeout, "acquire"), true);
  }
  template <class Rep, class Period>
  bool acquire_for(std::chrono::duration<Rep, Period> timeout) {
    return acquire(true, timeout);
  }
  /// Never blocks.
  bool try_acquire() { return acquire(false); }

  // std Lockable / TimedLockable.
  void lock() { acquire(); }
  void unlock() { self().release(); }
  bool try_lock() { return try_acquire(); }
  template <class Rep, class Period>
  bool try_lock_for(std::chrono::duration<Rep, Period> timeout) {
    if (timeout <= timeout.zero()) return try_acquire();
    return self().acquire_impl(timeout_deadline(timeout, "try_lock_for"), true);
  }
  template <class Clock, class Duration>
  bool try_lock_until(std::chrono::time_point<Clock, Duration> tp) {
    return self().acquire_impl(deadline_until(tp), true);
  }

 private:
  D& self() noexcept { return static_cast<D&>(*this); }
};

struct SyncAccess;

/// What Lock and RLock share: a robust process-shared pthread mutex plus the
/// owner's pid/tid and the recursion depth.
class MutexBase : public Acquirable<MutexBase> {
 public:
  /// Releases one level of ownership. Throws UsageError if the calling thread
  /// does not hold the lock (a robust mutex is owned by a thread; unlike Python's
  /// multiprocessing.Lock, another process cannot release it).
  void release();

  /// Acquires, reporting an owner that died instead of throwing: returns
  /// acquired or owner_died, in both cases with the lock held (repair the
  /// protected data, then release). Blocks. Throws UsageError if this thread
  /// already holds a (non-recursive) Lock.
  LockStatus lock_checked();
  /// Timed lock_checked: timed_out (not held) when `timeout` runs out first.
  template <class Rep, class Period>
  LockStatus lock_checked_for(std::chrono::duration<Rep, Period> timeout) {
    return lock_until(timeout_deadline(timeout, "lock_checked_for"), true).status;
  }

  /// Whether the calling thread holds the lock. Non-blocking.
  bool is_owned() const noexcept;
  /// Whether any thread of any process holds the lock now (Python's locked()).
  /// A snapshot: it may change as soon as it is returned; exact for a caller
  /// that has synchronized with the holder (e.g. the holder set an Event after
  /// acquiring). True, too, while an owner that died holding it has not been
  /// replaced (the next acquire reports OwnerDiedError). Non-blocking, never throws.
  bool locked() const noexcept;

  /// Used by Acquirable: acquires (true) or times out (false); throws
  /// OwnerDiedError (lock released) when the previous owner died holding it.
  bool acquire_impl(deadline_t deadline, bool block);

 protected:
  explicit MutexBase(bool recursive);
  explicit MutexBase(SyncRef ref) : att_(attach(std::move(ref))), state_(att_->ref.at()) {}

 private:
  friend struct SyncAccess;
  friend class ::mproc::Condition;
  struct Locked {
    LockStatus status;
    std::int32_t dead_pid;  // the dead owner's pid, 0 if unknown
  };
  Locked lock_until(deadline_t deadline, bool block);
  /// For Condition::wait: releases every level, returns how many there were.
  std::uint32_t release_all();
  /// For Condition::wait: takes `depth` levels again; reports a dead owner.
  Locked reacquire(std::uint32_t depth);

  AttachmentPtr att_;
  std::byte* state_ = nullptr;  // att_->ref.at(), cached: one indirection less per call
};

}  // namespace detail

/// A non-recursive lock shared between processes (multiprocessing.Lock). Owned
/// by the thread that acquired it. Acquiring it again from that thread is a
/// UsageError (it would wait for itself forever); try_acquire() returns false.
/// Owner death: see OwnerDiedError and lock_checked().
class Lock : public detail::MutexBase {
 public:
  /// A new unlocked lock (one shared page). Throws std::system_error.
  Lock() : MutexBase(false) {}

 private:
  friend struct detail::SyncAccess;
  explicit Lock(detail::SyncRef ref) : MutexBase(std::move(ref)) {}
  explicit Lock(const MutexBase& same) : MutexBase(same) {}  // shares its attachment
};

/// A recursive lock (multiprocessing.RLock): the owning thread may acquire it
/// again and must release it as many times.
class RLock : public detail::MutexBase {
 public:
  RLock() : MutexBase(true) {}

 private:
  friend struct detail::SyncAccess;
  explicit RLock(detail::SyncRef ref) : MutexBase(std::move(ref)) {}
  explicit RLock(const MutexBase& same) : MutexBase(same) {}  // shares its attachment
};

/// Options of a Semaphore.
struct SemaphoreOptions {
  /// Record which processes hold units, so that units held by a process that
  /// was killed (kill -9, crash) are returned. A process that destroys its handles
  /// normally has consumed its units (as in Python): they are not returned.
  /// Turn off for a semaphore used purely as a signal between processes, where
  /// the bookkeeping is useless (it costs one table lookup per call).
  bool reclaim_dead_holders = true;
};

/// A counting semaphore shared between processes (multiprocessing.Semaphore).
/// acquire() takes a unit, waiting while none is available; release() returns
/// one and may be called by any process or thread. Waiters are not served in
/// FIFO order. Lockable, so std::lock_guard/unique_lock work.
class Semaphore : public detail::Acquirable<Semaphore> {
 public:
  /// `value` initial units, 0..2^31-1 (otherwise UsageError). Throws std::system_error.
  explicit Semaphore(int value = 1, SemaphoreOptions options = {}) : Semaphore(value, false, options) {}

  /// Returns a unit and wakes one waiter. For a BoundedSemaphore, releasing past
  /// the initial value is a UsageError (Python's ValueError). Never blocks for
  /// long (an internal lock guards the holder table).
  void release();
  /// The units available now (Python's get_value()). Non-blocking; a snapshot.
  int get_value() const noexcept;

  /// Used by Acquirable.
  bool acquire_impl(detail::deadline_t deadline, bool block);

 protected:
  Semaphore(int value, bool bounded, SemaphoreOptions options);

 private:
  friend struct detail::SyncAccess;
  explicit Semaphore(detail::SyncRef ref) : att_(detail::attach(std::move(ref))), state_(att_->ref.at()) {}
  detail::AttachmentPtr att_;
  std::byte* state_ = nullptr;  // att_->ref.at()
};

/// A Semaphore whose value may never exceed its initial value
/// (multiprocessing.BoundedSemaphore).
class BoundedSemaphore : public Semaphore {
 public:
  explicit BoundedSemaphore(int value = 1, SemaphoreOptions options = {}) : Semaphore(value, true, options) {}

 private:
  friend struct detail::SyncAccess;
  explicit BoundedSemaphore(Semaphore s) noexcept : Semaphore(std::move(s)) {}
};

/// A condition variable shared between processes (multiprocessing.Condition),
/// bound to a Lock or RLock (an own RLock by default, like Python). The Condition
/// is itself Lockable: acquire()/release()/lock()/unlock() act on its lock.
class Condition : public detail::MutexBase {
 public:
  /// With a new RLock.
  Condition();
  explicit Condition(Lock lock);
  explicit Condition(RLock lock);

  /// Releases the lock (every recursion level of an RLock), sleeps until
  /// notified, re-acquires it. Spurious wake-ups can happen; loop on a predicate
  /// (or use the predicate forms). Throws UsageError if the caller does not hold
  /// the lock, and OwnerDiedError — with the lock held, as the caller's guard
  /// expects — if the lock's owner died while this call waited to re-acquire it.
  void wait() { wait_until(std::nullopt); }
  /// Waits at most `timeout` (negative: UsageError). Returns false on timeout.
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> timeout) {
    return wait_until(detail::timeout_deadline(timeout, "wait_for"));
  }
  /// Waits until pred() is true (checked with the lock held).
  template <class Pred>
  requires std::is_invocable_r_v<bool, Pred&>
  void wait(Pred pred) {
    while (!pred()) wait_until(std::nullopt);
  }
  /// Waits until pred() or the timeout; returns the last pred().
  template <class Rep, class Period, class Pred>
  requires std::is_invocable_r_v<bool, Pred&>
  bool wait_for(std::chrono::duration<Rep, Period> timeout, Pred pred) {
    detail::deadline_t deadline = detail::timeout_deadline(timeout, "wait_for");
    while (!pred()) {
      if (!wait_until(deadline)) return pred();
    }
    return true;
  }

  /// Wakes the n (≥ 0) longest-waiting of the processes/threads waiting now (never
  /// one that starts waiting later, such as the caller right after). The caller
  /// must hold the lock (UsageError otherwise, like Python). Non-blocking.
  void notify(int n = 1);
  /// Wakes every current waiter.
  void notify_all();

 private:
  friend struct detail::SyncAccess;
  Condition(detail::MutexBase lock, detail::SyncRef ref) noexcept
      : MutexBase(std::move(lock)), ref_(std::move(ref)) {}
  bool wait_until(detail::deadline_t deadline);
  detail::SyncRef ref_;
};

/// A flag shared between processes (multiprocessing.Event): wait() blocks until
/// set() is called; clear() resets it.
class Event {
 public:
  /// A new, clear event (one shared page). Throws std::system_error.
  Event();

  /// Sets the flag and wakes every waiter. Non-blocking.
  void set();
  /// Clears the flag. Non-blocking.
  void clear();
  bool is_set() const noexcept;
  /// Blocks until the flag is set (returns at once if it is).
  void wait() { wait_until(std::nullopt); }
  /// Waits at most `timeout` (negative: UsageError); returns the flag.
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> timeout) {
    return wait_until(detail::timeout_deadline(timeout, "wait_for"));
  }

 private:
  friend struct detail::SyncAccess;
  explicit Event(detail::SyncRef ref) noexcept : ref_(std::move(ref)) {}
  bool wait_until(detail::deadline_t deadline);
  detail::SyncRef ref_;
};

/// A barrier for a fixed number of parties (multiprocessing.Barrier): each
/// wait() blocks until `parties` processes/threads have called it, then all
/// return, each with a distinct arrival index 0..parties-1.
///
/// The optional action runs once per round, in whichever process arrives last,
/// before anyone is released. It must be a plain function (or captureless lambda)
/// present in every process; it is sent to children as a module-relative code
/// reference, so it works under spawn too. If it throws, the barrier breaks and
/// the exception reaches that caller.
///
/// Broken state: abort(), reset() with parties waiting, a wait that times out, or
/// an action that throws breaks the barrier: waiting and later callers get
/// BrokenBarrierError until reset().
class Barrier {
 public:
  /// `parties` ≥ 1 (UsageError otherwise). No default timeout.
  explicit Barrier(int parties, void (*action)() = nullptr) : Barrier(parties, action, -1) {}
  /// A one-party barrier (wait() returns at once). Exists because the
  /// deserializer default-constructs a value before decoding into it.
  Barrier() : Barrier(1) {}
  /// With a default timeout for wait() (negative: UsageError).
  template <class Rep, class Period>
  Barrier(int parties, void (*action)(), std::chrono::duration<Rep, Period> timeout)
      : Barrier(parties, action, checked_timeout_ns(timeout)) {}

  /// Waits for the other parties (at most the default timeout, if any). Returns
  /// the arrival index. Throws BrokenBarrierError (see above), or what the action threw.
  int wait();
  /// Waits at most `timeout` (negative: UsageError); on timeout the barrier breaks
  /// and this throws BrokenBarrierError.
  template <class Rep, class Period>
  int wait_for(std::chrono::duration<Rep, Period> timeout) {
    return wait_until(detail::timeout_deadline(timeout, "wait_for"));
  }

  /// Puts the barrier into the broken state: current and future waiters get
  /// BrokenBarrierError until reset(). Non-blocking.
  void abort();
  /// Back to the initial, empty state; parties waiting now get BrokenBarrierError.
  void reset();
  bool broken() const;
  int parties() const noexcept;
  /// Parties waiting in the current round.
  int n_waiting() const;

 private:
  friend struct detail::SyncAccess;
  friend struct codec<Barrier>;
  Barrier(int parties, void (*action)(), std::int64_t timeout_ns);
  Barrier(detail::SyncRef ref, void (*action)()) noexcept : ref_(std::move(ref)), action_(action) {}
  template <class Rep, class Period>
  static std::int64_t checked_timeout_ns(std::chrono::duration<Rep, Period> d) {
    auto ns = detail::checked_nanoseconds(d, "Barrier");
    return ns ? ns->count() : -1;
  }
  int wait_until(detail::deadline_t deadline);

  detail::SyncRef ref_;
  void (*action_)() = nullptr;  // per process: resolved again in each receiver
};

namespace detail {

/// Builds handles from received or embedded state (codecs and Value/Array).
struct SyncAccess {
  static RLock rlock_at(SyncRef ref) { return RLock(std::move(ref)); }
  /// A Lock or RLock, as their common base (Value/Array on a caller's lock).
  static MutexBase mutex_at(SyncRef ref) { return MutexBase(std::move(ref)); }
  /// `m` as the L (Lock or RLock) it is, sharing its attachment: a fresh
  /// attachment of a lock this thread holds would pin its page when it goes.
  template <class L>
  static L as(const MutexBase& m) {
    return L(m);
  }
  static const SyncRef& ref(const MutexBase& m) noexcept { return m.att_->ref; }
  static const SyncRef& ref(const Semaphore& s) noexcept { return s.att_->ref; }
  static const SyncRef& ref(const Condition& c) noexcept { return c.ref_; }
  static const SyncRef& ref(const Event& e) noexcept { return e.ref_; }
  static const SyncRef& ref(const Barrier& b) noexcept { return b.ref_; }
  static Semaphore semaphore(SyncRef ref) { return Semaphore(std::move(ref)); }

  template <class T>
  static T decode(Reader& r);
};

template <>
inline Lock SyncAccess::decode<Lock>(Reader& r) {
  return Lock(decode_sync_ref(r, SyncKind::lock));
}
template <>
inline RLock SyncAccess::decode<RLock>(Reader& r) {
  return RLock(decode_sync_ref(r, SyncKind::rlock));
}
Semaphore decode_semaphore(Reader& r, bool bounded_only);
template <>
inline Semaphore SyncAccess::decode<Semaphore>(Reader& r) {
  return decode_semaphore(r, false);
}
template <>
inline BoundedSemaphore SyncAccess::decode<BoundedSemaphore>(Reader& r) {
  return BoundedSemaphore(decode_semaphore(r, true));
}
template <>
inline Condition SyncAccess::decode<Condition>(Reader& r) {
  MutexBase lock(decode_sync_ref(r, SyncKind::lock, SyncKind::rlock));
  return Condition(std::move(lock), decode_sync_ref(r, SyncKind::condition));
}
template <>
inline Event SyncAccess::decode<Event>(Reader& r) {
  return Event(decode_sync_ref(r, SyncKind::event));
}
template <>
inline Barrier SyncAccess::decode<Barrier>(Reader& r) {
  SyncRef ref = decode_sync_ref(r, SyncKind::barrier);
  void (*action)() = nullptr;
  if (load<bool>(r)) action = reinterpret_cast<void (*)()>(const_cast<void*>(resolve_code(load<CodeRef>(r))));
  return Barrier(std::move(ref), action);
}

/// The codec of every handle above: its shared state's fd and offset (plus, for
/// a Condition, its lock's; for a Barrier, its action's code reference).
template <class T>
struct SyncCodec {
  static void encode(Writer& w, const T& v) {
    if constexpr (std::is_same_v<T, Condition>)
      encode_sync_ref(w, SyncAccess::ref(static_cast<const MutexBase&>(v)));
    encode_sync_ref(w, SyncAccess::ref(v));
  }
  static T decode(Reader& r) { return SyncAccess::decode<T>(r); }
};

}  // namespace detail

template <>
struct codec<Lock> : detail::SyncCodec<Lock> {};
template <>
struct codec<RLock> : detail::SyncCodec<RLock> {};
template <>
struct codec<Semaphore> : detail::SyncCodec<Semaphore> {};
template <>
struct codec<BoundedSemaphore> : detail::SyncCodec<BoundedSemaphore> {};
template <>
struct codec<Condition> : detail::SyncCodec<Condition> {};
template <>
struct codec<Event> : detail::SyncCodec<Event> {};

template <>
struct codec<Barrier> {
  static void encode(Writer& w, const Barrier& b) {
    detail::encode_sync_ref(w, b.ref_);
    dump(w, b.action_ != nullptr);
    if (b.action_) dump(w, detail::locate_code(reinterpret_cast<const void*>(b.action_)));
  }
  static Barrier decode(Reader& r) { return detail::SyncAccess::decode<Barrier>(r); }
};

}  // namespace mproc
