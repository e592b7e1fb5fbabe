// mproc/value.hpp — shared Value and Array, mirroring multiprocessing.Value,
// Array, RawValue and RawArray.
//
//   mproc::Value<int> counter(0);                 // synchronized, like Value('i', 0)
//   mproc::Process p(work, counter);              // the child sees the same int
//   { auto g = counter.lock(); counter.raw() += 1; }   // several steps under the lock
//   counter.fetch_add(1);                         // or one lock-free atomic step
//
//   mproc::Array<double> a(1000);                 // Array('d', 1000): zero-filled
//   { auto g = a.lock(); for (double& x : a.raw()) x *= 2; }
//
// Like Python, Value and Array carry a recursive lock (get_lock(), an RLock), or
// a Lock or RLock of the caller's (Value<int> v(0, my_lock)), and their get()/set()
// take it; RawValue and RawArray have no lock. T must be
// trivially copyable: the bytes are shared as they are. Python's type codes map to
// C++ types through typecode_t<'i'> (table in docs/sync.md).
//
// Each object is a handle: copies, and copies sent to a Process, share the same
// memory (one anonymous shared mapping; with its lock embedded, one page for a
// Value). All members are safe from several threads and processes, except that
// raw() access must be guarded by the lock (or be the only writer) like any
// shared memory.
#pragma once

#include "mproc/detail/config.hpp"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <ranges>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "mproc/detail/segment.hpp"
#include "mproc/error.hpp"
#include "mproc/serial.hpp"
#include "mproc/sync.hpp"

namespace mproc {

namespace detail {
template <char C>
consteval auto typecode_type() {
  // clang-format off
  if constexpr (C == 'c') return std::type_identity<char>{};
  else if constexpr (C == 'b') return std::type_identity<signed char>{};
  else if constexpr (C == 'B') return std::type_identity<unsigned char>{};
  else if constexpr (C == 'h') return std::type_identity<short>{};
  else if constexpr (C == 'H') return std::type_identity<unsigned short>{};
  else if constexpr (C == 'i') return std::type_identity<int>{};
  else if constexpr (C == 'I') return std::type_identity<unsigned>{};
  else if constexpr (C == 'l') return std::type_identity<long>{};
  else if constexpr (C == 'L') return std::type_identity<unsigned long>{};
  else if constexpr (C == 'q') return std::type_identity<long long>{};
  else if constexpr (C == 'Q') return std::type_identity<unsigned long long>{};
  else if constexpr (C == 'f') return std::type_identity<float>{};
  else if constexpr (C == 'd') return std::type_identity<double>{};
  else static_assert(C != C, "mproc: unknown type code; use one of c b B h H i I l L q Q f d");
  // clang-format on
}
}  // namespace detail

/// Python's array/ctypes type codes as C++ types: typecode_t<'d'> is double,
/// so Value('i', 0) is Value<typecode_t<'i'>>(0).
template <char C>
using typecode_t = typename decltype(detail::typecode_type<C>())::type;

namespace detail {

/// std::atomic_ref<T> works on T here without a hidden lock (and the elements
/// are aligned enough for it).
template <class T>
inline constexpr bool lock_free_cell = std::atomic_ref<T>::is_always_lock_free &&
                                       alignof(T) >= std::atomic_ref<T>::required_alignment;
template <class T>
inline constexpr bool arithmetic_cell = lock_free_cell<T> &&
                                        (std::is_integral_v<T> ||
                                         std::is_floating_point_v<T>)&&!std::is_same_v<T, bool>;

/// n elements of T in a shared segment, at a byte offset (after an embedded lock).
template <class T>
class Cells {
  static_assert(std::is_trivially_copyable_v<T>,
                "mproc: Value<T>/Array<T> need a trivially copyable T: its bytes are shared as they "
                "are. Send other types through a Queue, or share them as bytes you encode yourself.");

 public:
  Cells() = default;
  /// A new zero-filled segment with `header` bytes before the elements.
  Cells(std::size_t n, std::size_t header, const char* tag)
      : seg_(Segment::create(header + n * sizeof(T), tag)), offset_(header), n_(n) {}

  const Segment& segment() const noexcept { return seg_; }
  T* data() const noexcept { return reinterpret_cast<T*>(seg_.data() + offset_); }
  std::size_t size() const noexcept { return n_; }

  /// Bounds check for the indexed calls (Python's IndexError).
  void check(std::size_t i) const {
    if (i >= n_) {
      throw UsageError("mproc: index " + std::to_string(i) + " out of range for a shared array of " +
                       std::to_string(n_) + " elements");
    }
  }

  // Plain element access. Where T is lock-free, through relaxed atomic_ref, so
  // that get()/set() under the lock never race (in the C++ model) with the
  // lock-free helpers another process may use at the same time; relaxed, because
  // the lock (or the caller's own protocol) supplies the ordering.
  T read(std::size_t i) const noexcept {
    if constexpr (lock_free_cell<T>) {
      return std::atomic_ref<T>(data()[i]).load(std::memory_order_relaxed);
    } else {
      T v;
      std::memcpy(&v, data() + i, sizeof(T));
      return v;
    }
  }
  void write(std::size_t i, const T& v) const noexcept {
    if constexpr (lock_free_cell<T>) {
      std::atomic_ref<T>(data()[i]).store(v, std::memory_order_relaxed);
    } else {
      std::memcpy(data() + i, &v, sizeof(T));
    }
  }

  void encode(Writer& w) const {
    codec<Segment>::encode(w, seg_);
    std::uint64_t hdr[2] = {offset_, n_};
    w.write(hdr, sizeof hdr);
  }
  static Cells decode(Reader& r) { return with_segment(codec<Segment>::decode(r), r); }
  /// The rest of a Cells whose segment was decoded already.
  static Cells with_segment(Segment seg, Reader& r) {
    std::uint64_t hdr[2];
    r.read(hdr, sizeof hdr);
    Cells c;
    c.seg_ = std::move(seg);
    if (hdr[0] % alignof(T) != 0 || hdr[0] > c.seg_.size() || hdr[1] > (c.seg_.size() - hdr[0]) / sizeof(T)) {
      throw SerializationError("mproc: a received shared Value/Array does not fit its memory");
    }
    c.offset_ = static_cast<std::size_t>(hdr[0]);
    c.n_ = static_cast<std::size_t>(hdr[1]);
    return c;
  }

 private:
  Segment seg_;
  std::size_t offset_ = 0;
  std::size_t n_ = 0;
};

#define MPROC_NEEDS_LOCK_FREE(what)                                                         \
  static_assert(lock_free_cell<T>,                                                          \
                "mproc: " what                                                              \
                " needs a T that std::atomic_ref<T> handles lock-free "                     \
                "(an arithmetic type, a pointer-sized or smaller struct). Use get()/set() " \
                "under the lock instead.")
#define MPROC_NEEDS_ARITHMETIC(what)                                                    \
  static_assert(arithmetic_cell<T>, "mproc: " what                                      \
                                    " needs a lock-free integral or floating-point T. " \
                                    "Use compare_exchange, or get()/set() under the lock.")

/// The lock-free atomic helpers of one element. They do not take the object's
/// lock; each call is one atomic step (seq_cst), so several processes may use
/// them at once without any lock. Checked at compile time: T must be lock-free
/// for std::atomic_ref (fetch_add/fetch_sub: and integral or floating point).
template <class T>
class AtomicCell {
 public:
  explicit AtomicCell(T* p) noexcept : p_(p) {}
  T load() const noexcept {
    MPROC_NEEDS_LOCK_FREE("load()");
    return ref().load();
  }
  void store(T v) const noexcept {
    MPROC_NEEDS_LOCK_FREE("store()");
    ref().store(v);
  }
  T exchange(T v) const noexcept {
    MPROC_NEEDS_LOCK_FREE("exchange()");
    return ref().exchange(v);
  }
  /// Strong CAS: on failure `expected` receives the current value.
  bool compare_exchange(T& expected, T desired) const noexcept {
    MPROC_NEEDS_LOCK_FREE("compare_exchange()");
    return ref().compare_exchange_strong(expected, desired);
  }
  /// Returns the previous value.
  T fetch_add(T v) const noexcept {
    MPROC_NEEDS_ARITHMETIC("fetch_add()");
    return ref().fetch_add(v);
  }
  T fetch_sub(T v) const noexcept {
    MPROC_NEEDS_ARITHMETIC("fetch_sub()");
    return ref().fetch_sub(v);
  }

 private:
  std::atomic_ref<T> ref() const noexcept { return std::atomic_ref<T>(*p_); }
  T* p_;
};

#undef MPROC_NEEDS_LOCK_FREE
#undef MPROC_NEEDS_ARITHMETIC

/// A Cells with a lock: an RLock embedded at the start of the same page (the
/// usual case), or a Lock or RLock the user supplied (held as their common base;
/// as<L>() gives it back as what it is). The codec sends one fd when embedded.
template <class T>
struct LockedCells {
  static constexpr std::size_t header = std::max(mutex_state_size, alignof(T));

  LockedCells(std::size_t n, const char* tag) : cells(n, header, tag), lock(embedded_lock(cells)) {}
  LockedCells(std::size_t n, MutexBase l, const char* tag) : cells(n, 0, tag), lock(std::move(l)) {}
  LockedCells(Cells<T> c, MutexBase l) : cells(std::move(c)), lock(std::move(l)) {}

  static MutexBase embedded_lock(const Cells<T>& c) {
    return SyncAccess::rlock_at(init_mutex_state(SyncRef{c.segment(), 0}, true));
  }
  /// The lock as L (RLock or Lock). UsageError if it is the other kind.
  template <class L>
  L as() const {
    static_assert(std::is_same_v<L, RLock> || std::is_same_v<L, Lock>,
                  "mproc: get_lock<L>(): L is mproc::RLock (the default) or mproc::Lock");
    const SyncRef& ref = SyncAccess::ref(lock);
    SyncKind k;
    std::memcpy(&k, ref.at(), sizeof k);
    if constexpr (std::is_same_v<L, RLock>) {
      if (k != SyncKind::rlock) {
        throw UsageError("mproc: get_lock(): this Value/Array was built on a mproc::Lock; call get_lock<mproc::Lock>()");
      }
      return SyncAccess::as<RLock>(lock);
    } else {
      if (k != SyncKind::lock) {
        throw UsageError("mproc: get_lock<mproc::Lock>(): this Value/Array's lock is an RLock; call get_lock()");
      }
      return SyncAccess::as<Lock>(lock);
    }
  }
  bool embedded() const noexcept { return SyncAccess::ref(lock).seg.fd() == cells.segment().fd(); }

  void encode(Writer& w) const {
    bool emb = embedded();
    dump(w, emb);
    if (!emb) encode_sync_ref(w, SyncAccess::ref(lock));
    cells.encode(w);
  }
  static LockedCells decode(Reader& r) {
    if (load<bool>(r)) {
      auto c = Cells<T>::decode(r);
      // The lock lives at offset 0 of the same mapping: check its tag like any lock.
      if (c.segment().size() < mutex_state_size || static_cast<const void*>(c.data()) == c.segment().data()) {
        throw SerializationError("mproc: a received shared Value/Array has no room for its lock");
      }
      SyncRef ref{c.segment(), 0};
      SyncKind k;
      std::memcpy(&k, ref.at(), sizeof k);
      if (k != SyncKind::rlock)
        throw SerializationError("mproc: a received shared Value/Array has a corrupt lock");
      return LockedCells(std::move(c), SyncAccess::rlock_at(std::move(ref)));
    }
    MutexBase l = SyncAccess::mutex_at(decode_sync_ref(r, SyncKind::lock, SyncKind::rlock));
    return LockedCells(Cells<T>::decode(r), std::move(l));
  }

  Cells<T> cells;
  mutable MutexBase lock;
};

template <class R, class T>
concept range_of = std::ranges::sized_range<R> && std::convertible_to<std::ranges::range_reference_t<R>, T> &&
    !std::is_integral_v<std::remove_cvref_t<R>>;

}  // namespace detail

template <class T>
struct codec;

/// A single T in shared memory without a lock (multiprocessing.RawValue).
/// get()/set() are plain accesses (relaxed atomic where T is lock-free), so
/// concurrent read-modify-write from several processes loses updates; use the
/// atomic helpers, or Value<T>.
template <class T>
class RawValue : public detail::AtomicCell<T> {
 public:
  /// A new shared T. Throws std::system_error if memory is refused.
  explicit RawValue(T init = T{}) : RawValue(detail::Cells<T>(1, 0, "mproc-rawvalue")) { set(init); }

  T get() const noexcept { return cells_.read(0); }
  void set(T v) const noexcept { cells_.write(0, v); }
  /// The shared object itself.
  T& raw() const noexcept { return *cells_.data(); }

 private:
  friend struct codec<RawValue<T>>;
  explicit RawValue(detail::Cells<T> c) : detail::AtomicCell<T>(c.data()), cells_(std::move(c)) {}
  detail::Cells<T> cells_;
};

/// A single T in shared memory with a recursive lock (multiprocessing.Value).
template <class T>
class Value : public detail::AtomicCell<T> {
 public:
  /// A new shared T with its own RLock, in one page. Throws std::system_error.
  explicit Value(T init = T{}) : Value(detail::LockedCells<T>(1, "mproc-value")) { raw() = init; }
  /// Guarded by an existing lock, an RLock or a Lock (Python's Value(typecode, v,
  /// lock=my_lock)); several Values and Arrays may share one. With a Lock, get()
  /// and set() must not be called while this thread holds it (they take it).
  Value(T init, RLock lock) : Value(detail::LockedCells<T>(1, std::move(lock), "mproc-value")) {
    raw() = init;
  }
  Value(T init, Lock lock) : Value(detail::LockedCells<T>(1, std::move(lock), "mproc-value")) {
    raw() = init;
  }

  /// Reads under the lock. Blocks while another thread/process holds the lock.
  /// Throws OwnerDiedError if its previous owner died holding it.
  T get() const {
    std::lock_guard g(c_.lock);
    return c_.cells.read(0);
  }
  /// Writes under the lock (blocking, throws as get()).
  void set(T v) const {
    std::lock_guard g(c_.lock);
    c_.cells.write(0, v);
  }
  /// The lock (Python's get_lock()); a handle to the same lock. An RLock unless the
  /// Value was built on a Lock: then get_lock<mproc::Lock>() (the other kind is a
  /// UsageError).
  template <class L = RLock>
  L get_lock() const {
    return c_.template as<L>();
  }
  /// Holds the lock for the guard's lifetime: `auto g = v.lock(); v.raw() += 1;`.
  /// The Value must outlive the guard.
  [[nodiscard]] std::unique_lock<detail::MutexBase> lock() const { return std::unique_lock<detail::MutexBase>(c_.lock); }
  /// The shared object itself, unsynchronized: hold lock() around compound use.
  T& raw() const noexcept { return *c_.cells.data(); }

 private:
  friend struct codec<Value<T>>;
  explicit Value(detail::LockedCells<T> c) : detail::AtomicCell<T>(c.cells.data()), c_(std::move(c)) {}
  detail::LockedCells<T> c_;
};

namespace detail {

/// What RawArray and Array share: size, bounds-checked and atomic element access.
template <class D, class T>
class ArrayOps {
 public:
  std::size_t size() const noexcept { return cells().size(); }
  bool empty() const noexcept { return size() == 0; }
  /// The lock-free atomic helpers of element i (see AtomicCell); UsageError if out of range.
  AtomicCell<T> atomic(std::size_t i) const {
    cells().check(i);
    return AtomicCell<T>(cells().data() + i);
  }
  T load(std::size_t i) const { return atomic(i).load(); }
  void store(std::size_t i, T v) const { atomic(i).store(v); }
  T fetch_add(std::size_t i, T v) const { return atomic(i).fetch_add(v); }
  T fetch_sub(std::size_t i, T v) const { return atomic(i).fetch_sub(v); }
  bool compare_exchange(std::size_t i, T& expected, T desired) const {
    return atomic(i).compare_exchange(expected, desired);
  }
  /// The elements, unsynchronized.
  std::span<T> raw() const noexcept { return {cells().data(), size()}; }

 protected:
  const Cells<T>& cells() const noexcept { return static_cast<const D&>(*this).cells_ref(); }
};

}  // namespace detail

/// A fixed-size array of T in shared memory without a lock
/// (multiprocessing.RawArray). Element access is not synchronized.
template <class T>
class RawArray : public detail::ArrayOps<RawArray<T>, T> {
 public:
  using value_type = T;

  /// An empty array.
  RawArray() : RawArray(std::size_t{0}) {}
  /// n zero-initialised elements (Python's RawArray('i', n)). Throws std::system_error.
  explicit RawArray(std::size_t n) : cells_(n, 0, "mproc-rawarray") {}
  RawArray(std::initializer_list<T> init) : RawArray(init.size()) { std::ranges::copy(init, data()); }
  /// A copy of a range (Python's RawArray('i', [1, 2, 3])).
  template <detail::range_of<T> R>
  explicit RawArray(const R& r) : RawArray(std::ranges::size(r)) {
    std::ranges::copy(r, data());
  }

  T get(std::size_t i) const {
    cells_.check(i);
    return cells_.read(i);
  }
  void set(std::size_t i, T v) const {
    cells_.check(i);
    cells_.write(i, v);
  }
  T* data() const noexcept { return cells_.data(); }
  T& operator[](std::size_t i) const noexcept { return data()[i]; }
  T* begin() const noexcept { return data(); }
  T* end() const noexcept { return data() + cells_.size(); }

 private:
  friend struct codec<RawArray<T>>;
  friend class detail::ArrayOps<RawArray<T>, T>;
  explicit RawArray(detail::Cells<T> c) : cells_(std::move(c)) {}
  const detail::Cells<T>& cells_ref() const noexcept { return cells_; }
  detail::Cells<T> cells_;
};

/// A fixed-size array of T in shared memory with a recursive lock, or a Lock or
/// RLock of the caller's (multiprocessing.Array). get(i)/set(i, v)/to_vector() take the lock; for
/// several steps hold lock() and work on raw().
template <class T>
class Array : public detail::ArrayOps<Array<T>, T> {
 public:
  using value_type = T;

  /// An empty array (with its lock).
  Array() : Array(std::size_t{0}) {}
  /// n zero-initialised elements (Array('i', n)). Throws std::system_error.
  explicit Array(std::size_t n) : c_(n, "mproc-array") {}
  /// Guarded by an existing RLock or Lock (Python's Array(typecode, n, lock=my_lock)),
  /// which several Values and Arrays may share. With a Lock, get()/set()/to_vector()
  /// must not be called while this thread holds it (UsageError): use raw() there.
  Array(std::size_t n, RLock lock) : c_(n, std::move(lock), "mproc-array") {}
  Array(std::size_t n, Lock lock) : c_(n, std::move(lock), "mproc-array") {}
  Array(std::initializer_list<T> init) : Array(init.size()) { std::ranges::copy(init, c_.cells.data()); }
  Array(std::initializer_list<T> init, RLock lock) : Array(init.size(), std::move(lock)) {
    std::ranges::copy(init, c_.cells.data());
  }
  Array(std::initializer_list<T> init, Lock lock) : Array(init.size(), std::move(lock)) {
    std::ranges::copy(init, c_.cells.data());
  }
  template <detail::range_of<T> R>
  explicit Array(const R& r) : Array(std::ranges::size(r)) {
    std::ranges::copy(r, c_.cells.data());
  }
  template <detail::range_of<T> R>
  Array(const R& r, RLock lock) : Array(std::ranges::size(r), std::move(lock)) {
    std::ranges::copy(r, c_.cells.data());
  }
  template <detail::range_of<T> R>
  Array(const R& r, Lock lock) : Array(std::ranges::size(r), std::move(lock)) {
    std::ranges::copy(r, c_.cells.data());
  }

  /// Element i under the lock; UsageError if out of range. Blocks for the lock;
  /// throws OwnerDiedError if its previous owner died holding it.
  T get(std::size_t i) const {
    c_.cells.check(i);
    std::lock_guard g(c_.lock);
    return c_.cells.read(i);
  }
  void set(std::size_t i, T v) const {
    c_.cells.check(i);
    std::lock_guard g(c_.lock);
    c_.cells.write(i, v);
  }
  /// A consistent copy of every element (Python's a[:]).
  std::vector<T> to_vector() const {
    std::lock_guard g(c_.lock);
    auto s = this->raw();
    return std::vector<T>(s.begin(), s.end());
  }
  /// The lock, as Value::get_lock().
  template <class L = RLock>
  L get_lock() const {
    return c_.template as<L>();
  }
  /// Holds the lock for the guard's lifetime. The Array must outlive the guard.
  [[nodiscard]] std::unique_lock<detail::MutexBase> lock() const { return std::unique_lock<detail::MutexBase>(c_.lock); }

 private:
  friend struct codec<Array<T>>;
  friend class detail::ArrayOps<Array<T>, T>;
  explicit Array(detail::LockedCells<T> c) : c_(std::move(c)) {}
  const detail::Cells<T>& cells_ref() const noexcept { return c_.cells; }
  detail::LockedCells<T> c_;
};

// Codecs: the shared memory travels as its fd (plus the lock's, when it is not
// embedded); the receiver maps the same pages.
template <class T>
struct codec<RawValue<T>> {
  static void encode(Writer& w, const RawValue<T>& v) { v.cells_.encode(w); }
  static RawValue<T> decode(Reader& r) { return RawValue<T>(one(detail::Cells<T>::decode(r))); }
  static detail::Cells<T> one(detail::Cells<T> c) {
    if (c.size() != 1) throw SerializationError("mproc: a received shared Value holds no single element");
    return c;
  }
};
template <class T>
struct codec<Value<T>> {
  static void encode(Writer& w, const Value<T>& v) { v.c_.encode(w); }
  static Value<T> decode(Reader& r) {
    auto c = detail::LockedCells<T>::decode(r);
    codec<RawValue<T>>::one(c.cells);
    return Value<T>(std::move(c));
  }
};
template <class T>
struct codec<RawArray<T>> {
  static void encode(Writer& w, const RawArray<T>& a) { a.cells_.encode(w); }
  static RawArray<T> decode(Reader& r) { return RawArray<T>(detail::Cells<T>::decode(r)); }
};
template <class T>
struct codec<Array<T>> {
  static void encode(Writer& w, const Array<T>& a) { a.c_.encode(w); }
  static Array<T> decode(Reader& r) { return Array<T>(detail::LockedCells<T>::decode(r)); }
};

}  // namespace mproc
