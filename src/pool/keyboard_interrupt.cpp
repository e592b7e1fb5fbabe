// Ctrl-C support (mproc/pool.hpp, enable_keyboard_interrupt): a SIGINT handler
// that sets a flag, which blocking waits on pool results poll (detail::
// interruptible_wait) and turn into KeyboardInterrupt.
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <system_error>

#include "mproc/pool.hpp"

namespace mproc {
namespace detail {

namespace {
std::atomic<bool> g_kbd_enabled{false};
volatile std::sig_atomic_t g_kbd_pending = 0;
extern "C" void on_sigint(int) { g_kbd_pending = 1; }
}  // namespace

bool keyboard_interrupt_enabled() noexcept { return g_kbd_enabled.load(std::memory_order_relaxed); }
bool keyboard_interrupt_pending() noexcept { return g_kbd_pending != 0; }
void check_keyboard_interrupt() {
  if (g_kbd_pending) {
    g_kbd_pending = 0;
    throw KeyboardInterrupt("mproc: interrupted by Ctrl-C (SIGINT)");
  }
}

}  // namespace detail

void enable_keyboard_interrupt() {
  struct sigaction sa {};
  sa.sa_handler = detail::on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  if (::sigaction(SIGINT, &sa, nullptr) < 0) {
    throw std::system_error(errno, std::generic_category(), "mproc: sigaction(SIGINT) failed");
  }
  detail::g_kbd_enabled.store(true);
}

}  // namespace mproc
