// fuzz/serial_types.hpp — the types fuzz_serial decodes, one per kind of the serializer
// (include/mproc/serial.hpp), shared with make_corpus.cpp, which writes a real encoding
// of each as a seed. An input's first byte picks the type (modulo the list's length);
// the rest is the message.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "mproc/detail/code_ref.hpp"
#include "mproc/detail/exception.hpp"
#include "mproc/serial.hpp"

namespace fuzz {

enum class Color : std::uint8_t { red, green, blue };

struct Plain {  // trivially copyable: memcpy'd (no padding, so its bytes are its value)
  std::int32_t a;
  std::int32_t b;
  double c;
  char d[8];
  bool operator==(const Plain&) const = default;
};

// A cereal user type whose members are std containers (mproc's encoding inside cereal).
struct Record {
  std::string name;
  std::vector<std::int32_t> values;
  std::map<std::string, std::optional<double>> attrs;
  Color color = Color::red;
  template <class A>
  void serialize(A& ar) {
    ar(name, values, attrs, color);
  }
};

// Split save/load.
struct Versioned {
  std::uint16_t tag = 0;
  std::variant<std::int64_t, std::string> body;
  template <class A>
  void save(A& ar) const {
    ar(tag, body);
  }
  template <class A>
  void load(A& ar) {
    ar(tag, body);
  }
};

// A user type holding user types.
struct Nested {
  std::vector<Record> records;
  std::optional<Versioned> extra;
  template <class A>
  void serialize(A& ar) {
    ar(records, extra);
  }
};

template <class... T>
struct TypeList {
  static constexpr std::size_t size = sizeof...(T);
};

// Append only (the corpus files are named by index; a new type gets the next one).
using SerialTypes = TypeList<
    // scalars
    bool, char, std::int8_t, std::uint16_t, std::int32_t, std::uint64_t, float, double, Color,
    std::chrono::nanoseconds, std::chrono::steady_clock::time_point, Plain, std::monostate,
    // strings
    std::string, std::u16string, std::u32string,
    // contiguous, arrays, sequences
    std::vector<std::int32_t>, std::vector<double>, std::vector<bool>, std::vector<std::string>,
    std::vector<std::vector<std::uint8_t>>, std::vector<Plain>, std::array<std::int16_t, 5>,
    std::array<bool, 3>, std::array<std::string, 2>, std::deque<std::int32_t>, std::list<std::string>,
    std::vector<std::pair<std::int32_t, std::string>>,
    // sets and maps
    std::set<std::int32_t>, std::multiset<std::string>, std::unordered_set<std::uint64_t>,
    std::map<std::string, std::int32_t>, std::multimap<std::int32_t, std::vector<std::int32_t>>,
    std::unordered_map<std::int32_t, std::string>, std::map<std::int32_t, std::map<std::int32_t, bool>>,
    // optionals, variants, tuples
    std::optional<std::int32_t>, std::optional<std::string>, std::optional<std::optional<bool>>,
    std::variant<std::int32_t, std::string, std::vector<std::int32_t>>, std::variant<std::monostate, double>,
    std::tuple<std::int32_t, std::string, bool>, std::pair<std::string, std::optional<std::int32_t>>,
    std::tuple<>, std::vector<std::variant<bool, std::string>>,
    // cereal user types
    Record, Versioned, Nested, std::vector<Record>,
    // what mproc itself sends: a child's exception, a code reference (task entry)
    mproc::detail::ExceptionInfo, mproc::detail::CodeRef>;

/// Calls f.template operator()<T>() for the i-th type of L (i < L::size).
template <class... T, class F>
void with_type(TypeList<T...>, std::size_t i, F&& f) {
  std::size_t k = 0;
  (void)((k++ == i ? (f.template operator()<T>(), true) : false) || ...);
}

}  // namespace fuzz
