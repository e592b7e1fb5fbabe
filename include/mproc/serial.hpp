// mproc/serial.hpp — how values cross a process boundary.
//
// One serializer for everything mproc sends (Process arguments, later queue
// items, pool tasks and results). The encoding is chosen by type at compile time:
//
//   * arithmetic types, enums, std::byte and other trivially copyable types: memcpy;
//     contiguous ranges of them (std::vector, std::array, std::basic_string): one bulk copy;
//   * std::string, vector, array, deque, list, forward_list? (no), map, multimap,
//     unordered_map, set, multiset, unordered_set, optional, variant, monostate, tuple,
//     pair, chrono durations and time points, nested in any combination;
//   * user types with a cereal-style `serialize(Archive&)` (or save/load) member, or a
//     non-member `serialize(Archive&, T&)`: encoded through cereal, with mproc's own
//     encoding for the std members they contain (no cereal/types headers needed);
//   * library handles that carry file descriptors, through a `mproc::codec<T>`
//     specialization.
//
// Anything else is rejected at compile time with a message naming the problem and
// the fix: raw pointers, std::ref, std::function, capturing lambdas, string_view,
// span, smart pointers. Python discovers an unpicklable argument when the task runs;
// here it does not build.
//
// Limitation: a trivially copyable struct that holds a raw pointer among its
// members is memcpy'd like any other; C++20 cannot see inside it. Give such a type a
// serialize() member, which takes precedence over the memcpy path.
//
// The wire format is native-endian and not versioned: both ends are the same
// binary on the same machine (processes of one program), never storage.
#pragma once

#include "mproc/detail/config.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include <cereal/cereal.hpp>

#include "mproc/detail/huge_pages.hpp"
#include "mproc/detail/type_name.hpp"
#include "mproc/error.hpp"

namespace mproc {

/// Growable output buffer plus the file descriptors a message carries beside its
/// bytes. Not thread-safe; one Writer per message.
class Writer {
 public:
  Writer() = default;

  /// Appends n raw bytes.
  void write(const void* data, std::size_t n) {
    auto p = static_cast<const std::byte*>(data);
#if defined(__GNUC__) && !defined(__clang__)
    // GCC 12 reports a false -Wstringop-overflow / -Wnonnull inside vector::insert
    // when it inlines this through long template chains (GCC PR 107852 family); the
    // range is valid by construction.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstringop-overflow"
#pragma GCC diagnostic ignored "-Wnonnull"
#endif
    buf_.insert(buf_.end(), p, p + n);
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
  }

  /// Attaches a file descriptor (borrowed: the caller keeps it open until the
  /// message is sent) and returns its index in the message's fd list.
  std::uint32_t add_fd(int fd) {
    fds_.push_back(fd);
    return static_cast<std::uint32_t>(fds_.size() - 1);
  }

  /// Appends n bytes (zeroed) for the caller to fill in place; the span stays
  /// valid until the next call that adds bytes.
  std::span<std::byte> extend(std::size_t n) {
    std::size_t had = buf_.size();
    buf_.resize(had + n);
    return std::span<std::byte>(buf_).subspan(had);
  }
  /// Makes room for n bytes in all without reallocating.
  void reserve(std::size_t n) { buf_.reserve(n); }
  /// Drops the bytes past the first `n` (n <= size()).
  void truncate(std::size_t n) noexcept { buf_.resize(std::min(n, buf_.size())); }
  /// Drops the fds past the first `n` (n <= fds().size()): with truncate(), undoes
  /// an encoding that failed midway.
  void truncate_fds(std::size_t n) noexcept { fds_.resize(std::min(n, fds_.size())); }
  /// Overwrites bytes already written: [pos, pos + n) must lie inside size().
  void overwrite(std::size_t pos, const void* data, std::size_t n) noexcept {
    if (n != 0) std::memcpy(buf_.data() + pos, data, n);
  }

  std::span<const std::byte> bytes() const noexcept { return buf_; }
  std::span<const int> fds() const noexcept { return fds_; }
  std::vector<std::byte> take_bytes() && noexcept { return std::move(buf_); }
  std::size_t size() const noexcept { return buf_.size(); }
  void clear() noexcept {
    buf_.clear();
    fds_.clear();
  }

 private:
  std::vector<std::byte> buf_;
  std::vector<int> fds_;
};

/// Bounds-checked view over a received message. Every read past the end throws
/// SerializationError, so corrupt or truncated input never reads out of bounds.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> bytes, std::span<const int> fds = {}) noexcept
      : p_(bytes.data()), end_(bytes.data() + bytes.size()), fds_(fds) {}

  /// Copies n bytes out. Throws SerializationError when fewer remain.
  void read(void* dst, std::size_t n) {
    const std::byte* src = take(n);
    // n == 0 happens for empty vectors/strings, whose data() may be null; memcpy
    // with a null pointer is undefined even for 0 bytes (UBSan aborts on it).
    if (n != 0) std::memcpy(dst, src, n);
  }

  /// Returns a pointer to the next n bytes and skips them.
  const std::byte* take(std::size_t n) {
    if (n > remaining()) {
      throw SerializationError("mproc: message truncated: needed " + std::to_string(n) +
                               " more bytes, " + std::to_string(remaining()) + " left");
    }
    const std::byte* p = p_;
    p_ += n;
    return p;
  }

  std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - p_); }
  bool at_end() const noexcept { return p_ == end_; }

  /// How many file descriptors came with the message.
  std::size_t fd_count() const noexcept { return fds_.size(); }
  /// The file descriptor attached at index i (see Writer::add_fd).
  int fd(std::uint32_t i) const {
    if (i >= fds_.size()) throw SerializationError("mproc: message refers to a missing file descriptor");
    return fds_[i];
  }

 private:
  const std::byte* p_;
  const std::byte* end_;
  std::span<const int> fds_;
};

/// Customization point for types that need more than bytes (e.g. handles that
/// carry file descriptors). Specialize with
///   static void encode(Writer&, const T&);
///   static T decode(Reader&);
template <class T>
struct codec;

namespace detail {

template <class T, template <class...> class Tmpl>
inline constexpr bool is_specialization_v = false;
template <template <class...> class Tmpl, class... A>
inline constexpr bool is_specialization_v<Tmpl<A...>, Tmpl> = true;

template <class T> inline constexpr bool is_std_array_v = false;
template <class T, std::size_t N> inline constexpr bool is_std_array_v<std::array<T, N>> = true;

template <class T> inline constexpr bool is_duration_v = false;
template <class R, class P> inline constexpr bool is_duration_v<std::chrono::duration<R, P>> = true;
template <class T> inline constexpr bool is_time_point_v = false;
template <class C, class D> inline constexpr bool is_time_point_v<std::chrono::time_point<C, D>> = true;

template <class T> inline constexpr bool is_span_v = false;
template <class T, std::size_t N> inline constexpr bool is_span_v<std::span<T, N>> = true;

template <class T>
concept has_codec = requires(Writer& w, Reader& r, const T& v) {
  codec<T>::encode(w, v);
  { codec<T>::decode(r) } -> std::same_as<T>;
};

class CerealOut;
class CerealIn;

template <class T>
concept cereal_member = cereal::traits::has_member_serialize<T, CerealOut>::value ||
                        cereal::traits::has_member_versioned_serialize<T, CerealOut>::value ||
                        cereal::traits::has_member_save<T, CerealOut>::value ||
                        cereal::traits::has_member_versioned_save<T, CerealOut>::value ||
                        cereal::traits::has_non_member_serialize<T, CerealOut>::value ||
                        cereal::traits::has_non_member_versioned_serialize<T, CerealOut>::value;

enum class Kind {
  unsupported,
  custom,      // mproc::codec<T>
  bytes,       // memcpy
  empty,       // monostate and other empty types: nothing on the wire
  string,      // std::basic_string
  contiguous,  // std::vector (not of bool)
  array,       // std::array
  sequence,    // deque, list, vector<bool>
  set,         // set, multiset, unordered_set, unordered_multiset
  map,         // map, multimap, unordered_map, unordered_multimap
  optional,
  variant,
  tuple,  // tuple, pair
  cereal,
};

template <class T>
consteval Kind kind_of() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_reference_v<T> || std::is_pointer_v<U> || std::is_member_pointer_v<U> ||
                std::is_null_pointer_v<U> || std::is_array_v<U> || std::is_function_v<U>) {
    return Kind::unsupported;
  } else if constexpr (has_codec<U>) {
    return Kind::custom;
  } else if constexpr (std::is_arithmetic_v<U> || std::is_enum_v<U>) {
    return Kind::bytes;
  } else if constexpr (std::is_same_v<U, std::monostate>) {
    return Kind::empty;
  } else if constexpr (is_specialization_v<U, std::basic_string>) {
    return Kind::string;
  } else if constexpr (is_specialization_v<U, std::vector>) {
    return std::is_same_v<typename U::value_type, bool> ? Kind::sequence : Kind::contiguous;
  } else if constexpr (is_std_array_v<U>) {
    return Kind::array;
  } else if constexpr (is_specialization_v<U, std::deque> || is_specialization_v<U, std::list>) {
    return Kind::sequence;
  } else if constexpr (is_specialization_v<U, std::set> || is_specialization_v<U, std::multiset> ||
                       is_specialization_v<U, std::unordered_set> ||
                       is_specialization_v<U, std::unordered_multiset>) {
    return Kind::set;
  } else if constexpr (is_specialization_v<U, std::map> || is_specialization_v<U, std::multimap> ||
                       is_specialization_v<U, std::unordered_map> ||
                       is_specialization_v<U, std::unordered_multimap>) {
    return Kind::map;
  } else if constexpr (is_specialization_v<U, std::optional>) {
    return Kind::optional;
  } else if constexpr (is_specialization_v<U, std::variant>) {
    return Kind::variant;
  } else if constexpr (is_specialization_v<U, std::tuple> || is_specialization_v<U, std::pair>) {
    return Kind::tuple;
  } else if constexpr (is_duration_v<U> || is_time_point_v<U>) {
    return Kind::bytes;
  } else if constexpr (is_specialization_v<U, std::basic_string_view> || is_span_v<U> ||
                       is_specialization_v<U, std::reference_wrapper> ||
                       is_specialization_v<U, std::function> ||
                       is_specialization_v<U, std::unique_ptr> ||
                       is_specialization_v<U, std::shared_ptr> ||
                       is_specialization_v<U, std::weak_ptr>) {
    return Kind::unsupported;
  } else if constexpr (std::is_class_v<U> && cereal_member<U>) {
    return Kind::cereal;
  } else if constexpr (std::is_trivially_copyable_v<U> && std::is_empty_v<U>) {
    return Kind::empty;  // includes captureless lambdas: nothing to carry
  } else if constexpr (is_closure_type<U>()) {
    return Kind::unsupported;
  } else if constexpr (std::is_trivially_copyable_v<U> && std::is_class_v<U>) {
    return Kind::bytes;
  } else {
    return Kind::unsupported;
  }
}

template <class T>
struct serializable_impl;

template <class... T>
consteval bool all_serializable();

template <class T>
consteval bool deep_serializable() {
  using U = std::remove_cv_t<T>;
  constexpr Kind k = kind_of<U>();
  if constexpr (k == Kind::unsupported) {
    return false;
  } else if constexpr (k == Kind::contiguous || k == Kind::sequence || k == Kind::set ||
                       k == Kind::array) {
    return deep_serializable<typename U::value_type>();
  } else if constexpr (k == Kind::map) {
    return deep_serializable<typename U::key_type>() && deep_serializable<typename U::mapped_type>();
  } else if constexpr (k == Kind::optional) {
    return deep_serializable<typename U::value_type>();
  } else if constexpr (k == Kind::variant || k == Kind::tuple) {
    return serializable_impl<U>::value;
  } else {
    return true;
  }
}

template <class... T>
consteval bool all_serializable() {
  return (deep_serializable<T>() && ...);
}

template <template <class...> class Tmpl, class... A>
struct serializable_impl<Tmpl<A...>> {
  static constexpr bool value = all_serializable<A...>();
};

}  // namespace detail

/// Values of type T can be sent to another process by mproc.
template <class T>
concept Serializable = detail::deep_serializable<std::remove_cvref_t<T>>();

namespace detail {

/// Fires the static_assert that best explains why T cannot be sent. Walks into
/// containers so `std::vector<int*>` blames the pointer.
template <class T>
constexpr void diagnose() {
  using U = std::remove_cvref_t<T>;
  constexpr Kind k = kind_of<U>();
  if constexpr (deep_serializable<U>()) {
    // fine
  } else if constexpr (k == Kind::contiguous || k == Kind::sequence || k == Kind::set ||
                       k == Kind::array || k == Kind::optional) {
    diagnose<typename U::value_type>();
  } else if constexpr (k == Kind::map) {
    diagnose<typename U::key_type>();
    diagnose<typename U::mapped_type>();
  } else if constexpr (k == Kind::variant || k == Kind::tuple) {
    []<template <class...> class Tmpl, class... A>(std::type_identity<Tmpl<A...>>) {
      (diagnose<A>(), ...);
    }(std::type_identity<U>{});
  } else if constexpr (std::is_pointer_v<U> && std::is_function_v<std::remove_pointer_t<U>>) {
    static_assert(dependent_false<T>,
                  "mproc: a function pointer cannot be sent as a value. Pass the function as the "
                  "callable (Process(f, args...)) or wrap it: mproc::bind(f, args...).");
  } else if constexpr (std::is_pointer_v<U> || std::is_null_pointer_v<U> || std::is_array_v<U>) {
    static_assert(dependent_false<T>,
                  "mproc: a raw pointer cannot be sent to another process: its address means "
                  "nothing there. Send the value itself (e.g. std::string instead of const char*, "
                  "std::vector instead of T*), or share the data through mproc::SharedMemory.");
  } else if constexpr (std::is_member_pointer_v<U>) {
    static_assert(dependent_false<T>, "mproc: a pointer to member cannot be sent to another process.");
  } else if constexpr (is_specialization_v<U, std::reference_wrapper>) {
    static_assert(dependent_false<T>,
                  "mproc: std::ref/std::cref (a reference to a local) cannot be sent to another "
                  "process: the child gets its own copy of everything. Pass the value; to see "
                  "changes in the parent, use a shared Value/Array or return a result.");
  } else if constexpr (is_specialization_v<U, std::function>) {
    static_assert(dependent_false<T>,
                  "mproc: std::function cannot be sent to another process (it may hide captured "
                  "pointers). Use a function pointer, a captureless lambda, a functor type, or "
                  "mproc::bind(f, args...).");
  } else if constexpr (is_specialization_v<U, std::basic_string_view> || is_span_v<U>) {
    static_assert(dependent_false<T>,
                  "mproc: string_view/span do not own their data and cannot be sent to another "
                  "process. Send std::string / std::vector (a copy), or a SharedArray for zero copy.");
  } else if constexpr (is_specialization_v<U, std::unique_ptr> ||
                       is_specialization_v<U, std::shared_ptr> ||
                       is_specialization_v<U, std::weak_ptr>) {
    static_assert(dependent_false<T>,
                  "mproc: smart pointers cannot be sent to another process. Send the pointed-to "
                  "value.");
  } else if constexpr (is_closure_type<U>()) {
    static_assert(dependent_false<T>,
                  "mproc: a lambda that captures variables cannot be sent to another process: its "
                  "captures may be references into this process. Make it captureless and pass the "
                  "values as arguments, or use mproc::bind(lambda, values...).");
  } else {
    static_assert(dependent_false<T>,
                  "mproc: this type cannot be sent to another process. Make it trivially copyable, "
                  "give it a cereal-style `template <class Archive> void serialize(Archive&)` "
                  "member, or use standard containers of sendable types. The offending type is "
                  "named in the 'required from' lines of this error.");
  }
}

// ---------------------------------------------------------------------------
// cereal bridge: user types keep their cereal serialize(); the members they
// hand to the archive are encoded by mproc (std containers included).

class CerealOut : public cereal::OutputArchive<CerealOut, cereal::AllowEmptyClassElision> {
 public:
  explicit CerealOut(Writer& w) : OutputArchive(this), w_(w) {}
  void saveBinary(const void* data, std::size_t n) { w_.write(data, n); }
  Writer& writer() noexcept { return w_; }

 private:
  Writer& w_;
};

class CerealIn : public cereal::InputArchive<CerealIn, cereal::AllowEmptyClassElision> {
 public:
  explicit CerealIn(Reader& r) : InputArchive(this), r_(r) {}
  void loadBinary(void* data, std::size_t n) { r_.read(data, n); }
  Reader& reader() noexcept { return r_; }

 private:
  Reader& r_;
};

template <class T>
void encode(Writer& w, const T& v);
template <class T>
void decode_into(Reader& r, T& v);

}  // namespace detail

/// Serializes v onto w. Fails to compile, with an explanation, for types that
/// cannot cross a process boundary.
template <class T>
void dump(Writer& w, const T& v) {
  if constexpr (!Serializable<T>) {
    detail::diagnose<T>();
  } else {
    detail::encode(w, v);
  }
}

/// Deserializes a T from r. Throws SerializationError on truncated or corrupt input.
template <class T>
T load(Reader& r) {
  if constexpr (!Serializable<T>) {
    detail::diagnose<T>();
    return T{};
  } else {
    if constexpr (detail::kind_of<T>() == detail::Kind::custom) {
      return codec<T>::decode(r);
    } else if constexpr (detail::kind_of<T>() == detail::Kind::tuple) {
      // Built from its decoded elements (braced initialization runs left to right),
      // not default-constructed and then assigned: a default handle such as a Queue
      // or Lock would create a shared segment only to throw it away.
      return []<template <class...> class Tmpl, class... A>(std::type_identity<Tmpl<A...>>, Reader& rd) {
        return Tmpl<A...>{load<A>(rd)...};
      }(std::type_identity<std::remove_cv_t<T>>{}, r);
    } else {
      T v{};
      detail::decode_into(r, v);
      return v;
    }
  }
}

/// Convenience: serializes v into a fresh byte vector (no fds).
template <class T>
std::vector<std::byte> to_bytes(const T& v) {
  Writer w;
  dump(w, v);
  return std::move(w).take_bytes();
}

/// Convenience: deserializes a T that must use all of `bytes`.
template <class T>
T from_bytes(std::span<const std::byte> bytes) {
  Reader r(bytes);
  T v = load<T>(r);
  if (!r.at_end()) throw SerializationError("mproc: trailing bytes after the encoded value");
  return v;
}

namespace detail {

inline void write_size(Writer& w, std::size_t n) {
  auto v = static_cast<std::uint64_t>(n);
  w.write(&v, sizeof v);
}

/// Reads an element count and rejects counts the remaining bytes cannot hold,
/// so a corrupt length never triggers a huge allocation.
inline std::size_t read_size(Reader& r, std::size_t min_element_bytes) {
  std::uint64_t n;
  r.read(&n, sizeof n);
  std::size_t limit = min_element_bytes ? r.remaining() / min_element_bytes : (std::size_t{1} << 24);
  if (n > limit) {
    throw SerializationError("mproc: corrupt message: element count " + std::to_string(n) +
                             " exceeds what the remaining " + std::to_string(r.remaining()) +
                             " bytes can hold");
  }
  return static_cast<std::size_t>(n);
}

/// Smallest number of bytes one encoded T occupies (for read_size's sanity check).
template <class T>
consteval std::size_t min_wire_size() {
  constexpr Kind k = kind_of<T>();
  if constexpr (k == Kind::bytes) return sizeof(T);
  else if constexpr (k == Kind::empty || k == Kind::cereal || k == Kind::custom) return 0;
  // A tuple/pair is its elements back to back (was 0, which let a corrupt count
  // of vector<pair<...>> pass read_size and allocate up to 2^24 elements).
  else if constexpr (k == Kind::tuple)
    return []<template <class...> class Tmpl, class... A>(std::type_identity<Tmpl<A...>>) consteval {
      return (std::size_t{0} + ... + min_wire_size<A>());
    }(std::type_identity<T>{});
  else if constexpr (k == Kind::optional) return 1;
  else if constexpr (k == Kind::array) return min_wire_size<typename T::value_type>() * std::tuple_size_v<T>;
  else return 4;  // strings, containers, variants start with a count or index
}

template <class T>
void encode(Writer& w, const T& v) {
  using U = std::remove_cv_t<T>;
  constexpr Kind k = kind_of<U>();
  if constexpr (k == Kind::custom) {
    codec<U>::encode(w, v);
  } else if constexpr (k == Kind::bytes) {
    w.write(&v, sizeof v);
  } else if constexpr (k == Kind::empty) {
  } else if constexpr (k == Kind::string) {
    write_size(w, v.size());
    w.write(v.data(), v.size() * sizeof(typename U::value_type));
  } else if constexpr (k == Kind::contiguous || k == Kind::array) {
    using E = typename U::value_type;
    if constexpr (k == Kind::contiguous) write_size(w, v.size());
    if constexpr (kind_of<E>() == Kind::bytes) {
      w.write(v.data(), v.size() * sizeof(E));
    } else {
      for (const auto& e : v) encode(w, e);
    }
  } else if constexpr (k == Kind::sequence || k == Kind::set) {
    write_size(w, v.size());
    for (const auto& e : v) encode(w, static_cast<const typename U::value_type&>(e));
  } else if constexpr (k == Kind::map) {
    write_size(w, v.size());
    for (const auto& [key, val] : v) {
      encode(w, key);
      encode(w, val);
    }
  } else if constexpr (k == Kind::optional) {
    std::uint8_t has = v.has_value();
    w.write(&has, 1);
    if (has) encode(w, *v);
  } else if constexpr (k == Kind::variant) {
    auto idx = static_cast<std::uint32_t>(v.index());
    if (v.valueless_by_exception()) throw SerializationError("mproc: cannot send a valueless variant");
    w.write(&idx, sizeof idx);
    std::visit([&w](const auto& alt) { encode(w, alt); }, v);
  } else if constexpr (k == Kind::tuple) {
    std::apply([&w](const auto&... e) { (encode(w, e), ...); }, v);
  } else if constexpr (k == Kind::cereal) {
    CerealOut ar(w);
    ar(v);
  }
}

template <class V, std::size_t... I>
void decode_variant(Reader& r, V& v, std::uint32_t idx, std::index_sequence<I...>) {
  bool found = ((idx == I ? (v.template emplace<I>(), decode_into(r, std::get<I>(v)), true) : false) || ...);
  if (!found) throw SerializationError("mproc: corrupt message: variant index out of range");
}

template <class T>
void decode_into(Reader& r, T& v) {
  using U = std::remove_cv_t<T>;
  constexpr Kind k = kind_of<U>();
  if constexpr (k == Kind::custom) {
    v = codec<U>::decode(r);
  } else if constexpr (std::is_same_v<U, bool>) {
    // Only 0 and 1 are bools: loading any other byte as bool is undefined
    // (UBSan aborts on corrupt input otherwise). Same wire format as memcpy.
    std::uint8_t b;
    r.read(&b, 1);
    if (b > 1) throw SerializationError("mproc: corrupt message: bad bool");
    v = b != 0;
  } else if constexpr (k == Kind::bytes) {
    r.read(&v, sizeof v);
  } else if constexpr (k == Kind::empty) {
  } else if constexpr (k == Kind::string) {
    using E = typename U::value_type;
    std::size_t n = read_size(r, sizeof(E));
    v.resize(n);
    r.read(v.data(), n * sizeof(E));
  } else if constexpr (k == Kind::contiguous) {
    using E = typename U::value_type;
    std::size_t n = read_size(r, min_wire_size<E>());
    if constexpr (kind_of<E>() == Kind::bytes) {
      // A big fresh vector gets transparent huge pages before it is first touched
      // (its 4 KiB page faults were the largest cost of a 64 MiB message on a VM).
      if (v.empty()) {
        v.reserve(n);
        advise_huge_pages(v.data(), n * sizeof(E));
      }
      v.resize(n);
      r.read(v.data(), n * sizeof(E));
    } else if constexpr (min_wire_size<E>() == 0) {
      // read_size cannot bound n by the bytes left (user types may encode to
      // nothing), so grow as elements actually decode instead of allocating n
      // up front: a corrupt count then fails at the first missing element.
      v.clear();
      for (std::size_t i = 0; i < n; ++i) {
        decode_into(r, v.emplace_back());
      }
    } else {
      v.resize(n);
      for (auto& e : v) decode_into(r, e);
    }
  } else if constexpr (k == Kind::array) {
    using E = typename U::value_type;
    if constexpr (kind_of<E>() == Kind::bytes && !std::is_same_v<E, bool>) {  // bools are checked one by one
      r.read(v.data(), v.size() * sizeof(E));
    } else {
      for (auto& e : v) decode_into(r, e);
    }
  } else if constexpr (k == Kind::sequence) {
    using E = typename U::value_type;
    std::size_t n = read_size(r, min_wire_size<E>());
    v.clear();
    for (std::size_t i = 0; i < n; ++i) {
      E e{};
      decode_into(r, e);
      v.push_back(std::move(e));
    }
  } else if constexpr (k == Kind::set) {
    using E = typename U::value_type;
    std::size_t n = read_size(r, min_wire_size<E>());
    v.clear();
    for (std::size_t i = 0; i < n; ++i) {
      E e{};
      decode_into(r, e);
      v.insert(std::move(e));
    }
  } else if constexpr (k == Kind::map) {
    using K = typename U::key_type;
    using M = typename U::mapped_type;
    std::size_t n = read_size(r, min_wire_size<K>() + min_wire_size<M>());
    v.clear();
    for (std::size_t i = 0; i < n; ++i) {
      K key{};
      decode_into(r, key);
      M val{};
      decode_into(r, val);
      v.emplace(std::move(key), std::move(val));
    }
  } else if constexpr (k == Kind::optional) {
    std::uint8_t has;
    r.read(&has, 1);
    if (has > 1) throw SerializationError("mproc: corrupt message: bad optional flag");
    if (has) {
      v.emplace();
      decode_into(r, *v);
    } else {
      v.reset();
    }
  } else if constexpr (k == Kind::variant) {
    std::uint32_t idx;
    r.read(&idx, sizeof idx);
    decode_variant(r, v, idx, std::make_index_sequence<std::variant_size_v<U>>{});
  } else if constexpr (k == Kind::tuple) {
    std::apply([&r](auto&... e) { (decode_into(r, e), ...); }, v);
  } else if constexpr (k == Kind::cereal) {
    CerealIn ar(r);
    ar(v);
  }
}

// Everything mproc encodes natively is visible to cereal through these two
// overloads, so a user's serialize() can name std containers directly. They are
// constrained to non-cereal kinds, which keeps the lookup free of recursion.
// Enums are excluded: cereal.hpp (types/common.hpp) already gives every enum a
// save_minimal/load_minimal, and a second candidate made cereal reject any user
// type with an enum member ("more than one compatible serialization function").
// cereal's version sends the underlying integer, the same bytes as a memcpy.
template <class T>
  requires(kind_of<T>() != Kind::unsupported && kind_of<T>() != Kind::cereal && !std::is_enum_v<T>)
void CEREAL_SAVE_FUNCTION_NAME(CerealOut& ar, const T& v) {
  encode(ar.writer(), v);
}

template <class T>
  requires(kind_of<T>() != Kind::unsupported && kind_of<T>() != Kind::cereal && !std::is_enum_v<T>)
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, T& v) {
  decode_into(ar.reader(), v);
}

// A member that can never be sent (string_view, span, std::ref, std::function,
// smart pointer, capturing lambda, member pointer) named in a user's serialize():
// give cereal a candidate whose body is mproc's explanation, instead of cereal's
// "could not find any output serialization functions". Limited to these types so
// that types cereal handles on its own (non-member save/load, save_minimal) keep
// working as members. Raw pointers get their own overloads, more specialized than
// cereal's, whose message ("use a smart pointer") would be wrong advice here; C
// arrays are left to cereal, which sends them element by element.
template <class T>
consteval bool never_sendable() {
  if constexpr (kind_of<T>() != Kind::unsupported) {
    return false;
  } else {
    return is_specialization_v<T, std::basic_string_view> || is_span_v<T> ||
           is_specialization_v<T, std::reference_wrapper> || is_specialization_v<T, std::function> ||
           is_specialization_v<T, std::unique_ptr> || is_specialization_v<T, std::shared_ptr> ||
           is_specialization_v<T, std::weak_ptr> || std::is_member_pointer_v<T> ||
           std::is_null_pointer_v<T> || is_closure_type<T>();
  }
}
template <class T>
  requires(never_sendable<T>())
void CEREAL_SAVE_FUNCTION_NAME(CerealOut&, const T&) {
  diagnose<T>();
}
template <class T>
  requires(never_sendable<T>())
void CEREAL_LOAD_FUNCTION_NAME(CerealIn&, T&) {
  diagnose<T>();
}
template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(CerealOut&, T*&) {
  diagnose<T*>();
}
template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(CerealIn&, T*&) {
  diagnose<T*>();
}

// cereal wraps members in name-value pairs and size tags; a binary archive
// ignores the names.
template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(CerealOut& ar, cereal::NameValuePair<T>& t) {
  ar(t.value);
}
template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(CerealIn& ar, cereal::NameValuePair<T>& t) {
  ar(t.value);
}
template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(CerealOut& ar, cereal::SizeTag<T>& t) {
  ar(t.size);
}
template <class T>
void CEREAL_SERIALIZE_FUNCTION_NAME(CerealIn& ar, cereal::SizeTag<T>& t) {
  ar(t.size);
}
template <class T>
void CEREAL_SAVE_FUNCTION_NAME(CerealOut& ar, const cereal::BinaryData<T>& b) {
  ar.saveBinary(b.data, static_cast<std::size_t>(b.size));
}
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, cereal::BinaryData<T>& b) {
  ar.loadBinary(b.data, static_cast<std::size_t>(b.size));
}

}  // namespace detail
}  // namespace mproc

CEREAL_SETUP_ARCHIVE_TRAITS(mproc::detail::CerealIn, mproc::detail::CerealOut)
