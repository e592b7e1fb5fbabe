// mproc/detail/pool_entry.hpp — the worker side of a Pool call: the entry a
// worker runs for each chunk (pool_entry<F, Arg, Star>, named in the chunk's
// prefix), which decodes the callable and the items, calls f, and reports each
// item's result or exception to the engine's ItemSink; and the type rules that
// pick the argument and result types of a call.
#pragma once

#include "mproc/detail/config.hpp"

#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <tuple>
#include <type_traits>
#include <utility>

#include "mproc/detail/pool_backend.hpp"
#include "mproc/results.hpp"
#include "mproc/serial.hpp"
#include "mproc/task.hpp"

namespace mproc::detail {

/// Plain bytes that travel as themselves, read and written with memcpy in bulk
/// (the map bulk path, docs/pool.md). Not bool: a received bool is checked to
/// be 0 or 1.
template <class T>
inline constexpr bool bulk_type = kind_of<T>() == Kind::bytes && !std::is_same_v<std::remove_cv_t<T>, bool>;

template <class F, class Arg, bool Star, class = void>
struct pool_result {
  using type = not_invocable;
};
template <class F, class Arg>
struct pool_result<F, Arg, false, std::enable_if_t<std::is_invocable_v<F&, Arg&&>>> {
  using type = std::invoke_result_t<F&, Arg&&>;
};
template <class F, class... A>
struct pool_result<F, std::tuple<A...>, true, std::enable_if_t<std::is_invocable_v<F&, A&&...>>> {
  using type = std::invoke_result_t<F&, A&&...>;
};
template <class F, class Arg, bool Star>
using pool_result_t = std::remove_cvref_t<typename pool_result<F, Arg, Star>::type>;

template <class F, class Arg, bool Star>
struct PoolEntryTag {};

/// Worker-side view of the chunk being run (ctx of a pool entry).
struct PoolEntryCtx {
  ItemSink* sink;
  std::uint64_t first;
  std::uint64_t count;
};

/// The bulk path of pool_entry (plain-bytes argument and result, docs/pool.md):
/// the chunk's items are read in place, back to back, and the results written
/// in runs straight into the result batch; per item, one relaxed store says
/// which item runs (for crash attribution).
template <class R, class Arg, class F>
void run_bulk(F& f, Reader& in, const PoolEntryCtx& c) {
  const std::byte* items = nullptr;
  try {
    if (c.count > in.remaining() / sizeof(Arg)) throw SerializationError("mproc: task message truncated");
    items = in.take(c.count * sizeof(Arg));
  } catch (...) {
    ExceptionInfo info = capture_current_exception();
    for (std::uint64_t k = 0; k < c.count; ++k) c.sink->failed(c.first + k, info);
    return;
  }
  for (std::uint64_t k = 0; k < c.count;) {
    std::span<std::byte> out = c.sink->run_begin(c.first + k, c.count - k, sizeof(R));
    const std::size_t n = out.size() / sizeof(R);
    std::size_t j = 0;
    std::optional<ExceptionInfo> error;
    try {
      for (; j < n; ++j) {
        c.sink->running(c.first + k + j);
        Arg arg{};
        std::memcpy(&arg, items + (k + j) * sizeof(Arg), sizeof(Arg));
        const R r = std::invoke(f, std::move(arg));
        std::memcpy(out.data() + j * sizeof(R), &r, sizeof(R));
      }
    } catch (...) {
      error = capture_current_exception();
    }
    c.sink->run_end(j);  // the results before a failed item, then the failure
    if (error) c.sink->failed(c.first + k + j++, *error);
    k += j;
  }
}

template <class F, class Arg, bool Star>
std::uint64_t pool_entry(Reader* in, void* ctx) {
  constexpr std::uint64_t id = fnv1a(pretty_name<PoolEntryTag<F, Arg, Star>>());
  if (!in) return id;
  auto& c = *static_cast<PoolEntryCtx*>(ctx);
  F f = decode_callable<F>(*in);
  using R = pool_result_t<F, Arg, Star>;
  if constexpr (!Star && bulk_type<Arg> && bulk_type<R>) {
    if (c.sink->bulk()) {
      run_bulk<R, Arg>(f, *in, c);
      return id;
    }
  }
  for (std::uint64_t k = 0; k < c.count; ++k) {
    std::uint64_t index = c.first + k;
    std::optional<Arg> arg;
    try {
      arg.emplace(load<Arg>(*in));
    } catch (...) {
      // Misaligned from here on: every remaining item of the chunk fails the same way.
      ExceptionInfo info = capture_current_exception();
      for (; k < c.count; ++k) c.sink->failed(c.first + k, info);
      return id;
    }
    c.sink->starting(index);
    try {
      if constexpr (std::is_void_v<R>) {
        if constexpr (Star) std::apply(f, std::move(*arg));
        else std::invoke(f, std::move(*arg));
        c.sink->result_writer();
      } else {
        R r = [&]() -> R {
          if constexpr (Star) return std::apply(f, std::move(*arg));
          else return std::invoke(f, std::move(*arg));
        }();
        dump(c.sink->result_writer(), r);
      }
      c.sink->ok(index);
    } catch (...) {
      c.sink->failed(index, capture_current_exception());
    }
  }
  return id;
}

/// The argument type sent for one item of `map(f, range)`: f's parameter type
/// when f has exactly one signature with one parameter, else the range's.
template <class Fn, class Elem>
auto map_arg_for() {
  if constexpr (callable_params<Fn>::known) {
    using P = typename callable_params<Fn>::type;
    if constexpr (P::size == 1) {
      return std::type_identity<std::tuple_element_t<0, typename P::stored>>{};
    } else {
      return std::type_identity<std::remove_cvref_t<Elem>>{};
    }
  } else {
    return std::type_identity<std::remove_cvref_t<Elem>>{};
  }
}
/// For starmap: f's parameters as a tuple when known, else the element (tuple-like).
template <class Fn, class Elem>
auto star_arg_for() {
  if constexpr (callable_params<Fn>::known) {
    return std::type_identity<typename callable_params<Fn>::type::stored>{};
  } else {
    return std::type_identity<std::remove_cvref_t<Elem>>{};
  }
}

}  // namespace mproc::detail
