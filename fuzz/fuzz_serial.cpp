// fuzz_serial: every kind of type mproc's serializer decodes (fuzz/serial_types.hpp), from
// bytes another process wrote. Input: one byte picking the type, then the message.
//
// Oracle: decoding either succeeds or throws mproc::SerializationError (anything else,
// a crash, a sanitizer report, another exception, is a bug). What decoded must encode
// and decode again; for types whose encoding is canonical (no sets or maps, which drop
// duplicates and reorder) the encoding of the decoded value is the input itself.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "serial_types.hpp"

namespace {

using mproc::detail::Kind;
using mproc::detail::kind_of;

template <class T>
consteval bool canonical() {
  constexpr Kind k = kind_of<T>();
  if constexpr (k == Kind::bytes || k == Kind::empty || k == Kind::string) {
    return true;
  } else if constexpr (k == Kind::contiguous || k == Kind::array || k == Kind::sequence ||
                       k == Kind::optional) {
    return canonical<typename T::value_type>();
  } else if constexpr (k == Kind::variant || k == Kind::tuple) {
    return []<template <class...> class Tmpl, class... A>(std::type_identity<Tmpl<A...>>) consteval {
      return (true && ... && canonical<A>());
    }(std::type_identity<T>{});
  } else {
    return false;  // sets, maps, user types (opaque here)
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::span<const std::byte> msg(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
  fuzz::with_type(fuzz::SerialTypes{}, data[0] % fuzz::SerialTypes::size, [&]<class T>() {
    T v{};
    try {
      v = mproc::from_bytes<T>(msg);
    } catch (const mproc::SerializationError&) {
      return;  // corrupt input, reported as such
    }
    std::vector<std::byte> again = mproc::to_bytes(v);
    T w = mproc::from_bytes<T>(again);  // must not throw: it is a real encoding
    if constexpr (canonical<T>()) {
      if (!std::equal(again.begin(), again.end(), msg.begin(), msg.end())) std::abort();
      if (mproc::to_bytes(w) != again) std::abort();
    }
  });
  return 0;
}
