// mproc/detail/futex.hpp — the one futex wrapper every shared-memory primitive uses.
//
// Shared (not FUTEX_PRIVATE) operations, because the words live in memory mapped
// by several processes. Waits take an absolute CLOCK_MONOTONIC deadline so a
// caller that loops on spurious wake-ups never stretches its timeout.
#pragma once

#include "mproc/detail/config.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>

#include "mproc/detail/timeout.hpp"  // deadline_t

namespace mproc::detail {

/// The pause instruction of a spin-wait loop.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/// Spins (with a pause instruction) until done() or `ns` nanoseconds have
/// passed; returns done(). Every spin-then-sleep waiter calls it before it
/// sleeps (the channels, pool results): an answer that comes within the spin
/// costs no wake-up.
template <class Done>
bool spin_until(Done done, std::int64_t ns) noexcept(noexcept(done())) {
  if (ns <= 0) return done();
  auto end = std::chrono::steady_clock::now() + std::chrono::nanoseconds(ns);
  do {
    for (int i = 0; i < 32; ++i) {
      if (done()) return true;
      cpu_relax();
    }
  } while (std::chrono::steady_clock::now() < end);
  return done();
}

/// Calls the callable behind `ctx` (a pointer to an F) with `a...`: the
/// trampoline by which a template front end hands a waiting loop compiled
/// elsewhere a callback without std::function (ChannelEnd::recv_spinning,
/// ResultReceiver::receive).
template <class F, class R, class... A>
R erased_call(void* ctx, A... a) {
  return (*static_cast<std::remove_reference_t<F>*>(ctx))(std::forward<A>(a)...);
}

enum class FutexWait { woken, timed_out, value_changed, interrupted };

/// Sleeps while *word == expected, until woken or the deadline passes.
/// std::chrono::steady_clock is CLOCK_MONOTONIC on Linux, which is what
/// FUTEX_WAIT_BITSET with an absolute timeout measures against.
inline FutexWait futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected, deadline_t deadline) {
  timespec ts{};
  timespec* tsp = nullptr;
  if (deadline) {
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline->time_since_epoch()).count();
    if (ns < 0) ns = 0;
    ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    tsp = &ts;
  }
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
  long r = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT_BITSET, expected, tsp, nullptr,
                     FUTEX_BITSET_MATCH_ANY);
  if (r == 0) return FutexWait::woken;
  switch (errno) {
    case ETIMEDOUT: return FutexWait::timed_out;
    case EAGAIN: return FutexWait::value_changed;
    default: return FutexWait::interrupted;  // EINTR
  }
}

/// Wakes up to n waiters on word (INT_MAX: all). Returns how many were woken.
inline int futex_wake(std::atomic<std::uint32_t>* word, int n = INT_MAX) {
  return static_cast<int>(::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, n, nullptr, nullptr, 0));
}

/// One word of a futex_waitv() wait: sleep while *word == expected. Shared (not
/// FUTEX_PRIVATE), as every futex here.
struct FutexWaiter {
  std::atomic<std::uint32_t>* word;
  std::uint32_t expected;
};

/// The most words one futex_waitv(2) call takes (the kernel's FUTEX_WAITV_MAX).
inline constexpr std::size_t kFutexWaitvMax = 128;

/// futex_waitv(2) (Linux 5.16+): sleeps until one of the words is woken, or the
/// deadline (absolute, CLOCK_MONOTONIC; nullopt: none). Returns the index of a
/// woken word, or -1 with errno: EAGAIN (a word no longer held its value),
/// ETIMEDOUT, EINTR, ENOSYS (a kernel without it), EINVAL (0 or more than
/// kFutexWaitvMax words). Through the test seam below. src/wait/wait.cpp.
long futex_waitv(std::span<const FutexWaiter> waiters, deadline_t deadline);

/// The raw system call futex_waitv() makes (the syscall's own arguments).
using FutexWaitvSyscall = long (*)(void* waiters, unsigned nr, unsigned flags, const timespec* abs_timeout,
                                   int clockid);
/// Test seam: replaces the system call (nullptr: the real one again) and returns the
/// previous one; also forgets a remembered ENOSYS (see mproc::wait). For tests in
/// one thread, before or after the waits that use it.
FutexWaitvSyscall set_futex_waitv_syscall(FutexWaitvSyscall f) noexcept;

/// Identity of a process that survives pid reuse: pid plus its start time (in
/// clock ticks since boot, from /proc/PID/stat). Fits in shared memory.
struct ProcessToken {
  std::int32_t pid = 0;
  std::uint64_t start_time = 0;
  friend bool operator==(const ProcessToken&, const ProcessToken&) = default;
};

/// The calling process's token (cached per process; fork-aware).
ProcessToken self_token();
/// Whether the process named by the token is still running (not a zombie, and
/// its pid not reused by another process).
bool token_alive(const ProcessToken& t);

}  // namespace mproc::detail
