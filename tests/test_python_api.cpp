// Python API that users reach for (issue 10 §3): Lock::locked() (Python 3.14),
// Value/Array on a caller's Lock or RLock, Connection::recv_bytes_into() with
// BufferTooShort, mproc::wait() over connections, queues and process sentinels
// (multiprocessing.connection.wait), Queue::shutdown() (Python 3.13's
// queue.Queue.shutdown, here across processes), and WorkerLostError /
// TaskTimeoutError what() naming the argument index.
// Waits are on events and sentinels with deadlines; nothing sleeps and hopes.
// Every test runs in the NoLeaks fixture: no fd, /dev/shm entry or zombie is left.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <mproc/pipe.hpp>
#include <mproc/pool.hpp>
#include <mproc/process.hpp>
#include <mproc/queue.hpp>
#include <mproc/sync.hpp>
#include <mproc/value.hpp>
#include <mproc/wait.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "util.hpp"

using namespace std::chrono_literals;
using mproc::Connection;
using mproc::Event;
using mproc::Lock;
using mproc::Process;
using mproc::Queue;
using mproc::RLock;

namespace {

void nothing() {}

/// The mproc entries in /dev/shm now.
std::set<std::string> shm_names() {
  std::set<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) {
    std::string n = e.path().filename().string();
    if (n.find("mproc") != std::string::npos) names.insert(n);
  }
  return names;
}

/// Checks that a test leaves no fd, /dev/shm entry or zombie behind. /dev/shm is the
/// machine's: other programs' entries come and go meanwhile (a count would see
/// them), so only an entry that appeared during the test and is still there counts.
class NoLeaks : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Warm-ups that keep what they open for good: the forkserver, thread-local
    // buffers, the channel registry.
    Process p(nothing);
    p.start();
    p.join();
    Queue<std::string> q;
    q.put(std::string(100'000, 'w'));
    (void)q.get();
  }
  void SetUp() override {
    fds_ = mproc_test::fd_count();
    shm_ = shm_names();
  }
  void TearDown() override {
    EXPECT_EQ(mproc_test::fd_count(), fds_);
    std::vector<std::string> left;
    for (const std::string& n : shm_names()) {
      if (!shm_.contains(n)) left.push_back(n);
    }
    EXPECT_TRUE(left.empty()) << "/dev/shm/" << left.front() << " was left behind";
    EXPECT_EQ(mproc_test::zombie_children(), 0);
  }

 private:
  int fds_ = 0;
  std::set<std::string> shm_;
};

// ---- Lock::locked() ---------------------------------------------------------------------

using LockLocked = NoLeaks;

template <class L>
void hold_lock(L l, Event held, Event release) {
  std::lock_guard g(l);
  held.set();
  (void)release.wait_for(60s);  // bounded: a parent that failed must not leave it behind
}

/// A child process that holds `l` from construction until release() or kill().
template <class L>
class HeldByAChild {
 public:
  explicit HeldByAChild(L l) : p_(hold_lock<L>, std::move(l), held_, release_) {
    p_.start();
    if (!held_.wait_for(30s)) ADD_FAILURE() << "the child never took the lock";
  }
  ~HeldByAChild() {
    release_.set();
    try {
      p_.join();  // idempotent after release() or kill()
    } catch (...) {
    }
  }
  /// Lets the child release the lock and exit; its exit code (0 expected).
  int release() {
    release_.set();
    p_.join();
    return p_.exitcode().value_or(-1);
  }
  /// Kills the child while it holds the lock, and reaps it.
  void kill() {
    p_.kill();
    p_.join();
  }

 private:
  Event held_, release_;
  Process p_;
};

TEST_F(LockLocked, SeesAHolderInThisThreadAnotherThreadAndAnotherProcess) {
  Lock l;
  EXPECT_FALSE(l.locked());
  l.acquire();
  EXPECT_TRUE(l.locked());
  EXPECT_TRUE(l.is_owned());
  l.release();
  EXPECT_FALSE(l.locked());

  Event held, release;
  std::thread t(hold_lock<Lock>, l, held, release);
  ASSERT_TRUE(held.wait_for(30s));
  EXPECT_TRUE(l.locked());
  EXPECT_FALSE(l.is_owned());  // locked, but not by this thread
  release.set();
  t.join();
  EXPECT_FALSE(l.locked());

  HeldByAChild child(l);
  EXPECT_TRUE(l.locked());
  EXPECT_FALSE(l.is_owned());
  EXPECT_FALSE(l.try_acquire());
  EXPECT_EQ(child.release(), 0);
  EXPECT_FALSE(l.locked());
}

TEST_F(LockLocked, RLockStaysLockedUntilItsLastRelease) {
  RLock r;
  r.acquire();
  r.acquire();
  EXPECT_TRUE(r.locked());
  r.release();
  EXPECT_TRUE(r.locked());  // one level is still held
  r.release();
  EXPECT_FALSE(r.locked());

  HeldByAChild child(r);
  EXPECT_TRUE(r.locked());
  EXPECT_EQ(child.release(), 0);
  EXPECT_FALSE(r.locked());

  mproc::Condition c;  // a Condition is its lock too
  EXPECT_FALSE(c.locked());
  {
    std::lock_guard g(c);
    EXPECT_TRUE(c.locked());
  }
  EXPECT_FALSE(c.locked());
}

TEST_F(LockLocked, AnOwnerThatDiedHoldingItKeepsItLockedUntilTheNextAcquire) {
  Lock l;
  HeldByAChild child(l);
  child.kill();
  EXPECT_TRUE(l.locked());  // nobody released it
  EXPECT_THROW(l.acquire(), mproc::OwnerDiedError);  // reports the death, releases
  EXPECT_FALSE(l.locked());
  EXPECT_TRUE(l.try_acquire());
  l.release();
}

// ---- Value/Array on a caller's Lock or RLock --------------------------------------------------

using ValueOnLock = NoLeaks;

void add_under(Lock l, mproc::Value<long> v, mproc::Array<int> a, int n) {
  for (int i = 0; i < n; ++i) {
    std::lock_guard g(l);
    v.raw() += 1;
    a.raw()[0] += 1;
  }
}

TEST_F(ValueOnLock, ValueAndArraysShareTheCallersLock) {
  Lock l;
  mproc::Value<long> v(0, l);  // Python's Value('l', 0, lock=l)
  mproc::Array<int> a(3, l);   // Array('i', 3, lock=l)
  mproc::Array<int> b({1, 2, 3}, l);
  EXPECT_EQ(b.to_vector(), (std::vector<int>{1, 2, 3}));
  {
    std::lock_guard g(l);
    EXPECT_TRUE(v.get_lock<Lock>().is_owned());  // the same lock, held by this thread
    EXPECT_TRUE(a.get_lock<Lock>().is_owned());
    EXPECT_TRUE(b.get_lock<Lock>().is_owned());
  }
  {
    auto g = v.lock();  // the guard holds the caller's lock
    EXPECT_TRUE(l.is_owned());
  }
  EXPECT_FALSE(l.locked());
  v.set(5);
  EXPECT_EQ(v.get(), 5);
  EXPECT_FALSE(l.locked());  // get()/set() released it
  v.set(0);

  // Across processes: the child's updates and ours are serialized by the one lock.
  Process p(add_under, l, v, a, 500);
  p.start();
  add_under(l, v, a, 500);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(v.get(), 1000);
  EXPECT_EQ(a.get(0), 1000);
}

TEST_F(ValueOnLock, GetLockGivesTheKindItWasBuiltOn) {
  Lock l;
  mproc::Value<int> v(1, l);
  EXPECT_THROW((void)v.get_lock(), mproc::UsageError);  // an RLock it is not
  EXPECT_NO_THROW((void)v.get_lock<Lock>());
  mproc::Value<int> own(1);  // its own, embedded RLock
  EXPECT_THROW((void)own.get_lock<Lock>(), mproc::UsageError);
  EXPECT_NO_THROW((void)own.get_lock());
  RLock r;
  std::vector<int> src{1, 2, 3};
  mproc::Array<int> from_range(src, l);  // any sized range, on a caller's Lock
  EXPECT_EQ(from_range.to_vector(), src);
  EXPECT_NO_THROW((void)from_range.get_lock<Lock>());
  mproc::Array<int> a({4, 5}, r);  // on a caller's RLock
  EXPECT_THROW((void)a.get_lock<Lock>(), mproc::UsageError);
  {
    std::lock_guard g(r);
    EXPECT_TRUE(a.get_lock().is_owned());
    EXPECT_EQ(a.get(1), 5);  // recursive: get() inside the caller's hold works
  }
}

TEST_F(ValueOnLock, OnALockGetInsideTheCallersHoldIsAUsageError) {
  // Python would deadlock; a Lock knows its owner, so it says so instead.
  Lock l;
  mproc::Value<int> v(7, l);
  std::lock_guard g(l);
  EXPECT_THROW((void)v.get(), mproc::UsageError);
  EXPECT_EQ(v.raw(), 7);  // raw() is the way under the caller's hold
}

void read_through_received(mproc::Value<int> v, mproc::Array<int> a, Queue<int> out) {
  // The received handles carry the caller's Lock: get_lock<Lock>() names it.
  Lock l = v.get_lock<Lock>();
  std::lock_guard g(l);
  out.put(v.raw() + a.raw()[1] + (a.get_lock<Lock>().is_owned() ? 100 : 0));
}

TEST_F(ValueOnLock, AReceivedValueKeepsTheCallersLock) {
  Lock l;
  mproc::Value<int> v(1, l);
  mproc::Array<int> a({0, 2}, l);
  Queue<int> out;
  Process p(read_through_received, v, a, out);
  p.start();
  EXPECT_EQ(out.get(30s), 103);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

// ---- Connection::recv_bytes_into --------------------------------------------------------

using RecvBytesInto = NoLeaks;

TEST_F(RecvBytesInto, FillsTheBufferAtAnOffsetAndReturnsTheLength) {
  auto [a, b] = mproc::Pipe<int>();
  a.send_bytes("hello", 5);
  std::array<std::byte, 16> buf{};
  EXPECT_EQ(b.recv_bytes_into(buf), 5u);
  EXPECT_EQ(std::memcmp(buf.data(), "hello", 5), 0);
  a.send_bytes("world", 5);
  EXPECT_EQ(b.recv_bytes_into(buf, 5), 5u);
  EXPECT_EQ(std::memcmp(buf.data(), "helloworld", 10), 0);
  a.send_bytes("", 0);
  EXPECT_EQ(b.recv_bytes_into(buf, 16), 0u);  // Python: offset == len(buf) is allowed
  // Any contiguous range of trivially copyable elements; the offset is in bytes.
  std::vector<char> v(8, '.');
  a.send_bytes("ab", 2);
  EXPECT_EQ(b.recv_bytes_into(v, 6), 2u);
  EXPECT_EQ(std::string(v.begin(), v.end()), "......ab");
  std::string s(4, '-');
  a.send_bytes("xy", 2);
  EXPECT_EQ(b.recv_bytes_into(s, 1), 2u);
  EXPECT_EQ(s, "-xy-");
  // What send() wrote, as bytes: the value's encoding.
  a.send(42);
  std::array<std::uint32_t, 4> words{};
  EXPECT_EQ(b.recv_bytes_into(words), sizeof(int));
  EXPECT_EQ(words[0], 42u);
}

TEST_F(RecvBytesInto, AnOffsetPastTheEndIsAUsageErrorAndReceivesNothing) {
  auto [a, b] = mproc::Pipe<int>();
  a.send_bytes("keep", 4);
  std::array<std::byte, 4> buf{};
  try {
    (void)b.recv_bytes_into(buf, 5);
    FAIL() << "no UsageError";
  } catch (const mproc::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("offset 5 is past the end of a 4-byte buffer"), std::string::npos) << e.what();
  }
  EXPECT_EQ(b.recv_bytes_into(buf), 4u);  // the message is still there
}

TEST_F(RecvBytesInto, BufferTooShortCarriesTheMessageAndLeavesTheBuffer) {
  auto [a, b] = mproc::Pipe<int>();
  a.send_bytes("0123456789", 10);
  a.send_bytes("next", 4);
  std::array<char, 8> buf;
  buf.fill('.');
  try {
    (void)b.recv_bytes_into(buf, 2);
    FAIL() << "no BufferTooShort";
  } catch (const mproc::BufferTooShort& e) {
    ASSERT_EQ(e.message().size(), 10u);  // Python: e.args[0], the whole message
    EXPECT_EQ(std::memcmp(e.message().data(), "0123456789", 10), 0);
    EXPECT_NE(std::string(e.what()).find("10-byte message does not fit in the 6 bytes"), std::string::npos) << e.what();
    const mproc::BufferTooShort copy = e;  // copies share the message
    EXPECT_EQ(copy.message().size(), 10u);
  }
  EXPECT_EQ(std::string(buf.begin(), buf.end()), "........");  // untouched
  // The message was consumed, as in Python; the next one comes next.
  EXPECT_EQ(b.recv_bytes_into(buf), 4u);
  EXPECT_EQ(std::string(buf.data(), 4), "next");
}

void send_bytes_of(Connection<int> c, std::string s) { c.send_bytes(s.data(), s.size()); }

TEST_F(RecvBytesInto, AnOutOfBandMessageFromAnotherProcess) {
  auto [a, b] = mproc::Pipe<int>();
  std::string big(300'000, 'z');  // out of band: travels in a segment of its own
  big[123'456] = '!';
  Process p(send_bytes_of, a, big);
  p.start();
  std::vector<char> buf(big.size() + 10);
  EXPECT_EQ(b.recv_bytes_into(buf, 10), big.size());
  EXPECT_EQ(std::string(buf.begin() + 10, buf.end()), big);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_F(RecvBytesInto, WithATimeoutRaisesTimeoutErrorAndReceivesWhenAMessageComes) {
  auto [a, b] = mproc::Pipe<int>();
  std::array<char, 8> buf;
  buf.fill('.');
  try {
    (void)b.recv_bytes_into(buf, 10ms);
    FAIL() << "no TimeoutError";
  } catch (const mproc::TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("Connection.recv_bytes_into(): nothing received before the timeout"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW((void)b.recv_bytes_into(buf, 2, 0s), mproc::TimeoutError);  // zero: look once
  EXPECT_EQ(std::string(buf.begin(), buf.end()), "........");              // untouched
  // Any duration; with an offset; any contiguous range, or a span of bytes.
  Process p(send_bytes_of, a, std::string("abc"));
  p.start();
  EXPECT_EQ(b.recv_bytes_into(buf, 2, std::chrono::duration<double>(30)), 3u);
  EXPECT_EQ(std::string(buf.begin(), buf.end()), "..abc...");
  p.join();
  a.send_bytes("xy", 2);
  EXPECT_EQ(b.recv_bytes_into(std::as_writable_bytes(std::span(buf)), 30s), 2u);
  EXPECT_EQ(std::string(buf.data(), 2), "xy");
  // The other errors of recv_bytes_into, timed.
  EXPECT_THROW((void)b.recv_bytes_into(buf, 9, 30s), mproc::UsageError);  // offset past the end
  a.send_bytes("0123456789", 10);
  EXPECT_THROW((void)b.recv_bytes_into(buf, 30s), mproc::BufferTooShort);
  a.close();
  EXPECT_THROW((void)b.recv_bytes_into(buf, 30s), mproc::EOFError);
}

void close_it(Connection<int> c) { c.close(); }

TEST_F(RecvBytesInto, EOFErrorOnceTheOtherEndIsClosedEverywhere) {
  auto [a, b] = mproc::Pipe<int>();
  Process p(close_it, a);
  p.start();
  a.close();  // our copy too
  p.join();
  std::array<std::byte, 4> buf{};
  EXPECT_THROW((void)b.recv_bytes_into(buf), mproc::EOFError);
}

// ---- mproc::wait -------------------------------------------------------------------------

using Wait = NoLeaks;
using Ready = std::vector<std::size_t>;

void send_when(Connection<int> c, Event go, int v) {
  (void)go.wait_for(60s);
  c.send(v);
}

TEST_F(Wait, ReturnsTheIndicesOfTheReadyConnectionsInOrder) {
  auto [a1, b1] = mproc::Pipe<int>();
  auto [a2, b2] = mproc::Pipe<int>();
  auto [a3, b3] = mproc::Pipe<int>();
  EXPECT_TRUE(mproc::wait({a1, a2, a3}, 0s).empty());
  EXPECT_TRUE(mproc::wait({a1, a2, a3}, 10ms).empty());  // nothing is sent: the timeout passes
  Event go;
  Process p(send_when, b2, go, 7);
  p.start();
  go.set();
  EXPECT_EQ(mproc::wait({a1, a2, a3}, 30s), Ready{1});
  EXPECT_EQ(mproc::wait({a1, a2, a3}, 0s), Ready{1});  // ready until it is read
  EXPECT_EQ(a2.recv(), 7);
  p.join();
  b3.send(3);
  b1.send(1);
  std::vector<mproc::WaitObject> objs{a1, a2, a3};
  EXPECT_EQ(mproc::wait(objs, std::chrono::duration<double>(5)), (Ready{0, 2}));
  EXPECT_EQ(mproc::wait(objs, -1s), (Ready{0, 2}));  // negative: look once, as Python
  EXPECT_EQ(a1.recv(), 1);
  EXPECT_EQ(a3.recv(), 3);
  EXPECT_TRUE(mproc::wait(objs, 0s).empty());
}

TEST_F(Wait, AConnectionWhoseOtherEndIsClosedIsReady) {
  auto [a, b] = mproc::Pipe<int>();
  auto [c, d] = mproc::Pipe<int>();
  b.close();  // recv() on a throws EOFError at once
  EXPECT_EQ(mproc::wait({a}, 30s), Ready{0});
  EXPECT_EQ(mproc::wait({c, a}, 30s), Ready{1});
  EXPECT_THROW((void)a.recv(), mproc::EOFError);
}

void exit_when(Event go) { (void)go.wait_for(60s); }
void hold_queue(Queue<int>, Event go) { (void)go.wait_for(60s); }

TEST_F(Wait, ProcessSentinels) {
  Event go;
  Process p(exit_when, go);
  p.start();
  auto [a, b] = mproc::Pipe<int>();
  EXPECT_TRUE(mproc::wait({p.sentinel(), a}, 20ms).empty());
  go.set();
  EXPECT_EQ(mproc::wait({a, p.sentinel()}, 30s), Ready{1});
  EXPECT_EQ(mproc::wait({p}, std::nullopt), Ready{0});  // a Process is its sentinel; no limit
  p.join();
  EXPECT_EQ(mproc::wait({a, p}, 0s), Ready{1});  // stays ready after join
}

TEST_F(Wait, AQueueIsReadyWhenGetWouldNotBlock) {
  Queue<int> q;
  auto [a, b] = mproc::Pipe<int>();
  Event go;
  Process holder(hold_queue, q, go);  // another process that could put
  holder.start();
  EXPECT_TRUE(mproc::wait({a, q}, 20ms).empty());
  q.put(3);
  EXPECT_EQ(mproc::wait({a, q}, 30s), Ready{1});
  EXPECT_EQ(mproc::wait({q}, 30s), Ready{0});
  EXPECT_EQ(q.get(), 3);
  go.set();
  holder.join();
  // Nobody else can put any more: get() would throw EOFError at once.
  EXPECT_EQ(mproc::wait({a, q}, 30s), Ready{1});
  EXPECT_THROW((void)q.get(), mproc::EOFError);
}

TEST_F(Wait, OneChannelWaitsOnItsFutex) {
  auto [a, b] = mproc::Pipe<int>();
  std::thread t([b = b]() mutable { b.send(1); });
  EXPECT_EQ(mproc::wait({a}, 30s), Ready{0});
  t.join();
  EXPECT_EQ(a.recv(), 1);
}

TEST_F(Wait, MisuseIsAUsageError) {
  EXPECT_THROW((void)mproc::wait({-1}, 0s), mproc::UsageError);
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_THROW((void)mproc::wait({fds[0]}, 0s), mproc::UsageError);  // not an open descriptor
  auto [r, s] = mproc::Pipe<int>(false);  // one-way: r receives, s sends
  EXPECT_THROW((void)mproc::wait({s}, 0s), mproc::UsageError);        // send-only
  Connection<int> copy = r;
  r.close();
  EXPECT_THROW((void)mproc::wait({copy}, 0s), mproc::UsageError);  // closed in this process
  Process not_started(nothing);
  EXPECT_THROW((void)mproc::wait({not_started}, 0s), mproc::UsageError);
}

// ---- mproc::wait over several channels: futex_waitv ----------------------------------------

/// Counts the futex_waitv system calls mproc::wait makes (the test seam), and can
/// stand for a kernel without it (ENOSYS). Restores the real call when destroyed.
struct WaitvSeam {
  static inline std::atomic<int> calls{0};
  static inline std::atomic<bool> missing{false};
  static long call(void* w, unsigned n, unsigned flags, const timespec* ts, int clockid) {
    calls.fetch_add(1);
    if (missing.load()) {
      errno = ENOSYS;
      return -1;
    }
    return ::syscall(SYS_futex_waitv, w, n, flags, ts, clockid);
  }
  explicit WaitvSeam(bool kernel_without_it = false) {
    calls = 0;
    missing = kernel_without_it;
    mproc::detail::set_futex_waitv_syscall(&call);
  }
  ~WaitvSeam() { mproc::detail::set_futex_waitv_syscall(nullptr); }
  WaitvSeam(const WaitvSeam&) = delete;
  WaitvSeam& operator=(const WaitvSeam&) = delete;
};

/// The calling thread's voluntary context switches so far (each sleep is one).
long voluntary_switches() {
  std::string status = mproc_test::read_file("/proc/thread-self/status");
  auto at = status.find("voluntary_ctxt_switches:");
  return at == std::string::npos ? -1 : std::stol(status.substr(at + 24));
}

/// In another process: for each index that comes on `which`, sends it on that
/// connection, until -1.
void send_on_each(std::vector<Connection<int>> conns, Queue<int> which) {
  for (int k; (k = which.get()) >= 0;) conns[static_cast<std::size_t>(k)].send(k);
}

/// A wait over several channels is woken by a send on any one of them from another
/// process: with the kernel's futex_waitv, and on the polling fallback.
void woken_by_a_send_on_any(bool kernel_without_it) {
  WaitvSeam seam(kernel_without_it);
  constexpr int n = 6;
  std::vector<Connection<int>> ours, theirs;
  for (int i = 0; i < n; ++i) {
    auto [a, b] = mproc::Pipe<int>();
    ours.push_back(a);
    theirs.push_back(b);
  }
  Queue<int> q;  // a queue is a channel too: the last object
  Queue<int> which;
  Process p(send_on_each, theirs, which);
  p.start();
  for (auto& c : theirs) c.close();
  std::vector<mproc::WaitObject> objs(ours.begin(), ours.end());
  objs.emplace_back(q);
  EXPECT_TRUE(mproc::wait(objs, 20ms).empty());  // the timeout form: nothing is sent
  for (int k : {3, 0, n - 1, 1}) {
    which.put(k);
    EXPECT_EQ(mproc::wait(objs, k % 2 ? std::optional<std::chrono::seconds>(30s) : std::nullopt),
              Ready{static_cast<std::size_t>(k)});
    EXPECT_EQ(ours[static_cast<std::size_t>(k)].recv(), k);
  }
  q.put(9);
  EXPECT_EQ(mproc::wait(objs, 30s), Ready{static_cast<std::size_t>(n)});
  EXPECT_EQ(q.get(), 9);
  which.put(-1);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  // Ends closed everywhere are ready (recv() throws EOFError at once).
  EXPECT_EQ(mproc::wait(objs, 30s).size(), static_cast<std::size_t>(n));
  if (kernel_without_it) {
    EXPECT_EQ(WaitvSeam::calls, 1) << "ENOSYS is remembered: asked once, then polled";
  } else {
    EXPECT_GE(WaitvSeam::calls, 1);
  }
}

TEST_F(Wait, SeveralChannelsAreWokenByASendOnAnyFromAnotherProcess) { woken_by_a_send_on_any(false); }

TEST_F(Wait, WithoutFutexWaitvSeveralChannelsArePolled) { woken_by_a_send_on_any(true); }

/// Waits 200 ms on idle objects in this thread: the voluntary context switches it
/// took and the futex_waitv calls made meanwhile.
std::pair<long, int> idle_wait(const std::vector<mproc::WaitObject>& objs) {
  WaitvSeam seam;
  long before = voluntary_switches();
  EXPECT_TRUE(mproc::wait(objs, 200ms).empty());
  return {voluntary_switches() - before, WaitvSeam::calls.load()};
}

TEST_F(Wait, SeveralIdleChannelsAreWaitedOnWithoutPolling) {
  // Regression: the wait polled the channels every 20 us to 1 ms (~200 sleeps in
  // 200 ms). Now one futex_waitv sleeps on every channel's futex, sliced at 100 ms
  // to look at the peers (as recv() does): a few sleeps at most.
  auto [a1, b1] = mproc::Pipe<int>();
  auto [a2, b2] = mproc::Pipe<int>();
  Queue<int> q;
  auto [switches, calls] = idle_wait({a1, a2, q});
  EXPECT_LE(switches, 12) << "the waiting thread woke up " << switches << " times in 200 ms";
  EXPECT_GE(calls, 1);
  EXPECT_LE(calls, 6);
}

TEST_F(Wait, ChannelsAndDescriptorsAreWaitedOnWithoutPolling) {
  // A mix: the descriptors are watched by a helper thread in ppoll(2), which wakes
  // the futex_waitv the caller sleeps in.
  Event go;
  Process p(exit_when, go);
  p.start();
  auto [a1, b1] = mproc::Pipe<int>();
  Queue<int> q;
  auto [switches, calls] = idle_wait({a1, p.sentinel(), q});
  EXPECT_LE(switches, 12) << "the waiting thread woke up " << switches << " times in 200 ms";
  EXPECT_LE(calls, 6);
  // The descriptor still wakes the wait: the process's end, then a send, as before.
  go.set();
  EXPECT_EQ(mproc::wait({a1, p.sentinel(), q}, 30s), Ready{1});
  p.join();
  b1.send(5);
  EXPECT_EQ(mproc::wait({a1, p.sentinel(), q}, 30s), (Ready{0, 1}));
  EXPECT_EQ(a1.recv(), 5);
}

TEST_F(Wait, UpTo128ChannelsInOneFutexWaitvMoreArePolled) {
  // futex_waitv takes at most 128 futexes (FUTEX_WAITV_MAX). Up to that many
  // channels (127 with descriptors: one word is the descriptor watcher's) sleep in
  // it; more are polled as on a kernel without it.
  std::vector<Connection<int>> ours, theirs;
  for (std::size_t i = 0; i < mproc::detail::kFutexWaitvMax + 1; ++i) {
    auto [a, b] = mproc::Pipe<int>();
    ours.push_back(a);
    theirs.push_back(b);
  }
  int idle[2];
  ASSERT_EQ(::pipe2(idle, O_CLOEXEC), 0);  // a descriptor that never becomes readable
  auto wait_for_one = [&](std::size_t count, std::size_t k, bool with_fd = false) {
    std::vector<mproc::WaitObject> objs(ours.begin(), ours.begin() + static_cast<std::ptrdiff_t>(count));
    if (with_fd) objs.emplace_back(idle[0]);
    WaitvSeam seam;
    Event started;
    std::thread sender([&] {
      (void)started.wait_for(30s);
      theirs[k].send(static_cast<int>(k));
    });
    EXPECT_TRUE(mproc::wait(objs, 10ms).empty());
    started.set();
    EXPECT_EQ(mproc::wait(objs, 30s), Ready{k});
    sender.join();
    EXPECT_EQ(ours[k].recv(), static_cast<int>(k));
    return WaitvSeam::calls.load();
  };
  constexpr std::size_t max = mproc::detail::kFutexWaitvMax;
  EXPECT_GE(wait_for_one(max, max - 1), 1);
  EXPECT_EQ(wait_for_one(max + 1, max), 0);
  EXPECT_GE(wait_for_one(max - 1, 5, true), 1);
  EXPECT_EQ(wait_for_one(max, 6, true), 0);
  ::close(idle[0]);
  ::close(idle[1]);
}

TEST_F(Wait, TheSameChannelTwiceIsArmedTwiceAndReportedTwice) {
  auto [a, b] = mproc::Pipe<int>();
  auto [c, d] = mproc::Pipe<int>();
  WaitvSeam seam;
  Event started;
  std::thread sender([&, b = b]() mutable {
    (void)started.wait_for(30s);
    b.send(1);
  });
  EXPECT_TRUE(mproc::wait({a, c, a}, 10ms).empty());
  started.set();
  EXPECT_EQ(mproc::wait({a, c, a}, 30s), (Ready{0, 2}));
  sender.join();
  EXPECT_GE(WaitvSeam::calls, 1);
  EXPECT_EQ(a.recv(), 1);
}

TEST_F(Wait, ASleeperInWaitPassesOnAWakeUpItTookFromAReceiver) {
  // A futex_wake(1) for a message may reach mproc::wait's sleeper instead of a thread
  // asleep in recv() on the same channel; wait() receives nothing, so it wakes the
  // receiver on. (Without that the receiver would sleep out a 100 ms slice: not
  // asserted, timing; this runs the path, under the sanitizers too.)
  auto [a, b] = mproc::Pipe<int>();
  auto [c, d] = mproc::Pipe<int>();
  constexpr int rounds = 50;
  Queue<int> got;
  std::thread receiver([a = a, got]() mutable {
    for (int i = 0; i < rounds; ++i) got.put(a.recv(30s));
  });
  for (int i = 0; i < rounds; ++i) {
    std::thread waiter([&] { (void)mproc::wait({a, c}, 30s); });
    b.send(i);
    EXPECT_EQ(got.get(30s), i);
    d.send(0);  // the waiter may have seen a's message, or not (the receiver took it first)
    waiter.join();
    EXPECT_EQ(c.recv(30s), 0);
  }
  receiver.join();
}

// ---- Queue::shutdown() ---------------------------------------------------------------------

using QueueShutdown = NoLeaks;

TEST_F(QueueShutdown, PutThrowsGetDrainsThenThrows) {
  Queue<int> q;
  q.put(1);
  q.put(2);
  q.put(3);
  EXPECT_FALSE(q.is_shutdown());
  q.shutdown();
  EXPECT_TRUE(q.is_shutdown());
  EXPECT_THROW(q.put(4), mproc::ShutDown);
  EXPECT_THROW(q.put_nowait(4), mproc::ShutDown);
  EXPECT_THROW(q.put_many(std::vector<int>{4, 5}), mproc::ShutDown);
  EXPECT_EQ(q.get(), 1);  // what was put stays gettable
  EXPECT_EQ(q.get_nowait(), 2);
  EXPECT_EQ(q.get_many(10), std::vector<int>{3});
  EXPECT_THROW((void)q.get(), mproc::ShutDown);  // empty: at once, instead of blocking
  EXPECT_THROW((void)q.get_nowait(), mproc::ShutDown);  // not Empty
  EXPECT_THROW((void)q.get(10s), mproc::ShutDown);     // at once, not after 10 s
  EXPECT_THROW((void)q.get_many(10), mproc::ShutDown);
  EXPECT_EQ(mproc::wait({q}, 0s), Ready{0});  // a get would not block
  q.shutdown();  // idempotent
  EXPECT_TRUE(q.is_shutdown());
}

TEST_F(QueueShutdown, ImmediateDropsTheItemsAndCountsThemDone) {
  mproc::JoinableQueue<int> q;
  for (int i = 0; i < 5; ++i) q.put(i);
  EXPECT_EQ(q.get(), 0);
  q.task_done();
  EXPECT_EQ(q.get(), 1);  // taken, not yet done: shutdown does not count it
  q.shutdown(true);
  EXPECT_EQ(q.qsize(), 0u);
  EXPECT_THROW((void)q.get(), mproc::ShutDown);
  EXPECT_FALSE(q.join(0s));  // item 1 is still unfinished
  q.task_done();
  EXPECT_TRUE(q.join(0s));  // the three dropped ones counted as done
  EXPECT_THROW(q.put(1), mproc::ShutDown);
}

TEST_F(QueueShutdown, ALaterImmediateShutdownStillDrains) {
  Queue<std::string> q;
  q.put(std::string(200'000, 'x'));  // out of band: its segment must be closed when dropped
  q.put("small");
  q.shutdown();
  EXPECT_EQ(q.qsize(), 2u);
  q.shutdown(true);
  EXPECT_EQ(q.qsize(), 0u);
  EXPECT_THROW((void)q.get_nowait(), mproc::ShutDown);
}  // NoLeaks: no fd of the dropped out-of-band item is left

void get_from(Queue<int> inner, Queue<std::string> out, Event started) {
  started.set();
  try {
    (void)inner.get();
    out.put("got");
  } catch (const mproc::EOFError&) {
    out.put("eof");
  }
}

TEST_F(QueueShutdown, ImmediateReleasesTheHandlesInsideDroppedItems) {
  // A queue handle inside a queued item counts as a holder of that queue until it is
  // received. Dropped undecoded, it would keep the child's get() below waiting forever.
  Queue<Queue<int>> carrier;
  Queue<std::string> out;
  Queue<int> inner;
  Event started;
  Process p(get_from, inner, out, started);
  p.start();
  ASSERT_TRUE(started.wait_for(30s));
  carrier.put(inner);
  carrier.shutdown(true);
  inner.close();  // no other holder is left: the child's get() throws EOFError
  std::string got;
  try {
    got = out.get(30s);
  } catch (const mproc::Empty&) {
    got = "nothing";
    p.kill();
  }
  EXPECT_EQ(got, "eof");
  p.join();
}

void blocked_get(Queue<int> q, Queue<std::string> out, Event started, bool timed) {
  started.set();
  try {
    (void)(timed ? q.get(60s) : q.get());
    out.put("got");
  } catch (const mproc::ShutDown&) {
    out.put("shutdown");
  } catch (const mproc::Empty&) {
    out.put("empty");
  }
}

TEST_F(QueueShutdown, WakesBlockedGettersHereAndInOtherProcesses) {
  Queue<int> q;
  Queue<std::string> out;
  Event started, started_timed, started_here;
  Process p(blocked_get, q, out, started, false);
  Process p_timed(blocked_get, q, out, started_timed, true);
  p.start();
  p_timed.start();
  std::thread t(blocked_get, q, out, started_here, true);
  ASSERT_TRUE(started.wait_for(30s));
  ASSERT_TRUE(started_timed.wait_for(30s));
  ASSERT_TRUE(started_here.wait_for(30s));
  q.shutdown();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(out.get(30s), "shutdown");
  t.join();
  p.join();
  p_timed.join();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(p_timed.exitcode(), 0);
}

void blocked_put(Queue<int> q, Queue<std::string> out, Event started) {
  q.put(1);  // fills maxsize 1
  started.set();
  try {
    q.put(2);
    out.put("put");
  } catch (const mproc::ShutDown&) {
    out.put("shutdown");
  }
}

TEST_F(QueueShutdown, WakesBlockedPutters) {
  Queue<int> q(1);
  Queue<std::string> out;
  Event started;
  Process p(blocked_put, q, out, started);
  p.start();
  ASSERT_TRUE(started.wait_for(30s));
  q.shutdown();
  EXPECT_EQ(out.get(30s), "shutdown");
  p.join();
  EXPECT_EQ(q.get(), 1);  // the item put before stays
  EXPECT_THROW((void)q.get(), mproc::ShutDown);
}

void join_it(mproc::JoinableQueue<int> q, Queue<std::string> out, Event started) {
  started.set();
  q.join();
  out.put("joined");
}

TEST_F(QueueShutdown, ImmediateReleasesJoinInAnotherProcess) {
  mproc::JoinableQueue<int> q;
  q.put(1);
  q.put(2);
  Queue<std::string> out;
  Event started;
  Process p(join_it, q, out, started);
  p.start();
  ASSERT_TRUE(started.wait_for(30s));
  q.shutdown(true);
  EXPECT_EQ(out.get(30s), "joined");
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

void shut_it(Queue<int> q) { q.shutdown(); }

TEST_F(QueueShutdown, SeenByEveryProcess) {
  Queue<int> q;
  q.put(7);
  Process p(shut_it, q);
  p.start();
  p.join();
  EXPECT_TRUE(q.is_shutdown());
  EXPECT_THROW(q.put(1), mproc::ShutDown);
  EXPECT_EQ(q.get(), 7);
}

// ---- WorkerLostError / TaskTimeoutError name the argument index -----------------------------

using ItemErrors = NoLeaks;

int exit_on_3(int x) {
  if (x == 3) ::_exit(7);
  return x;
}

int stall_on_2(int x) {
  if (x == 2) {
    Event never;
    (void)never.wait_for(60s);  // the pool's timeout kills the worker long before
  }
  return x;
}

TEST_F(ItemErrors, WorkerLostErrorNamesTheArgumentIndex) {
  mproc::Pool pool(2);
  try {
    (void)pool.map(exit_on_3, std::vector<int>{0, 1, 2, 3, 4}, 1);
    FAIL() << "no WorkerLostError";
  } catch (const mproc::WorkerLostError& e) {
    EXPECT_EQ(e.index(), 3u);
    EXPECT_EQ(e.exitcode(), 7);
    const std::string what = e.what();
    EXPECT_NE(what.find("while running this task (argument index 3)"), std::string::npos) << what;
    EXPECT_NE(what.find("(pid "), std::string::npos) << what;
  }
}

TEST_F(ItemErrors, TaskTimeoutErrorNamesTheArgumentIndex) {
  mproc::Pool pool({.processes = 2, .timeout = 200ms});
  try {
    (void)pool.map(stall_on_2, std::vector<int>{0, 1, 2, 3}, 1);
    FAIL() << "no TaskTimeoutError";
  } catch (const mproc::TaskTimeoutError& e) {
    EXPECT_EQ(e.index(), 2u);
    const std::string what = e.what();
    EXPECT_NE(what.find("ran past the pool's timeout (argument index 2)"), std::string::npos) << what;
  }
}

}  // namespace
