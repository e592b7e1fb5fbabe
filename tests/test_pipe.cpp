// Pipe and Connection, after CPython's _TestConnection, under every start method;
// plus end-of-file and broken-pipe detection, large messages and leaks.
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <map>
#include <mproc/pipe.hpp>
#include <mproc/process.hpp>
#include <mproc/queue.hpp>
#include <mproc/shared_memory.hpp>
#include <numeric>
#include <thread>

#include "util.hpp"

using namespace std::chrono_literals;
using mproc::Connection;
using mproc::Pipe;
using mproc::Process;
using mproc::ProcessOptions;
using mproc::StartMethod;
using Clock = std::chrono::steady_clock;

namespace {

ProcessOptions with(StartMethod m) {
  ProcessOptions o;
  o.start_method = m;
  return o;
}

double elapsed_s(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

using Value = std::variant<int, std::string, std::vector<double>, std::map<std::string, int>,
                           std::tuple<int, std::optional<std::string>>>;

std::vector<Value> sample_values() {
  return {Value{42},
          Value{std::string("hello")},
          Value{std::string()},
          Value{std::vector<double>{1.5, 2.5, -3}},
          Value{std::map<std::string, int>{{"a", 1}, {"b", 2}}},
          Value{std::tuple<int, std::optional<std::string>>{7, "seven"}}};
}

// ---- child targets ----------------------------------------------------------------------

// Echoes values until the other end closes (then EOFError ends the loop).
void echo_values(Connection<Value> c) {
  try {
    for (;;) c.send(c.recv());
  } catch (const mproc::EOFError&) {
  }
}

void echo_bytes(Connection<std::string> c) {
  for (;;) {
    auto b = c.recv_bytes();
    if (b.size() == 3 && std::memcmp(b.data(), "end", 3) == 0) return;
    c.send_bytes(b);
  }
}

void send_n(Connection<int> c, int n) {
  for (int i = 0; i < n; ++i) c.send(i);
}

void recv_one_then_exit(Connection<int> c) { c.recv(); }

void wait_forever_on(Connection<int> c) {
  c.send(1);  // "I am running"
  for (;;) c.recv();
}

void sum_shared(Connection<mproc::SharedArray<int>> c, Connection<long> out) {
  auto a = c.recv();
  out.send(std::accumulate(a.begin(), a.end(), 0L));
}

void echo_via_received_end(mproc::Queue<Connection<int>> carrier) {
  auto c = carrier.get();
  c.send(c.recv() + 1);
}

}  // namespace

// ---- one process -----------------------------------------------------------------------

TEST(Pipe, DuplexBothWays) {
  auto [a, b] = Pipe<Value>();
  EXPECT_TRUE(a.readable() && a.writable() && b.readable() && b.writable());
  for (const Value& v : sample_values()) {
    a.send(v);
    EXPECT_EQ(b.recv(), v);
    b.send(v);
    EXPECT_EQ(a.recv(), v);
  }
}

TEST(Pipe, OneWay) {
  auto [r, w] = Pipe<int>(false);
  EXPECT_TRUE(r.readable());
  EXPECT_FALSE(r.writable());
  EXPECT_FALSE(w.readable());
  EXPECT_TRUE(w.writable());
  w.send(1);
  EXPECT_EQ(r.recv(), 1);
  EXPECT_THROW(r.send(2), mproc::UsageError);
  EXPECT_THROW(w.recv(), mproc::UsageError);
  EXPECT_THROW(w.poll(), mproc::UsageError);
}

TEST(Pipe, SendBytesRecvBytes) {
  auto [a, b] = Pipe<std::string>();
  const char text[] = "abcdef";
  a.send_bytes(text, 6);
  auto got = b.recv_bytes();
  ASSERT_EQ(got.size(), 6u);
  EXPECT_EQ(std::memcmp(got.data(), text, 6), 0);
  a.send_bytes(std::span<const std::byte>{});  // empty messages are messages too
  EXPECT_TRUE(b.recv_bytes().empty());
  // send() then recv_bytes() gives the encoding; send_bytes() of an encoding then
  // recv() decodes it (Python: the pickle).
  a.send("xyz");
  auto enc = b.recv_bytes();
  EXPECT_EQ(enc, mproc::to_bytes(std::string("xyz")));
  b.send_bytes(enc);
  EXPECT_EQ(a.recv(), "xyz");
  // Raw bytes that are not an encoding fail to decode, loudly.
  a.send_bytes("12", 2);
  EXPECT_THROW(b.recv(), mproc::SerializationError);
}

TEST(Pipe, PollWithTimeout) {
  auto [a, b] = Pipe<int>();
  EXPECT_FALSE(a.poll());
  auto t0 = Clock::now();
  EXPECT_FALSE(a.poll(150ms));
  EXPECT_GE(elapsed_s(t0), 0.149);
  b.send(5);
  EXPECT_TRUE(a.poll());
  EXPECT_TRUE(a.poll(0ms));
  EXPECT_EQ(a.recv(), 5);
  EXPECT_FALSE(a.poll());
  EXPECT_THROW(a.poll(-1s), mproc::UsageError);
}

TEST(Pipe, RecvWithTimeout) {
  auto [a, b] = Pipe<int>();
  auto t0 = Clock::now();
  EXPECT_THROW(a.recv(100ms), mproc::TimeoutError);
  EXPECT_GE(elapsed_s(t0), 0.099);
  b.send(3);
  EXPECT_EQ(a.recv(1s), 3);
  EXPECT_THROW(a.recv_bytes(10ms), mproc::TimeoutError);
}

TEST(Pipe, EofAfterThePeerIsClosedAndDrained) {
  auto [a, b] = Pipe<int>();
  b.send(1);
  b.send(2);
  b.close();
  EXPECT_TRUE(b.closed());
  EXPECT_THROW(b.send(3), mproc::UsageError);
  EXPECT_EQ(a.recv(), 1);  // what was sent before the close still arrives
  EXPECT_TRUE(a.poll());
  EXPECT_EQ(a.recv(), 2);
  EXPECT_TRUE(a.poll());  // like Python: readable at EOF
  EXPECT_THROW(a.recv(), mproc::EOFError);
  EXPECT_THROW(a.recv(1s), mproc::EOFError);
  EXPECT_THROW(a.send(4), mproc::BrokenPipeError);
}

TEST(Pipe, DroppingEveryCopyClosesTheEnd) {
  auto [a, b] = Pipe<int>();
  {
    auto b2 = std::move(b);
    auto b3 = b2;  // copies share the end
  }
  EXPECT_THROW(a.recv(), mproc::EOFError);
}

TEST(Pipe, OutOfBandMessages) {
  auto [a, b] = Pipe<std::vector<std::byte>>();
  for (std::size_t n : {std::size_t{1}, (std::size_t{64} << 10) - 1, (std::size_t{64} << 10) + 1,
                        std::size_t{16} << 20}) {
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>(i * 13);
    a.send(v);
    EXPECT_EQ(b.recv(), v);
    a.send_bytes(v);  // raw: exactly n bytes, so 64 KiB - 1 stays in the ring
    EXPECT_EQ(b.recv_bytes(), v);
  }
  auto s = a.channel().stats();
  EXPECT_EQ(s.sent, 8u);
  EXPECT_EQ(s.sent_oob, 5u);  // encoded: 8 + n > 64 KiB for all but n = 1; raw: two
}

TEST(Pipe, ThreadsShareAnEnd) {
  auto [a, b] = Pipe<int>();
  constexpr int kThreads = 4, kPer = 2000;
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < kPer; ++i) a.send(t * kPer + i);
    });
  }
  std::vector<int> got;
  for (int i = 0; i < kThreads * kPer; ++i) got.push_back(b.recv());
  for (auto& t : ts) t.join();
  std::sort(got.begin(), got.end());
  for (int i = 0; i < kThreads * kPer; ++i) ASSERT_EQ(got[i], i);
}

TEST(Pipe, UnconnectedConnection) {
  Connection<int> c;
  EXPECT_THROW(c.send(1), mproc::UsageError);
  EXPECT_THROW(c.recv(), mproc::UsageError);
}

TEST(Pipe, ManyCyclesLeakNothing) {
  { auto warm = Pipe<int>(); }
  int fds = mproc_test::fd_count();
  int shm = mproc_test::shm_entries();
  for (int i = 0; i < 1000; ++i) {
    auto [a, b] = Pipe<std::string>();
    a.send("x");
    a.send(std::string(100'000, 'y'));
    ASSERT_EQ(b.recv(), "x");
    ASSERT_EQ(b.recv().size(), 100'000u);
    b.send("back");
    ASSERT_EQ(a.recv(), "back");
    auto [r, w] = Pipe<int>(false);
    w.send(1);
    w.close();
    ASSERT_EQ(r.recv(), 1);
  }
  EXPECT_EQ(mproc_test::fd_count(), fds);
  EXPECT_EQ(mproc_test::shm_entries(), shm);
}

// ---- across processes -------------------------------------------------------------------

class PipeAcross : public ::testing::TestWithParam<StartMethod> {};

TEST_P(PipeAcross, EchoValuesThenEof) {
  auto [parent, child] = Pipe<Value>();
  Process p(with(GetParam()), echo_values, child);
  p.start();
  child.close();  // as in Python: otherwise our own copy keeps the child's end open
  for (const Value& v : sample_values()) {
    parent.send(v);
    EXPECT_EQ(parent.recv(), v);
  }
  parent.close();  // the child's recv() sees EOF and the child returns
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(PipeAcross, BytesAndLargeMessages) {
  auto [parent, child] = Pipe<std::string>();
  Process p(with(GetParam()), echo_bytes, child);
  p.start();
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, (std::size_t{64} << 10) - 1, (std::size_t{64} << 10) + 1,
                        std::size_t{16} << 20}) {
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>(i ^ (i >> 8));
    parent.send_bytes(v);
    EXPECT_EQ(parent.recv_bytes(30s), v) << n;
  }
  parent.send_bytes("end", 3);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(PipeAcross, OneWayFromChild) {
  auto [r, w] = Pipe<int>(false);
  Process p(with(GetParam()), send_n, w, 1000);
  p.start();
  w.close();
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(r.recv(10s), i);
  // The child's end is gone once it exits: EOF, not a hang.
  EXPECT_THROW(r.recv(), mproc::EOFError);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(PipeAcross, EofWhenThePeerIsKilled) {
  auto [parent, child] = Pipe<int>();
  Process p(with(GetParam()), wait_forever_on, child);
  p.start();
  child.close();
  EXPECT_EQ(parent.recv(10s), 1);
  p.kill();
  auto t0 = Clock::now();
  EXPECT_THROW(parent.recv(), mproc::EOFError);
  EXPECT_LT(elapsed_s(t0), 5.0);
  p.join();
  EXPECT_EQ(p.exitcode(), -SIGKILL);
  EXPECT_THROW(parent.send(2), mproc::BrokenPipeError);
}

TEST_P(PipeAcross, SendToAPeerThatExited) {
  auto [parent, child] = Pipe<int>();
  Process p(with(GetParam()), recv_one_then_exit, child);
  p.start();
  child.close();
  parent.send(1);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  // Sending to an end nobody holds fails, even before the ring is full.
  EXPECT_THROW(
      {
        for (int i = 0; i < 1'000'000; ++i) parent.send(i);
      },
      mproc::BrokenPipeError);
}

TEST_P(PipeAcross, SharedArrayThroughAPipe) {
  auto [a, b] = Pipe<mproc::SharedArray<int>>();
  auto [res_r, res_w] = Pipe<long>(false);
  Process p(with(GetParam()), sum_shared, b, res_w);
  p.start();
  mproc::SharedArray<int> arr(1000);
  std::iota(arr.begin(), arr.end(), 0);
  a.send(arr);
  EXPECT_EQ(res_r.recv(10s), 999L * 1000 / 2);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(PipeAcross, ConnectionSentThroughAQueue) {
  mproc::Queue<Connection<int>> carrier;
  auto [mine, theirs] = Pipe<int>();
  Process p(with(GetParam()), echo_via_received_end, carrier);
  p.start();
  carrier.put(theirs);
  theirs.close();
  mine.send(41);
  EXPECT_EQ(mine.recv(10s), 42);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_THROW(mine.recv(), mproc::EOFError);
}

TEST_P(PipeAcross, NoLeaksNoZombies) {
  int fds = 0, shm = 0;
  for (int i = 0; i < 6; ++i) {
    if (i == 1) {
      fds = mproc_test::fd_count();
      shm = mproc_test::shm_entries();
    }
    auto [r, w] = Pipe<int>(false);
    Process p(with(GetParam()), send_n, w, 3);
    p.start();
    w.close();
    for (int k = 0; k < 3; ++k) ASSERT_EQ(r.recv(10s), k);
    p.join();
  }
  EXPECT_EQ(mproc_test::fd_count(), fds);
  EXPECT_EQ(mproc_test::shm_entries(), shm);
  EXPECT_EQ(mproc_test::zombie_children(), 0);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, PipeAcross,
                         ::testing::Values(StartMethod::fork, StartMethod::forkserver, StartMethod::spawn),
                         [](const auto& i) { return std::string(mproc::to_string(i.param)); });
