// The channel core under Queue and Pipe (mproc/detail/channel.hpp): records of
// every size wrapping around a small ring, batches, the side band, handles
// inherited through fork.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <mproc/detail/channel.hpp>
#include <mproc/pipe.hpp>
#include <mproc/process.hpp>
#include <mproc/queue.hpp>
#include <mproc/shared_memory.hpp>
#include <numeric>
#include <random>
#include <thread>

#include "../src/channel/internal.hpp"  // white-box: the shared layout, to plant a dead lock holder
#include "util.hpp"

using namespace std::chrono_literals;
using mproc::Process;
using mproc::ProcessOptions;
using mproc::Queue;
using mproc::QueueOptions;
using mproc::StartMethod;
using mproc::detail::ChannelEnd;
using mproc::detail::ChannelOptions;

namespace {

ProcessOptions with(StartMethod m) {
  ProcessOptions o;
  o.start_method = m;
  return o;
}

// Message k of producer `id`: a header (id, k, size) and bytes derived from it, so
// the receiver can check each message without knowing the sequence.
std::vector<std::byte> message(std::uint32_t id, std::uint32_t k, std::size_t size) {
  std::vector<std::byte> m(std::max<std::size_t>(size, 12));
  std::uint32_t n = static_cast<std::uint32_t>(m.size());
  std::memcpy(m.data(), &id, 4);
  std::memcpy(m.data() + 4, &k, 4);
  std::memcpy(m.data() + 8, &n, 4);
  for (std::size_t i = 12; i < m.size(); ++i) m[i] = static_cast<std::byte>(id * 31 + k * 7 + i);
  return m;
}

struct Seen {
  std::uint32_t id, k;
};

Seen check(const std::vector<std::byte>& m) {
  if (m.size() < 12) throw std::runtime_error("short message");
  Seen s;
  std::uint32_t n;
  std::memcpy(&s.id, m.data(), 4);
  std::memcpy(&s.k, m.data() + 4, 4);
  std::memcpy(&n, m.data() + 8, 4);
  if (n != m.size()) throw std::runtime_error("bad size");
  for (std::size_t i = 12; i < m.size(); ++i) {
    if (m[i] != static_cast<std::byte>(s.id * 31 + s.k * 7 + i)) throw std::runtime_error("bad byte");
  }
  return s;
}

// Sizes: mostly small, some near the ring's quarter (padding at the end of the
// ring), some out of band.
std::size_t size_for(std::mt19937& rng) {
  int r = static_cast<int>(rng() % 100);
  if (r < 70) return rng() % 200;
  if (r < 95) return 200 + rng() % 800;
  return 2000 + rng() % 3000;  // > 1 KiB threshold of a 4 KiB ring: out of band
}

void produce_random(Queue<std::vector<std::byte>> q, std::uint32_t id, std::uint32_t n) {
  std::mt19937 rng(id);
  for (std::uint32_t k = 0; k < n; ++k) q.put(message(id, k, size_for(rng)));
  q.put({});  // pill
}

void use_global_queue();
Queue<int>* g_inherited = nullptr;
void use_global_queue() { g_inherited->put(5); }

void attach_then_die(Queue<int> q, Queue<int> told) {
  told.put(1);
  std::raise(SIGKILL);  // keeps its slot in q: nothing runs on the way out
  (void)q;
}

mproc::Connection<int>* g_inherited_end = nullptr;
void use_global_end() {
  try {
    g_inherited_end->send(1);
  } catch (const mproc::UsageError&) {
    std::exit(7);  // expected: pipe ends are closed in fork children
  }
}

// What a claim step saw, in shared memory (written by a child that then dies).
struct ClaimSeen {
  std::uint32_t calls;
  std::uint32_t size;
  std::byte bytes[mproc::detail::kClaimPrefixBytes];
};
ChannelEnd* g_claim_ch = nullptr;
mproc::SharedArray<ClaimSeen>* g_claim_seen = nullptr;

// Receives one message with a claim step that records its prefix, then dies:
// inside f (exit 4), or inside claim itself (exit 3).
void claim_then_die(bool die_in_claim) {
  g_claim_ch->recv(
      std::nullopt,
      [&](mproc::Reader& prefix) {
        ClaimSeen& s = (*g_claim_seen)[0];
        s.size = static_cast<std::uint32_t>(prefix.remaining());
        std::memcpy(s.bytes, prefix.take(s.size), s.size);
        ++s.calls;
        if (die_in_claim) ::_exit(3);
      },
      [](mproc::Reader&) { ::_exit(4); });
  ::_exit(5);
}

}  // namespace

TEST(Channel, RandomSizesWrapAroundASmallRing) {
  // One process, two threads: every message intact and in order, across
  // thousands of laps of a 4 KiB ring with pads and out-of-band records.
  Queue<std::vector<std::byte>> q(QueueOptions{.capacity = 4096});
  ASSERT_EQ(q.channel().oob_threshold(), 1024u - 8 - 24);
  constexpr std::uint32_t kN = 20'000;
  std::thread producer([&] {
    std::mt19937 rng(1);
    for (std::uint32_t k = 0; k < kN; ++k) q.put(message(1, k, size_for(rng)));
  });
  for (std::uint32_t k = 0; k < kN; ++k) {
    Seen s = check(q.get(10s));
    ASSERT_EQ(s.k, k);
  }
  producer.join();
  auto st = q.channel().stats();
  EXPECT_EQ(st.sent, kN);
  EXPECT_GT(st.sent_oob, kN / 50);
  EXPECT_EQ(st.received_oob, st.sent_oob);
}

TEST(Channel, SendManyAndRecvMany) {
  auto ch = ChannelEnd::create_queue(ChannelOptions{.capacity = 4096});
  // 300 messages of 0..299 bytes in one buffer: more than the ring holds, so the
  // batch goes in pieces; a consumer thread takes them in batches.
  std::vector<std::byte> buf;
  std::vector<std::size_t> ends;
  for (std::size_t i = 0; i < 300; ++i) {
    buf.insert(buf.end(), i, static_cast<std::byte>(i));
    ends.push_back(buf.size());
  }
  std::vector<std::size_t> sizes;
  std::thread consumer([&] {
    while (sizes.size() < 300) {
      ch.recv_many(64, std::nullopt, [&](mproc::Reader& r) {
        std::size_t n = r.remaining();
        const std::byte* p = r.take(n);
        for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(p[i], static_cast<std::byte>(n));
        sizes.push_back(n);
      });
    }
  });
  EXPECT_EQ(ch.send_many(buf, ends, std::nullopt), 300u);
  consumer.join();
  std::vector<std::size_t> expect(300);
  std::iota(expect.begin(), expect.end(), 0);
  EXPECT_EQ(sizes, expect);
  // With a deadline that has passed, only what fits now goes.
  std::size_t sent = ch.send_many(buf, ends, mproc::detail::no_wait());
  EXPECT_GT(sent, 0u);
  EXPECT_LT(sent, 300u);
  EXPECT_EQ(ch.size(), sent);
}

// How long a waiter spins before it sleeps changes nothing but latency: with no
// spin (every wait sleeps at once) and with a long one, every message arrives, in
// order. A negative spin is refused.
TEST(Channel, SpinSettingOnlyChangesHowWaitersWait) {
  for (std::chrono::nanoseconds spin : {0ns, 4000ns, 200000ns}) {
    auto ch = ChannelEnd::create_queue(ChannelOptions{.capacity = 4096});
    ch.set_spin(spin);
    std::vector<std::uint32_t> got;
    std::thread consumer([&] {
      for (int i = 0; i < 500; ++i) {
        ch.recv(std::nullopt, [&](mproc::Reader& r) { got.push_back(mproc::load<std::uint32_t>(r)); });
      }
    });
    for (std::uint32_t i = 0; i < 500; ++i) {
      mproc::detail::with_encoded(i, [&](const mproc::Writer& w) { ch.send(w, std::nullopt); });
    }
    consumer.join();
    std::vector<std::uint32_t> expect(500);
    std::iota(expect.begin(), expect.end(), 0u);
    EXPECT_EQ(got, expect) << "spin " << spin.count() << " ns";
  }
  auto ch = ChannelEnd::create_queue(ChannelOptions{});
  EXPECT_THROW(ch.set_spin(-1ns), mproc::UsageError);
}

TEST(Channel, TooManyFdsInOneMessage) {
  auto ch = ChannelEnd::create_queue(ChannelOptions{});
  std::vector<int> fds(201, 0);
  std::byte b{1};
  EXPECT_THROW(ch.send({&b, 1}, fds, std::nullopt), mproc::UsageError);
}

TEST(Channel, CorruptHandlesAreRefused) {
  mproc::Queue<int> q;
  mproc::Writer w;
  mproc::dump(w, q);
  auto bytes = std::vector<std::byte>(w.bytes().begin(), w.bytes().end());
  bytes[9] ^= std::byte{0xff};  // inside the channel's magic number
  mproc::Reader r(bytes, w.fds());
  EXPECT_THROW(mproc::load<Queue<int>>(r), mproc::SerializationError);
  mproc::Reader missing_fds(w.bytes());
  EXPECT_THROW(mproc::load<Queue<int>>(missing_fds), mproc::SerializationError);
  mproc::Reader ok(w.bytes(), w.fds());
  EXPECT_NO_THROW(mproc::load<Queue<int>>(ok));
}

class ChannelAcross : public ::testing::TestWithParam<StartMethod> {};

TEST_P(ChannelAcross, TwoProducersRandomSizesSmallRing) {
  Queue<std::vector<std::byte>> q(QueueOptions{.capacity = 4096});
  constexpr std::uint32_t kN = 3000;
  Process a(with(GetParam()), produce_random, q, 1u, kN);
  Process b(with(GetParam()), produce_random, q, 2u, kN);
  a.start();
  b.start();
  std::uint32_t next[3] = {0, 0, 0};
  for (int pills = 0; pills < 2;) {
    auto m = q.get(30s);
    if (m.empty()) {
      ++pills;
      continue;
    }
    Seen s = check(m);
    ASSERT_TRUE(s.id == 1 || s.id == 2);
    ASSERT_EQ(s.k, next[s.id]++);  // each producer's messages in its order
  }
  EXPECT_EQ(next[1], kN);
  EXPECT_EQ(next[2], kN);
  a.join();
  b.join();
  EXPECT_EQ(a.exitcode(), 0);
  EXPECT_EQ(b.exitcode(), 0);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, ChannelAcross,
                         ::testing::Values(StartMethod::fork, StartMethod::forkserver, StartMethod::spawn),
                         [](const auto& i) { return std::string(mproc::to_string(i.param)); });

TEST(ChannelFork, QueueInheritedThroughFork) {
  // A queue the child reaches through inherited memory, not as an argument: the
  // child attaches on first use, and counts as a peer like any other.
  Queue<int> q;
  g_inherited = &q;
  Process p(with(StartMethod::fork), use_global_queue);
  p.start();
  EXPECT_EQ(q.get(10s), 5);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_THROW(q.get(), mproc::EOFError);  // the child held it, and is gone
  g_inherited = nullptr;
}

TEST(ChannelFork, PipeEndsAreClosedInForkChildren) {
  auto [a, b] = mproc::Pipe<int>();
  g_inherited_end = &a;
  Process p(with(StartMethod::fork), use_global_end);
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 7);
  g_inherited_end = nullptr;
  a.send(2);  // untouched in the parent
  EXPECT_EQ(b.recv(), 2);
}

// The producers' lock held by a process that died (planted: the dead child's
// owner id written into the lock word): the next put takes the lock over after
// one slice instead of waiting forever. Likewise for the consumers' lock.
TEST(ChannelLocks, ADeadHolderIsTakenOver) {
  using namespace mproc::detail;
  Queue<int> q, told;
  Process p(with(StartMethod::fork), attach_then_die, q, told);
  p.start();
  ASSERT_EQ(told.get(10s), 1);
  p.join();
  ASSERT_EQ(p.exitcode(), -SIGKILL);

  // Find the child's slot in q's shared memory through a second mapping of it.
  mproc::Writer w;
  mproc::dump(w, q);
  int fd = w.fds()[0];
  auto seg = Segment::adopt(fd, kHeaderBytes + q.capacity());
  auto* h = reinterpret_cast<ChannelHeader*>(seg.data());
  mproc::Reader balance(w.bytes(), w.fds());
  (void)mproc::load<Queue<int>>(balance);  // the encode above counted a handle in flight
  int dead = -1;
  for (int i = 0; i < kSlots; ++i) {
    if (h->slots[i].pid.load() == p.pid()) dead = i;
  }
  ASSERT_GE(dead, 0);
  std::uint32_t owner = ((h->slots[dead].gen.load() & 0x3F'FFFF) << 9) | static_cast<std::uint32_t>(dead + 1);

  for (SharedLock* l : {&h->rings[0].plock, &h->rings[0].clock}) {
    l->word.store(owner << 1);
    auto t0 = std::chrono::steady_clock::now();
    q.put(7);
    EXPECT_EQ(q.get(), 7);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_GE(s, 0.05);  // it did wait for the holder first (one slice)
    EXPECT_LT(s, 5.0);
  }
  // A holder whose slot has since been reused (generation moved on) is dead too.
  h->rings[0].plock.word.store(((owner + (1u << 9)) << 1));
  q.put(8);
  EXPECT_EQ(q.get(), 8);
}

// recv with a claim step: claim sees the first bytes of every kind of record
// (inline, carrying fds, out of band) before the record leaves the ring. A
// receiver dying inside claim or inside f leaves the message whole in the channel
// (bytes and fds) for the next receiver, which runs its own claim on it.
TEST(ChannelClaim, ClaimSeesThePrefixAndCrashOrderHolds) {
  using mproc::detail::kClaimPrefixBytes;
  auto ch = ChannelEnd::create_queue(ChannelOptions{});
  ASSERT_EQ(ch.oob_threshold(), std::size_t{64} << 10);
  mproc::SharedArray<ClaimSeen> seen(1);
  g_claim_ch = &ch;
  g_claim_seen = &seen;
  const int fds_before = mproc_test::fd_count();
  int pfd[2];
  ASSERT_EQ(::pipe2(pfd, O_CLOEXEC), 0);
  auto receive_in_child = [&](bool die_in_claim) {
    seen[0] = ClaimSeen{};
    Process p(with(StartMethod::fork), claim_then_die, die_in_claim);
    p.start();
    p.join();
    return p.exitcode();
  };
  auto claimed = [&](const std::vector<std::byte>& m) {
    std::size_t n = std::min(m.size(), kClaimPrefixBytes);
    return seen[0].calls == 1 && seen[0].size == n && std::memcmp(seen[0].bytes, m.data(), n) == 0;
  };

  std::vector<std::byte> got, prefix;
  auto copy_prefix = [&](mproc::Reader& p) {
    std::size_t n = p.remaining();
    const std::byte* b = p.take(n);
    prefix.assign(b, b + n);
  };
  // The next receiver (here, after taking over the dead child's lock) gets the
  // message whole, bytes and fd (the same pipe), and runs its own claim on it.
  auto receive_whole = [&](const std::vector<std::byte>& m, bool with_fd) {
    got.clear();
    int got_fd = -1;
    ASSERT_TRUE(ch.recv(std::chrono::steady_clock::now() + 10s, copy_prefix, [&](mproc::Reader& r) {
      std::size_t n = r.remaining();
      const std::byte* b = r.take(n);
      got.assign(b, b + n);
      if (r.fd_count() == 1) got_fd = ::fcntl(r.fd(0), F_DUPFD_CLOEXEC, 0);
    }));
    EXPECT_EQ(got, m);
    EXPECT_EQ(prefix, std::vector<std::byte>(m.begin(), m.begin() + std::min(m.size(), kClaimPrefixBytes)));
    if (!with_fd) return;
    ASSERT_GE(got_fd, 0);
    char c = 'k';
    ASSERT_EQ(::write(got_fd, &c, 1), 1);
    c = 0;
    ASSERT_EQ(::read(pfd[0], &c, 1), 1);
    EXPECT_EQ(c, 'k');
    ::close(got_fd);
  };

  // Out of band: the claim sees the first 64 bytes; dying in f (after the segment
  // was received and read) leaves the message in the channel.
  auto big = message(1, 0, 200 << 10);
  ASSERT_TRUE(ch.send(big, {}, std::nullopt));
  EXPECT_EQ(receive_in_child(false), 4);
  EXPECT_TRUE(claimed(big));
  EXPECT_EQ(ch.size(), 1u);
  receive_whole(big, false);
  // Carrying an fd, shorter than the prefix: the claim sees all of it; dying in f
  // leaves it too (its fd was peeked, not taken from the socket).
  auto small = message(2, 0, 40);
  ASSERT_TRUE(ch.send(small, std::span(&pfd[1], 1), std::nullopt));
  EXPECT_EQ(receive_in_child(false), 4);
  EXPECT_TRUE(claimed(small));
  EXPECT_EQ(ch.size(), 1u);
  receive_whole(small, true);
  EXPECT_EQ(ch.size(), 0u);

  // Dying inside claim, on an out-of-band message with an fd: it stays in the
  // ring as well.
  auto big2 = message(3, 0, 100 << 10);
  ASSERT_TRUE(ch.send(big2, std::span(&pfd[1], 1), std::nullopt));
  EXPECT_EQ(receive_in_child(true), 3);
  EXPECT_TRUE(claimed(big2));
  EXPECT_EQ(ch.size(), 1u);
  receive_whole(big2, true);

  // An exception from claim consumes the message (its fds closed) without f.
  ASSERT_TRUE(ch.send(small, std::span(&pfd[1], 1), std::nullopt));
  bool f_ran = false;
  EXPECT_THROW(ch.recv(
                   std::nullopt, [](mproc::Reader&) { throw std::runtime_error("refused"); },
                   [&](mproc::Reader&) { f_ran = true; }),
               std::runtime_error);
  EXPECT_FALSE(f_ran);

  // The channel goes on: inline and out-of-band messages after all that, with
  // and without a claim step.
  auto copy_all = [&](mproc::Reader& r) {
    std::size_t n = r.remaining();
    const std::byte* b = r.take(n);
    got.assign(b, b + n);
  };
  for (std::size_t size : {std::size_t{10}, std::size_t{100}, std::size_t{300} << 10}) {
    auto m = message(4, 0, size);
    ASSERT_TRUE(ch.send(m, {}, std::nullopt));
    ASSERT_TRUE(ch.recv(std::nullopt, copy_prefix, copy_all));
    EXPECT_EQ(got, m);
    EXPECT_EQ(prefix, std::vector<std::byte>(m.begin(), m.begin() + std::min(m.size(), kClaimPrefixBytes)));
    got.clear();
    ASSERT_TRUE(ch.send(m, {}, std::nullopt));
    ASSERT_TRUE(ch.recv(std::nullopt, copy_all));
    EXPECT_EQ(got, m);
  }
  EXPECT_EQ(ch.size(), 0u);
  ::close(pfd[0]);
  ::close(pfd[1]);
  // The channel keeps the out-of-band segments it sent in, for the next message.
  EXPECT_EQ(mproc_test::fd_count(), fds_before + static_cast<int>(ch.stats().oob_segments_created));
  EXPECT_EQ(mproc_test::zombie_children(), 0);
  g_claim_ch = nullptr;
  g_claim_seen = nullptr;
}

// ---- recv_spinning and spinning consumers ----------------------------------------------

namespace {

// A second mapping of a queue channel's shared memory (white-box, as above).
struct RingView {
  mproc::detail::Segment seg;
  mproc::detail::RingState* ring;
  explicit RingView(const ChannelEnd& ch) {
    using namespace mproc::detail;
    mproc::Writer w;
    ch.encode(w);
    seg = Segment::adopt(w.fds()[0], kHeaderBytes + ch.capacity());
    ring = &reinterpret_cast<ChannelHeader*>(seg.data())->rings[0];
    mproc::Reader balance(w.bytes(), w.fds());
    (void)ChannelEnd::decode(balance);  // the encode above counted a handle in flight
  }
};

std::vector<std::byte> bytes_of(std::string_view s) {
  auto p = reinterpret_cast<const std::byte*>(s.data());
  return {p, p + s.size()};
}

std::string text_of(mproc::Reader& r) {
  std::size_t n = r.remaining();
  auto p = reinterpret_cast<const char*>(r.take(n));
  return {p, n};
}

}  // namespace

// What recv_spinning does with each kind of head record, and when it gives up.
TEST(ChannelSpin, RecvSpinningTakesDeclinesOrGivesUp) {
  using Spun = ChannelEnd::Spun;
  auto ch = ChannelEnd::create_queue(ChannelOptions{});
  auto never = [] { return false; };
  std::string got;
  auto take = [&](mproc::Reader& r) {
    got = text_of(r);
    return true;
  };
  // Nothing there: the spin ends (idle), or stop() ends it first.
  EXPECT_EQ(ch.recv_spinning(std::chrono::microseconds(200), take, never), Spun::idle);
  EXPECT_EQ(ch.recv_spinning(std::chrono::seconds(30), take, [] { return true; }), Spun::stopped);
  // An inline message declined stays, whole, for the next receiver.
  ASSERT_TRUE(ch.send(bytes_of("first"), {}, std::nullopt));
  ASSERT_TRUE(ch.send(bytes_of("second"), {}, std::nullopt));
  std::string offered;
  EXPECT_EQ(ch.recv_spinning(
                std::chrono::seconds(30),
                [&](mproc::Reader& r) {
                  offered = text_of(r);
                  return false;
                },
                never),
            Spun::declined);
  EXPECT_EQ(offered, "first");
  EXPECT_EQ(ch.recv_spinning(std::chrono::seconds(30), take, never), Spun::received);
  EXPECT_EQ(got, "first");
  EXPECT_EQ(ch.recv_spinning(std::chrono::seconds(30), take, never), Spun::received);
  EXPECT_EQ(got, "second");
  // A side-band message (one carrying an fd) is never offered: left for recv.
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ASSERT_TRUE(ch.send(bytes_of("with fd"), std::span<const int>(fds, 1), std::nullopt));
  bool called = false;
  EXPECT_EQ(ch.recv_spinning(
                std::chrono::seconds(30),
                [&](mproc::Reader&) {
                  called = true;
                  return true;
                },
                never),
            Spun::declined);
  EXPECT_FALSE(called);
  ASSERT_TRUE(ch.recv(mproc::detail::no_wait(), [&](mproc::Reader& r) {
    EXPECT_EQ(r.fd_count(), 1u);
    got = text_of(r);
  }));
  EXPECT_EQ(got, "with fd");
  ::close(fds[0]);
  ::close(fds[1]);
  // A take that throws consumes the message, and the error comes out.
  ASSERT_TRUE(ch.send(bytes_of("bad"), {}, std::nullopt));
  EXPECT_THROW(ch.recv_spinning(
                   std::chrono::seconds(30), [](mproc::Reader&) -> bool { throw std::runtime_error("no"); }, never),
               std::runtime_error);
  EXPECT_TRUE(ch.empty());
}

// While a consumer spins, a sender skips waking a sleeping one; a spinner that
// leaves the record (declines it) wakes a sleeper for it on its way out.
TEST(ChannelSpin, ASpinnerSparesTheWakeUpOrPassesTheRecordOn) {
  auto ch = ChannelEnd::create_queue(ChannelOptions{});
  RingView view(ch);
  auto& data = view.ring->data;
  std::string slept_got;
  std::thread sleeper([&] { ch.recv(std::nullopt, [&](mproc::Reader& r) { slept_got = text_of(r); }); });
  // Synchronize on the sleeper's registration (white-box), not on time.
  auto until = std::chrono::steady_clock::now() + 30s;
  while (data.waiters.load() == 0 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  ASSERT_EQ(data.waiters.load(), 1u);
  const std::uint32_t seq0 = data.seq.load();

  std::thread sender;
  std::uint32_t seq_after_send = 0;
  auto spun = ch.recv_spinning(
      std::chrono::seconds(10),
      [&](mproc::Reader& r) {
        EXPECT_EQ(text_of(r), "hello");
        sender.join();  // its send, and the wake it skipped, are over
        seq_after_send = data.seq.load();
        return false;
      },
      [&] {
        // Once we are marked as spinning, a record arrives.
        if (!sender.joinable() && data.spin_end.load() != 0) {
          sender = std::thread([&] { ASSERT_TRUE(ch.send(bytes_of("hello"), {}, std::nullopt)); });
        }
        return false;
      });
  if (sender.joinable()) sender.join();
  EXPECT_EQ(spun, ChannelEnd::Spun::declined);
  EXPECT_EQ(seq_after_send, seq0) << "the sender woke the sleeper although a consumer was spinning";
  EXPECT_NE(data.seq.load(), seq0) << "the declining spinner did not wake the sleeper";
  EXPECT_EQ(data.spin_end.load(), 0) << "the spinner's mark outlived its spin";
  sleeper.join();
  EXPECT_EQ(slept_got, "hello");
}

// A ring written by something else (found by fuzz/fuzz_channel): a pad record must fill
// the ring exactly to its end, as senders write it. Any other size put the next header
// off alignment, or across the ring's end (a read outside the mapping); the consumer now
// reports a corrupt ring instead. Likewise a head that is not a multiple of 8.
TEST(ChannelCorruption, APadThatDoesNotEndTheRingIsRefused) {
  using namespace mproc::detail;
  ChannelOptions o;
  o.capacity = kMinCapacity;
  auto ch = ChannelEnd::create_queue(o);
  RingView view(ch);
  std::byte* ring = view.seg.data() + view.ring->offset;
  // A well-formed inline record where a bad pad (or head) leads: the old code took it.
  auto plant_record = [&](std::size_t at) {
    RecordHeader rec{5, RecordKind::inline_};
    std::memcpy(ring + at, &rec, sizeof rec);
    std::memcpy(ring + at + sizeof rec, "bogus", 5);
  };
  auto expect_corrupt = [&](std::uint64_t head, const char* what) {
    view.ring->head.store(pack(head, 0));
    view.ring->tail.store(pack(head + 64, 1));
    try {
      ch.recv(std::chrono::steady_clock::now(), [](mproc::Reader&) {});
      ADD_FAILURE() << what << ": received a message from a corrupt ring";
    } catch (const mproc::Error& e) {
      EXPECT_NE(std::string(e.what()).find("channel ring corrupted"), std::string::npos) << what << ": " << e.what();
    }
  };
  for (std::uint32_t size : {34u, 40u, static_cast<std::uint32_t>(kMinCapacity - 24)}) {
    std::memset(ring, 0, kMinCapacity);
    RecordHeader pad{size, RecordKind::pad};
    std::memcpy(ring, &pad, sizeof pad);
    plant_record(sizeof pad + size);
    expect_corrupt(0, ("pad of " + std::to_string(size) + " bytes").c_str());
  }
  std::memset(ring, 0, kMinCapacity);
  plant_record(4);
  expect_corrupt(4, "head not a multiple of 8");
}

// ---- recycled out-of-band segments ---------------------------------------------------

namespace {

// A timed receive: a queue's other holders may not have attached yet (a forked
// child attaches at its first call), which an untimed one would report as EOF.
std::vector<std::byte> recv_bytes(const ChannelEnd& ch) {
  std::vector<std::byte> got;
  EXPECT_TRUE(ch.recv(std::chrono::steady_clock::now() + 60s, [&](mproc::Reader& r) {
    std::size_t n = r.remaining();
    const std::byte* b = r.take(n);
    got.assign(b, b + n);
  }));
  return got;
}

ChannelEnd* g_recycle_ch = nullptr;

// Sends `count` out-of-band messages of producer `id` (in a child process).
void send_big(std::uint32_t id, int count) {
  for (int k = 0; k < count; ++k) {
    auto m = message(id, static_cast<std::uint32_t>(k), (100 << 10) + static_cast<std::size_t>(k) * 4096);
    if (!g_recycle_ch->send(m, {}, std::nullopt)) ::_exit(2);
  }
  ::_exit(0);
}

}  // namespace

// Out-of-band messages go in segments the sender keeps and reuses once their
// receiver has consumed the message; a segment whose message is still in flight is
// never written again (every message arrives intact, also when many are queued).
TEST(ChannelRecycle, SegmentsAreReusedAndNeverOverwrittenInFlight) {
  const int fds0 = mproc_test::fd_count();
  {
    auto ch = ChannelEnd::create_queue(ChannelOptions{});
    // One at a time: one segment, whatever the sizes.
    for (std::uint32_t k = 0; k < 40; ++k) {
      auto m = message(1, k, (65 << 10) + (k % 5) * (200 << 10));
      ASSERT_TRUE(ch.send(m, {}, std::nullopt));
      ASSERT_EQ(recv_bytes(ch), m);
    }
    auto st = ch.stats();
    EXPECT_EQ(st.sent_oob, 40u);
    EXPECT_EQ(st.sent_recycled, 40u);
    EXPECT_EQ(st.oob_segments_created, 1u);
    // Many in flight: each in a segment of its own (beyond the cache's few, fresh
    // ones), each read back as it was sent.
    std::vector<std::vector<std::byte>> sent;
    for (std::uint32_t k = 0; k < 10; ++k) {
      sent.push_back(message(2, k, (70 << 10) + k * 1000));
      ASSERT_TRUE(ch.send(sent.back(), {}, std::nullopt));
    }
    for (auto& m : sent) ASSERT_EQ(recv_bytes(ch), m);
    st = ch.stats();
    EXPECT_GE(st.oob_segments_created, 2u);
    EXPECT_LE(st.oob_segments_created, 10u);
    EXPECT_LT(st.sent_recycled, 50u);  // some went in fresh segments
    // Released again: the next messages reuse them.
    const auto created = st.oob_segments_created;
    for (std::uint32_t k = 0; k < 10; ++k) {
      auto m = message(3, k, 300 << 10);
      ASSERT_TRUE(ch.send(m, {}, std::nullopt));
      ASSERT_EQ(recv_bytes(ch), m);
    }
    EXPECT_EQ(ch.stats().oob_segments_created, created);
    EXPECT_EQ(ch.stats().sent_recycled, st.sent_recycled + 10);
    // Too large to keep (over 64 MiB): a fresh segment, not cached.
    auto huge = message(4, 0, (std::size_t{64} << 20) + 4097);
    ASSERT_TRUE(ch.send(huge, {}, std::nullopt));
    ASSERT_EQ(recv_bytes(ch), huge);
    EXPECT_EQ(ch.stats().sent_recycled, st.sent_recycled + 10);
  }
  EXPECT_EQ(mproc_test::fd_count(), fds0);  // the cache's segments went with the channel
}

// A message consumed by an exception from claim (before its fds were peeked)
// still frees its segment for the next message.
TEST(ChannelRecycle, AThrowingClaimReleasesTheSegment) {
  auto ch = ChannelEnd::create_queue(ChannelOptions{});
  auto m = message(1, 0, 100 << 10);
  ASSERT_TRUE(ch.send(m, {}, std::nullopt));
  EXPECT_THROW(ch.recv(
                   std::nullopt, [](mproc::Reader&) { throw std::runtime_error("refused"); },
                   [](mproc::Reader&) {}),
               std::runtime_error);
  EXPECT_EQ(ch.size(), 0u);
  ASSERT_TRUE(ch.send(m, {}, std::nullopt));
  EXPECT_EQ(recv_bytes(ch), m);
  EXPECT_EQ(ch.stats().oob_segments_created, 1u);
  EXPECT_EQ(ch.stats().sent_recycled, 2u);
}

// kill -9 of a receiver in the middle of get() (it has read the segment, the
// message is still in the ring): its segment stays in use, so the sender's next
// message goes elsewhere, and the next receiver gets the first message intact.
TEST(ChannelRecycle, AReceiverKilledMidGetLosesNothing) {
  const int fds0 = mproc_test::fd_count();
  {
    auto ch = ChannelEnd::create_queue(ChannelOptions{});
    mproc::SharedArray<ClaimSeen> seen(1);
    g_claim_ch = &ch;
    g_claim_seen = &seen;
    auto a = message(1, 0, 200 << 10);
    ASSERT_TRUE(ch.send(a, {}, std::nullopt));
    Process p(with(StartMethod::fork), claim_then_die, false);  // dies inside f
    p.start();
    p.join();
    EXPECT_EQ(p.exitcode(), 4);
    EXPECT_EQ(ch.size(), 1u);
    auto b = message(2, 0, 200 << 10);
    ASSERT_TRUE(ch.send(b, {}, std::nullopt));
    EXPECT_EQ(recv_bytes(ch), a);
    EXPECT_EQ(recv_bytes(ch), b);
    EXPECT_EQ(ch.stats().oob_segments_created, 2u);
    // Both are free again.
    for (std::uint32_t k = 0; k < 4; ++k) {
      auto m = message(3, k, 150 << 10);
      ASSERT_TRUE(ch.send(m, {}, std::nullopt));
      ASSERT_EQ(recv_bytes(ch), m);
    }
    EXPECT_EQ(ch.stats().oob_segments_created, 2u);
    g_claim_ch = nullptr;
    g_claim_seen = nullptr;
  }
  EXPECT_EQ(mproc_test::fd_count(), fds0);
  EXPECT_EQ(mproc_test::zombie_children(), 0);
  EXPECT_EQ(mproc_test::shm_entries(), 0);
}

// kill -9 of a sender in the middle of put() (its segment written, waiting for
// room in the ring): nothing of it arrives, nothing is left behind, and senders
// forked from a process with a cache use segments of their own.
TEST(ChannelRecycle, ASenderKilledMidPutLeavesNothing) {
  const int fds0 = mproc_test::fd_count();
  {
    auto ch = ChannelEnd::create_queue(ChannelOptions{.max_items = 1});
    g_recycle_ch = &ch;
    auto mine = message(1, 0, 100 << 10);  // the parent's cache has a segment now
    ASSERT_TRUE(ch.send(mine, {}, std::nullopt));
    RingView view(ch);
    Process p(with(StartMethod::fork), send_big, 7u, 3);
    p.start();
    // The child's first message waits for room (the ring holds one item).
    while (view.ring->space.waiters.load() == 0) std::this_thread::yield();
    ::kill(p.pid(), SIGKILL);
    p.join();
    EXPECT_EQ(p.exitcode(), -SIGKILL);
    EXPECT_EQ(recv_bytes(ch), mine);
    EXPECT_EQ(ch.size(), 0u);
    // A forked sender that finishes: all its messages arrive intact, and so do
    // the parent's, in the parent's own reused segment.
    Process q(with(StartMethod::fork), send_big, 8u, 3);
    q.start();
    for (std::uint32_t k = 0; k < 3; ++k) {
      auto m = recv_bytes(ch);
      ASSERT_EQ(m, message(8, k, (100 << 10) + k * 4096));
    }
    q.join();
    EXPECT_EQ(q.exitcode(), 0);
    for (std::uint32_t k = 0; k < 3; ++k) {
      auto m = message(1, k + 1, 120 << 10);
      ASSERT_TRUE(ch.send(m, {}, std::nullopt));
      ASSERT_EQ(recv_bytes(ch), m);
    }
    EXPECT_EQ(ch.stats().oob_segments_created, 1u);
    g_recycle_ch = nullptr;
  }
  EXPECT_EQ(mproc_test::fd_count(), fds0);
  EXPECT_EQ(mproc_test::zombie_children(), 0);
  EXPECT_EQ(mproc_test::shm_entries(), 0);
}

// A task may close descriptors it does not own (the pool's tests close 3..1024): a
// cached segment whose fd was closed, and its number reused for another file, is
// forgotten, never written or sent; the message goes in a new segment.
TEST(ChannelRecycle, ACachedDescriptorClosedByOthersIsNeverWritten) {
  auto ch = ChannelEnd::create_queue(ChannelOptions{});
  auto a = message(1, 0, 100 << 10);
  ASSERT_TRUE(ch.send(a, {}, std::nullopt));
  ASSERT_EQ(recv_bytes(ch), a);
  int cached = -1;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    auto target = std::filesystem::read_symlink(e.path(), ec).string();
    if (target.find("memfd:mproc-msg") != std::string::npos) cached = std::stoi(e.path().filename().string());
  }
  ASSERT_GE(cached, 0);
  int other = ::memfd_create("not-a-segment", MFD_CLOEXEC);
  ASSERT_GE(other, 0);
  ASSERT_EQ(::dup3(other, cached, O_CLOEXEC), cached);  // the number now names another file
  auto b = message(2, 0, 100 << 10);
  ASSERT_TRUE(ch.send(b, {}, std::nullopt));
  EXPECT_EQ(recv_bytes(ch), b);
  struct stat st;
  ASSERT_EQ(::fstat(other, &st), 0);
  EXPECT_EQ(st.st_size, 0);  // never written
  EXPECT_EQ(ch.stats().oob_segments_created, 2u);
  ASSERT_EQ(::fcntl(cached, F_GETFD), FD_CLOEXEC);  // not closed by the channel either
  ::close(cached);
  ::close(other);
}
