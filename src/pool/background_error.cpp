// The one reporting path of background-thread errors (mproc/background_error.hpp).
#include "mproc/background_error.hpp"

#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

namespace mproc {
namespace {

// Copied out under the lock and called without it: a handler may report again
// or set another handler without deadlocking.
std::mutex& handler_mutex() {
  static std::mutex mu;
  return mu;
}
std::shared_ptr<const BackgroundErrorHandler>& handler_slot() {
  static std::shared_ptr<const BackgroundErrorHandler> slot;
  return slot;
}

void to_stderr(std::string_view where, std::string_view what) noexcept {
  // One call, so lines from several threads do not interleave.
  std::fprintf(stderr, "mproc: %.*s: %.*s\n", static_cast<int>(where.size()), where.data(),
               static_cast<int>(what.size()), what.data());
}

}  // namespace

BackgroundErrorHandler set_background_error_handler(BackgroundErrorHandler handler) {
  auto next = handler ? std::make_shared<const BackgroundErrorHandler>(std::move(handler)) : nullptr;
  std::shared_ptr<const BackgroundErrorHandler> prev;
  {
    std::lock_guard lock(handler_mutex());
    prev = std::exchange(handler_slot(), std::move(next));
  }
  return prev ? *prev : BackgroundErrorHandler{};
}

namespace detail {

void report_background_error(std::string_view where, std::string_view what) noexcept {
  std::shared_ptr<const BackgroundErrorHandler> h;
  try {
    std::lock_guard lock(handler_mutex());
    h = handler_slot();
  } catch (...) {
  }
  if (!h) {
    to_stderr(where, what);
    return;
  }
  try {
    (*h)(BackgroundError{where, what});
  } catch (...) {
    // Nowhere left to report it; the error itself must not be lost.
    to_stderr(where, what);
  }
}

void report_current_exception(std::string_view where, std::string_view suffix) noexcept {
  try {
    std::string text;
    try {
      throw;
    } catch (const std::exception& e) {
      text = e.what();
    } catch (...) {
      text = "an exception not derived from std::exception";
    }
    if (!suffix.empty()) {
      text += ' ';
      text += suffix;
    }
    report_background_error(where, text);
  } catch (...) {
    report_background_error(where, "an error (and no memory to describe it)");
  }
}

}  // namespace detail
}  // namespace mproc
