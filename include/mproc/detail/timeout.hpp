// mproc/detail/timeout.hpp — the one conversion of a user's timeout, of any
// std::chrono::duration (integral or floating-point rep, any period), to what the
// library waits with: nanoseconds or an absolute steady_clock deadline.
//
//   * Rounded up (std::chrono::ceil): a positive timeout never becomes 0 ns, so a
//     `get(1ps)` or `get(duration<double>(1e-12))` still waits, never "tries once".
//   * At or beyond a century it means "no limit": adding it to the clock would overflow.
//   * NaN is a UsageError; a negative timeout is one where the call says so (the
//     `call` argument names it in the message).
#pragma once

#include "mproc/detail/config.hpp"

#include <chrono>
#include <optional>
#include <ratio>
#include <string>
#include <type_traits>

#include "mproc/error.hpp"

namespace mproc::detail {

/// An absolute CLOCK_MONOTONIC deadline; empty for "forever".
using deadline_t = std::optional<std::chrono::steady_clock::time_point>;

/// Timeouts this long or longer mean "no limit".
inline constexpr std::chrono::hours kForeverTimeout{24 * 365 * 100};

[[noreturn]] inline void throw_negative_timeout(const char* call) {
  throw UsageError(std::string("mproc: ") + call + ": negative timeout; pass zero to try without waiting");
}

/// `d` as nanoseconds, rounded up; empty at or beyond kForeverTimeout. A negative
/// `d` is kept (at most a century below zero): the caller decides what it means.
/// NaN: UsageError naming `call`.
template <class Rep, class Period>
std::optional<std::chrono::nanoseconds> to_nanoseconds(std::chrono::duration<Rep, Period> d,
                                                       const char* call = "timeout") {
  using namespace std::chrono;
  if constexpr (std::is_floating_point_v<Rep>) {
    if (d != d) throw UsageError(std::string("mproc: ") + call + ": the timeout is NaN");
  }
  // Compared in double seconds: any duration type converts without overflow.
  const duration<double> s(d);
  if (s >= duration<double>(kForeverTimeout)) return std::nullopt;
  if (s <= -duration<double>(kForeverTimeout)) return -duration_cast<nanoseconds>(kForeverTimeout);
  return ceil<nanoseconds>(d);
}

/// As to_nanoseconds(), but a negative timeout is a UsageError naming `call`.
template <class Rep, class Period>
std::optional<std::chrono::nanoseconds> checked_nanoseconds(std::chrono::duration<Rep, Period> d, const char* call) {
  if (d < d.zero()) throw_negative_timeout(call);
  return to_nanoseconds(d, call);
}

/// The deadline `ns` from now; empty (forever) when `ns` is.
inline deadline_t deadline_after(std::optional<std::chrono::nanoseconds> ns) {
  if (!ns) return std::nullopt;
  return std::chrono::steady_clock::now() + *ns;
}

/// The deadline for a user's timeout `d` from now: negative is a UsageError
/// naming `call` (as Python's ValueError); "forever" from a century on.
template <class Rep, class Period>
deadline_t timeout_deadline(std::chrono::duration<Rep, Period> d, const char* call) {
  return deadline_after(checked_nanoseconds(d, call));
}

/// The parameter type of a call whose timeout is optional (Executor.map,
/// as_completed, wait, ...): std::nullopt or `{}` for no limit, or any
/// std::chrono::duration, converted by to_nanoseconds(). Reads as the
/// std::optional<std::chrono::nanoseconds> it is.
class OptionalTimeout : public std::optional<std::chrono::nanoseconds> {
  using base = std::optional<std::chrono::nanoseconds>;

 public:
  OptionalTimeout() = default;
  OptionalTimeout(std::nullopt_t) {}  // NOLINT: implicit, as std::optional's
  template <class Rep, class Period>
  OptionalTimeout(std::chrono::duration<Rep, Period> d) : base(to_nanoseconds(d)) {}  // NOLINT: implicit
  template <class Rep, class Period>
  OptionalTimeout(const std::optional<std::chrono::duration<Rep, Period>>& d)  // NOLINT: implicit
      : base(d ? to_nanoseconds(*d) : base()) {}
};

}  // namespace mproc::detail
