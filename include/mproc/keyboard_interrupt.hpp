// mproc/keyboard_interrupt.hpp — Ctrl-C as mproc::KeyboardInterrupt in blocking
// waits on pool results (Python's KeyboardInterrupt), and the interruptible
// condition-variable waits those results use (src/pool/keyboard_interrupt.cpp).
#pragma once

#include "mproc/detail/config.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>

#include "mproc/detail/timeout.hpp"  // deadline_t

namespace mproc {

/// Makes Ctrl-C (SIGINT) end a blocking wait on a pool result (get(), wait(),
/// map(), imap iteration) with mproc::KeyboardInterrupt instead of killing the
/// program, like Python's KeyboardInterrupt; unwinding then terminates the pool.
/// Installs a SIGINT handler for the whole process: call it once, from main().
/// Without it, Ctrl-C keeps its default action (the program ends; its daemon
/// workers die with it).
void enable_keyboard_interrupt();

namespace detail {

/// Set by the SIGINT handler that enable_keyboard_interrupt() installs.
bool keyboard_interrupt_pending() noexcept;
bool keyboard_interrupt_enabled() noexcept;
/// Throws KeyboardInterrupt (clearing the flag) if Ctrl-C arrived.
void check_keyboard_interrupt();

/// cv.wait(lock, pred) that, when keyboard interrupts are enabled, wakes every
/// 20 ms to see whether Ctrl-C arrived (a signal handler cannot notify a
/// condition variable).
template <class Pred>
void interruptible_wait(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, Pred pred) {
  if (!keyboard_interrupt_enabled()) {
    cv.wait(lock, pred);
    return;
  }
  while (!pred()) {
    if (keyboard_interrupt_pending()) {
      lock.unlock();
      check_keyboard_interrupt();
      lock.lock();
    }
    cv.wait_for(lock, std::chrono::milliseconds(20));
  }
}

/// As interruptible_wait(), but only until `deadline` (empty: no limit, detail/timeout.hpp
/// turns a user's timeout into one). Returns pred().
template <class Pred>
bool interruptible_wait_until(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, deadline_t deadline,
                              Pred pred) {
  if (!deadline) {
    interruptible_wait(cv, lock, pred);
    return true;
  }
  if (!keyboard_interrupt_enabled()) return cv.wait_until(lock, *deadline, pred);
  while (!pred()) {
    if (keyboard_interrupt_pending()) {
      lock.unlock();
      check_keyboard_interrupt();
      lock.lock();
    }
    auto now = std::chrono::steady_clock::now();
    if (now >= *deadline) return pred();
    cv.wait_until(lock, std::min(*deadline, now + std::chrono::milliseconds(20)));
  }
  return true;
}

}  // namespace detail
}  // namespace mproc
