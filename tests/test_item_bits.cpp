// ItemBits (src/pool/item_bits.hpp), the pool engine's per-chunk record of
// delivered items, against a std::vector<bool> model: one word held inline up
// to 64 items, a vector beyond.
#include <gtest/gtest.h>

#include <cstddef>
#include <random>
#include <utility>
#include <vector>

#include "../src/pool/item_bits.hpp"

using mproc::detail::ItemBits;

TEST(ItemBits, MatchesAModelAtEverySize) {
  std::mt19937 rng(7);
  for (std::size_t n : {1u, 2u, 63u, 64u, 65u, 127u, 128u, 129u, 1000u}) {
    ItemBits bits(n);
    std::vector<bool> model(n, false);
    ASSERT_EQ(bits.size(), n);
    EXPECT_TRUE(bits.none(0, n));
    for (int step = 0; step < 200; ++step) {
      std::size_t a = rng() % n, b = a + rng() % (n - a + 1);
      if (rng() % 3 == 0) {
        bits.set(a);
        model[a] = true;
      } else if (rng() % 2 == 0) {
        bits.set(a, b);
        for (std::size_t i = a; i < b; ++i) model[i] = true;
      }
      bool none = true;
      for (std::size_t i = a; i < b; ++i) none = none && !model[i];
      ASSERT_EQ(bits.none(a, b), none) << "n=" << n << " [" << a << ", " << b << ")";
    }
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(bits[i], model[i]) << "n=" << n << " i=" << i;
  }
}

TEST(ItemBits, MovesKeepTheirBits) {
  for (std::size_t n : {1u, 64u, 65u, 300u}) {
    ItemBits a(n);
    a.set(n - 1);
    a.set(0, n / 2);
    ItemBits b;
    b = std::move(a);
    ItemBits c(std::move(b));
    EXPECT_TRUE(c[n - 1]);
    EXPECT_TRUE(c[0]);
    EXPECT_TRUE(c.none(n / 2, n - 1));
    EXPECT_FALSE(c.none(n / 2, n));
    EXPECT_EQ(c.size(), n);
  }
}
