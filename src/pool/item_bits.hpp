// ItemBits: which items of a pool chunk were delivered (engine.hpp's Chunk).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace mproc::detail {

// Which items of a chunk were delivered: a bitmap whose range operations go a
// 64-bit word at a time (a result batch covers thousands of items). Up to 64
// items (every single call) in one word of its own, without an allocation.
class ItemBits {
 public:
  explicit ItemBits(std::size_t n = 0) : n_(n), more_(n > 64 ? (n + 63) / 64 : 0, 0) {}
  std::size_t size() const noexcept { return n_; }
  bool operator[](std::size_t i) const noexcept { return (words()[i / 64] >> (i % 64)) & 1; }
  void set(std::size_t i) noexcept { words()[i / 64] |= std::uint64_t{1} << (i % 64); }
  /// Whether no item of [a, b) is set.
  bool none(std::size_t a, std::size_t b) const noexcept {
    bool any = false;
    for_words(words(), a, b, [&](std::uint64_t w, std::uint64_t mask) { any |= (w & mask) != 0; });
    return !any;
  }
  /// Sets [a, b).
  void set(std::size_t a, std::size_t b) noexcept {
    for_words(words(), a, b, [](std::uint64_t& w, std::uint64_t mask) { w |= mask; });
  }

 private:
  std::uint64_t* words() noexcept { return more_.empty() ? &one_ : more_.data(); }
  const std::uint64_t* words() const noexcept { return more_.empty() ? &one_ : more_.data(); }
  // f(word, mask of the bits of [a, b) in it), for each word that [a, b) touches.
  template <class Words, class F>
  static void for_words(Words* words, std::size_t a, std::size_t b, F&& f) {
    while (a < b) {
      std::size_t bit = a % 64, n = std::min<std::size_t>(64 - bit, b - a);
      std::uint64_t mask = (n == 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << n) - 1)) << bit;
      f(words[a / 64], mask);
      a += n;
    }
  }
  std::size_t n_;
  std::uint64_t one_ = 0;              // the bits, up to 64 items
  std::vector<std::uint64_t> more_;    // the bits, over 64 items
};

}  // namespace mproc::detail
