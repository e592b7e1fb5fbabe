// Tests for the serialization layer (mproc/serial.hpp) and for how callables and
// their bound values travel (mproc/task.hpp): round trips of every supported
// kind, the wire-format facts other code relies on (memcpy fast paths, no count
// for std::array), robustness against truncated and corrupt input (these run
// under ASan/UBSan in CI), and the compile-time Serializable / SendableCallable
// concepts. What must NOT compile lives in tests/compile_fail/.
#include <gtest/gtest.h>

#include <mproc/serial.hpp>
#include <mproc/task.hpp>

#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

using mproc::Reader;
using mproc::SerializationError;
using mproc::Writer;
using Bytes = std::vector<std::byte>;

// ---------------------------------------------------------------------------
// Test types

namespace serial_test {

enum class Color : std::uint8_t { red = 1, green = 2, blue = 200 };
enum Plain { plain_a, plain_b, plain_c };  // unscoped, no fixed underlying type
enum Wide : std::int64_t { wide_lo = std::numeric_limits<std::int64_t>::min(), wide_hi = 7 };

// Trivially copyable: takes the memcpy path.
struct Pod {
  int a;
  double b;
  char tag[6];
  Color c;
  friend bool operator==(const Pod&, const Pod&) = default;
};

// cereal-style member serialize.
struct MemberSer {
  int id = 0;
  std::string name;
  std::vector<double> xs;
  template <class A>
  void serialize(A& ar) {
    ar(id, name, xs);
  }
  friend bool operator==(const MemberSer&, const MemberSer&) = default;
};

// Member save/load pair. save() writes a derived form that load() must undo, so
// a round trip proves both ran (a memcpy or a serialize() could not produce it).
struct SaveLoad {
  std::string text;
  int n = 0;
  template <class A>
  void save(A& ar) const {
    std::string reversed(text.rbegin(), text.rend());
    ar(reversed, n + 1000);
  }
  template <class A>
  void load(A& ar) {
    std::string reversed;
    int m = 0;
    ar(reversed, m);
    text.assign(reversed.rbegin(), reversed.rend());
    n = m - 1000;
  }
  friend bool operator==(const SaveLoad&, const SaveLoad&) = default;
};

// Non-member serialize found by ADL.
struct NonMember {
  std::string key;
  std::map<std::string, int> counts;
  friend bool operator==(const NonMember&, const NonMember&) = default;
};
template <class A>
void serialize(A& ar, NonMember& v) {
  ar(v.key, v.counts);
}

// Private serialize, reachable through cereal::access only.
class Private {
 public:
  Private() = default;
  Private(int x, std::string s) : x_(x), s_(std::move(s)) {}
  int x() const { return x_; }
  const std::string& s() const { return s_; }
  friend bool operator==(const Private&, const Private&) = default;

 private:
  friend class cereal::access;
  template <class A>
  void serialize(A& ar) {
    ar(x_, s_);
  }
  int x_ = 0;
  std::string s_;
};

// User type holding std containers and other user types.
struct Composite {
  MemberSer head;
  std::vector<NonMember> items;
  std::map<std::string, Private> by_name;
  std::optional<SaveLoad> extra;
  std::variant<std::monostate, int, std::string> tag;
  std::array<Pod, 2> pods{};
  std::deque<std::vector<bool>> flags;
  template <class A>
  void serialize(A& ar) {
    ar(head, items, by_name, extra, tag, pods, flags);
  }
  friend bool operator==(const Composite&, const Composite&) = default;
};

// Trivially copyable AND has serialize(): serialize() must win. It deliberately
// leaves `unsent` out, so a round trip returns it default-initialized.
struct TrivialWithSerialize {
  int sent = 0;
  int unsent = 0;
  template <class A>
  void serialize(A& ar) {
    ar(sent);
  }
};

// cereal idioms: name-value pairs, binary_data, size tags, class versions, base classes.
struct Idioms {
  int a = 0;
  std::array<std::uint16_t, 4> raw{};
  std::string s;
  std::uint32_t seen_version = 0;
  template <class A>
  void serialize(A& ar, std::uint32_t const version) {
    seen_version = version;
    ar(CEREAL_NVP(a), cereal::make_nvp("s", s));
    ar(cereal::binary_data(raw.data(), sizeof raw));
  }
};

// C array members go through cereal's own array support.
struct WithCArrays {
  int nums[3] = {0, 0, 0};
  std::string names[2];
  template <class A>
  void serialize(A& ar) {
    ar(nums, names);
  }
};

struct Base {
  int x = 0;
  std::string label;
  template <class A>
  void serialize(A& ar) {
    ar(x, label);
  }
};
struct Derived : Base {
  std::vector<int> more;
  template <class A>
  void serialize(A& ar) {
    ar(cereal::base_class<Base>(this), more);
  }
};

// A cereal type with enum members (cereal's own enum handling must not collide
// with mproc's).
struct WithEnums {
  Color c = Color::red;
  Plain p = plain_a;
  Wide w = wide_hi;
  std::vector<Color> cs;
  template <class A>
  void serialize(A& ar) {
    ar(c, p, w, cs);
  }
  friend bool operator==(const WithEnums&, const WithEnums&) = default;
};

// Only enums with a fixed underlying type: every byte pattern is a valid value,
// so corrupt input cannot produce an invalid enum (see RandomMutations).
struct FixedEnums {
  Color c = Color::red;
  Wide w = wide_hi;
  std::vector<Color> cs;
  template <class A>
  void serialize(A& ar) {
    ar(c, w, cs);
  }
};

// A functor with state declared through serialize(): a sendable callable.
struct Scale {
  int factor = 1;
  int operator()(int v) const { return v * factor; }
  template <class A>
  void serialize(A& ar) {
    ar(factor);
  }
};

// A functor with state and no serialize(): not sendable.
struct Stateful {
  int* sink = nullptr;
  void operator()() const {}
};

struct EmptyFunctor {
  int operator()(int v) const { return v + 1; }
};

struct NotSendableStruct {
  std::string s;  // not trivially copyable, no serialize()
};

// Allocator that remembers the largest single request, to prove that a corrupt
// element count is rejected before any big allocation.
inline std::size_t g_largest_alloc = 0;
template <class T>
struct TrackingAlloc {
  using value_type = T;
  TrackingAlloc() = default;
  template <class U>
  TrackingAlloc(const TrackingAlloc<U>&) noexcept {}
  T* allocate(std::size_t n) {
    g_largest_alloc = std::max(g_largest_alloc, n * sizeof(T));
    return std::allocator<T>{}.allocate(n);
  }
  void deallocate(T* p, std::size_t n) noexcept { std::allocator<T>{}.deallocate(p, n); }
  template <class U>
  friend bool operator==(const TrackingAlloc&, const TrackingAlloc<U>&) noexcept {
    return true;
  }
};

}  // namespace serial_test

CEREAL_CLASS_VERSION(serial_test::Idioms, 3)

using namespace serial_test;

namespace {

// ---------------------------------------------------------------------------
// Helpers

/// Round trip through to_bytes/from_bytes.
template <class T>
T via_bytes(const T& v) {
  Bytes b = mproc::to_bytes(v);
  return mproc::from_bytes<T>(b);
}

/// Round trip through Writer/Reader + dump/load, with a value before and after
/// it in the same message, so a decoder that reads too much or too little shows.
template <class T>
T via_stream(const T& v) {
  Writer w;
  mproc::dump(w, std::uint32_t{0xA5A5A5A5});
  mproc::dump(w, v);
  mproc::dump(w, std::string("after"));
  Reader r(w.bytes());
  EXPECT_EQ(mproc::load<std::uint32_t>(r), 0xA5A5A5A5u);
  T out = mproc::load<T>(r);
  EXPECT_EQ(mproc::load<std::string>(r), "after");
  EXPECT_TRUE(r.at_end());
  return out;
}

/// Both round trips must give back a value equal to v.
template <class T>
void expect_round_trip(const T& v) {
  EXPECT_EQ(via_bytes(v), v);
  EXPECT_EQ(via_stream(v), v);
}

/// Writes a raw u64 (element counts are u64 on the wire).
void put_u64(Bytes& b, std::uint64_t v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  b.insert(b.end(), p, p + sizeof v);
}
void put_u32(Bytes& b, std::uint32_t v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  b.insert(b.end(), p, p + sizeof v);
}

using Deep = std::map<std::string, std::vector<std::optional<std::variant<int, std::string, MemberSer>>>>;

Deep make_deep() {
  Deep d;
  d["empty"] = {};
  d["mixed"] = {std::nullopt, 42, std::string("forty-two"), MemberSer{7, "seven", {7.5, -0.0}}, std::nullopt};
  d[""] = {std::string(), 0, MemberSer{}};
  d["many"].resize(50);
  for (int i = 0; i < 50; ++i) {
    if (i % 3 == 0) d["many"][i] = i;
    if (i % 3 == 1) d["many"][i] = std::string(static_cast<std::size_t>(i), 'x');
  }
  return d;
}

Composite make_composite() {
  Composite c;
  c.head = MemberSer{1, "head", {1.0, 2.0, 3.0}};
  c.items = {NonMember{"k1", {{"a", 1}, {"b", 2}}}, NonMember{"", {}}, NonMember{"k3", {{"", -1}}}};
  c.by_name = {{"p", Private(5, "five")}, {"q", Private(-6, std::string("si\0x", 4))}};
  c.extra = SaveLoad{"abc", 9};
  c.tag = std::string("tagged");
  c.pods = {Pod{1, 1.5, "pod1", Color::green}, Pod{2, -2.5, "pod2", Color::blue}};
  c.flags = {{}, {true}, {true, false, true, true, false, false, true, false, true}};
  return c;
}

// ---------------------------------------------------------------------------
// Arithmetic types

template <class T>
class SerialArithmetic : public ::testing::Test {};
using ArithmeticTypes =
    ::testing::Types<bool, char, signed char, unsigned char, wchar_t, char8_t, char16_t, char32_t,
                     short, unsigned short, int, unsigned, long, unsigned long, long long,
                     unsigned long long, float, double, long double>;
TYPED_TEST_SUITE(SerialArithmetic, ArithmeticTypes);

TYPED_TEST(SerialArithmetic, Extremes) {
  using T = TypeParam;
  using L = std::numeric_limits<T>;
  for (T v : {T{}, L::min(), L::max(), L::lowest(), static_cast<T>(1)}) {
    EXPECT_EQ(via_bytes(v), v);
    EXPECT_EQ(via_stream(v), v);
    // Native bytes, nothing else (except long double's padding, which is part of sizeof).
    EXPECT_EQ(mproc::to_bytes(v).size(), sizeof(T));
  }
  if constexpr (std::is_floating_point_v<T>) {
    for (T v : {L::infinity(), -L::infinity(), L::denorm_min(), L::epsilon(), static_cast<T>(-1.25)}) {
      EXPECT_EQ(via_bytes(v), v);
      EXPECT_EQ(via_stream(v), v);
    }
    T nz = via_bytes(static_cast<T>(-0.0));
    EXPECT_EQ(nz, T{0});
    EXPECT_TRUE(std::signbit(nz));
    EXPECT_TRUE(std::isnan(via_bytes(L::quiet_NaN())));
    EXPECT_TRUE(std::isnan(via_stream(-L::quiet_NaN())));
    // A NaN payload survives bit-exactly (the wire is a memcpy).
    if constexpr (std::is_same_v<T, double>) {
      std::uint64_t bits = 0x7ff8'0000'dead'beefull;
      double payload;
      std::memcpy(&payload, &bits, sizeof bits);
      double back = via_bytes(payload);
      std::uint64_t back_bits;
      std::memcpy(&back_bits, &back, sizeof back);
      EXPECT_EQ(back_bits, bits);
    }
  }
}

TEST(SerialScalars, Enums) {
  expect_round_trip(Color::red);
  expect_round_trip(Color::blue);
  expect_round_trip(static_cast<Color>(255));  // any value of the underlying type
  expect_round_trip(plain_c);
  expect_round_trip(wide_lo);
  expect_round_trip(wide_hi);
  EXPECT_EQ(mproc::to_bytes(Color::green).size(), 1u);
  EXPECT_EQ(mproc::to_bytes(wide_lo).size(), 8u);
}

TEST(SerialScalars, Byte) {
  for (int i : {0, 1, 0x7f, 0x80, 0xff}) expect_round_trip(static_cast<std::byte>(i));
  expect_round_trip(std::vector<std::byte>{std::byte{0}, std::byte{0xff}, std::byte{0x10}});
}

TEST(SerialScalars, WireIsNativeMemcpy) {
  std::int32_t v = 0x01020304;
  Bytes b = mproc::to_bytes(v);
  ASSERT_EQ(b.size(), 4u);
  EXPECT_EQ(std::memcmp(b.data(), &v, 4), 0);
}

// ---------------------------------------------------------------------------
// Strings

TEST(SerialStrings, Basic) {
  expect_round_trip(std::string());
  expect_round_trip(std::string("hello"));
  std::string nuls("a\0b\0\0c\0", 7);
  ASSERT_EQ(nuls.size(), 7u);
  EXPECT_EQ(via_bytes(nuls).size(), 7u);
  expect_round_trip(nuls);
  expect_round_trip(std::string(1, '\0'));
  // count (u64) + the characters
  EXPECT_EQ(mproc::to_bytes(std::string("hello")).size(), 8u + 5u);
  EXPECT_EQ(mproc::to_bytes(std::string()).size(), 8u);
}

TEST(SerialStrings, OneMebibyte) {
  std::string big(1 << 20, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 131) ^ (i >> 7));
  Bytes b = mproc::to_bytes(big);
  EXPECT_EQ(b.size(), 8u + big.size());
  EXPECT_EQ(mproc::from_bytes<std::string>(b), big);
  EXPECT_EQ(via_stream(big), big);
}

TEST(SerialStrings, WideCharacters) {
  std::u16string u16 = u"h\u00e9llo \u4e16\u754c";
  u16.push_back(u'\0');
  u16.push_back(u'\xffff');
  expect_round_trip(u16);
  EXPECT_EQ(mproc::to_bytes(u16).size(), 8u + u16.size() * 2);
  expect_round_trip(std::u16string());
  expect_round_trip(std::u32string(U"\U0001F600 smile"));
  expect_round_trip(std::wstring(L"wide"));
  // (compared with == : the system gtest cannot print u8string in C++20 builds)
  std::u8string u8(u8"utf8 \u00e9");
  EXPECT_TRUE(via_bytes(u8) == u8);
  EXPECT_TRUE(via_stream(u8) == u8);
}

// ---------------------------------------------------------------------------
// Sequences

TEST(SerialSequences, VectorOfIntUsesMemcpyFastPath) {
  for (std::size_t n : {0u, 1u, 3u, 1000u}) {
    std::vector<int> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<int>(i * 7919) - 5000;
    Bytes b = mproc::to_bytes(v);
    EXPECT_EQ(b.size(), 8 + n * 4) << "vector<int> must be a count plus one bulk copy";
    if (n) {
      EXPECT_EQ(std::memcmp(b.data() + 8, v.data(), n * 4), 0);
    }
    expect_round_trip(v);
  }
}

TEST(SerialSequences, VectorOfPodUsesMemcpyFastPath) {
  std::vector<Pod> v{Pod{1, 2.0, "a", Color::red}, Pod{3, 4.0, "bcdef", Color::blue}};
  static_assert(mproc::detail::kind_of<Pod>() == mproc::detail::Kind::bytes);
  EXPECT_EQ(mproc::to_bytes(v).size(), 8 + v.size() * sizeof(Pod));
  expect_round_trip(v);
  expect_round_trip(std::vector<double>{});
  expect_round_trip(std::vector<double>{0.5, -1e300, 1e-300});
}

TEST(SerialSequences, VectorOfStringsAndVectors) {
  expect_round_trip(std::vector<std::string>{});
  expect_round_trip(std::vector<std::string>{"", "a", std::string("\0\0", 2), std::string(1000, 'z')});
  expect_round_trip(std::vector<std::vector<int>>{{}, {1}, {2, 3}, {}, {4, 5, 6}});
  expect_round_trip(std::vector<std::vector<std::vector<std::string>>>{{{"a"}, {}}, {}, {{"b", "c"}}});
}

TEST(SerialSequences, VectorOfBool) {
  for (std::size_t n : {0u, 1u, 7u, 8u, 9u, 64u, 65u, 1000u}) {
    std::vector<bool> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = (i * i + 3 * i) % 5 < 2;
    expect_round_trip(v);
  }
  expect_round_trip(std::vector<std::vector<bool>>{{true}, {}, {false, true}});
}

TEST(SerialSequences, StdArray) {
  std::array<int, 5> ai{1, -2, 3, std::numeric_limits<int>::max(), std::numeric_limits<int>::min()};
  expect_round_trip(ai);
  EXPECT_EQ(mproc::to_bytes(ai).size(), 5 * sizeof(int)) << "std::array carries no count";
  std::array<std::string, 3> as{"x", "", std::string(300, 'y')};
  expect_round_trip(as);
  expect_round_trip(std::array<int, 0>{});
  EXPECT_EQ(mproc::to_bytes(std::array<int, 0>{}).size(), 0u);
  expect_round_trip(std::array<bool, 3>{true, false, true});
  expect_round_trip(std::array<std::array<double, 2>, 2>{{{1.0, 2.0}, {3.0, 4.0}}});
  expect_round_trip(std::array<std::vector<int>, 2>{{{1, 2}, {}}});
}

TEST(SerialSequences, DequeAndList) {
  expect_round_trip(std::deque<int>{});
  expect_round_trip(std::deque<int>{5, 4, 3, 2, 1});
  expect_round_trip(std::deque<std::string>{"a", "", "c"});
  expect_round_trip(std::list<std::string>{"first", "", "third"});
  expect_round_trip(std::list<std::list<int>>{{1}, {}, {2, 3}});
  std::deque<int> big;
  for (int i = 0; i < 5000; ++i) big.push_back(i * 3);
  expect_round_trip(big);
}

// ---------------------------------------------------------------------------
// Associative containers

TEST(SerialAssociative, Maps) {
  expect_round_trip(std::map<std::string, int>{});
  expect_round_trip(std::map<std::string, int>{{"", 0}, {"one", 1}, {"two", 2}});
  expect_round_trip(std::map<int, std::vector<std::string>>{{-1, {}}, {5, {"a", "b"}}});
  // multimap keeps every entry and the insertion order of equal keys.
  std::multimap<int, std::string> mm{{1, "a"}, {1, "b"}, {0, "z"}, {1, "c"}, {2, "d"}};
  auto back = via_bytes(mm);
  EXPECT_EQ(back, mm);
  std::vector<std::string> ones;
  for (auto [it, end] = back.equal_range(1); it != end; ++it) ones.push_back(it->second);
  EXPECT_EQ(ones, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(via_stream(mm), mm);
  std::unordered_map<std::string, std::vector<int>> um;
  for (int i = 0; i < 200; ++i) um["k" + std::to_string(i)] = std::vector<int>(static_cast<std::size_t>(i % 5), i);
  expect_round_trip(um);
  expect_round_trip(std::unordered_multimap<int, int>{{1, 1}, {1, 2}, {3, 3}});
}

TEST(SerialAssociative, Sets) {
  expect_round_trip(std::set<int>{});
  expect_round_trip(std::set<int>{3, 1, 2, -100});
  expect_round_trip(std::set<std::string>{"b", "a", ""});
  std::multiset<std::string> ms{"x", "x", "y", "x", ""};
  auto back = via_bytes(ms);
  EXPECT_EQ(back.count("x"), 3u);
  EXPECT_EQ(back, ms);
  std::unordered_set<int> us;
  for (int i = 0; i < 300; ++i) us.insert(i * 17);
  expect_round_trip(us);
  expect_round_trip(std::unordered_multiset<std::string>{"a", "a", "b"});
  expect_round_trip(std::set<std::vector<int>>{{}, {1}, {1, 2}});
}

// ---------------------------------------------------------------------------
// optional, variant, tuple, pair

TEST(SerialSumProduct, Optional) {
  expect_round_trip(std::optional<int>{});
  expect_round_trip(std::optional<int>{0});
  expect_round_trip(std::optional<int>{-7});
  expect_round_trip(std::optional<std::string>{});
  expect_round_trip(std::optional<std::string>{""});
  expect_round_trip(std::optional<std::string>{"set"});
  EXPECT_EQ(mproc::to_bytes(std::optional<int>{}).size(), 1u);
  EXPECT_EQ(mproc::to_bytes(std::optional<int>{1}).size(), 5u);
  // Nested: the three states stay distinct.
  using OO = std::optional<std::optional<int>>;
  OO none;
  OO some_none{std::optional<int>{}};
  OO some_some{std::optional<int>{5}};
  EXPECT_FALSE(via_bytes(none).has_value());
  ASSERT_TRUE(via_bytes(some_none).has_value());
  EXPECT_FALSE(via_bytes(some_none)->has_value());
  EXPECT_EQ(via_bytes(some_some), some_some);
  expect_round_trip(std::optional<std::vector<std::optional<std::string>>>{{std::nullopt, "a", ""}});
}

TEST(SerialSumProduct, VariantEachAlternative) {
  using V = std::variant<std::monostate, int, std::string, std::vector<int>, MemberSer, double>;
  std::vector<V> alts{V{}, V{42}, V{std::string("str")}, V{std::vector<int>{1, 2}},
                      V{MemberSer{3, "m", {0.5}}}, V{2.5}};
  for (std::size_t i = 0; i < alts.size(); ++i) {
    ASSERT_EQ(alts[i].index(), i);
    V back = via_bytes(alts[i]);
    EXPECT_EQ(back.index(), i);
    EXPECT_EQ(back, alts[i]);
    EXPECT_EQ(via_stream(alts[i]), alts[i]);
  }
  // index (u32) + payload; monostate has no payload.
  EXPECT_EQ(mproc::to_bytes(V{}).size(), 4u);
  EXPECT_EQ(mproc::to_bytes(V{42}).size(), 8u);
  // Repeated alternative types: the index, not the type, is what travels.
  using Twin = std::variant<int, int>;
  Twin second(std::in_place_index<1>, 9);
  Twin back = via_bytes(second);
  EXPECT_EQ(back.index(), 1u);
  EXPECT_EQ(std::get<1>(back), 9);
  expect_round_trip(std::variant<std::monostate>{});
  expect_round_trip(std::monostate{});
}

TEST(SerialSumProduct, TupleAndPair) {
  expect_round_trip(std::tuple<>{});
  EXPECT_EQ(mproc::to_bytes(std::tuple<>{}).size(), 0u);
  expect_round_trip(std::tuple<int, std::string, double, std::vector<int>>{1, "two", 3.0, {4}});
  expect_round_trip(std::pair<std::string, int>{"p", 1});
  expect_round_trip(std::pair<std::pair<int, int>, std::tuple<std::string>>{{1, 2}, {"x"}});
  expect_round_trip(std::tuple<std::optional<int>, std::variant<int, std::string>, std::set<int>>{
      std::nullopt, std::string("v"), {1, 2}});
  // Tuples have no framing: exactly their elements.
  EXPECT_EQ((mproc::to_bytes(std::tuple<std::int32_t, std::int8_t>{1, 2}).size()), 5u);
  expect_round_trip(std::vector<std::pair<int, std::string>>{{1, "a"}, {2, ""}});
}

// ---------------------------------------------------------------------------
// chrono

TEST(SerialChrono, Durations) {
  using namespace std::chrono;
  expect_round_trip(nanoseconds{123456789});
  expect_round_trip(nanoseconds::max());
  expect_round_trip(nanoseconds::min());
  expect_round_trip(seconds{-5});
  expect_round_trip(hours{24});
  expect_round_trip(duration<double, std::milli>{1.5});
  expect_round_trip(duration<std::int8_t, std::ratio<60>>{-3});
  expect_round_trip(std::vector<milliseconds>{milliseconds{1}, milliseconds{-2}});
  EXPECT_EQ(mproc::to_bytes(seconds{1}).size(), sizeof(seconds));
}

TEST(SerialChrono, TimePoints) {
  using namespace std::chrono;
  expect_round_trip(system_clock::now());
  expect_round_trip(steady_clock::now());
  expect_round_trip(time_point<system_clock, seconds>{seconds{1700000000}});
  expect_round_trip(system_clock::time_point::min());
  expect_round_trip(std::optional<steady_clock::time_point>{steady_clock::now()});
}

// ---------------------------------------------------------------------------
// Trivially copyable structs and user types

TEST(SerialUserTypes, TriviallyCopyableStructIsMemcpy) {
  Pod p{-1, 3.25, "hi", Color::blue};
  Bytes b = mproc::to_bytes(p);
  EXPECT_EQ(b.size(), sizeof(Pod));
  expect_round_trip(p);
  expect_round_trip(std::map<int, Pod>{{1, p}});
}

TEST(SerialUserTypes, MemberSerialize) {
  static_assert(mproc::detail::kind_of<MemberSer>() == mproc::detail::Kind::cereal);
  expect_round_trip(MemberSer{});
  expect_round_trip(MemberSer{42, "name", {1.0, -2.0}});
  // Members are encoded by mproc: int + (count + chars) + (count + bulk doubles).
  EXPECT_EQ(mproc::to_bytes(MemberSer{1, "ab", {1.0}}).size(), 4u + (8u + 2u) + (8u + 8u));
}

TEST(SerialUserTypes, MemberSaveLoad) {
  static_assert(mproc::detail::kind_of<SaveLoad>() == mproc::detail::Kind::cereal);
  expect_round_trip(SaveLoad{"forward", 5});
  expect_round_trip(SaveLoad{});
  // save() really ran: the wire holds the reversed text and n + 1000.
  Bytes b = mproc::to_bytes(SaveLoad{"abc", 1});
  Reader r(b);
  EXPECT_EQ(mproc::load<std::string>(r), "cba");
  EXPECT_EQ(mproc::load<int>(r), 1001);
  EXPECT_TRUE(r.at_end());
}

TEST(SerialUserTypes, NonMemberSerialize) {
  static_assert(mproc::detail::kind_of<NonMember>() == mproc::detail::Kind::cereal);
  expect_round_trip(NonMember{"k", {{"a", 1}, {"b", -2}}});
  expect_round_trip(NonMember{});
}

TEST(SerialUserTypes, PrivateSerializeThroughCerealAccess) {
  static_assert(mproc::detail::kind_of<Private>() == mproc::detail::Kind::cereal);
  Private p(17, "private");
  Private back = via_bytes(p);
  EXPECT_EQ(back.x(), 17);
  EXPECT_EQ(back.s(), "private");
  EXPECT_EQ(via_stream(p), p);
}

TEST(SerialUserTypes, NestedUserTypesAndContainers) {
  Composite c = make_composite();
  expect_round_trip(c);
  expect_round_trip(Composite{});
  expect_round_trip(std::vector<Composite>{c, Composite{}, c});
  expect_round_trip(std::map<std::string, std::vector<NonMember>>{{"x", c.items}});
  expect_round_trip(std::optional<Private>{Private(1, "o")});
}

TEST(SerialUserTypes, SerializeWinsOverMemcpy) {
  static_assert(std::is_trivially_copyable_v<TrivialWithSerialize>);
  static_assert(mproc::detail::kind_of<TrivialWithSerialize>() == mproc::detail::Kind::cereal);
  TrivialWithSerialize v{11, 22};
  Bytes b = mproc::to_bytes(v);
  EXPECT_EQ(b.size(), sizeof(int)) << "only the field serialize() sends may be on the wire";
  auto back = mproc::from_bytes<TrivialWithSerialize>(b);
  EXPECT_EQ(back.sent, 11);
  EXPECT_EQ(back.unsent, 0) << "a field serialize() leaves out must come back default";
  // Also inside containers, where the memcpy fast path would otherwise apply.
  std::vector<TrivialWithSerialize> vs{{1, 2}, {3, 4}};
  Bytes vb = mproc::to_bytes(vs);
  EXPECT_EQ(vb.size(), 8u + 2 * sizeof(int));
  auto vback = mproc::from_bytes<std::vector<TrivialWithSerialize>>(vb);
  ASSERT_EQ(vback.size(), 2u);
  EXPECT_EQ(vback[1].sent, 3);
  EXPECT_EQ(vback[1].unsent, 0);
  std::array<TrivialWithSerialize, 2> as{{{5, 6}, {7, 8}}};
  auto aback = mproc::from_bytes<std::array<TrivialWithSerialize, 2>>(mproc::to_bytes(as));
  EXPECT_EQ(aback[0].sent, 5);
  EXPECT_EQ(aback[0].unsent, 0);
}

TEST(SerialUserTypes, CerealIdioms) {
  Idioms v;
  v.a = 3;
  v.raw = {1, 2, 3, 0xffff};
  v.s = "nvp";
  Idioms back = via_bytes(v);
  EXPECT_EQ(back.a, 3);
  EXPECT_EQ(back.raw, v.raw);
  EXPECT_EQ(back.s, "nvp");
  EXPECT_EQ(back.seen_version, 3u) << "CEREAL_CLASS_VERSION must reach the loading side";
  Idioms streamed = via_stream(v);
  EXPECT_EQ(streamed.s, "nvp");
  // Several versioned objects in one message.
  auto many = via_bytes(std::vector<Idioms>{v, v});
  ASSERT_EQ(many.size(), 2u);
  EXPECT_EQ(many[1].raw, v.raw);
}

TEST(SerialUserTypes, CArrayMembers) {
  WithCArrays v;
  v.nums[0] = -1;
  v.nums[2] = 9;
  v.names[1] = "second";
  Bytes b = mproc::to_bytes(v);
  EXPECT_EQ(b.size(), 3 * sizeof(int) + 8u + (8u + 6u));  // ints in bulk, strings counted
  WithCArrays back = mproc::from_bytes<WithCArrays>(b);
  EXPECT_EQ(back.nums[0], -1);
  EXPECT_EQ(back.nums[2], 9);
  EXPECT_EQ(back.names[0], "");
  EXPECT_EQ(back.names[1], "second");
}

TEST(SerialUserTypes, CerealBaseClass) {
  Derived d;
  d.x = 4;
  d.label = "base";
  d.more = {9, 8};
  Derived back = via_bytes(d);
  EXPECT_EQ(back.x, 4);
  EXPECT_EQ(back.label, "base");
  EXPECT_EQ(back.more, d.more);
}

TEST(SerialUserTypes, EnumMembersOfCerealTypes) {
  WithEnums v{Color::blue, plain_c, wide_lo, {Color::green, Color::red}};
  expect_round_trip(v);
  // Same size as the enums' own memcpy encoding.
  EXPECT_EQ(mproc::to_bytes(v).size(), 1u + sizeof(Plain) + 8u + (8u + 2u));
}

TEST(SerialUserTypes, DeepNesting) {
  Deep d = make_deep();
  expect_round_trip(d);
  auto back = via_bytes(d);
  ASSERT_EQ(back.at("mixed").size(), 5u);
  EXPECT_EQ(std::get<MemberSer>(*back.at("mixed")[3]).name, "seven");
  EXPECT_FALSE(back.at("mixed")[0].has_value());
}

// ---------------------------------------------------------------------------
// Writer / Reader

TEST(SerialWriterReader, FdsAndBookkeeping) {
  Writer w;
  EXPECT_EQ(w.size(), 0u);
  EXPECT_EQ(w.add_fd(7), 0u);
  EXPECT_EQ(w.add_fd(9), 1u);
  mproc::dump(w, 5);
  EXPECT_EQ(w.size(), 4u);
  ASSERT_EQ(w.fds().size(), 2u);
  Reader r(w.bytes(), w.fds());
  EXPECT_EQ(r.fd(0), 7);
  EXPECT_EQ(r.fd(1), 9);
  EXPECT_THROW(r.fd(2), SerializationError);
  EXPECT_EQ(r.remaining(), 4u);
  EXPECT_EQ(mproc::load<int>(r), 5);
  EXPECT_TRUE(r.at_end());
  EXPECT_THROW(mproc::load<int>(r), SerializationError);
  EXPECT_THROW(r.take(1), SerializationError);
  EXPECT_NO_THROW(r.take(0));
  w.clear();
  EXPECT_EQ(w.size(), 0u);
  EXPECT_TRUE(w.fds().empty());
  Reader empty(std::span<const std::byte>{});
  EXPECT_THROW(empty.fd(0), SerializationError);
  EXPECT_THROW(mproc::load<char>(empty), SerializationError);
}

TEST(SerialWriterReader, EmptyInputs) {
  // Zero-length reads at the very start of an empty buffer are fine (and must
  // not hand a null pointer to memcpy: UBSan checks that).
  EXPECT_EQ(mproc::from_bytes<std::tuple<>>({}), std::tuple<>{});
  EXPECT_EQ((mproc::from_bytes<std::array<int, 0>>({})), (std::array<int, 0>{}));
  EXPECT_THROW(mproc::from_bytes<int>({}), SerializationError);
  EXPECT_THROW(mproc::from_bytes<std::string>({}), SerializationError);
}

// ---------------------------------------------------------------------------
// Corrupt and truncated input

/// Every strict prefix of v's encoding must throw SerializationError. Each prefix
/// lives in its own exact-size heap block, so ASan catches any read past it.
template <class T>
void expect_every_prefix_throws(const T& v) {
  Bytes full = mproc::to_bytes(v);
  ASSERT_FALSE(full.empty());
  for (std::size_t n = 0; n < full.size(); ++n) {
    auto prefix = std::make_unique<std::byte[]>(n ? n : 1);
    std::memcpy(prefix.get(), full.data(), n);
    std::span<const std::byte> bytes(prefix.get(), n);
    EXPECT_THROW(mproc::from_bytes<T>(bytes), SerializationError) << "prefix of " << n << " of " << full.size();
    Reader r(bytes);
    EXPECT_THROW(mproc::load<T>(r), SerializationError) << "prefix of " << n << " of " << full.size();
  }
}

TEST(SerialCorrupt, EveryPrefixThrows) {
  expect_every_prefix_throws(make_composite());
  expect_every_prefix_throws(make_deep());
  expect_every_prefix_throws(std::tuple<std::vector<bool>, std::u16string, std::optional<std::list<int>>>{
      {true, false, true}, u"abc", std::list<int>{1, 2}});
  expect_every_prefix_throws(std::unordered_map<int, std::set<std::string>>{{1, {"a", "b"}}, {2, {}}});
  expect_every_prefix_throws(std::array<std::string, 2>{"ab", "c"});
  expect_every_prefix_throws(WithEnums{Color::blue, plain_b, wide_lo, {Color::red}});
}

TEST(SerialCorrupt, TrailingBytes) {
  Bytes b = mproc::to_bytes(std::string("abc"));
  b.push_back(std::byte{0});
  EXPECT_THROW(mproc::from_bytes<std::string>(b), SerializationError);
  // load() itself stops where the value ends.
  Reader r(b);
  EXPECT_EQ(mproc::load<std::string>(r), "abc");
  EXPECT_EQ(r.remaining(), 1u);
  Bytes i = mproc::to_bytes(1);
  i.insert(i.end(), 4, std::byte{0});
  EXPECT_THROW(mproc::from_bytes<int>(i), SerializationError);
  EXPECT_THROW(mproc::from_bytes<std::tuple<>>(Bytes{std::byte{1}}), SerializationError);
}

TEST(SerialCorrupt, BadOptionalFlag) {
  for (int flag : {2, 3, 0x80, 0xff}) {
    Bytes b{static_cast<std::byte>(flag)};
    put_u32(b, 1);
    EXPECT_THROW(mproc::from_bytes<std::optional<std::uint32_t>>(b), SerializationError) << flag;
  }
  Bytes ok{std::byte{1}};
  put_u32(ok, 77);
  EXPECT_EQ(mproc::from_bytes<std::optional<std::uint32_t>>(ok), 77u);
}

TEST(SerialCorrupt, VariantIndexOutOfRange) {
  using V = std::variant<int, std::string>;
  for (std::uint32_t idx : {2u, 3u, 1000u, 0xffffffffu}) {
    Bytes b;
    put_u32(b, idx);
    put_u32(b, 0);
    put_u32(b, 0);
    EXPECT_THROW(mproc::from_bytes<V>(b), SerializationError) << idx;
  }
  Bytes b;
  put_u32(b, 2);
  EXPECT_THROW((mproc::from_bytes<std::variant<std::monostate, int>>(b)), SerializationError);
}

TEST(SerialCorrupt, BadBool) {
  for (int v : {2, 0x7f, 0xff}) {
    Bytes b{static_cast<std::byte>(v)};
    EXPECT_THROW(mproc::from_bytes<bool>(b), SerializationError) << v;
    Bytes vb;
    put_u64(vb, 2);
    vb.push_back(std::byte{1});
    vb.push_back(static_cast<std::byte>(v));
    EXPECT_THROW(mproc::from_bytes<std::vector<bool>>(vb), SerializationError) << v;
    Bytes ab{std::byte{0}, static_cast<std::byte>(v)};
    EXPECT_THROW((mproc::from_bytes<std::array<bool, 2>>(ab)), SerializationError) << v;
  }
  EXPECT_TRUE(mproc::from_bytes<bool>(Bytes{std::byte{1}}));
  EXPECT_FALSE(mproc::from_bytes<bool>(Bytes{std::byte{0}}));
}

/// A count far beyond what the message holds must be rejected before anything
/// of that size is allocated.
template <class Container>
void expect_huge_count_rejected(std::uint64_t count, std::size_t payload = 16) {
  Bytes b;
  put_u64(b, count);
  b.insert(b.end(), payload, std::byte{0});
  g_largest_alloc = 0;
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(mproc::from_bytes<Container>(b), SerializationError) << "count " << count;
  auto elapsed = std::chrono::steady_clock::now() - t0;
  EXPECT_LE(g_largest_alloc, 4096u) << "count " << count << " allocated " << g_largest_alloc << " bytes";
  EXPECT_LT(elapsed, std::chrono::seconds(2)) << "count " << count;
}

template <class T>
using TVec = std::vector<T, TrackingAlloc<T>>;
using TString = std::basic_string<char, std::char_traits<char>, TrackingAlloc<char>>;

TEST(SerialCorrupt, HugeElementCount) {
  for (std::uint64_t count : {std::uint64_t{1} << 62, ~std::uint64_t{0}, std::uint64_t{1} << 32,
                              (std::uint64_t{1} << 24) - 1, std::uint64_t{1000}}) {
    expect_huge_count_rejected<TVec<int>>(count);
    expect_huge_count_rejected<TVec<Pod>>(count);
    expect_huge_count_rejected<TString>(count);
    expect_huge_count_rejected<TVec<TString>>(count);
    expect_huge_count_rejected<TVec<TVec<int>>>(count);
    expect_huge_count_rejected<TVec<std::pair<int, int>>>(count);
    expect_huge_count_rejected<TVec<std::tuple<TString, TString>>>(count);
    expect_huge_count_rejected<TVec<std::optional<int>>>(count);
    expect_huge_count_rejected<TVec<std::variant<int, double>>>(count);
    expect_huge_count_rejected<TVec<MemberSer>>(count);
    expect_huge_count_rejected<TVec<Composite>>(count);
    expect_huge_count_rejected<std::map<int, int>>(count);
    expect_huge_count_rejected<std::set<std::string>>(count);
    expect_huge_count_rejected<std::list<MemberSer>>(count);
    expect_huge_count_rejected<std::deque<std::pair<int, int>>>(count);
    expect_huge_count_rejected<std::vector<bool>>(count, 4);
  }
  // The same count nested inside a value.
  Bytes b;
  b.push_back(std::byte{1});  // optional engaged
  put_u64(b, std::uint64_t{1} << 60);
  EXPECT_THROW(mproc::from_bytes<std::optional<std::vector<std::string>>>(b), SerializationError);
}

/// Decoding a mutated encoding must either succeed or throw SerializationError:
/// no crash, no out-of-bounds read, no other exception (bad_alloc, length_error).
template <class T>
void fuzz_decode(const T& v, std::mt19937_64& rng, int iterations) {
  const Bytes original = mproc::to_bytes(v);
  ASSERT_FALSE(original.empty());
  int ok = 0, rejected = 0;
  for (int it = 0; it < iterations; ++it) {
    Bytes b = original;
    int mutations = 1 + static_cast<int>(rng() % 4);
    for (int m = 0; m < mutations; ++m) {
      std::size_t pos = rng() % b.size();
      switch (rng() % 4) {
        case 0: b[pos] = static_cast<std::byte>(rng()); break;
        case 1: b[pos] ^= static_cast<std::byte>(1u << (rng() % 8)); break;
        case 2: b[pos] = std::byte{0xff}; break;
        default: b[pos] = std::byte{0}; break;
      }
    }
    if (rng() % 8 == 0) b.resize(rng() % b.size());  // sometimes also truncate
    auto exact = std::make_unique<std::byte[]>(b.size() ? b.size() : 1);
    if (!b.empty()) std::memcpy(exact.get(), b.data(), b.size());
    try {
      T back = mproc::from_bytes<T>(std::span<const std::byte>(exact.get(), b.size()));
      (void)back;
      ++ok;
    } catch (const SerializationError&) {
      ++rejected;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "iteration " << it << ": unexpected " << typeid(e).name() << ": " << e.what();
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_EQ(ok + rejected, iterations);
}

TEST(SerialCorrupt, RandomMutations) {
  std::mt19937_64 rng(20240601);
  fuzz_decode(make_composite(), rng, 3000);
  fuzz_decode(make_deep(), rng, 3000);
  fuzz_decode(std::tuple<std::vector<bool>, std::optional<bool>, std::map<std::string, std::vector<std::string>>,
                         std::variant<std::monostate, std::u16string, std::deque<std::int64_t>>, Color>{
                  {true, false, true, true},
                  true,
                  {{"a", {"x", "yy"}}, {"b", {}}},
                  std::deque<std::int64_t>{1, 2, 3},
                  Color::blue},
              rng, 3000);
  fuzz_decode(std::vector<std::unordered_set<std::string>>{{"a", "bc"}, {}, {"def"}}, rng, 1000);
  // Not WithEnums: `Plain` has no fixed underlying type, so most integers are not
  // valid Plain values and loading one is undefined behaviour (UBSan flags it).
  // The serializer cannot know an enum's range; such enums are only safe from
  // trusted input.
  fuzz_decode(FixedEnums{Color::green, wide_lo, {Color::blue, Color::red}}, rng, 1000);
}

// ---------------------------------------------------------------------------
// Callables: mproc::bind, function pointers, CodeRef

int add3(int a, int b, int c) { return a * 100 + b * 10 + c; }
std::string join(const std::string& a, std::string b, int n) { return a + "|" + b + "|" + std::to_string(n); }

std::string g_task_seen;
void record_task(std::string s, int n, std::vector<int> v) {
  g_task_seen = s + ":" + std::to_string(n) + ":" + std::to_string(v.size());
}

template <class F>
F callable_round_trip(const F& f) {
  Writer w;
  mproc::detail::encode_callable(w, f);
  Reader r(w.bytes());
  F back = mproc::detail::decode_callable<F>(r);
  EXPECT_TRUE(r.at_end());
  return back;
}

TEST(SerialCallables, BindRoundTripsAndCalls) {
  auto b = mproc::bind(add3, 1, 2);  // a function named directly
  EXPECT_EQ(b(3), 123);
  auto back = callable_round_trip(b);
  EXPECT_EQ(back(4), 124);
  EXPECT_EQ(back.values(), (std::tuple<int, int>{1, 2}));

  auto p = mproc::bind(&add3, 9);  // an explicit function pointer
  auto pback = callable_round_trip(p);
  EXPECT_EQ(pback(8, 7), 987);

  auto s = mproc::bind(join, std::string("left"));
  auto sback = callable_round_trip(s);
  EXPECT_EQ(sback("right", 3), "left|right|3");
}

TEST(SerialCallables, BindLambdasFunctorsAndNesting) {
  auto lam = mproc::bind([](const std::vector<int>& v, int k) { return v.at(static_cast<std::size_t>(k)); },
                         std::vector<int>{10, 20, 30});
  // Bound is called as an lvalue (operator() is &-qualified), as the child does.
  auto lam_back = callable_round_trip(lam);
  EXPECT_EQ(lam_back(2), 30);

  auto functor = mproc::bind(Scale{3});  // state travels through Scale::serialize
  auto functor_back = callable_round_trip(functor);
  EXPECT_EQ(functor_back(5), 15);
  EXPECT_EQ(callable_round_trip(Scale{7})(2), 14);
  EXPECT_EQ(callable_round_trip(EmptyFunctor{})(2), 3);

  auto nested = mproc::bind(mproc::bind(add3, 5), 6);
  auto nested_back = callable_round_trip(nested);
  EXPECT_EQ(nested_back(7), 567);

  auto all = mproc::bind(add3, 1, 1, 1);
  auto all_back = callable_round_trip(all);
  EXPECT_EQ(all_back(), 111);
}

TEST(SerialCallables, FunctionPointerThroughCodeRef) {
  const void* addr = reinterpret_cast<const void*>(&add3);
  mproc::detail::CodeRef ref = mproc::detail::locate_code(addr);
  auto ref_back = via_bytes(ref);
  EXPECT_EQ(ref_back.module, ref.module);
  EXPECT_EQ(ref_back.offset, ref.offset);
  EXPECT_EQ(mproc::detail::resolve_code(ref_back), addr);

  // A function in a shared library (libc) resolves too.
  const void* lib = reinterpret_cast<const void*>(&std::strtol);
  EXPECT_EQ(mproc::detail::resolve_code(via_bytes(mproc::detail::locate_code(lib))), lib);

  auto* fp = &add3;
  auto fback = callable_round_trip(fp);
  EXPECT_EQ(fback, fp);
  EXPECT_EQ(fback(1, 2, 3), 123);

  mproc::detail::CodeRef missing{"/no/such/module.so", 16};
  EXPECT_THROW(mproc::detail::resolve_code(missing), SerializationError);
}

TEST(SerialCallables, ProcessTaskDecodesAndRunsInProcess) {
  // The whole task message, run in this process through its entry point:
  // "text" is converted to std::string (the parameter type) before sending.
  Writer w;
  mproc::detail::encode_process_task(w, record_task, "text", 7, std::vector<int>{1, 2, 3});
  Reader r(w.bytes());
  mproc::detail::Entry entry = mproc::detail::decode_entry(r);
  g_task_seen.clear();
  entry(&r, nullptr);
  EXPECT_EQ(g_task_seen, "text:7:3");
  EXPECT_TRUE(r.at_end());

  // With a bound callable: bound values first, then the call's arguments.
  Writer wb;
  mproc::detail::encode_process_task(wb, mproc::bind(record_task, std::string("bound")), 1, std::vector<int>{});
  Reader rb(wb.bytes());
  g_task_seen.clear();
  mproc::detail::decode_entry(rb)(&rb, nullptr);
  EXPECT_EQ(g_task_seen, "bound:1:0");

  // A tampered identity hash is refused before anything runs.
  Bytes bytes(w.bytes().begin(), w.bytes().end());
  // The entry is a CodeRef into the main program (same encoded size as any
  // other CodeRef there), then the u64 identity hash.
  std::size_t id_at = mproc::to_bytes(mproc::detail::locate_code(reinterpret_cast<const void*>(&add3))).size();
  bytes[id_at] ^= std::byte{1};
  Reader bad(bytes);
  EXPECT_THROW(mproc::detail::decode_entry(bad), SerializationError);
}

// ---------------------------------------------------------------------------
// Concepts (compile-time); what fails to compile with which message is in
// tests/compile_fail/.

void takes_int(int) {}

TEST(SerialConcepts, Serializable) {
  using mproc::Serializable;
  static_assert(Serializable<int>);
  static_assert(Serializable<const int&>);
  static_assert(Serializable<std::byte>);
  static_assert(Serializable<Color>);
  static_assert(Serializable<std::string>);
  static_assert(Serializable<std::u16string>);
  static_assert(Serializable<std::vector<std::map<std::string, std::optional<int>>>>);
  static_assert(Serializable<std::variant<std::monostate, int, std::string>>);
  static_assert(Serializable<std::tuple<>>);
  static_assert(Serializable<std::pair<int, std::set<std::string>>>);
  static_assert(Serializable<std::chrono::system_clock::time_point>);
  static_assert(Serializable<Pod>);
  static_assert(Serializable<MemberSer>);
  static_assert(Serializable<SaveLoad>);
  static_assert(Serializable<NonMember>);
  static_assert(Serializable<Private>);
  static_assert(Serializable<Composite>);
  static_assert(Serializable<Deep>);
  auto captureless = [](int x) { return x; };
  static_assert(Serializable<decltype(captureless)>);  // empty: nothing to carry

  int local = 0;
  auto capturing = [&local] { return local; };
  auto capturing_by_value = [local] { return local; };
  static_assert(!Serializable<int*>);
  static_assert(!Serializable<const char*>);
  static_assert(!Serializable<char[4]>);
  static_assert(!Serializable<std::nullptr_t>);
  static_assert(!Serializable<void (*)()>);
  static_assert(!Serializable<int Pod::*>);
  static_assert(!Serializable<std::string_view>);
  static_assert(!Serializable<std::span<int>>);
  static_assert(!Serializable<std::span<const int, 3>>);
  static_assert(!Serializable<std::unique_ptr<int>>);
  static_assert(!Serializable<std::shared_ptr<int>>);
  static_assert(!Serializable<std::weak_ptr<int>>);
  static_assert(!Serializable<std::reference_wrapper<int>>);
  static_assert(!Serializable<std::function<void()>>);
  static_assert(!Serializable<decltype(capturing)>);
  static_assert(!Serializable<decltype(capturing_by_value)>);
  static_assert(!Serializable<NotSendableStruct>);
  static_assert(!Serializable<std::vector<int*>>);
  static_assert(!Serializable<std::vector<std::vector<std::string_view>>>);
  static_assert(!Serializable<std::map<std::string, int*>>);
  static_assert(!Serializable<std::map<const char*, int>>);
  static_assert(!Serializable<std::optional<std::string_view>>);
  static_assert(!Serializable<std::variant<int, int*>>);
  static_assert(!Serializable<std::tuple<int, std::span<int>>>);
  static_assert(!Serializable<std::pair<int, std::unique_ptr<int>>>);
  static_assert(!Serializable<std::array<int*, 2>>);
  static_assert(!Serializable<std::set<std::shared_ptr<int>>>);
  static_assert(!Serializable<std::vector<NotSendableStruct>>);
  (void)capturing;
  (void)capturing_by_value;
}

TEST(SerialConcepts, SendableCallable) {
  using mproc::detail::SendableCallable;
  auto captureless = [](int x) { return x; };
  auto generic = [](auto x) { return x; };
  static_assert(SendableCallable<void (*)(int)>);
  static_assert(SendableCallable<decltype(&takes_int)>);
  static_assert(SendableCallable<decltype(captureless)>);
  static_assert(SendableCallable<decltype(generic)>);
  static_assert(SendableCallable<EmptyFunctor>);
  static_assert(SendableCallable<Scale>);
  static_assert(SendableCallable<decltype(mproc::bind(add3, 1))>);
  static_assert(SendableCallable<decltype(mproc::bind(captureless, 1))>);

  int local = 0;
  auto capturing = [&local](int x) { return x + local; };
  auto capturing_by_value = [local](int x) { return x + local; };
  auto mutable_capture = [local]() mutable { return ++local; };
  static_assert(!SendableCallable<decltype(capturing)>);
  static_assert(!SendableCallable<decltype(capturing_by_value)>);
  static_assert(!SendableCallable<decltype(mutable_capture)>);
  static_assert(!SendableCallable<std::function<void()>>);
  static_assert(!SendableCallable<std::function<int(int)>>);
  static_assert(!SendableCallable<int*>);
  static_assert(!SendableCallable<Stateful>);
  static_assert(!SendableCallable<decltype(&Scale::operator())>);
  static_assert(!SendableCallable<std::reference_wrapper<EmptyFunctor>>);
  (void)capturing;
  (void)capturing_by_value;
  (void)mutable_capture;
}

TEST(SerialConcepts, ClosureDetection) {
  int local = 0;
  auto capturing = [&local] { return local; };
  auto generic = [](auto) {};
  static_assert(mproc::detail::is_closure_type<decltype(capturing)>());
  static_assert(mproc::detail::is_closure_type<decltype(generic)>());
  static_assert(!mproc::detail::is_closure_type<MemberSer>());
  static_assert(!mproc::detail::is_closure_type<std::function<void()>>());
  static_assert(!mproc::detail::is_closure_type<std::tuple<decltype(capturing)>>());
  static_assert(!mproc::detail::is_closure_type<std::vector<decltype(generic)>>());
  (void)capturing;
}

}  // namespace
