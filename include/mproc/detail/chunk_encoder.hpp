// mproc/detail/chunk_encoder.hpp — the parent side of a Pool call's wire
// format: a chunk message is a ChunkHeader, the entry's id, the encoded
// callable (the prefix, once per call) and the items (at a fixed stride for
// plain bytes, else at recorded offsets), with owned duplicates of the fds they
// carry. Also which inputs may be encoded as they are read.
#pragma once

#include "mproc/detail/config.hpp"

#include <unistd.h>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ranges>
#include <span>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "mproc/detail/pool_backend.hpp"
#include "mproc/detail/pool_entry.hpp"
#include "mproc/serial.hpp"
#include "mproc/task.hpp"

namespace mproc::detail {

/// Owned duplicates of fds (F_DUPFD_CLOEXEC). Throws std::system_error.
std::vector<int> dup_fds(std::span<const int> fds);

/// Whether tuple E's elements, references removed, are exactly tuple Arg's.
template <class E, class Arg>
inline constexpr bool same_elements = false;
template <class... A, class... S>
  requires(sizeof...(A) == sizeof...(S))
inline constexpr bool same_elements<std::tuple<A...>, std::tuple<S...>> =
    (std::is_same_v<std::remove_cvref_t<A>, S> && ...);

/// Encodes chunks of one call: the prefix (header, entry, callable) once, then items.
template <class Fn, class Arg, bool Star>
class ChunkEncoder {
 public:
  explicit ChunkEncoder(const Fn& f) {
    prefix_.reserve(kFirstBytes);
    write_prefix(prefix_, f);
    // Our own copies: chunks of an imap are encoded long after the callable (and
    // whatever handle lent these fds) may be gone.
    prefix_fds_ = dup_fds(prefix_.fds());
  }
  ~ChunkEncoder() {
    for (int fd : prefix_fds_) ::close(fd);
  }
  ChunkEncoder(const ChunkEncoder&) = delete;
  ChunkEncoder& operator=(const ChunkEncoder&) = delete;
  /// The one chunk of a single call (apply, submit): one item, encoded into one
  /// buffer that becomes the message's (no prefix copy, no growing).
  template <class E>
  static ChunkMessage single(const Fn& f, E&& elem) {
    ChunkMessage m;
    Writer w;
    w.reserve(kFirstBytes);
    write_prefix(w, f);
    m.prefix = w.size();
    m.fds = dup_fds(w.fds());  // the callable's (a bound Event, say), then the item's
    if constexpr (kStride) {
      m.stride = sizeof(Arg);
    } else {
      m.offsets.push_back(w.size());
    }
    try {
      put(w, std::forward<E>(elem), m.fds);
    } catch (...) {
      for (int fd : m.fds) ::close(fd);
      throw;
    }
    m.bytes = std::move(w).take_bytes();
    return m;
  }
  /// Starts a chunk; `item_bytes`: how many bytes its items will take, if known.
  void begin(std::size_t item_bytes = 0) {
    msg_ = ChunkMessage{};
    items_ = 0;
    w_.clear();
    // Plain items: the buffer becomes the message itself (finish() moves it), so
    // it is sized once, here.
    if constexpr (kStride) w_.reserve(prefix_.size() + item_bytes);
    w_.write(prefix_.bytes().data(), prefix_.size());
    // Fds the callable carries (e.g. a bound Event) come first, at the indices the
    // prefix was encoded with; the items' fds follow.
    for (int fd : prefix_fds_) w_.add_fd(fd);
    msg_.fds = dup_fds(prefix_fds_);
  }
  /// Adds one item. If encoding it throws (a value that cannot be sent, a
  /// serializer that fails midway), the chunk is left exactly as it was: no
  /// offset, no bytes and no fds of that item, so the items before and after it
  /// stay intact (imap sends those read before an input error).
  template <class E>
  void add(E&& elem) {
    if constexpr (kStride) {
      // Plain bytes (numbers, trivially copyable structs): no fds to track, and
      // items at a fixed stride, so no offsets either. The conversion comes
      // before any byte is written.
      put(w_, std::forward<E>(elem), msg_.fds);
      ++items_;
    } else {
      const std::size_t at = w_.size();
      const std::size_t fds_had = w_.fds().size();
      // Room for its offset first (growing as push_back would), so that recording
      // it once it is encoded cannot throw.
      if (msg_.offsets.size() == msg_.offsets.capacity()) msg_.offsets.reserve(2 * msg_.offsets.size() + 8);
      try {
        put(w_, std::forward<E>(elem), msg_.fds);
      } catch (...) {
        // put() kept no owned copy of the failed item's fds: drop its bytes and
        // the fds it lent to the Writer (else later items' fd indices shift).
        w_.truncate(at);
        w_.truncate_fds(fds_had);
        throw;
      }
      msg_.offsets.push_back(at);
    }
  }
  /// Whether add_contiguous may be used: items of plain bytes at a fixed stride.
  static constexpr bool kStride = !Star && kind_of<Arg>() == Kind::bytes;
  /// Adds n items that lie back to back at `p` (a vector's or an array's elements
  /// of exactly the argument type): one copy.
  void add_contiguous(const Arg* p, std::size_t n)
    requires kStride
  {
    if (n != 0) w_.write(p, n * sizeof(Arg));
    items_ += n;
  }
  /// Adds the n items that `it` reads (converted to the argument), advancing it.
  template <class It>
  void add_n(It& it, std::size_t n)
    requires kStride
  {
    std::byte* out = w_.extend(n * sizeof(Arg)).data();
    for (std::size_t k = 0; k < n; ++k, ++it) {
      const Arg arg = static_cast<Arg>(*it);
      std::memcpy(out + k * sizeof(Arg), &arg, sizeof(Arg));
    }
    items_ += n;
  }
  std::size_t items() const { return kStride ? items_ : msg_.offsets.size(); }
  /// Bytes of the items encoded so far in this chunk (the callable's prefix not
  /// counted: the first item always fits, so a chunk is never empty).
  std::size_t item_bytes() const { return w_.size() - prefix_.size(); }
  /// Finishes the chunk: owned copies of the fds its items carry.
  ChunkMessage finish();

 private:
  // What a call's first chunk allocates at once (header, entry id, a small
  // callable and a few small arguments fit), instead of growing step by step.
  static constexpr std::size_t kFirstBytes = 256;

  static void write_prefix(Writer& w, const Fn& f) {
    ChunkHeader h{};
    w.write(&h, sizeof h);
    encode_entry<&pool_entry<Fn, Arg, Star>>(w);
    encode_callable<Fn>(w, f);
  }
  // Encodes one item into w; owned copies of the fds it adds go to `owned`.
  template <class E>
  static void put(Writer& w, E&& elem, std::vector<int>& owned) {
    if constexpr (!Star && kind_of<Arg>() == Kind::bytes) {
      // Plain bytes (numbers, trivially copyable structs): no fds to track.
      const Arg arg = static_cast<Arg>(std::forward<E>(elem));
      w.write(&arg, sizeof arg);
    } else {
      std::size_t had = w.fds().size();
      // Owned copies of the fds the item lent, taken while whatever lent them is
      // alive: the caller's value, or a converted temporary (which dies at the end
      // of its branch, closing them). Room first, so that no duplicate is lost to
      // a failed insert.
      auto keep_fds = [&] {
        owned.reserve(owned.size() + (w.fds().size() - had));
        auto added = dup_fds(w.fds().subspan(had));
        owned.insert(owned.end(), added.begin(), added.end());
      };
      if constexpr (std::is_same_v<std::remove_cvref_t<E>, Arg>) {
        // Already the argument: encoded from the caller's value, not from a copy
        // made only to be encoded.
        dump(w, static_cast<const Arg&>(elem));
        keep_fds();
      } else if constexpr (Star && same_elements<std::remove_cvref_t<E>, Arg>) {
        // apply/submit's arguments (a tuple of references), each already of its
        // parameter's type: encoded as the tuple is, element after element.
        std::apply([&w](const auto&... a) { (dump(w, a), ...); }, elem);
        keep_fds();
      } else {
        // A converted argument (it may own what it lends: a SharedArray moved out
        // of the caller's temporary).
        auto arg = [&]() -> Arg {
          if constexpr (Star) {
            return std::apply([](auto&&... a) { return Arg(std::forward<decltype(a)>(a)...); },
                              std::forward<E>(elem));
          } else {
            return static_cast<Arg>(std::forward<E>(elem));
          }
        }();
        dump(w, arg);
        keep_fds();
      }
    }
  }

  Writer prefix_;
  std::vector<int> prefix_fds_;
  Writer w_;
  ChunkMessage msg_;
  std::size_t items_ = 0;  // with kStride (no offsets kept)
};

template <class Fn, class Arg, bool Star>
ChunkMessage ChunkEncoder<Fn, Arg, Star>::finish() {
  msg_.prefix = prefix_.size();
  if constexpr (kStride) {
    msg_.stride = sizeof(Arg);
    msg_.bytes = std::move(w_).take_bytes();
  } else {
    // Copied: w_ keeps its capacity for the next chunk, whose size is unknown.
    auto bytes = w_.bytes();
    msg_.bytes.assign(bytes.begin(), bytes.end());
  }
  items_ = 0;  // items() counts the chunk being built: none until begin()
  ChunkMessage out = std::move(msg_);
  msg_ = ChunkMessage{};
  return out;
}

template <class R>
inline constexpr bool integral_iota = false;
template <std::integral W, std::integral B>
inline constexpr bool integral_iota<std::ranges::iota_view<W, B>> = true;

/// A map input that can be encoded as it is read, without a copy first: its size
/// is known, and reading it cannot throw (a vector, an array, an iota of
/// integers), so no task can start before an error in the input is seen.
template <class R>
concept NoThrowSizedInput =
    std::ranges::sized_range<R> && std::ranges::forward_range<R> &&
    std::is_copy_constructible_v<std::remove_cvref_t<std::ranges::range_reference_t<R>>> &&
    (integral_iota<std::remove_cvref_t<R>> || requires(std::ranges::iterator_t<R> it, std::ranges::sentinel_t<R> end) {
      requires noexcept(*it);
      requires noexcept(++it);
      requires noexcept(it != end);
    });

/// An automatic map chunk ends once its encoding passes this size, so that it
/// travels inside the task ring (below ChannelOptions::oob_threshold): memory
/// that is already mapped and faulted in, reused message after message. A
/// bigger chunk goes out of band in a fresh memfd, and on a VM every fresh page
/// costs a fault of several µs on each side (docs/pool.md, chunk size).
inline constexpr std::size_t kAutoChunkBytes = std::size_t{48} << 10;

}  // namespace mproc::detail
