// Queue, SimpleQueue and JoinableQueue, after CPython's _TestQueue and
// TestSimpleQueue, under every start method; plus the guarantees of
// mproc/queue.hpp: out-of-band messages, peers that die or leave, no leaks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <atomic>
#include <csignal>
#include <map>
#include <mproc/process.hpp>
#include <mproc/queue.hpp>
#include <mproc/shared_memory.hpp>
#include <numeric>
#include <set>
#include <thread>

#include "util.hpp"

using namespace std::chrono_literals;
using mproc::JoinableQueue;
using mproc::Process;
using mproc::ProcessOptions;
using mproc::Queue;
using mproc::QueueOptions;
using mproc::SimpleQueue;
using mproc::StartMethod;
using Clock = std::chrono::steady_clock;

namespace {

ProcessOptions with(StartMethod m) {
  ProcessOptions o;
  o.start_method = m;
  return o;
}

struct Item {
  std::string name;
  std::vector<int> values;
  std::map<std::string, double> attrs;
  template <class A>
  void serialize(A& ar) {
    ar(name, values, attrs);
  }
  friend bool operator==(const Item&, const Item&) = default;
};

Item make_item(int i) {
  return Item{"item-" + std::to_string(i), std::vector<int>(static_cast<std::size_t>(i % 7), i), {{"i", i * 0.5}}};
}

double elapsed_s(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// ---- child targets ---------------------------------------------------------------------

void put_range(Queue<int> q, int from, int to) {
  for (int i = from; i < to; ++i) q.put(i);
}

void put_items(Queue<Item> q, int n) {
  for (int i = 0; i < n; ++i) q.put(make_item(i));
}

void echo_until_negative(Queue<int> in, Queue<int> out) {
  for (;;) {
    int v = in.get();
    if (v < 0) return;
    out.put(v * 2);
  }
}

// Producer of the poison-pill scenario: items id*1'000'000 + k.
void produce(Queue<std::int64_t> q, int id, int n) {
  for (int k = 0; k < n; ++k) q.put(std::int64_t{id} * 1'000'000 + k);
  q.put(-1);  // one pill per producer
}

// Consumer: everything it took goes back in one message (so the parent can check
// that each item was received exactly once).
void consume(Queue<std::int64_t> q, Queue<std::vector<std::int64_t>> results) {
  std::vector<std::int64_t> got;
  for (;;) {
    std::int64_t v = q.get();
    if (v < 0) break;
    got.push_back(v);
  }
  results.put(got);
}

// The same with get_many(): a batch may hold items after a pill, and both pills.
// Everything but pills is kept; a second pill goes back for the other consumer.
void consume_many(Queue<std::int64_t> q, Queue<std::vector<std::int64_t>> results) {
  std::vector<std::int64_t> got;
  int pills = 0;
  while (pills == 0) {
    for (std::int64_t v : q.get_many(64)) {
      if (v >= 0) {
        got.push_back(v);
      } else if (++pills > 1) {
        q.put(-1);
      }
    }
  }
  results.put(got);
}

void work_joinable(JoinableQueue<int> q, Queue<int> sums) {
  int sum = 0;
  for (;;) {
    int v = q.get();
    if (v < 0) {
      q.task_done();
      break;
    }
    sum += v;
    q.task_done();
  }
  sums.put(sum);
}

void echo_bytes(Queue<std::vector<std::byte>> in, Queue<std::vector<std::byte>> out) { out.put(in.get()); }

void report_size(Queue<std::vector<std::uint8_t>> in, Queue<std::uint64_t> out) {
  auto v = in.get();
  std::uint64_t sum = std::accumulate(v.begin(), v.end(), std::uint64_t{0});
  out.put(v.size());
  out.put(sum);
}

// Takes `n` items, says so, then dies without letting go of anything.
void take_then_die(Queue<int> q, Queue<int> told, int n) {
  for (int i = 0; i < n; ++i) q.get();
  told.put(n);
  std::signal(SIGKILL, SIG_DFL);
  std::raise(SIGKILL);
}

void put_then_die(Queue<int> q, int n) {
  for (int i = 0; i < n; ++i) q.put(i);
  std::raise(SIGKILL);
}

void put_then_close_and_wait(Queue<int> q, Queue<int> hold) {
  q.put(7);
  q.close();
  hold.get();  // stays alive (holding the queue closed) until the parent says go
}

void use_received_queue(Queue<Queue<int>> carrier) {
  Queue<int> q = carrier.get();
  q.put(99);
}

void fill_shared(Queue<mproc::SharedArray<int>> q) {
  auto a = q.get();
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<int>(i) * 3;
}

// A type whose decoding kills the process (in children marked as bombs), so that
// it dies inside Queue.get() holding the consumer lock.
bool g_bomb_child = false;
struct Bomb {
  int x = 0;
  template <class A>
  void save(A& ar) const {
    ar(x);
  }
  template <class A>
  void load(A& ar) {
    ar(x);
    if (g_bomb_child && x == 42) {
      std::signal(SIGKILL, SIG_DFL);
      std::raise(SIGKILL);
    }
  }
};

void get_bomb(Queue<Bomb> q, Queue<int> told) {
  g_bomb_child = true;
  told.put(1);
  q.get();  // dies in here
}

// A large item (out of band: far above the 64 KiB threshold) whose decoding kills
// the process in children marked as bombs: it dies inside get() after the item's
// descriptor was received, i.e. past the point where the item has left the ring.
struct BigBomb {
  int x = 0;
  std::string payload;
  template <class A>
  void save(A& ar) const {
    ar(x, payload);
  }
  template <class A>
  void load(A& ar) {
    ar(x, payload);
    if (g_bomb_child && x == 42) {
      std::signal(SIGKILL, SIG_DFL);
      std::raise(SIGKILL);
    }
  }
};

void get_big_bomb(Queue<BigBomb> q, Queue<int> told) {
  g_bomb_child = true;
  told.put(1);
  q.get();  // dies in here
}

// A large item whose decoding, in children marked as stuck, says "decoded" on a
// queue and then never returns: a get() of it cannot complete, so wherever the
// parent kills the child the item was never delivered, and must still be there.
bool g_stuck_child = false;
Queue<int>* g_decoded = nullptr;  // the child's "decoded" queue, set in the child
struct Stuck {
  std::string payload;
  template <class A>
  void save(A& ar) const {
    ar(payload);
  }
  template <class A>
  void load(A& ar) {
    ar(payload);
    if (g_stuck_child) {
      g_decoded->put(1);
      for (;;) ::pause();
    }
  }
};

void get_stuck(Queue<Stuck> q, Queue<int> entering, Queue<int> decoded) {
  g_stuck_child = true;
  g_decoded = &decoded;
  entering.put(1);
  q.get();  // never returns
}

void simple_echo(SimpleQueue<std::string> in, SimpleQueue<std::string> out) {
  for (;;) {
    std::string s = in.get();
    if (s.empty()) return;
    out.put(s + "!");
  }
}

}  // namespace

// ---- one process -----------------------------------------------------------------------

TEST(Queue, FifoOrderAndSizes) {
  Queue<int> q;
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.full());
  EXPECT_EQ(q.maxsize(), 0u);
  EXPECT_EQ(q.capacity(), mproc::kDefaultQueueCapacity);
  for (int i = 0; i < 100; ++i) q.put(i);
  EXPECT_EQ(q.qsize(), 100u);
  EXPECT_FALSE(q.empty());
  for (int i = 0; i < 100; ++i) ASSERT_EQ(q.get(), i);
  EXPECT_TRUE(q.empty());
}

TEST(Queue, ManyTypes) {
  Queue<Item> q;
  for (int i = 0; i < 20; ++i) q.put(make_item(i));
  for (int i = 0; i < 20; ++i) EXPECT_EQ(q.get(), make_item(i));
  Queue<std::tuple<int, std::string, std::optional<double>>> t;
  t.put({1, "one", std::nullopt});
  t.put({2, "", 2.5});
  EXPECT_EQ(t.get(), std::make_tuple(1, std::string("one"), std::optional<double>{}));
  EXPECT_EQ(std::get<2>(t.get()), 2.5);
  Queue<std::string> s;
  s.put("");  // empty messages are messages too
  s.put(std::string(1000, 'x'));
  EXPECT_EQ(s.get(), "");
  EXPECT_EQ(s.get().size(), 1000u);
}

TEST(Queue, MaxsizeCountsItems) {
  Queue<int> q(3);
  EXPECT_EQ(q.maxsize(), 3u);
  q.put(1);
  q.put(2);
  q.put_nowait(3);
  EXPECT_TRUE(q.full());
  EXPECT_EQ(q.qsize(), 3u);
  EXPECT_THROW(q.put_nowait(4), mproc::Full);
  EXPECT_THROW(q.put(4, 0ms), mproc::Full);
  EXPECT_EQ(q.get_nowait(), 1);
  EXPECT_FALSE(q.full());
  q.put_nowait(4);
  EXPECT_EQ(q.get(), 2);
  EXPECT_EQ(q.get(), 3);
  EXPECT_EQ(q.get(), 4);
  EXPECT_THROW(q.get_nowait(), mproc::Empty);
  EXPECT_THROW(q.get(0ms), mproc::Empty);
}

TEST(Queue, ByteCapacityBoundsAnUnlimitedQueue) {
  // maxsize 0 means no item limit, but the ring still has a byte size.
  Queue<std::string> q(QueueOptions{.capacity = 4096});
  EXPECT_EQ(q.capacity(), 4096u);
  std::string item(500, 'a');  // 8 (length) + 500 + 8 (record) = 520 bytes in the ring
  int n = 0;
  try {
    for (; n < 100; ++n) q.put_nowait(item);
  } catch (const mproc::Full&) {
  }
  EXPECT_EQ(n, 7);  // 7 * 520 = 3640 <= 4096 < 8 * 520
  // full() speaks of the smallest item: 456 bytes are still free.
  EXPECT_FALSE(q.full());
  q.put_nowait(std::string(440, 'b'));
  EXPECT_TRUE(q.full());
  EXPECT_EQ(q.get(), item);
  q.put_nowait(item);  // at offset 0 again: the 440-byte item ended exactly at the end
  for (int i = 1; i < 7; ++i) EXPECT_EQ(q.get(), item);
  EXPECT_EQ(q.get(), std::string(440, 'b'));
  EXPECT_EQ(q.get(), item);
  EXPECT_TRUE(q.empty());
}

TEST(Queue, TimeoutsWaitAtLeastTheTimeout) {
  Queue<int> q(1);
  auto t0 = Clock::now();
  EXPECT_THROW(q.get(150ms), mproc::Empty);
  EXPECT_GE(elapsed_s(t0), 0.149);
  q.put(1);
  t0 = Clock::now();
  EXPECT_THROW(q.put(2, 150ms), mproc::Full);
  EXPECT_GE(elapsed_s(t0), 0.149);
  EXPECT_THROW(q.get(-1ms), mproc::UsageError);
  EXPECT_THROW(q.put(2, -1s), mproc::UsageError);
  // Empty and Full are TimeoutErrors, like a bounded wait that ran out.
  EXPECT_THROW(q.put(2, 1ms), mproc::TimeoutError);
}

TEST(Queue, BlockedGetWakesOnPut) {
  Queue<int> q;
  std::thread t([&] { q.put(5); });  // before or while the main thread sleeps in get()
  EXPECT_EQ(q.get(10s), 5);
  t.join();
}

TEST(Queue, BlockedPutWakesOnGet) {
  Queue<int> q(1);
  q.put(1);
  std::atomic<bool> put_done{false};
  std::thread t([&] {
    q.put(2);  // blocks until the main thread gets
    put_done = true;
  });
  EXPECT_EQ(q.get(10s), 1);
  EXPECT_EQ(q.get(10s), 2);
  t.join();
  EXPECT_TRUE(put_done);
}

TEST(Queue, GetManyAndPutMany) {
  Queue<int> q;
  std::vector<int> in(1000);
  std::iota(in.begin(), in.end(), 0);
  q.put_many(in);
  EXPECT_EQ(q.qsize(), 1000u);
  std::vector<int> out;
  while (out.size() < 1000) {
    auto batch = q.get_many(64);
    ASSERT_FALSE(batch.empty());
    ASSERT_LE(batch.size(), 64u);
    out.insert(out.end(), batch.begin(), batch.end());
  }
  EXPECT_EQ(out, in);
  auto t0 = Clock::now();
  EXPECT_TRUE(q.get_many(10, 100ms).empty());
  EXPECT_GE(elapsed_s(t0), 0.099);
  EXPECT_TRUE(q.get_many(0, 0ms).empty());
  // put_many blocks for room as it goes: more than the ring holds at once.
  Queue<std::int64_t> small(QueueOptions{.capacity = 4096});
  std::vector<std::int64_t> lots(5000);
  std::iota(lots.begin(), lots.end(), 0);
  std::thread consumer([&] {
    std::int64_t expect = 0;
    while (expect < 5000) {
      for (auto v : small.get_many(100)) ASSERT_EQ(v, expect++);
    }
  });
  small.put_many(lots);
  consumer.join();
}

TEST(Queue, CloseEndsUseInThisProcess) {
  Queue<int> q;
  q.put(1);
  Queue<int> copy = q;  // the same queue
  q.close();
  q.close();  // idempotent
  EXPECT_TRUE(copy.closed());
  EXPECT_THROW(q.put(2), mproc::UsageError);
  EXPECT_THROW(copy.get(), mproc::UsageError);
  EXPECT_THROW(q.qsize(), mproc::UsageError);
}

TEST(Queue, CloseWakesAThreadBlockedInGet) {
  Queue<int> q;
  std::atomic<int> outcome{0};
  std::thread t([&] {
    try {
      q.get();
      outcome = 1;
    } catch (const mproc::UsageError&) {
      outcome = 2;
    }
  });
  // Either order must end in UsageError: close() before get() (closed) or while
  // the thread sleeps in it (woken). The pause only makes the second order likely.
  std::this_thread::sleep_for(50ms);
  q.close();
  t.join();
  EXPECT_EQ(outcome, 2);
}

TEST(Queue, ThreadsOfOneProcessNeverSeePeersGone) {
  // No other process ever held the queue: a long wait must time out, not throw
  // EOFError, and many threads must see every item once.
  Queue<int> q(8);
  EXPECT_THROW(q.get(250ms), mproc::Empty);
  constexpr int kThreads = 4, kPer = 5000;
  std::vector<std::thread> producers, consumers;
  std::vector<std::vector<int>> got(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    producers.emplace_back([&, t] {
      for (int i = 0; i < kPer; ++i) q.put(t * kPer + i);
    });
    consumers.emplace_back([&, t] {
      for (int i = 0; i < kPer; ++i) got[t].push_back(q.get());
    });
  }
  for (auto& th : producers) th.join();
  for (auto& th : consumers) th.join();
  std::vector<int> all;
  for (auto& g : got) all.insert(all.end(), g.begin(), g.end());
  std::sort(all.begin(), all.end());
  std::vector<int> expect(kThreads * kPer);
  std::iota(expect.begin(), expect.end(), 0);
  EXPECT_EQ(all, expect);
}

TEST(Queue, MessageSizesAcrossTheOutOfBandThreshold) {
  Queue<std::vector<std::byte>> q;
  const std::size_t threshold = q.channel().oob_threshold();
  EXPECT_EQ(threshold, std::size_t{64} << 10);
  // Encoded size = 8 (length) + n: exactly at the threshold stays in the ring.
  struct Case {
    std::size_t n;
    bool oob;
  };
  for (Case c : {Case{1, false}, Case{threshold - 8, false}, Case{threshold - 7, true},
                 Case{(std::size_t{64} << 10) - 1, true}, Case{(std::size_t{64} << 10) + 1, true},
                 Case{std::size_t{16} << 20, true}}) {
    std::vector<std::byte> v(c.n);
    for (std::size_t i = 0; i < c.n; ++i) v[i] = static_cast<std::byte>(i * 7 + c.n);
    auto before = q.channel().stats();
    q.put(v);
    auto mid = q.channel().stats();
    EXPECT_EQ(mid.sent_oob - before.sent_oob, c.oob ? 1u : 0u) << c.n;
    EXPECT_EQ(q.qsize(), 1u);
    EXPECT_EQ(q.get(), v) << c.n;
    EXPECT_EQ(q.channel().stats().received_oob - mid.received_oob, c.oob ? 1u : 0u) << c.n;
  }
}

TEST(Queue, HandlesTravelThroughQueues) {
  Queue<Queue<int>> carrier;
  Queue<int> q;
  carrier.put(q);
  Queue<int> same = carrier.get();
  same.put(5);
  EXPECT_EQ(q.get(), 5);
  // A carrier destroyed with handles still inside frees everything (checked by
  // ManyCyclesLeakNothing: the kernel collects fds in flight).
  carrier.put(q);
}

TEST(Queue, AHandleOfTheWrongTypeIsRefused) {
  // A handle's bytes decoded as another item type or flavour: the tag does not match.
  Queue<int> q;
  mproc::Writer w;
  mproc::dump(w, q);
  mproc::Reader r(w.bytes(), w.fds());
  EXPECT_THROW(mproc::load<Queue<long>>(r), mproc::SerializationError);
  mproc::Reader r2(w.bytes(), w.fds());
  EXPECT_THROW(mproc::load<JoinableQueue<int>>(r2), mproc::SerializationError);
  mproc::Reader r3(w.bytes(), w.fds());
  EXPECT_NO_THROW(mproc::load<Queue<int>>(r3));  // balances the handle count of the encode
}

TEST(Queue, BadOptions) {
  EXPECT_THROW(Queue<int>(std::size_t{1} << 30), mproc::UsageError);
  EXPECT_THROW(Queue<int>(QueueOptions{.capacity = std::size_t{1} << 30}), mproc::UsageError);
  Queue<int> tiny(QueueOptions{.capacity = 1});
  EXPECT_EQ(tiny.capacity(), 4096u);  // rounded up
  Queue<int> odd(QueueOptions{.capacity = 5000});
  EXPECT_EQ(odd.capacity(), 8192u);
  Queue<int> moved;
  Queue<int> to(std::move(moved));
  EXPECT_THROW(moved.put(1), mproc::UsageError);  // NOLINT(bugprone-use-after-move)
}

TEST(JoinableQueue, TaskDoneAndJoin) {
  JoinableQueue<int> q;
  EXPECT_THROW(q.task_done(), mproc::UsageError);  // nothing put yet
  q.join();                                       // nothing unfinished
  q.put(1);
  q.put(2);
  EXPECT_FALSE(q.join(50ms));
  q.get();
  q.task_done();
  EXPECT_FALSE(q.join(0ms));
  std::thread t([&] {
    q.get();
    q.task_done();
  });
  EXPECT_TRUE(q.join(10s));
  t.join();
  EXPECT_THROW(q.task_done(), mproc::UsageError);  // more task_done() than items
}

TEST(SimpleQueue, PutGetEmptyClose) {
  SimpleQueue<std::string> q;
  EXPECT_TRUE(q.empty());
  q.put("a");
  q.put("b");
  EXPECT_FALSE(q.empty());
  EXPECT_EQ(q.get(), "a");
  EXPECT_EQ(q.get(), "b");
  EXPECT_TRUE(q.empty());
  q.close();
  EXPECT_THROW(q.put("c"), mproc::UsageError);
}

TEST(Queue, SharedMemoryHandlesTravelAsFds) {
  Queue<mproc::SharedArray<int>> q;
  mproc::SharedArray<int> a(100);
  q.put(a);
  auto b = q.get();
  b[5] = 77;
  EXPECT_EQ(a[5], 77);
  // put_many batches items without fds and sends those with fds on their own, in order.
  Queue<std::optional<mproc::SharedArray<int>>> mixed;
  std::vector<std::optional<mproc::SharedArray<int>>> items{std::nullopt, mproc::SharedArray<int>{1},
                                                            std::nullopt, std::nullopt,
                                                            mproc::SharedArray<int>{2}, std::nullopt};
  mixed.put_many(items);
  for (const auto& sent : items) {
    auto got = mixed.get();
    ASSERT_EQ(got.has_value(), sent.has_value());
    if (!got) continue;
    ASSERT_EQ(got->size(), 1u);
    EXPECT_EQ((*got)[0], (*sent)[0]);
    (*got)[0] += 10;
    EXPECT_EQ((*sent)[0], (*got)[0]);  // the same shared memory
  }
  EXPECT_TRUE(mixed.empty());
}

TEST(Queue, ManyCyclesLeakNothing) {
  {  // warm-ups: thread-local buffers, the forkserver
    Queue<int> q;
    q.put(1);
  }
  int fds = mproc_test::fd_count();
  int shm = mproc_test::shm_entries();
  for (int i = 0; i < 1000; ++i) {
    Queue<std::string> q(4);
    q.put("x");
    q.put(std::string(100'000, 'y'));  // out of band
    ASSERT_EQ(q.get(), "x");
    ASSERT_EQ(q.get().size(), 100'000u);
    JoinableQueue<int> j;
    j.put(1);
    Queue<Queue<int>> carrier;
    carrier.put(Queue<int>());
    (void)carrier.get();
  }
  EXPECT_EQ(mproc_test::fd_count(), fds);
  EXPECT_EQ(mproc_test::shm_entries(), shm);
}

// ---- across processes -------------------------------------------------------------------

class QueueAcross : public ::testing::TestWithParam<StartMethod> {};

TEST_P(QueueAcross, ChildPutsParentGetsInOrder) {
  Queue<int> q;
  Process p(with(GetParam()), put_range, q, 0, 1000);
  p.start();
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(q.get(10s), i);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(QueueAcross, ItemsOfManyTypes) {
  Queue<Item> q;
  Process p(with(GetParam()), put_items, q, 50);
  p.start();
  for (int i = 0; i < 50; ++i) ASSERT_EQ(q.get(10s), make_item(i));
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(QueueAcross, MaxsizeBlocksTheProducer) {
  Queue<int> q(2);
  Process p(with(GetParam()), put_range, q, 0, 20);
  p.start();
  // The child fills the queue and must wait: the queue is seen full and stays at 2.
  auto deadline = Clock::now() + 10s;
  while (!q.full() && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
  ASSERT_TRUE(q.full());
  EXPECT_EQ(q.qsize(), 2u);
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(q.get(10s), i);
    EXPECT_LE(q.qsize(), 2u);
  }
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(QueueAcross, PingPong) {
  Queue<int> a, b;
  Process p(with(GetParam()), echo_until_negative, a, b);
  p.start();
  for (int i = 0; i < 2000; ++i) {
    a.put(i);
    ASSERT_EQ(b.get(10s), 2 * i);
  }
  a.put(-1);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(QueueAcross, TwoProducersTwoConsumersEveryItemOnce) {
  constexpr int kPer = 20'000;
  for (auto consumer : {consume, consume_many}) {
    Queue<std::int64_t> q(100);
    Queue<std::vector<std::int64_t>> results;
    std::vector<Process> ps;
    for (int c = 0; c < 2; ++c) ps.emplace_back(with(GetParam()), consumer, q, results);
    for (int id = 1; id <= 2; ++id) ps.emplace_back(with(GetParam()), produce, q, id, kPer);
    for (auto& p : ps) p.start();
    std::vector<std::int64_t> all;
    for (int c = 0; c < 2; ++c) {
      auto got = results.get(60s);
      all.insert(all.end(), got.begin(), got.end());
    }
    for (auto& p : ps) {
      p.join();
      EXPECT_EQ(p.exitcode(), 0);
    }
    std::sort(all.begin(), all.end());
    std::vector<std::int64_t> expect;
    for (int id = 1; id <= 2; ++id) {
      for (int k = 0; k < kPer; ++k) expect.push_back(std::int64_t{id} * 1'000'000 + k);
    }
    ASSERT_EQ(all.size(), expect.size());
    EXPECT_EQ(all, expect);
    EXPECT_TRUE(q.empty());
  }
}

TEST_P(QueueAcross, JoinableQueueJoinsWhenWorkersAreDone) {
  JoinableQueue<int> q;
  Queue<int> sums;
  Process w1(with(GetParam()), work_joinable, q, sums);
  Process w2(with(GetParam()), work_joinable, q, sums);
  w1.start();
  w2.start();
  int expect = 0;
  for (int i = 1; i <= 500; ++i) {
    q.put(i);
    expect += i;
  }
  q.put(-1);
  q.put(-1);
  q.join();  // returns only once every item was task_done()'d
  EXPECT_EQ(q.qsize(), 0u);
  EXPECT_EQ(sums.get(10s) + sums.get(10s), expect);
  w1.join();
  w2.join();
  EXPECT_EQ(w1.exitcode(), 0);
  EXPECT_EQ(w2.exitcode(), 0);
}

TEST_P(QueueAcross, MessageSizes) {
  Queue<std::vector<std::byte>> in, out;
  for (std::size_t n : {std::size_t{1}, (std::size_t{64} << 10) - 1, (std::size_t{64} << 10) + 1,
                        std::size_t{16} << 20}) {
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131) >> 3);
    Process p(with(GetParam()), echo_bytes, in, out);
    p.start();
    in.put(v);
    EXPECT_EQ(out.get(30s), v) << n;
    p.join();
    EXPECT_EQ(p.exitcode(), 0);
  }
}

TEST_P(QueueAcross, SimpleQueueEcho) {
  SimpleQueue<std::string> in, out;
  Process p(with(GetParam()), simple_echo, in, out);
  p.start();
  for (std::string s : {"a", "bb", "ccc"}) {
    in.put(s);
    EXPECT_EQ(out.get(), s + "!");
  }
  in.put("");
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(QueueAcross, QueueHandleSentThroughAQueue) {
  Queue<Queue<int>> carrier;
  Queue<int> q;
  Process p(with(GetParam()), use_received_queue, carrier);
  p.start();
  carrier.put(q);
  EXPECT_EQ(q.get(10s), 99);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(QueueAcross, SharedArrayThroughAQueue) {
  Queue<mproc::SharedArray<int>> q;
  mproc::SharedArray<int> a(1000);
  Process p(with(GetParam()), fill_shared, q);
  p.start();
  q.put(a);
  p.join();
  ASSERT_EQ(p.exitcode(), 0);
  for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], static_cast<int>(i) * 3);
}

// -- failure detection --

TEST_P(QueueAcross, PutOnAFullQueueWhoseConsumerWasKilled) {
  Queue<int> q(4), told;
  Process p(with(GetParam()), take_then_die, q, told, 10);
  p.start();
  int put = 0;
  auto t0 = Clock::now();
  try {
    for (;; ++put) q.put(put, 30s);  // mid-stream the consumer dies; then the queue fills up
  } catch (const mproc::BrokenPipeError& e) {
    EXPECT_NE(std::string(e.what()).find("full"), std::string::npos) << e.what();
  }
  EXPECT_LT(elapsed_s(t0), 20.0);
  EXPECT_EQ(told.get(10s), 10);
  EXPECT_EQ(put, 10 + 4);  // 10 taken by the consumer, 4 left in the full queue
  p.join();
  EXPECT_EQ(p.exitcode(), -SIGKILL);
  // What is in the queue can still be taken; after that, get() knows nothing can come.
  for (int i = 10; i < 14; ++i) EXPECT_EQ(q.get(), i);
  EXPECT_THROW(q.get(), mproc::EOFError);
}

TEST_P(QueueAcross, GetOnAnEmptyQueueWhoseProducerWasKilled) {
  Queue<int> q;
  Process p(with(GetParam()), put_then_die, q, 3);
  p.start();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(q.get(10s), i);
  auto t0 = Clock::now();
  EXPECT_THROW(q.get(), mproc::EOFError);
  EXPECT_LT(elapsed_s(t0), 5.0);
  p.join();
  EXPECT_EQ(p.exitcode(), -SIGKILL);
}

TEST_P(QueueAcross, GetAfterTheOnlyProducerExitedNormally) {
  Queue<int> q;
  Process p(with(GetParam()), put_range, q, 0, 2);
  p.start();
  p.join();  // items stay in the queue after their producer is gone
  EXPECT_EQ(q.get(), 0);
  EXPECT_EQ(q.get(), 1);
  EXPECT_THROW(q.get(), mproc::EOFError);
  EXPECT_THROW(q.get_nowait(), mproc::Empty);  // non-blocking calls only report "empty"
  // With a timeout, Python's Empty at the timeout: this process still holds the
  // queue, and a thread of it may put meanwhile (it was an EOFError at once).
  auto t0 = Clock::now();
  EXPECT_THROW(q.get(300ms), mproc::Empty);
  EXPECT_GE(elapsed_s(t0), 0.3);
  EXPECT_TRUE(q.get_many(4, 100ms).empty());
}

TEST_P(QueueAcross, TimedGetWaitsForAThreadOfThisProcessAfterThePeersLeft) {
  // docs/queue.md's advice for this pattern: use a timeout. The other process has
  // held the queue and exited; a thread here puts later; the timed get waits for it.
  Queue<int> q;
  Process p(with(GetParam()), put_range, q, 0, 1);
  p.start();
  p.join();
  EXPECT_EQ(q.get(10s), 0);
  std::thread later([q]() mutable {
    std::this_thread::sleep_for(300ms);  // the scenario: the put comes after the get began
    q.put(1);
  });
  EXPECT_EQ(q.get(10s), 1);
  later.join();
}

TEST_P(QueueAcross, ClosingPeerCountsAsGoneAtOnce) {
  Queue<int> q, hold;
  Process p(with(GetParam()), put_then_close_and_wait, q, hold);
  p.start();
  EXPECT_EQ(q.get(10s), 7);
  auto t0 = Clock::now();
  EXPECT_THROW(q.get(), mproc::EOFError);  // the child is alive, but closed its queue
  EXPECT_LT(elapsed_s(t0), 5.0);
  hold.put(1);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(QueueAcross, AHandleOnItsWayCountsAsAPeer) {
  Queue<int> q;
  {
    Process first(with(GetParam()), put_range, q, 0, 1);
    first.start();
    first.join();
  }
  EXPECT_EQ(q.get(), 0);
  // The first child is gone; a second one exists but has not started: the queue is
  // inside its task, so waiting is right, and a timeout is a timeout.
  Process second(with(GetParam()), put_range, q, 1, 2);
  EXPECT_THROW(q.get(300ms), mproc::Empty);
  second.start();
  EXPECT_EQ(q.get(10s), 1);
  second.join();
}

TEST_P(QueueAcross, ConsumerKilledWhileHoldingTheLock) {
  // The child dies inside get(), while decoding, i.e. holding the consumer lock:
  // the parent takes the lock over and receives the item the child never got.
  Queue<Bomb> q;
  Queue<int> told;
  Process p(with(GetParam()), get_bomb, q, told);
  p.start();
  EXPECT_EQ(told.get(10s), 1);
  q.put(Bomb{42});
  p.join();
  EXPECT_EQ(p.exitcode(), -SIGKILL);
  q.put(Bomb{43});
  auto t0 = Clock::now();
  EXPECT_EQ(q.get(10s).x, 42);
  EXPECT_EQ(q.get(10s).x, 43);
  EXPECT_LT(elapsed_s(t0), 5.0);
}

TEST_P(QueueAcross, LargeItemOfAConsumerKilledInsideGetGoesToASurvivor) {
  // As above, for an out-of-band item: the child dies decoding it, after its
  // descriptor came through the socket. Before the fix the item had left the ring
  // by then: the parent's get() raised EOFError and qsize() was 0.
  Queue<BigBomb> q;
  Queue<int> told;
  Process p(with(GetParam()), get_big_bomb, q, told);
  p.start();
  EXPECT_EQ(told.get(10s), 1);
  BigBomb big{42, std::string(std::size_t{1} << 20, 'b')};
  big.payload[12345] = 'c';
  q.put(big);
  p.join();
  EXPECT_EQ(p.exitcode(), -SIGKILL);
  EXPECT_EQ(q.qsize(), 1u);
  q.put(BigBomb{43, std::string(100'000, 'd')});
  BigBomb got = q.get(10s);
  EXPECT_EQ(got.x, 42);
  EXPECT_TRUE(got.payload == big.payload);
  EXPECT_EQ(q.get(10s).x, 43);
  EXPECT_EQ(q.qsize(), 0u);
}

TEST_P(QueueAcross, NoLeaksNoZombies) {
  int fds = 0, shm = 0;
  for (int i = 0; i < 6; ++i) {
    if (i == 1) {  // after a warm-up round (it may start the forkserver)
      fds = mproc_test::fd_count();
      shm = mproc_test::shm_entries();
    }
    Queue<int> q;
    Process p(with(GetParam()), put_range, q, 0, 3);
    p.start();
    for (int k = 0; k < 3; ++k) ASSERT_EQ(q.get(10s), k);
    p.join();
  }
  EXPECT_EQ(mproc_test::fd_count(), fds);
  EXPECT_EQ(mproc_test::shm_entries(), shm);
  EXPECT_EQ(mproc_test::zombie_children(), 0);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, QueueAcross,
                         ::testing::Values(StartMethod::fork, StartMethod::forkserver, StartMethod::spawn),
                         [](const auto& i) { return std::string(mproc::to_string(i.param)); });

// Kills at pseudo-random points of a large get(): the child says it is entering
// get(), the parent waits a delay drawn from [0, 1.25 x the time a whole get takes]
// for the child's "decoded" (its item's load() never returns, so the get cannot
// complete), then kills it. Wherever the kill lands (waiting for the lock, in the
// socket receive, mapping or reading the segment, decoding), the item must still
// be in the queue, exactly once. Sizes on both sides of the 64 MiB read/map switch.
TEST(QueueKill, KilledAtRandomPointsOfALargeGetLosesNothing) {
  unsigned seed = 2026;
  double full_s[2] = {-1, -1};  // per size, measured by its first round (no early kill)
  for (int round = 0; round < 10; ++round) {
    const std::size_t n = round % 2 ? (std::size_t{72} << 20) : (std::size_t{8} << 20);
    double& full = full_s[round % 2];
    Queue<Stuck> q;
    Queue<int> entering, decoded;
    Stuck item{std::string(n, 'x')};
    item.payload[n / 3] = static_cast<char>('a' + round);
    q.put(item);
    Process p(with(StartMethod::fork), get_stuck, q, entering, decoded);
    p.start();
    ASSERT_EQ(entering.get(10s), 1);
    auto t0 = Clock::now();
    seed = seed * 1103515245 + 12345;
    double delay_s = full < 0 ? 30.0 : full * 1.25 * ((seed >> 8) % 1000) / 1000.0;
    bool was_decoded = false;
    try {
      was_decoded = decoded.get(std::chrono::duration_cast<std::chrono::microseconds>(
                        std::chrono::duration<double>(delay_s))) == 1;
    } catch (const mproc::Empty&) {
    }
    if (full < 0) {
      ASSERT_TRUE(was_decoded);
      full = elapsed_s(t0);
    }
    if (std::getenv("MPROC_TEST_VERBOSE")) std::printf("round %d: %zu B, kill at %.4f s%s\n", round, n, delay_s, was_decoded ? " (decoded)" : "");
    ::kill(p.pid(), SIGKILL);
    p.join();
    EXPECT_EQ(p.exitcode(), -SIGKILL);
    SCOPED_TRACE("round " + std::to_string(round) + ", killed after " + std::to_string(delay_s) + " s" +
                 (was_decoded ? " (decoded)" : ""));
    EXPECT_EQ(q.qsize(), 1u);
    Stuck got = q.get(10s);
    EXPECT_EQ(got.payload.size(), n);
    EXPECT_EQ(got.payload[n / 3], item.payload[n / 3]);
    EXPECT_THROW(q.get_nowait(), mproc::Empty);
  }
  EXPECT_EQ(mproc_test::zombie_children(), 0);
}

// A message larger than 1 GiB, once (fork: the cheapest start). ~4 GiB of memory
// at the peak (the item, its encoding, the out-of-band segment, the receiver's
// copy). Measured on the 2-core VM: ~11 s, ~15 s under ASan, nearly all of it page
// faults on fresh memory; so it runs in both builds.
TEST(QueueHuge, MoreThanAGigabyte) {
  std::size_t n = (std::size_t{1} << 30) + 4096;
  Queue<std::vector<std::uint8_t>> q;
  Queue<std::uint64_t> out;
  Process p(with(StartMethod::fork), report_size, q, out);
  p.start();
  std::uint64_t sum = 0;
  {
    std::vector<std::uint8_t> v(n);
    for (std::size_t i = 0; i < n; i += 4096) v[i] = static_cast<std::uint8_t>(i >> 12);
    for (std::size_t i = 0; i < n; i += 4096) sum += v[i];
    q.put(v);
  }
  EXPECT_EQ(out.get(60s), n);
  EXPECT_EQ(out.get(60s), sum);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

// A big vector of plain values is decoded by its own path (huge pages asked for
// before its memory is touched, docs/queue.md): the same values as the general
// decoder, and the same errors for a message of another type or a corrupt count.
TEST(Queue, BigPlainVectorsDecodeAsAnyOther) {
  Queue<std::vector<std::uint32_t>> q;
  std::vector<std::uint32_t> v((std::size_t{9} << 20) / 4);
  std::iota(v.begin(), v.end(), 7u);
  q.put(v);
  EXPECT_EQ(q.get(), v);
  Queue<std::vector<std::byte>> b;
  std::vector<std::byte> bytes(std::size_t{8} << 20, std::byte{3});
  bytes.back() = std::byte{9};
  b.put(bytes);
  EXPECT_EQ(b.get(), bytes);
  // The same channel read as another type: trailing bytes, or a count the bytes
  // cannot hold.
  using mproc::detail::ChannelEnd;
  auto raw = ChannelEnd::create_queue(mproc::detail::ChannelOptions{});
  auto as = [&](std::uint64_t count, std::size_t body) {
    std::vector<std::byte> m(8 + body, std::byte{1});
    std::memcpy(m.data(), &count, 8);
    EXPECT_TRUE(raw.send(m, {}, std::nullopt));
    return raw.recv(std::nullopt, [](mproc::Reader& r) { (void)mproc::detail::load_message<std::vector<std::byte>>(r); });
  };
  EXPECT_THROW(as((std::size_t{8} << 20) - 1, std::size_t{8} << 20), mproc::SerializationError);
  EXPECT_THROW(as((std::size_t{8} << 20) + 1, std::size_t{8} << 20), mproc::SerializationError);
  EXPECT_EQ(raw.size(), 0u);
}
