// mproc/detail/type_name.hpp — compile-time type names and hashes.
//
// Used to (a) recognise lambda closure types, which no standard trait can tell
// apart from ordinary classes, so that a capturing lambda is rejected at compile
// time instead of being memcpy'd with dangling references inside; and (b) give
// every task trampoline a stable identity hash that a child process checks before
// calling code it located by address.
#pragma once

#include "mproc/detail/config.hpp"

#include <cstdint>
#include <string_view>

namespace mproc::detail {

template <class T>
constexpr std::string_view pretty_name() noexcept {
  return __PRETTY_FUNCTION__;
}

/// The spelling of T as the compiler prints it (GCC and Clang).
template <class T>
constexpr std::string_view type_name() noexcept {
  std::string_view p = pretty_name<T>();
#if defined(__clang__)
  constexpr std::string_view key = "T = ";
  auto b = p.find(key) + key.size();
  auto e = p.rfind(']');
#else
  constexpr std::string_view key = "T = ";
  auto b = p.find(key) + key.size();
  auto e = p.find(';', b);
  if (e == std::string_view::npos) e = p.rfind(']');
#endif
  return p.substr(b, e - b);
}

/// True for lambda closure types: GCC spells them `scope::<lambda(args)>`,
/// Clang `(lambda at file:line:col)`. A template instantiated with a closure
/// (e.g. `Holder<<lambda()>>`) is not itself a closure and does not match.
template <class T>
constexpr bool is_closure_type() noexcept {
  std::string_view n = type_name<T>();
  bool gcc = n.find("<lambda(") != std::string_view::npos && n.size() >= 2 &&
             n.substr(n.size() - 2) == ")>";
  bool clang = n.find("(lambda at ") != std::string_view::npos && !n.empty() && n.back() == ')';
  return gcc || clang;
}

/// FNV-1a, 64 bit: identity of a type or trampoline across processes of the same binary.
constexpr std::uint64_t fnv1a(std::string_view s) noexcept {
  std::uint64_t h = 1469598103934665603ull;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

template <class T>
constexpr std::uint64_t type_hash() noexcept {
  return fnv1a(type_name<T>());
}

template <class>
inline constexpr bool dependent_false = false;

}  // namespace mproc::detail
