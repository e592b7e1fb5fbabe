// mproc/task.hpp — how a callable and its arguments cross a process boundary.
//
// The rule for what may be a task (Process target, later pool function):
//   * a function pointer;
//   * a captureless lambda or any empty functor type (rebuilt in the child);
//   * a functor with state that declares it with a cereal-style serialize();
//   * mproc::bind(f, values...), which carries values serialized beside f.
// A lambda with captures is rejected at compile time: a capture may be a
// reference or pointer into this process, and C++ cannot tell which. Bind the
// values instead; they are copied, never dangling.
//
// Arguments are converted to the target's parameter types in the calling
// process (so `Process(f, "text")` with `void f(std::string)` sends a string,
// not a pointer), then serialized; each must be mproc::Serializable.
#pragma once

#include "mproc/detail/config.hpp"

#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#include "mproc/detail/code_ref.hpp"
#include "mproc/detail/type_name.hpp"
#include "mproc/serial.hpp"

namespace mproc {

namespace detail {

template <class F, class Tuple>
class Bound;

// ---- parameter types of a callable, where they can be known ---------------

template <class... P>
struct param_list {
  using stored = std::tuple<std::remove_cvref_t<P>...>;
  static constexpr std::size_t size = sizeof...(P);
  static constexpr bool has_mutable_lvalue_ref =
      ((std::is_lvalue_reference_v<P> && !std::is_const_v<std::remove_reference_t<P>>) || ...);
};

template <class L, std::size_t N, class = std::make_index_sequence<(L::size >= N ? L::size - N : 0)>>
struct drop_front;
template <class... P, std::size_t N, std::size_t... I>
struct drop_front<param_list<P...>, N, std::index_sequence<I...>> {
  using type = param_list<std::tuple_element_t<N + I, std::tuple<P...>>...>;
};

template <class F, class = void>
struct callable_params {
  static constexpr bool known = false;
};
template <class R, class... P>
struct callable_params<R (*)(P...), void> {
  static constexpr bool known = true;
  using type = param_list<P...>;
};
template <class R, class... P>
struct callable_params<R (*)(P...) noexcept, void> : callable_params<R (*)(P...)> {};

template <class M>
struct member_call_params {
  static constexpr bool known = false;
};
#define MPROC_MEMBER_CALL(QUAL)                            \
  template <class C, class R, class... P>                  \
  struct member_call_params<R (C::*)(P...) QUAL> {         \
    static constexpr bool known = true;                    \
    using type = param_list<P...>;                         \
  };                                                       \
  template <class C, class R, class... P>                  \
  struct member_call_params<R (C::*)(P...) QUAL noexcept> { \
    static constexpr bool known = true;                    \
    using type = param_list<P...>;                         \
  };
MPROC_MEMBER_CALL()
MPROC_MEMBER_CALL(const)
MPROC_MEMBER_CALL(&)
MPROC_MEMBER_CALL(const&)
#undef MPROC_MEMBER_CALL

template <class F>
struct callable_params<F, std::void_t<decltype(&F::operator())>>
    : member_call_params<decltype(&F::operator())> {};

template <class F, class Tuple, bool = callable_params<F>::known>
struct bound_params {
  static constexpr bool known = false;
};
template <class F, class Tuple>
struct bound_params<F, Tuple, true> {
  static constexpr bool known = callable_params<F>::type::size >= std::tuple_size_v<Tuple>;
  using type = typename drop_front<typename callable_params<F>::type, std::tuple_size_v<Tuple>>::type;
};
template <class F, class Tuple>
struct callable_params<Bound<F, Tuple>, void> : bound_params<F, Tuple> {};

/// What is stored and sent for a call of F with Args: the target's parameter
/// types (decayed) when F has exactly one signature, else the decayed argument types.
template <class F, class... Args>
auto stored_args_for() {
  if constexpr (callable_params<F>::known) {
    using P = typename callable_params<F>::type;
    if constexpr (P::size == sizeof...(Args)) {
      return std::type_identity<typename P::stored>{};
    } else {
      return std::type_identity<std::tuple<std::remove_cvref_t<Args>...>>{};
    }
  } else {
    return std::type_identity<std::tuple<std::remove_cvref_t<Args>...>>{};
  }
}
template <class F, class... Args>
using stored_args_t = typename decltype(stored_args_for<F, Args...>())::type;

// ---- callables on the wire -------------------------------------------------

template <class F>
inline constexpr bool is_function_pointer_v =
    std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>;

template <class F>
inline constexpr bool is_bound_v = false;
template <class F, class T>
inline constexpr bool is_bound_v<Bound<F, T>> = true;

template <class F>
consteval bool sendable_callable() {
  if constexpr (is_function_pointer_v<F> || is_bound_v<F>) {
    return true;
  } else if constexpr (std::is_class_v<F> && std::is_empty_v<F> && std::is_default_constructible_v<F>) {
    return true;
  } else if constexpr (std::is_class_v<F> && kind_of<F>() == Kind::cereal) {
    return true;
  } else {
    return false;
  }
}

/// Callables mproc can send to another process (see the rule at the top of this file).
template <class F>
concept SendableCallable = sendable_callable<std::remove_cvref_t<F>>();

template <class F>
constexpr void diagnose_callable() {
  using U = std::remove_cvref_t<F>;
  if constexpr (SendableCallable<U>) {
  } else if constexpr (is_closure_type<U>()) {
    static_assert(dependent_false<F>,
                  "mproc: a lambda that captures variables cannot run in another process: a "
                  "capture may refer to memory of this process. Make the lambda captureless and "
                  "pass the values as arguments, or write mproc::bind(lambda, values...), which "
                  "copies them.");
  } else if constexpr (is_specialization_v<U, std::function>) {
    static_assert(dependent_false<F>,
                  "mproc: std::function cannot run in another process (it may hide captured "
                  "pointers). Pass a function pointer, a captureless lambda, a functor type, or "
                  "mproc::bind(f, values...).");
  } else if constexpr (std::is_member_function_pointer_v<U>) {
    static_assert(dependent_false<F>,
                  "mproc: a member function pointer needs an object; wrap the call in a "
                  "captureless lambda that takes the object as an argument.");
  } else {
    static_assert(dependent_false<F>,
                  "mproc: this functor has state but no serialize() member, so mproc cannot know "
                  "whether that state is safe to copy into another process. Give it a "
                  "cereal-style `template <class Archive> void serialize(Archive&)` member, or use "
                  "mproc::bind(f, values...).");
  }
}

template <class F>
void encode_callable(Writer& w, const F& f);
template <class F>
F decode_callable(Reader& r);

}  // namespace detail

/// `mproc::bind(f, values...)`: a callable that calls f(values..., rest...).
/// The values are serialized with it, so a bound task carries its own copies
/// into the child. This is the sanctioned way to give a task state.
///
/// Checked with static_asserts rather than a requires-clause: a bare
/// "constraints not satisfied" did not say why, and the constraint tested F
/// undecayed, so `bind(f, ...)` with f a function name (F = function reference)
/// was rejected.
template <class F, class... V>
[[nodiscard]] auto bind(F&& f, V&&... values) {
  using Fn = std::decay_t<F>;
  // decay, not remove_cvref: a string literal is stored as const char* and gets the
  // raw-pointer message; as char[N] it broke std::tuple's constructor in a cascade.
  using T = std::tuple<std::decay_t<V>...>;
  if constexpr (!detail::SendableCallable<Fn>) detail::diagnose_callable<Fn>();
  if constexpr (!Serializable<T>) detail::diagnose<T>();
  return detail::Bound<Fn, T>(std::forward<F>(f), T(std::forward<V>(values)...));
}

namespace detail {

template <class F, class Tuple>
class Bound {
 public:
  Bound() = default;
  Bound(F f, Tuple values) : f_(std::move(f)), values_(std::move(values)) {}

  template <class... Rest>
  decltype(auto) operator()(Rest&&... rest) & {
    return std::apply(
        [&](auto&... v) -> decltype(auto) { return std::invoke(f_, v..., std::forward<Rest>(rest)...); },
        values_);
  }

  const F& function() const noexcept { return f_; }
  const Tuple& values() const noexcept { return values_; }
  F& function() noexcept { return f_; }
  Tuple& values() noexcept { return values_; }

 private:
  F f_{};
  Tuple values_{};
};

template <class F>
void encode_callable(Writer& w, const F& f) {
  if constexpr (is_function_pointer_v<F>) {
    dump(w, locate_code(reinterpret_cast<const void*>(f)));
  } else if constexpr (is_bound_v<F>) {
    encode_callable(w, f.function());
    dump(w, f.values());
  } else if constexpr (std::is_empty_v<F> && std::is_default_constructible_v<F>) {
  } else {
    dump(w, f);
  }
}

template <class F>
F decode_callable(Reader& r) {
  if constexpr (is_function_pointer_v<F>) {
    auto ref = load<CodeRef>(r);
    return reinterpret_cast<F>(const_cast<void*>(resolve_code(ref)));
  } else if constexpr (is_bound_v<F>) {
    using Fn = std::remove_cvref_t<decltype(std::declval<F&>().function())>;
    using T = std::remove_cvref_t<decltype(std::declval<F&>().values())>;
    Fn fn = decode_callable<Fn>(r);
    T values = load<T>(r);
    return F(std::move(fn), std::move(values));
  } else if constexpr (std::is_empty_v<F> && std::is_default_constructible_v<F>) {
    return F{};
  } else {
    return load<F>(r);
  }
}

// ---- trampolines -----------------------------------------------------------

/// A task entry point. Called with nullptr it returns its identity hash and does
/// nothing else: the child checks that hash before trusting the address it resolved.
/// Called with a reader it decodes and runs the task; `ctx` is what the kind of
/// task needs to report results (nothing for a Process; the worker's result sink
/// for a pool task).
using Entry = std::uint64_t (*)(Reader* in, void* ctx);

template <class F, class Stored>
std::uint64_t process_entry(Reader* in, void*) {
  constexpr std::uint64_t id = fnv1a(pretty_name<Bound<F, Stored>>());
  if (!in) return id;
  F f = decode_callable<F>(*in);
  Stored args = load<Stored>(*in);
  std::apply([&f](auto&... a) { std::invoke(f, std::move(a)...); }, args);
  return id;
}

/// Writes the reference to entry point `E` and its identity hash.
template <Entry E>
void encode_entry(Writer& w) {
  static const CodeRef ref = locate_code(reinterpret_cast<const void*>(E));
  dump(w, ref);
  std::uint64_t id = E(nullptr, nullptr);
  dump(w, id);
}

/// Resolves and checks the entry written by encode_entry (defined in src/task).
Entry decode_entry(Reader& r);

/// Encodes one argument as parameter type S: the caller's own value when it has
/// that type already (no copy of a big argument only to encode it), else a
/// conversion of it (a string literal to std::string).
template <class S, class A>
void encode_arg(Writer& w, A&& a) {
  if constexpr (std::is_same_v<std::remove_cvref_t<A>, S>) {
    dump(w, static_cast<const S&>(a));
  } else {
    const S converted(std::forward<A>(a));
    dump(w, converted);
  }
}

/// Encodes args as a Stored tuple is encoded (its elements back to back, what
/// process_entry loads), without building that tuple.
template <class Stored, class... Args>
void encode_args(Writer& w, Args&&... args) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (encode_arg<std::tuple_element_t<I, Stored>>(w, std::forward<Args>(args)), ...);
  }(std::index_sequence_for<Args...>{});
}

/// Encodes `f(args...)` as a process task: entry, callable, arguments converted to
/// the target's parameter types. All checks are compile-time.
template <class F, class... Args>
void encode_process_task(Writer& w, F&& f, Args&&... args) {
  using Fn = std::decay_t<F>;
  if constexpr (!SendableCallable<Fn>) {
    diagnose_callable<Fn>();
  } else {
    using Stored = stored_args_t<Fn, Args...>;
    // Each check below stops the instantiation when it fails (the if-constexpr
    // chain), so the user sees that one static_assert, not a cascade of errors
    // from encoding a task that was already rejected.
    constexpr bool mutable_ref = [] {
      if constexpr (callable_params<Fn>::known) return callable_params<Fn>::type::has_mutable_lvalue_ref;
      else return false;
    }();
    constexpr bool convertible = std::is_constructible_v<Stored, Args&&...>;
    if constexpr (mutable_ref) {
      static_assert(!mutable_ref,
                    "mproc: the target takes a parameter by non-const reference. The child works "
                    "on its own copy, so the change would silently never reach this process. Take "
                    "it by value or const&, and share state through a Value/Array or a result.");
    } else if constexpr (!convertible) {
      static_assert(convertible, "mproc: these arguments do not convert to the target's parameter types.");
    } else if constexpr (!Serializable<Stored>) {
      diagnose<Stored>();
    } else {
      constexpr bool invocable = []<class... S>(std::type_identity<std::tuple<S...>>) {
        return std::is_invocable_v<Fn&, S&&...>;
      }(std::type_identity<Stored>{});
      static_assert(invocable, "mproc: the target cannot be called with these arguments.");
      encode_entry<&process_entry<Fn, Stored>>(w);
      const Fn& callable = f;  // a function reference decays to its pointer here
      encode_callable<Fn>(w, callable);
      encode_args<Stored>(w, std::forward<Args>(args)...);
    }
  }
}

}  // namespace detail
}  // namespace mproc
