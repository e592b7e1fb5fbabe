// mproc/background_error.hpp — where errors of the library's background threads go.
//
//   mproc::set_background_error_handler([](const mproc::BackgroundError& e) {
//     my_log.warn("mproc {}: {}", e.where, e.what);
//   });
//
// Some errors have no caller to be thrown to: a pool's feeder, collector or
// supervisor thread that hits one, a result or done callback that throws, a
// worker that cannot be replaced, an executor whose destructor's shutdown
// fails. Each is reported once through one path: the handler set here, or, by
// default, one line on stderr ("mproc: <where>: <what>").
#pragma once

#include "mproc/detail/config.hpp"

#include <functional>
#include <string_view>

namespace mproc {

/// One error of a background thread, as handed to the handler. The views are
/// valid only during the call.
struct BackgroundError {
  /// What reported it: "pool feeder", "pool collector", "pool supervisor",
  /// "ThreadPool", "result callback", "done callback", "executor shutdown", ...
  std::string_view where;
  /// What went wrong (an exception's what(), with what was done about it).
  std::string_view what;
};

using BackgroundErrorHandler = std::function<void(const BackgroundError&)>;

/// Sends background-thread errors to `handler` from now on (null: back to the
/// default, a line on stderr); returns the previous handler (null for the
/// default). The handler runs on the thread that hit the error — a pool's
/// internal thread, a worker-facing thread, the one finishing a future — so it
/// must be quick, must not block on the pool, and is called from several
/// threads at once; an exception it throws is swallowed. Safe from any thread.
BackgroundErrorHandler set_background_error_handler(BackgroundErrorHandler handler);

namespace detail {

/// Reports an error through the handler (or stderr). Never throws.
void report_background_error(std::string_view where, std::string_view what) noexcept;

/// In a catch block: reports the exception being handled as `where`: "<what()>
/// <suffix>" (or "an exception not derived from std::exception <suffix>").
void report_current_exception(std::string_view where, std::string_view suffix = {}) noexcept;

}  // namespace detail
}  // namespace mproc
