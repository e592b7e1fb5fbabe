// TicketTable (src/pool/ticket_table.hpp) in-process: every interleaving of
// claim, cancel, takeover and death notice for one ticket, enumerated; and
// seeded random operation sequences over many tickets sharing a small table
// (word reuse), checked against a model. No processes, no pool.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../src/pool/ticket_table.hpp"

using mproc::detail::TicketTable;

namespace {

// One chunk with ticket t in a cancellable pool. Its record sits in the task
// channel; workers receive it one after another: a worker claims it and then
// either dies inside the receive (the record stays in the ring: the next worker
// gets it) or keeps it (the record leaves the ring) and later runs it to the end
// or dies. Every worker that claimed `run` and died gets a death notice, which
// may come at any later moment. The parent may try to cancel at any moment.
// Whatever the order, the chunk must be accounted exactly once: cancelled, run
// to the end by a worker, or re-queued by exactly one death notice.
struct World {
  std::uint64_t word = 0;  // the ticket's word (a TicketTable over it per step)
  static constexpr std::uint64_t t = 7;
  int next_worker = 0;  // workers that got the record so far
  bool in_ring = true;  // the record is still in the channel
  bool cancel_tried = false;
  std::vector<int> notices;  // dead claimants whose notice is not in yet
  int cancelled = 0, ran = 0, requeued = 0;
  std::string trace;
};

constexpr int kMaxWorkers = 3;

// Depth-first over every choice; `check` runs at each leaf.
void explore(World w, int& leaves) {
  bool any = false;
  auto step = [&](const char* what, const std::function<void(World&, TicketTable&)>& f) {
    any = true;
    World next = w;
    std::atomic<std::uint64_t> word{w.word};
    TicketTable table(&word, 1);
    next.trace += what;
    f(next, table);
    next.word = word.load();
    explore(std::move(next), leaves);
  };
  if (!w.cancel_tried) {
    step(" cancel", [](World& x, TicketTable& table) {
      x.cancel_tried = true;
      if (table.cancel(World::t)) ++x.cancelled;
    });
  }
  if (w.in_ring && w.next_worker < kMaxWorkers) {
    // The next worker receives the record and claims it; then one of three fates.
    for (int fate = 0; fate < 3; ++fate) {
      static const char* names[] = {" claim+die-in-ring", " claim+keep+run", " claim+keep+die"};
      step(names[fate], [fate](World& x, TicketTable& table) {
        int id = x.next_worker++;
        auto c = table.claim(World::t);
        bool runs = c != TicketTable::Claim::cancelled;
        if (!runs) {
          x.in_ring = fate == 0;  // a dropped record leaves the ring unless it died first
          return;
        }
        if (fate == 0) {
          x.notices.push_back(id);
          return;
        }
        x.in_ring = false;
        if (fate == 1) ++x.ran;
        else x.notices.push_back(id);
      });
    }
  }
  for (std::size_t k = 0; k < w.notices.size(); ++k) {
    step(" notice", [k](World& x, TicketTable& table) {
      x.notices.erase(x.notices.begin() + static_cast<std::ptrdiff_t>(k));
      if (table.on_death(World::t) == TicketTable::Death::requeue) ++x.requeued;
    });
  }
  if (any) return;
  // A leaf: every event happened. A record still in the ring with workers left
  // is not a leaf (someone will receive it); with none left it stays queued.
  ++leaves;
  const int total = w.cancelled + w.ran + w.requeued;
  if (w.in_ring && w.cancelled == 0 && w.ran == 0 && w.requeued == 0) return;  // still queued: fine
  EXPECT_EQ(total, 1) << "trace:" << w.trace << " -> cancelled " << w.cancelled << ", ran " << w.ran
                      << ", re-queued " << w.requeued;
}

}  // namespace

TEST(TicketTable, EveryInterleavingAccountsTheChunkExactlyOnce) {
  World w;
  std::atomic<std::uint64_t> word{0};
  ASSERT_TRUE(TicketTable(&word, 1).issue(World::t));
  w.word = word.load();
  int leaves = 0;
  explore(std::move(w), leaves);
  EXPECT_GT(leaves, 100);  // the enumeration did branch
}

TEST(TicketTable, ClaimAndCancelRaceHasOneWinner) {
  for (bool cancel_first : {false, true}) {
    std::atomic<std::uint64_t> word{0};
    TicketTable t(&word, 1);
    ASSERT_TRUE(t.issue(5));
    EXPECT_FALSE(t.taken(5));
    bool cancelled = false;
    TicketTable::Claim c{};
    if (cancel_first) {
      cancelled = t.cancel(5);
      c = t.claim(5);
    } else {
      c = t.claim(5);
      cancelled = t.cancel(5);
    }
    EXPECT_NE(cancelled, c != TicketTable::Claim::cancelled);
    EXPECT_TRUE(t.taken(5));
  }
}

TEST(TicketTable, AWordIsReusedOnlyOnceItsTicketIsNoLongerQueued) {
  std::atomic<std::uint64_t> words[2] = {0, 0};
  TicketTable t(words, 2);
  ASSERT_TRUE(t.issue(1));
  EXPECT_FALSE(t.issue(3));  // same word, ticket 1 still queued
  EXPECT_TRUE(t.issue(2));   // the other word
  EXPECT_EQ(t.claim(1), TicketTable::Claim::run);
  EXPECT_TRUE(t.issue(3));  // 1 was claimed: free
  // A stale record of a ticket whose word now holds a newer one is dropped.
  EXPECT_EQ(t.claim(1), TicketTable::Claim::cancelled);
  EXPECT_EQ(t.claim(3), TicketTable::Claim::run);
  t.withdraw(2);  // its send failed
  EXPECT_TRUE(t.issue(4));
}

TEST(TicketTable, RandomOperationSequencesMatchTheModel) {
  // Seeded, reproducible: a run that fails prints its seed. Many tickets over a
  // 4-word table, so words are reused; each ticket's record is received by up to
  // three workers as in the enumeration, its events interleaved with other
  // tickets' at random. Checked: the accounting invariant per ticket, issue()
  // refusing exactly the words whose ticket is still queued, taken() agreeing.
  for (std::uint32_t seed = 1; seed <= 200; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937 rng(seed);
    constexpr std::uint64_t kWords = 4;
    std::atomic<std::uint64_t> words[kWords] = {0, 0, 0, 0};
    for (auto& w : words) w.store(TicketTable::value(0, TicketTable::cancelled));
    TicketTable table(words, kWords);
    struct Ticket {
      std::uint64_t t = 0;
      bool in_ring = true, cancel_tried = false, queued = true;
      int taken_over = 0;  // takeovers whose notice has not come yet (the word is reclaimed)
      int workers = 0, cancelled = 0, ran = 0, requeued = 0;
      int notices = 0;  // dead claimants' notices to come
    };
    std::vector<Ticket> live;
    std::uint64_t next = 1;
    for (int op = 0; op < 400; ++op) {
      int kind = static_cast<int>(rng() % 4);
      if (kind == 0 || live.empty()) {  // issue the next ticket
        std::uint64_t t = next++;
        bool busy = false;
        for (auto& x : live) busy |= x.t % kWords == t % kWords && (x.queued || x.taken_over > 0);
        bool ok = table.issue(t);
        ASSERT_EQ(ok, !busy) << "ticket " << t;
        if (ok) live.push_back(Ticket{t});
        continue;
      }
      Ticket& x = live[rng() % live.size()];
      if (kind == 1 && !x.cancel_tried) {
        x.cancel_tried = true;
        bool won = table.cancel(x.t);
        ASSERT_EQ(won, x.queued);
        if (won) {
          ++x.cancelled;
          x.queued = false;
        }
      } else if (kind == 2 && x.in_ring && x.workers < 3) {
        ++x.workers;
        auto c = table.claim(x.t);
        bool was_queued = x.queued;
        x.queued = false;
        if (c == TicketTable::Claim::cancelled) {
          ASSERT_FALSE(was_queued);
          x.in_ring = false;
          continue;
        }
        if (c == TicketTable::Claim::took_over) ++x.taken_over;
        switch (rng() % 3) {
          case 0: ++x.notices; break;                               // died in the ring
          case 1: x.in_ring = false; ++x.ran; break;                // ran it
          default: x.in_ring = false; ++x.notices; break;           // died after
        }
      } else if (kind == 3 && x.notices > 0) {
        --x.notices;
        if (table.on_death(x.t) == TicketTable::Death::requeue) ++x.requeued;
        else --x.taken_over;
      }
      ASSERT_EQ(table.taken(x.t), !x.queued);
    }
    // Drain: every notice arrives, and a record left in the ring with a claim is
    // received by no one else; then each ticket is accounted once (or is still
    // queued, never claimed).
    for (auto& x : live) {
      while (x.notices > 0) {
        --x.notices;
        if (table.on_death(x.t) == TicketTable::Death::requeue) ++x.requeued;
        else --x.taken_over;
      }
      EXPECT_EQ(x.taken_over, 0) << "ticket " << x.t;
      int total = x.cancelled + x.ran + x.requeued;
      if (x.queued) {
        EXPECT_EQ(total, 0) << "ticket " << x.t;
      } else {
        EXPECT_EQ(total, 1) << "ticket " << x.t << ": cancelled " << x.cancelled << ", ran " << x.ran
                            << ", re-queued " << x.requeued;
      }
    }
  }
}
