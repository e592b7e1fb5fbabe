// OutcomeSlots and OutcomeBuffer (mproc/results.hpp), the store between a lazy
// map's delivering thread and its iterating thread, on their own: ordered and
// unordered taking, runs taken under one lock, and the switch to arrival order
// after outcomes came in.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <random>
#include <stdexcept>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "mproc/results.hpp"

using Outcome = std::variant<int, std::exception_ptr>;
using mproc::detail::OutcomeBuffer;
using mproc::detail::OutcomeSlots;

TEST(OutcomeSlots, OrderedTakingFollowsTheIndexWhateverTheArrivalOrder) {
  OutcomeSlots<Outcome> s;
  std::vector<int> order(1000);
  for (int i = 0; i < 1000; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937(3));
  std::uint64_t next = 0;
  for (int i : order) {
    s.emplace(static_cast<std::uint64_t>(i), Outcome(i * 2));
    while (s.contains(next)) {
      Outcome o = s.take(next);
      ASSERT_EQ(std::get<int>(o), static_cast<int>(next) * 2);
      ++next;
    }
  }
  EXPECT_EQ(next, 1000u);
  EXPECT_TRUE(s.empty());
  // A repeat of a taken index, or of one present, is ignored.
  s.emplace(5, Outcome(-1));
  EXPECT_TRUE(s.empty());
  s.emplace(1000, Outcome(7));
  s.emplace(1000, Outcome(8));
  EXPECT_EQ(std::get<int>(s.take(1000)), 7);
  EXPECT_TRUE(s.empty());
}

TEST(OutcomeSlots, UnorderedTakingIsInArrivalOrderAfterWhatCameBefore) {
  OutcomeSlots<Outcome> s;
  s.emplace(4, Outcome(40));
  s.emplace(1, Outcome(10));
  // The first out-of-order take switches to arrival order: what was there comes
  // by index, then the rest as they arrive.
  auto a = s.take_first_arrived();
  EXPECT_EQ(a.first, 1u);
  s.emplace(9, Outcome(90));
  s.emplace(0, Outcome(0));
  std::vector<std::uint64_t> got;
  while (!s.empty()) got.push_back(s.take_first_arrived().first);
  EXPECT_EQ(got, (std::vector<std::uint64_t>{4, 9, 0}));
  EXPECT_FALSE(s.contains(9));
}

TEST(OutcomeBuffer, TakeBatchTakesTheRunReadyInOrderUpToItsLimit) {
  OutcomeBuffer<int> b;
  b.add([](auto& slots) {
    for (std::uint64_t i : {0u, 1u, 2u, 4u, 5u}) slots.emplace(i, Outcome(static_cast<int>(i)));
  });
  std::deque<std::pair<std::uint64_t, Outcome>> out;
  ASSERT_TRUE(b.take_batch(std::uint64_t{0}, std::nullopt, out, 2));
  ASSERT_EQ(out.size(), 2u);  // the limit
  ASSERT_TRUE(b.take_batch(std::uint64_t{2}, std::nullopt, out, 100));
  ASSERT_EQ(out.size(), 3u);  // 3 is missing: the run ends at 2
  EXPECT_EQ(out.back().first, 2u);
  // Item 3 is not there: the deadline passes.
  EXPECT_FALSE(b.take_batch(std::uint64_t{3}, std::chrono::steady_clock::now() + std::chrono::milliseconds(20), out, 100));
  // Another thread delivers it: the waiter wakes and takes 3, 4 and 5.
  std::thread t([&] { b.add([](auto& slots) { slots.emplace(3, Outcome(3)); }); });
  ASSERT_TRUE(b.take_batch(std::uint64_t{3}, std::nullopt, out, 100));
  t.join();
  ASSERT_EQ(out.size(), 6u);
  for (std::size_t k = 0; k < out.size(); ++k) {
    EXPECT_EQ(out[k].first, k);
    EXPECT_EQ(std::get<int>(out[k].second), static_cast<int>(k));
  }
}

TEST(OutcomeBuffer, UnorderedTakeBatchTakesEverythingThatArrived) {
  OutcomeBuffer<int> b;
  b.add([](auto& slots) {
    slots.emplace(7, Outcome(std::make_exception_ptr(std::runtime_error("seven"))));
    slots.emplace(2, Outcome(2));
  });
  std::deque<std::pair<std::uint64_t, Outcome>> out;
  ASSERT_TRUE(b.take_batch(std::nullopt, std::nullopt, out, 100));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].first, 2u);
  EXPECT_EQ(out[1].first, 7u);
  EXPECT_TRUE(std::holds_alternative<std::exception_ptr>(out[1].second));
}
