// mproc/shared_memory.hpp — shared memory segments and zero-copy arrays.
//
//   mproc::SharedArray<double> a(1'000'000'000);         // 8 GB, anonymous, zero-filled
//   mproc::Process p(sum_slice, a, 0, a.size() / 2);      // the child maps the same pages
//
//   auto seg = mproc::SharedMemory::create(4096);         // named, like Python's SharedMemory
//   auto peer = mproc::SharedMemory::attach(seg.name());  // any process of this user
//                                                          // (another user's: refused)
//
// Ownership (what CPython #82300 gets wrong): a segment belongs to the process
// that created it.
//   * SharedArray and every internal object use anonymous memory (memfd): there is
//     no name, nothing in /dev/shm, and the kernel frees the pages when the last
//     process holding them unmaps them, whatever way the processes end.
//   * A named SharedMemory is unlinked when its creator's object is destroyed or
//     unlink()ed, or, if the creator dies without doing so (kill -9), by a tiny
//     tracker process (/bin/sh, started on first use) that outlives it. Processes
//     that already attached keep their mapping: unlinking only removes the name.
//     Nobody else ever unlinks a segment behind its owner's back.
#pragma once

#include "mproc/detail/config.hpp"

#include <cstddef>
#include <memory>
#include <initializer_list>
#include <iterator>
#include <span>
#include <string>
#include <type_traits>

#include "mproc/detail/segment.hpp"
#include "mproc/error.hpp"
#include "mproc/serial.hpp"

namespace mproc {

/// A named POSIX shared-memory segment (/dev/shm), mirroring
/// multiprocessing.shared_memory.SharedMemory. A handle: copies in one process
/// share one mapping; copies sent to another process map the same pages there.
/// Reading the properties is thread-safe; close()/unlink() are not synchronized
/// with concurrent use of buf().
class SharedMemory {
 public:
  /// An empty handle (size 0, no name).
  SharedMemory() = default;

  /// Creates a segment of `size` bytes (> 0), mode 0600, zero-filled. An empty
  /// `name` picks an unguessable one ("mproc-" + 128 random bits). The calling
  /// process owns it. Throws UsageError for a bad size or name, std::system_error
  /// if the name exists (EEXIST) or the OS refuses.
  static SharedMemory create(std::size_t size, std::string name = {});
  /// What attach() accepts.
  struct AttachOptions {
    /// Attach a segment whose file belongs to another user too. By default such a
    /// segment is refused: anyone may pre-create a name in /dev/shm (mode 0666,
    /// content of their choosing) before its rightful creator does, so a segment
    /// not owned by this process's effective uid is not trusted.
    bool allow_other_owner = false;
  };
  /// Attaches to an existing segment by name. Not an owner. Throws
  /// std::system_error: ENOENT if no such segment; EPERM if its owner is another
  /// user (uid other than geteuid()) and options.allow_other_owner is false.
  static SharedMemory attach(const std::string& name, const AttachOptions& options);
  static SharedMemory attach(const std::string& name);

  /// The name to attach with (without the leading '/').
  const std::string& name() const noexcept;
  std::size_t size() const noexcept;
  /// The mapped bytes. Empty after close().
  std::span<std::byte> buf() const noexcept;
  /// Whether this process created the segment (and will unlink it when the last
  /// handle to it here goes away).
  bool owner() const noexcept;

  /// Unmaps the segment in this process (for every copy of this handle). Idempotent.
  void close() noexcept;
  /// Removes the name so no one else can attach (existing mappings stay valid).
  /// Any process may call it, as in Python. Idempotent.
  void unlink();

 private:
  friend struct codec<SharedMemory>;
  struct State;
  std::shared_ptr<State> st_;
};

/// Sent as its fd, size and name: the receiver gets a non-owning handle to the
/// same pages (no name lookup, so it works even after unlink()).
template <>
struct codec<SharedMemory> {
  static void encode(Writer& w, const SharedMemory& m);
  static SharedMemory decode(Reader& r);
};

/// A fixed-size array of trivially copyable T in anonymous shared memory. A handle:
/// copies (and copies sent to other processes) refer to the same elements, so a
/// child writes results the parent reads, without any copying. Passing one to a
/// Process costs the same for 1 KiB and for 8 GiB. Element access is not
/// synchronized; use a Lock, or atomics via std::atomic_ref.
template <class T>
class SharedArray {
  static_assert(std::is_trivially_copyable_v<T>,
                "mproc: SharedArray<T> needs a trivially copyable T: its bytes are shared as they "
                "are. Use a Queue to send other types.");

 public:
  using value_type = T;
  using iterator = T*;
  using const_iterator = const T*;

  SharedArray() = default;
  /// n zero-initialised elements. Throws std::system_error if memory is refused.
  explicit SharedArray(std::size_t n)
      : seg_(detail::Segment::create_counted(n * sizeof(T), "mproc-array")), n_(n) {}
  SharedArray(std::initializer_list<T> init) : SharedArray(init.size()) { std::copy(init.begin(), init.end(), data()); }
  /// Copies a range into a new shared array.
  template <std::ranges::sized_range R>
    requires std::convertible_to<std::ranges::range_value_t<R>, T>
  static SharedArray from_range(const R& r) {
    SharedArray a(std::ranges::size(r));
    std::ranges::copy(r, a.data());
    return a;
  }

  T* data() const noexcept { return reinterpret_cast<T*>(seg_.data()); }
  std::size_t size() const noexcept { return n_; }
  bool empty() const noexcept { return n_ == 0; }
  std::span<T> span() const noexcept { return {data(), n_}; }
  T& operator[](std::size_t i) const noexcept { return data()[i]; }
  T* begin() const noexcept { return data(); }
  T* end() const noexcept { return data() + n_; }

 private:
  friend struct codec<SharedArray<T>>;
  detail::Segment seg_;
  std::size_t n_ = 0;
};

template <class T>
struct codec<SharedArray<T>> {
  static void encode(Writer& w, const SharedArray<T>& a) {
    codec<detail::Segment>::encode(w, a.seg_);
    std::uint64_t n = a.n_;
    w.write(&n, sizeof n);
  }
  static SharedArray<T> decode(Reader& r) {
    SharedArray<T> a;
    a.seg_ = codec<detail::Segment>::decode_cached(r);
    std::uint64_t n;
    r.read(&n, sizeof n);
    // By division: n * sizeof(T) can wrap around (n = 2^61 of 8-byte T is 0 bytes).
    if (n > a.seg_.size() / sizeof(T)) {
      throw SerializationError("mproc: received SharedArray has " + std::to_string(n) + " elements of " +
                               std::to_string(sizeof(T)) + " bytes, more than its " +
                               std::to_string(a.seg_.size()) + "-byte segment holds (a corrupt message?)");
    }
    a.n_ = static_cast<std::size_t>(n);
    return a;
  }
};

namespace detail {

/// The SharedArray<T> decoder as a function of raw input (for fuzz targets and
/// tests): one message holding exactly one SharedArray<T>, its bytes and the fds
/// it carries (borrowed), as a receiver gets them. Throws SerializationError for
/// anything that does not describe an array inside a memory file; never maps past
/// a file's end. The segment decoder alone is codec<detail::Segment>::decode.
template <class T>
SharedArray<T> decode_shared_array(std::span<const std::byte> bytes, std::span<const int> fds) {
  Reader r(bytes, fds);
  SharedArray<T> a = load<SharedArray<T>>(r);
  if (!r.at_end()) throw SerializationError("mproc: SharedArray message has trailing bytes");
  return a;
}

}  // namespace detail
}  // namespace mproc
