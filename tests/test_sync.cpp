// Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event and Barrier, after
// CPython's _TestLock, _TestSemaphore, _TestCondition, _TestEvent and _TestBarrier,
// across processes under every start method, plus owner death and leak checks.
//
// Processes synchronize on the primitives themselves (or on join); the only timed
// waits are bounded ones whose expiry is the behaviour under test, and absence
// checks ("nobody else woke within 100 ms") that cannot fail when the code is right.
#include <gtest/gtest.h>

#include <csignal>
#include <mproc/process.hpp>
#include <mproc/sync.hpp>
#include <mproc/value.hpp>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>

#include "sync_test_util.hpp"
#include "util.hpp"

using namespace std::chrono_literals;
using mproc::Barrier;
using mproc::BoundedSemaphore;
using mproc::BrokenBarrierError;
using mproc::Condition;
using mproc::Event;
using mproc::Lock;
using mproc::LockStatus;
using mproc::OwnerDiedError;
using mproc::Process;
using mproc::ProcessOptions;
using mproc::RLock;
using mproc::Semaphore;
using mproc::StartMethod;
using mproc::UsageError;
using Clock = std::chrono::steady_clock;
using mproc_test::expect;
using mproc_test::join_ok;
using mproc_test::round_trip;
using mproc_test::start;

namespace {

// ---- children --------------------------------------------------------------------

void hold_lock_until(Lock l, Event held, Event done) {
  std::lock_guard g(l);
  held.set();
  done.wait();
}

void try_lock_must_fail(Lock l) {
  expect(!l.try_acquire(), "try_acquire succeeded while another process held the lock");
  expect(!l.try_lock(), "try_lock succeeded while another process held the lock");
  auto t0 = Clock::now();
  expect(!l.acquire_for(200ms), "acquire_for succeeded while another process held the lock");
  expect(Clock::now() - t0 >= 190ms, "acquire_for returned long before its timeout");
}

void lock_and_die(Lock l) {
  l.lock();
  std::raise(SIGKILL);
}
void rlock_twice_and_die(RLock l) {
  l.lock();
  l.lock();
  std::raise(SIGKILL);
}
void take_units_and_die(Semaphore s, int n) {
  for (int i = 0; i < n; ++i) s.acquire();
  std::raise(SIGKILL);
}
void take_unit_and_exit(Semaphore s) { expect(s.try_acquire(), "the unit was not free"); }
void release_once(Semaphore s) { s.release(); }
void over_release(BoundedSemaphore s) {
  try {
    s.release();
  } catch (const UsageError&) {
    return;
  }
  throw std::runtime_error("over-release of a BoundedSemaphore did not throw");
}

void notify_and_die(Condition c) {
  c.lock();  // possible only once the parent's wait() released it
  c.notify();
  std::raise(SIGKILL);
}

void cond_waiter(Condition c, Semaphore sleeping, mproc::Value<int> woken, Semaphore woke) {
  std::unique_lock g(c);
  sleeping.release();  // under the lock: once the parent takes it, we are registered
  c.wait();
  woken.set(woken.get() + 1);
  g.unlock();
  woke.release();
}

// Answers each turn == 1 with turn = 0. A waiter that notifies and waits again at
// once must not take the wake-up meant for the other side (that hung both).
void ping_pong_child(Condition c, mproc::RawValue<int> turn, int rounds) {
  std::unique_lock g(c);
  for (int i = 0; i < rounds; ++i) {
    expect(c.wait_for(20s, [&] { return turn.get() == 1; }), "ping never came");
    turn.set(0);
    c.notify();
  }
}

void wait_for_state(Condition c, mproc::Value<int> state) {
  std::unique_lock g(c);
  c.wait([&] { return state.get() >= 3; });
  expect(c.wait_for(10s, [&] { return state.get() == 3; }), "predicate false after wait_for");
}

void event_waiter(Event e, Semaphore ready, mproc::Value<int> done, Semaphore finished) {
  ready.release();
  e.wait();
  expect(e.is_set(), "woken but the event is not set");
  done.fetch_add(1);
  finished.release();
}

void barrier_index(Barrier b, mproc::Array<int> seen, int slot) {
  seen.set(static_cast<std::size_t>(slot), b.wait());
}

void expect_broken(Barrier b, Semaphore arrived) {
  arrived.release();
  try {
    b.wait();
  } catch (const BrokenBarrierError&) {
    return;
  }
  throw std::runtime_error("the barrier released instead of breaking");
}

mproc::RawValue<int>* g_action_count = nullptr;  // per process; set before waiting
void count_action() { g_action_count->fetch_add(1); }
void throwing_action() { throw std::runtime_error("action failed"); }

void barrier_rounds(Barrier b, mproc::RawValue<int> count, int rounds) {
  g_action_count = &count;
  for (int i = 0; i < rounds; ++i) b.wait();
}

void barrier_times_out(Barrier b) {
  auto t0 = Clock::now();
  try {
    b.wait_for(100ms);
  } catch (const BrokenBarrierError&) {
    expect(Clock::now() - t0 >= 95ms, "broke long before the timeout");
    return;
  }
  throw std::runtime_error("wait_for returned without the other party");
}

}  // namespace

// ---- in-process behaviour (CPython's test_lock, test_rlock, test_semaphore …) ---------

TEST(Lock, AcquireRelease) {
  Lock lock;
  EXPECT_TRUE(lock.acquire());
  EXPECT_TRUE(lock.is_owned());
  EXPECT_FALSE(lock.acquire(false));  // held: try once fails
  EXPECT_FALSE(lock.try_lock());
  EXPECT_THROW(lock.acquire(), UsageError);  // would wait for itself
  lock.release();
  EXPECT_FALSE(lock.is_owned());
  EXPECT_THROW(lock.release(), UsageError);
  EXPECT_TRUE(lock.try_acquire());
  lock.release();
}

TEST(Lock, StdLockableAdapters) {
  Lock a;
  RLock b;
  Semaphore s(1);
  {
    std::lock_guard g(a);
    EXPECT_TRUE(a.is_owned());
  }
  EXPECT_FALSE(a.is_owned());
  {
    std::scoped_lock g(a, b, s);
    EXPECT_TRUE(a.is_owned());
    EXPECT_TRUE(b.is_owned());
    EXPECT_EQ(s.get_value(), 0);
  }
  EXPECT_EQ(s.get_value(), 1);
  {
    std::unique_lock g(b, std::try_to_lock);
    EXPECT_TRUE(g.owns_lock());
    std::unique_lock g2(b, 10ms);  // recursive: the owner gets it again
    EXPECT_TRUE(g2.owns_lock());
  }
  EXPECT_FALSE(b.is_owned());
  EXPECT_TRUE(a.try_lock_for(-1s));  // std semantics: non-positive means try once
  a.unlock();
  EXPECT_TRUE(a.try_lock_until(std::chrono::system_clock::now() - 1h));
  a.unlock();
}

TEST(Lock, NegativeTimeoutsAreUsageErrors) {
  Lock l;
  Semaphore s(0);
  Event e;
  Condition c;
  Barrier b(2);
  EXPECT_THROW(l.acquire(true, -1ms), UsageError);
  EXPECT_THROW(l.acquire_for(-1ns), UsageError);
  EXPECT_THROW(l.lock_checked_for(-1s), UsageError);
  EXPECT_THROW(s.acquire_for(-1ms), UsageError);
  EXPECT_THROW(e.wait_for(-1ms), UsageError);
  std::lock_guard g(c);
  EXPECT_THROW(c.wait_for(-1ms), UsageError);
  EXPECT_THROW(b.wait_for(-1ms), UsageError);
  EXPECT_THROW(Barrier(2, nullptr, -1s), UsageError);
  EXPECT_FALSE(b.broken());
}

TEST(Lock, DroppedWhileHeldLeavesOtherLocksWorking) {
  // glibc keeps a held robust mutex on the thread's robust list; unmapping it would
  // make the next lock/unlock walk freed (or reused) memory. The last handle pins it.
  for (int i = 0; i < 3; ++i) {
    Lock l;
    l.lock();
  }
  {
    RLock r;
    r.lock();
  }
  Lock other;
  for (int i = 0; i < 100; ++i) {
    std::lock_guard g(other);
    Lock fresh;
    std::lock_guard g2(fresh);
  }
  SUCCEED();
}

TEST(RLock, Recursion) {
  RLock lock;
  EXPECT_TRUE(lock.acquire());
  EXPECT_TRUE(lock.acquire());
  EXPECT_TRUE(lock.acquire());
  lock.release();
  lock.release();
  EXPECT_TRUE(lock.is_owned());
  lock.release();
  EXPECT_FALSE(lock.is_owned());
  EXPECT_THROW(lock.release(), UsageError);
}

TEST(RLock, OtherThreadCannotReleaseOrTake) {
  RLock lock;
  lock.acquire();
  std::thread t([&] {
    EXPECT_FALSE(lock.is_owned());
    EXPECT_THROW(lock.release(), UsageError);
    EXPECT_FALSE(lock.try_acquire());
  });
  t.join();
  lock.release();
}

TEST(Semaphore, Counts) {
  Semaphore sem(2);
  EXPECT_EQ(sem.get_value(), 2);
  EXPECT_TRUE(sem.acquire());
  EXPECT_EQ(sem.get_value(), 1);
  EXPECT_TRUE(sem.acquire());
  EXPECT_EQ(sem.get_value(), 0);
  EXPECT_FALSE(sem.acquire(false));
  sem.release();
  EXPECT_EQ(sem.get_value(), 1);
  sem.release();
  sem.release();  // a plain Semaphore may go above its initial value
  EXPECT_EQ(sem.get_value(), 3);
  EXPECT_THROW(Semaphore(-1), UsageError);
}

TEST(Semaphore, BoundedOverRelease) {
  BoundedSemaphore sem(2);
  sem.acquire();
  sem.release();
  EXPECT_THROW(sem.release(), UsageError);
  EXPECT_EQ(sem.get_value(), 2);
}

TEST(Semaphore, TimedAcquireTimesOut) {
  Semaphore sem(0);
  EXPECT_FALSE(sem.acquire(false, 10s));  // block=false ignores the timeout
  auto t0 = Clock::now();
  EXPECT_FALSE(sem.acquire(true, 200ms));
  EXPECT_GE(Clock::now() - t0, 190ms);
  t0 = Clock::now();
  EXPECT_FALSE(sem.try_lock_for(150ms));
  EXPECT_GE(Clock::now() - t0, 140ms);
}

TEST(Semaphore, ThreadsShareUnits) {
  Semaphore sem(0);
  std::thread t([&] { sem.release(); });
  EXPECT_TRUE(sem.acquire_for(10s));
  t.join();
}

TEST(Condition, NeedsItsLock) {
  Condition c;
  EXPECT_THROW(c.wait(), UsageError);
  EXPECT_THROW(c.notify(), UsageError);
  EXPECT_THROW(c.notify_all(), UsageError);
  std::lock_guard g(c);
  EXPECT_THROW(c.notify(-1), UsageError);
  c.notify();  // nobody waiting: no effect
}

TEST(Condition, WaitTimesOutHoldingTheLock) {
  for (Condition c : {Condition(), Condition(Lock()), Condition(RLock())}) {
    std::lock_guard g(c);
    auto t0 = Clock::now();
    EXPECT_FALSE(c.wait_for(100ms));
    EXPECT_GE(Clock::now() - t0, 95ms);
    EXPECT_TRUE(c.is_owned());
    int calls = 0;
    EXPECT_FALSE(c.wait_for(50ms, [&] { return ++calls > 100; }));
    EXPECT_GE(calls, 1);
    EXPECT_TRUE(c.wait_for(50ms, [] { return true; }));
  }
}

TEST(Condition, RecursiveLockIsFullyReleasedWhileWaiting) {
  RLock lock;
  Condition c(lock);
  Event waiting;
  std::lock_guard g1(c);
  std::lock_guard g2(c);  // depth 2
  std::thread t([&] {
    waiting.wait();
    std::lock_guard g(c);  // only possible if wait() released both levels
    c.notify();
  });
  waiting.set();
  EXPECT_TRUE(c.wait_for(10s));
  EXPECT_TRUE(c.is_owned());
  t.join();
}

TEST(Condition, MoreWaitersThanSlots) {
  // 64 waiters get a slot each; the others share the overflow word.
  constexpr int kThreads = 80;
  Condition c;
  int ready = 0, done = 0;
  bool go = false;
  std::vector<std::thread> ts;
  for (int i = 0; i < kThreads; ++i) {
    ts.emplace_back([&] {
      std::unique_lock g(c);
      ++ready;
      c.notify_all();  // tells the main thread; spurious for the others
      c.wait([&] { return go; });
      ++done;
    });
  }
  {
    std::unique_lock g(c);
    ASSERT_TRUE(c.wait_for(30s, [&] { return ready == kThreads; }));
    go = true;
    c.notify_all();
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(done, kThreads);
}

TEST(Event, Basics) {
  Event e;
  EXPECT_FALSE(e.is_set());
  EXPECT_FALSE(e.wait_for(0s));
  auto t0 = Clock::now();
  EXPECT_FALSE(e.wait_for(100ms));
  EXPECT_GE(Clock::now() - t0, 95ms);
  e.set();
  EXPECT_TRUE(e.is_set());
  EXPECT_TRUE(e.wait_for(0s));
  e.wait();
  e.clear();
  EXPECT_FALSE(e.is_set());
}

TEST(Barrier, SinglePartyAndState) {
  Barrier b(1);
  EXPECT_EQ(b.parties(), 1);
  EXPECT_EQ(b.wait(), 0);
  EXPECT_EQ(b.wait(), 0);
  EXPECT_THROW(Barrier(0), UsageError);
  Barrier two(2);
  EXPECT_EQ(two.n_waiting(), 0);
  two.abort();
  EXPECT_TRUE(two.broken());
  EXPECT_THROW(two.wait(), BrokenBarrierError);
  two.reset();
  EXPECT_FALSE(two.broken());
}

TEST(Barrier, DefaultTimeoutBreaks) {
  Barrier b(2, nullptr, 100ms);
  auto t0 = Clock::now();
  EXPECT_THROW(b.wait(), BrokenBarrierError);
  EXPECT_GE(Clock::now() - t0, 95ms);
  EXPECT_TRUE(b.broken());
}

TEST(Barrier, ThreadsAndActionThatThrows) {
  Barrier b(2, throwing_action);
  std::thread t([&] { EXPECT_THROW(b.wait(), std::exception); });  // broken, or the action's error
  EXPECT_THROW(b.wait(), std::exception);
  t.join();
  EXPECT_TRUE(b.broken());
}

// ---- across processes ----------------------------------------------------------------

class SyncAcross : public ::testing::TestWithParam<StartMethod> {};

TEST_P(SyncAcross, TryLockFailsWhileAnotherProcessHolds) {
  Lock l;
  Event held, done;
  Process holder = start(GetParam(), hold_lock_until, l, held, done);
  ASSERT_TRUE(held.wait_for(20s));
  Process tryer = start(GetParam(), try_lock_must_fail, l);
  join_ok(tryer);
  // And from here, while the child still holds it.
  auto t0 = Clock::now();
  EXPECT_FALSE(l.acquire_for(200ms));
  EXPECT_GE(Clock::now() - t0, 190ms);
  done.set();
  join_ok(holder);
  EXPECT_TRUE(l.try_acquire());
  l.release();
}

TEST_P(SyncAcross, LockOwnerDeathIsReportedOnce) {
  Lock l;
  Process p = start(GetParam(), lock_and_die, l);
  ASSERT_TRUE(p.join(30s));
  ASSERT_EQ(p.exitcode(), -SIGKILL);
  try {
    l.lock();
    FAIL() << "no OwnerDiedError";
  } catch (const OwnerDiedError& e) {
    EXPECT_NE(std::string(e.what()).find("pid " + std::to_string(p.pid())), std::string::npos) << e.what();
  }
  EXPECT_FALSE(l.is_owned());  // released again before throwing
  {
    std::lock_guard g(l);  // works normally afterwards
    EXPECT_TRUE(l.is_owned());
  }
  EXPECT_EQ(l.lock_checked(), LockStatus::acquired);
  l.unlock();
}

TEST_P(SyncAcross, LockCheckedReportsOwnerDeathWithTheLockHeld) {
  Lock l;
  Process p = start(GetParam(), lock_and_die, l);
  ASSERT_TRUE(p.join(30s));
  EXPECT_EQ(l.lock_checked_for(10s), LockStatus::owner_died);
  EXPECT_TRUE(l.is_owned());
  l.unlock();
  EXPECT_EQ(l.lock_checked(), LockStatus::acquired);
  l.unlock();
}

TEST_P(SyncAcross, RLockOwnerDeath) {
  RLock l;
  Process p = start(GetParam(), rlock_twice_and_die, l);
  ASSERT_TRUE(p.join(30s));
  EXPECT_THROW(l.acquire(), OwnerDiedError);
  EXPECT_FALSE(l.is_owned());
  EXPECT_TRUE(l.acquire());
  l.release();  // one level: the dead owner's depth is gone
  EXPECT_FALSE(l.is_owned());
}

TEST_P(SyncAcross, SemaphoreUnitsOfAKilledHolderComeBack) {
  Semaphore s(3);
  Process p = start(GetParam(), take_units_and_die, s, 2);
  ASSERT_TRUE(p.join(30s));
  ASSERT_EQ(p.exitcode(), -SIGKILL);
  EXPECT_EQ(s.get_value(), 1);
  ASSERT_TRUE(s.acquire());
  auto t0 = Clock::now();
  EXPECT_TRUE(s.acquire_for(10s));  // needs a reclaimed unit
  EXPECT_TRUE(s.acquire_for(10s));
  std::printf("[          ] dead holder's units reclaimed after %.0f ms\n",
              std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  EXPECT_FALSE(s.try_acquire());
  for (int i = 0; i < 3; ++i) s.release();
}

TEST_P(SyncAcross, SemaphoreUnitsConsumedByANormalExitStayConsumed) {
  // The signal pattern: a process that takes a unit and ends normally consumed
  // it; it must not be "reclaimed" for others after its exit.
  Semaphore s(1);
  Process p = start(GetParam(), take_unit_and_exit, s);
  join_ok(p);
  EXPECT_FALSE(s.acquire_for(300ms));  // longer than the reclaim scan interval
  Process r = start(GetParam(), release_once, s);
  EXPECT_TRUE(s.acquire_for(20s));
  join_ok(r);
}

TEST_P(SyncAcross, SemaphoreWithoutReclaimKeepsDeadHoldersUnits) {
  Semaphore s(1, {.reclaim_dead_holders = false});
  Process p = start(GetParam(), take_units_and_die, s, 1);
  ASSERT_TRUE(p.join(30s));
  ASSERT_EQ(p.exitcode(), -SIGKILL);
  EXPECT_FALSE(s.acquire_for(300ms));  // longer than the reclaim scan interval
}

TEST_P(SyncAcross, ConditionWaitReportsALockOwnerThatDied) {
  Condition c(Lock{});
  std::unique_lock g(c);
  Process p = start(GetParam(), notify_and_die, c);
  try {
    c.wait_for(30s);
    FAIL() << "no OwnerDiedError";
  } catch (const OwnerDiedError&) {
  }
  EXPECT_TRUE(c.is_owned());  // held on the way out, as the guard expects
  g.unlock();
  ASSERT_TRUE(p.join(30s));
  EXPECT_EQ(p.exitcode(), -SIGKILL);
  EXPECT_EQ(c.lock_checked(), LockStatus::acquired);
  c.unlock();
}

TEST_P(SyncAcross, BoundedSemaphoreOverReleaseInAChild) {
  BoundedSemaphore s(1);
  Process p = start(GetParam(), over_release, s);
  join_ok(p);
  EXPECT_EQ(s.get_value(), 1);
}

TEST_P(SyncAcross, ConditionNotifyWakesExactlyN) {
  Condition c;
  Semaphore sleeping(0), woke(0);
  mproc::Value<int> woken(0);
  std::vector<Process> ps;
  for (int i = 0; i < 3; ++i) ps.push_back(start(GetParam(), cond_waiter, c, sleeping, woken, woke));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(sleeping.acquire_for(30s));
  {
    std::lock_guard g(c);  // every waiter is inside wait() now
    c.notify(0);
    c.notify(2);
  }
  ASSERT_TRUE(woke.acquire_for(20s));
  ASSERT_TRUE(woke.acquire_for(20s));
  EXPECT_FALSE(woke.acquire_for(100ms));  // the third stays asleep
  EXPECT_EQ(woken.get(), 2);
  {
    std::lock_guard g(c);
    c.notify_all();
  }
  ASSERT_TRUE(woke.acquire_for(20s));
  EXPECT_EQ(woken.get(), 3);
  for (auto& p : ps) join_ok(p);
}

TEST_P(SyncAcross, ConditionPingPongLosesNoWakeUp) {
  constexpr int kRounds = 300;
  Condition c;
  mproc::RawValue<int> turn(0);
  Process p = start(GetParam(), ping_pong_child, c, turn, kRounds);
  {
    std::unique_lock g(c);
    for (int i = 0; i < kRounds; ++i) {
      turn.set(1);
      c.notify();
      ASSERT_TRUE(c.wait_for(20s, [&] { return turn.get() == 0; })) << "round " << i;
    }
  }
  join_ok(p);
}

TEST_P(SyncAcross, ConditionWaitForPredicate) {
  Condition c(Lock{});
  mproc::Value<int> state(0);
  Process p = start(GetParam(), wait_for_state, c, state);
  for (int i = 1; i <= 3; ++i) {
    std::lock_guard g(c);
    state.set(i);
    c.notify();
  }
  join_ok(p);
}

TEST_P(SyncAcross, EventWakesEveryWaitingProcess) {
  Event e;
  Semaphore ready(0), finished(0);
  mproc::Value<int> done(0);
  std::vector<Process> ps;
  for (int i = 0; i < 3; ++i) ps.push_back(start(GetParam(), event_waiter, e, ready, done, finished));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ready.acquire_for(30s));
  EXPECT_EQ(done.get(), 0);
  e.set();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(finished.acquire_for(20s));
  EXPECT_EQ(done.get(), 3);
  for (auto& p : ps) join_ok(p);
}

TEST_P(SyncAcross, BarrierIndicesAreDistinct) {
  Barrier b(4);
  mproc::Array<int> seen(3);
  std::vector<Process> ps;
  for (int i = 0; i < 3; ++i) ps.push_back(start(GetParam(), barrier_index, b, seen, i));
  int mine = b.wait();
  for (auto& p : ps) join_ok(p);
  std::set<int> all{mine};
  for (int x : seen.to_vector()) all.insert(x);
  EXPECT_EQ(all, (std::set<int>{0, 1, 2, 3}));
}

TEST_P(SyncAcross, BarrierActionRunsOncePerRound) {
  mproc::RawValue<int> count(0);
  g_action_count = &count;
  Barrier b(3, count_action);
  std::vector<Process> ps;
  for (int i = 0; i < 2; ++i) ps.push_back(start(GetParam(), barrier_rounds, b, count, 2));
  b.wait();
  b.wait();
  for (auto& p : ps) join_ok(p);
  EXPECT_EQ(count.get(), 2);
}

TEST_P(SyncAcross, BarrierAbortBreaksWaiters) {
  Barrier b(3);
  Semaphore arrived(0);
  std::vector<Process> ps;
  for (int i = 0; i < 2; ++i) ps.push_back(start(GetParam(), expect_broken, b, arrived));
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(arrived.acquire_for(30s));
  b.abort();  // whether they are asleep yet or not, they get BrokenBarrierError
  for (auto& p : ps) join_ok(p);
  EXPECT_TRUE(b.broken());
}

TEST_P(SyncAcross, BarrierResetBreaksWaitersThenWorksAgain) {
  Barrier b(2);
  Semaphore arrived(0);
  Process p = start(GetParam(), expect_broken, b, arrived);
  ASSERT_TRUE(arrived.acquire_for(30s));
  // Reset only once the child is really waiting, else it would not be broken.
  for (auto until = Clock::now() + 20s; b.n_waiting() == 0 && Clock::now() < until;)
    std::this_thread::yield();
  ASSERT_EQ(b.n_waiting(), 1);
  b.reset();
  join_ok(p);
  EXPECT_FALSE(b.broken());
  mproc::Array<int> seen(1);
  Process q = start(GetParam(), barrier_index, b, seen, 0);
  int mine = b.wait();
  join_ok(q);
  EXPECT_EQ(mine + seen.get(0), 1);
}

TEST_P(SyncAcross, BarrierTimeoutBreaksIt) {
  Barrier b(2);
  Process p = start(GetParam(), barrier_times_out, b);
  join_ok(p);
  EXPECT_TRUE(b.broken());
  EXPECT_THROW(b.wait(), BrokenBarrierError);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, SyncAcross,
                         ::testing::Values(StartMethod::fork, StartMethod::forkserver, StartMethod::spawn),
                         [](const auto& i) { return std::string(mproc::to_string(i.param)); });

// ---- leaks ------------------------------------------------------------------------

// n times: make one, send it (map it again, as a receiver does), use both copies.
template <class Make, class Use>
void cycles(int n, Make make, Use use) {
  for (int i = 0; i < n; ++i) {
    auto x = make();
    auto received = round_trip(x);
    use(x);
    use(received);
  }
}

TEST(SyncLeaks, ThousandCyclesOfEachType) {
  int fds = mproc_test::fd_count();
  int entries = mproc_test::shm_entries();
  auto lock_unlock = [](auto& l) { std::lock_guard g(l); };
  cycles(
      1000, [] { return Lock(); }, lock_unlock);
  cycles(
      1000, [] { return RLock(); }, lock_unlock);
  cycles(
      1000, [] { return Semaphore(1); }, lock_unlock);
  cycles(
      1000, [] { return BoundedSemaphore(1); }, lock_unlock);
  cycles(
      1000, [] { return Condition(); },
      [](Condition& c) {
        std::lock_guard g(c);
        c.notify_all();
      });
  cycles(
      1000, [] { return Event(); }, [](Event& e) { e.set(); });
  cycles(
      1000, [] { return Barrier(1, count_action); }, [](Barrier& b) { b.abort(); });
  EXPECT_EQ(mproc_test::fd_count(), fds);
  EXPECT_EQ(mproc_test::shm_entries(), entries);
}

TEST(SyncLeaks, HandlesOfTheWrongTypeAreRejected) {
  // A Lock's message is not an Event's: the receiver must refuse it, not misuse the memory.
  Lock l;  // kept alive: the message only borrows its fd
  mproc::Writer w;
  mproc::dump(w, l);
  mproc::Reader r(w.bytes(), w.fds());
  EXPECT_THROW(mproc::load<Event>(r), mproc::SerializationError);
}
