// Manager: real server processes, real sockets, real client processes.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <functional>
#include <latch>
#include <future>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <mproc/manager.hpp>
#include <mproc/pipe.hpp>
#include <mproc/pool.hpp>
#include <mproc/process.hpp>

using namespace std::chrono_literals;

namespace {

class ManagerTest : public ::testing::TestWithParam<mproc::StartMethod> {};

std::string method_name(const ::testing::TestParamInfo<mproc::StartMethod>& i) {
  return std::string(mproc::to_string(i.param));
}

mproc::ManagerOptions opts(mproc::StartMethod m) {
  mproc::ManagerOptions o;
  o.start_method = m;
  return o;
}

/// Waits until process `pid` (not necessarily our child) has exited.
bool wait_pid_gone(pid_t pid, std::chrono::milliseconds timeout) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return errno == ESRCH;
  pollfd p{fd, POLLIN, 0};
  int rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
  ::close(fd);
  return rc == 1;
}

/// Polls `f` (a cheap server query) until it holds, for at most 30 s.
template <class F>
bool until(F f) {
  auto end = std::chrono::steady_clock::now() + 30s;
  while (!f()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

int open_fd_count() {
  int n = 0;
  for (auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)e;
    ++n;
  }
  return n;
}

void add(int& v, int n) { v += n; }
void append_x(std::string& s, std::string x) { s += x; }
void throw_it(int&) { throw std::runtime_error("boom"); }

void child_increments(mproc::DictProxy<std::string, int> d, mproc::ValueProxy<int> v, int n) {
  for (int i = 0; i < n; ++i) {
    d.apply("hits", add, 1);
    v.apply(add, 1);
  }
}

void child_uses_all(mproc::DictProxy<std::string, int> d, mproc::ListProxy<int> l, mproc::QueueProxy<std::string> q,
                    mproc::EventProxy e, mproc::NamespaceProxy ns) {
  d["from_child"] = 7;
  l.append(99);
  q.put("hello from child");
  ns.set("name", std::string("child"));
  e.set();
}

void hold_lock_and_die(mproc::LockProxy lock, mproc::Connection<int> ready) {
  lock.acquire();
  ready.send(1);
  ::pause();  // killed by the test
}

void acquire_sem_and_die(mproc::SemaphoreProxy sem, mproc::Connection<int> ready) {
  sem.acquire();
  ready.send(1);
  ::pause();
}

void start_manager_then_wait(mproc::Connection<int> out) {
  mproc::Manager m(opts(mproc::StartMethod::fork));
  out.send(static_cast<int>(m.pid()));
  ::pause();
}

void hammer(mproc::DictProxy<int, int> d, int who, int n) {
  for (int i = 0; i < n; ++i) {
    d.set(who * 1000 + i, i);
    d.apply(-1, add, 1);
  }
}

int pool_task(mproc::DictProxy<int, int> d, int x) {
  d.set(x, x * x);
  return x;
}

void consume_all(mproc::JoinableQueueProxy<int> q, int n) {
  for (int i = 0; i < n; ++i) {
    (void)q.get();
    q.task_done();
  }
}

void wait_for_go(mproc::ConditionProxy cond, mproc::NamespaceProxy ns) {
  std::unique_lock g(cond);
  cond.wait_for([&] { return ns.get<int>("go") == 1; });
  ns.set("seen", 1);
}

mproc::Manager* g_manager = nullptr;  // reached by a fork child through its copy of memory

void use_inherited_manager(mproc::DictProxy<int, int> out) {
  // Sockets of the child's own take the lowest free fd numbers, among them the
  // numbers of the parent's manager connections (closed at the fork). The
  // manager must never write to them.
  std::vector<std::array<int, 2>> mine(8);
  for (auto& sp : mine) ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp.data());
  auto d = g_manager->dict<int, int>();  // the child's own session, not the parent's fds
  d.set(1, 11);
  int stray = 0;
  char b[64];
  for (auto& sp : mine) {
    for (int fd : sp) {
      if (::recv(fd, b, sizeof b, MSG_DONTWAIT) > 0) ++stray;
      ::close(fd);
    }
  }
  out.set(0, stray == 0 ? d.at(1) : -stray);
}

void barrier_party(mproc::BarrierProxy b, mproc::ListProxy<int> out) { out.append(static_cast<int>(b.wait(30s))); }

void barrier_wait_forever(mproc::BarrierProxy b, mproc::Connection<int> ready) {
  ready.send(1);
  b.wait();
}

}  // namespace

TEST_P(ManagerTest, DictListValueRoundTrip) {
  mproc::Manager m(opts(GetParam()));
  auto d = m.dict<std::string, int>();
  d["a"] = 1;
  d.set("b", 2);
  EXPECT_EQ(int(d["a"]), 1);
  EXPECT_EQ(d.get("b"), 2);
  EXPECT_EQ(d.get("zz"), std::nullopt);
  EXPECT_THROW(d.at("zz"), mproc::KeyError);
  EXPECT_TRUE(d.contains("a"));
  EXPECT_EQ(d.size(), 2u);
  EXPECT_EQ(d.setdefault("c", 3), 3);
  EXPECT_EQ(d.setdefault("c", 4), 3);
  EXPECT_EQ(d.keys(), (std::vector<std::string>{"a", "b", "c"}));  // insertion order
  EXPECT_EQ(d.values(), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(d.pop("b"), 2);
  EXPECT_EQ(d.pop("b", -1), -1);
  d.update({{"x", 10}, {"y", 11}});
  auto items = d.items();
  ASSERT_EQ(items.size(), 4u);
  EXPECT_EQ(items[3], (std::pair<std::string, int>{"y", 11}));
  EXPECT_TRUE(d.erase("x"));
  EXPECT_FALSE(d.erase("x"));
  EXPECT_EQ(d.apply("n", add, 5), 5);
  EXPECT_EQ(d.apply("n", add, 5), 10);
  EXPECT_THROW(d.apply("n", throw_it), mproc::RemoteError);
  EXPECT_EQ(d.at("n"), 10);  // a throwing update changes nothing
  d.clear();
  EXPECT_TRUE(d.empty());

  auto l = m.list<int>({3, 1, 2});
  l.append(5);
  l.extend({4, 4});
  l.insert(0, 9);
  EXPECT_EQ(l.snapshot(), (std::vector<int>{9, 3, 1, 2, 5, 4, 4}));
  EXPECT_EQ(l[-1], 4);
  EXPECT_THROW(l[100], mproc::IndexError);
  EXPECT_EQ(l.count(4), 2u);
  EXPECT_EQ(l.index(2), 3u);
  l.remove(4);
  EXPECT_EQ(l.pop(), 4);
  EXPECT_EQ(l.pop(0), 9);
  l.set(0, 30);
  l.sort();
  EXPECT_EQ(l.snapshot(), (std::vector<int>{1, 2, 5, 30}));
  l.sort(true);
  EXPECT_EQ(l.snapshot(), (std::vector<int>{30, 5, 2, 1}));
  EXPECT_EQ(l.size(), 4u);

  auto v = m.Value<std::string>("x");
  EXPECT_EQ(v.get(), "x");
  v.set("y");
  EXPECT_EQ(v.apply(append_x, std::string("z")), "yz");
  EXPECT_EQ(v.value(), "yz");

  auto ns = m.Namespace();
  ns.set("n", 5);
  ns.set("s", std::string("str"));
  EXPECT_EQ(ns.get<int>("n"), 5);
  EXPECT_EQ(ns.get<std::string>("s"), "str");
  EXPECT_THROW(ns.get<double>("n"), mproc::UsageError);
  EXPECT_THROW(ns.get<int>("none"), mproc::KeyError);
  EXPECT_EQ(ns.names(), (std::vector<std::string>{"n", "s"}));
}

TEST_P(ManagerTest, ProxiesWorkInAChildUnderEveryStartMethod) {
  mproc::Manager m(opts(GetParam()));
  auto d = m.dict<std::string, int>();
  auto l = m.list<int>();
  auto q = m.Queue<std::string>();
  auto e = m.Event();
  auto ns = m.Namespace();
  mproc::Process p(mproc::ProcessOptions{.start_method = GetParam()}, child_uses_all, d, l, q, e, ns);
  p.start();
  EXPECT_TRUE(e.wait(30s));
  EXPECT_EQ(q.get(30s), "hello from child");
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(d.at("from_child"), 7);
  EXPECT_EQ(l.snapshot(), std::vector<int>{99});
  EXPECT_EQ(ns.get<std::string>("name"), "child");
}

TEST_P(ManagerTest, AtomicApplyFromManyProcessesLosesNothing) {
  mproc::Manager m(opts(GetParam()));
  auto d = m.dict<std::string, int>();
  auto v = m.Value<int>(0);
  std::vector<mproc::Process> ps;
  for (int i = 0; i < 4; ++i) ps.emplace_back(mproc::ProcessOptions{.start_method = GetParam()}, child_increments, d, v, 500);
  for (auto& p : ps) p.start();
  for (auto& p : ps) {
    p.join();
    EXPECT_EQ(p.exitcode(), 0);
  }
  EXPECT_EQ(d.at("hits"), 2000);
  EXPECT_EQ(v.get(), 2000);
}

TEST_P(ManagerTest, DictUpdatedByAPool) {
  mproc::Manager m(opts(GetParam()));
  auto d = m.dict<int, int>();
  mproc::Pool pool(mproc::PoolOptions{.processes = 2, .start_method = GetParam()});
  auto r = pool.map(mproc::bind(pool_task, d), std::vector<int>{1, 2, 3, 4, 5});
  EXPECT_EQ(r, (std::vector<int>{1, 2, 3, 4, 5}));
  pool.close();
  pool.join();
  EXPECT_EQ(d.size(), 5u);
  EXPECT_EQ(d.at(4), 16);
}

INSTANTIATE_TEST_SUITE_P(AllStartMethods, ManagerTest,
                         ::testing::Values(mproc::StartMethod::fork, mproc::StartMethod::forkserver,
                                           mproc::StartMethod::spawn),
                         method_name);

TEST(Manager, QueueLockEventTimeouts) {
  mproc::Manager m;
  auto q = m.Queue<int>(1);
  EXPECT_THROW(q.get_nowait(), mproc::Empty);
  EXPECT_THROW(q.get(20ms), mproc::Empty);
  q.put(1);
  EXPECT_THROW(q.put(2, 20ms), mproc::Full);
  EXPECT_THROW(q.put_nowait(2), mproc::Full);
  EXPECT_EQ(q.qsize(), 1u);
  EXPECT_EQ(q.get(), 1);

  auto lock = m.Lock();
  EXPECT_TRUE(lock.acquire());
  EXPECT_TRUE(lock.locked());
  EXPECT_FALSE(lock.try_acquire());
  EXPECT_THROW(lock.acquire(), mproc::UsageError);  // would wait for itself
  bool other = true;
  std::thread t([&] { other = lock.acquire(true, 20ms); });
  t.join();
  EXPECT_FALSE(other);
  lock.release();
  EXPECT_FALSE(lock.locked());
  EXPECT_THROW(lock.release(), mproc::UsageError);

  auto rl = m.RLock();
  rl.acquire();
  rl.acquire();
  std::thread t2([&] { other = rl.acquire(true, 20ms); });
  t2.join();
  EXPECT_FALSE(other);
  rl.release();
  rl.release();
  EXPECT_FALSE(rl.locked());

  auto sem = m.BoundedSemaphore(2);
  EXPECT_TRUE(sem.acquire());
  EXPECT_TRUE(sem.acquire());
  EXPECT_FALSE(sem.acquire(true, 10ms));
  EXPECT_EQ(sem.get_value(), 0u);
  sem.release(2);
  EXPECT_THROW(sem.release(), mproc::UsageError);

  auto e = m.Event();
  EXPECT_FALSE(e.wait(10ms));
  EXPECT_FALSE(e.is_set());
  std::thread t3([&] { e.set(); });
  EXPECT_TRUE(e.wait(30s));
  t3.join();
  e.clear();
  EXPECT_FALSE(e.is_set());
}

TEST(Manager, ABlockedGetIsWokenByAPutFromAnotherThread) {
  mproc::Manager m;
  auto q = m.Queue<std::string>();
  std::thread t([&] { q.put("late"); });
  EXPECT_EQ(q.get(30s), "late");
  t.join();
}

TEST(Manager, NestedProxies) {
  mproc::Manager m;
  auto d = m.dict<std::string, mproc::ListProxy<int>>();
  d["xs"] = m.list<int>();
  d.at("xs").append(1);  // writes through: the value is a proxy
  d.at("xs").append(2);
  EXPECT_EQ(d.at("xs").snapshot(), (std::vector<int>{1, 2}));
}

namespace {
/// A child that acquired `lock` (or a semaphore unit) and waits to be killed.
template <class P, class F>
mproc::Process start_holder(F f, const P& lock) {
  auto [rx, tx] = mproc::Pipe<int>(false);
  mproc::Process p(mproc::ProcessOptions{.start_method = mproc::StartMethod::fork}, f, lock, tx);
  p.start();
  tx.close();
  EXPECT_EQ(rx.recv(30s), 1);
  return p;
}
}  // namespace

TEST(Manager, ADeadClientsLockIsReleasedAndTheNextAcquirerIsTold) {
  mproc::Manager m;
  auto lock = m.Lock();
  auto p = start_holder(hold_lock_and_die, lock);
  EXPECT_TRUE(lock.locked());
  p.kill();
  p.join();
  EXPECT_THROW(lock.acquire(true, 30s), mproc::OwnerDiedError);
  EXPECT_FALSE(lock.locked());  // released again by the throwing acquire
  EXPECT_TRUE(lock.acquire(true, 1s));  // and the next one succeeds normally
  lock.release();
}

TEST(Manager, APendingAcquireIsGrantedWhenTheHolderDies) {
  mproc::Manager m;
  auto lock = m.Lock();
  auto p = start_holder(hold_lock_and_die, lock);
  std::thread killer([&] { p.kill(); });
  EXPECT_EQ(lock.lock_checked(), mproc::LockStatus::owner_died);  // held now, to repair
  killer.join();
  p.join();
  lock.release();
}

TEST(Manager, ADeadClientsSemaphoreUnitsComeBack) {
  mproc::Manager m;
  auto sem = m.Semaphore(1);
  auto p = start_holder(acquire_sem_and_die, sem);
  EXPECT_EQ(sem.get_value(), 0u);
  p.kill();
  p.join();
  EXPECT_TRUE(sem.acquire(true, 30s));
}

void take_signal_and_hold_lock(mproc::SemaphoreProxy sem, mproc::LockProxy lock, mproc::Connection<int> ready) {
  sem.acquire();   // consumes the unit another process released: a signal, not a loan
  lock.acquire();  // held at death: the parent learns from it that the server ended this session
  ready.send(1);
  ::pause();  // killed by the test
}

// Units a dead client took from a semaphore used as a signal (Semaphore(0),
// released by another process) are not "given back": that made a phantom unit
// (get_value() 1 after the consumer's death; seen failing before the fix).
// Units come back only up to the initial value.
TEST(Manager, ADeadClientNeverGivesBackUnitsItConsumedFromASignal) {
  mproc::Manager m;
  auto sem = m.Semaphore(0);
  auto lock = m.Lock();
  sem.release();
  auto [rx, tx] = mproc::Pipe<int>(false);
  mproc::Process p(mproc::ProcessOptions{.start_method = mproc::StartMethod::fork}, take_signal_and_hold_lock, sem,
                   lock, tx);
  p.start();
  tx.close();
  ASSERT_EQ(rx.recv(30s), 1);
  EXPECT_EQ(sem.get_value(), 0u);
  p.kill();
  p.join();
  // Granted with owner_died only once the server handled the session's end, in the
  // same step that handles its semaphore units.
  EXPECT_EQ(lock.lock_checked(), mproc::LockStatus::owner_died);
  lock.release();
  EXPECT_EQ(sem.get_value(), 0u);
  EXPECT_FALSE(sem.acquire(false));
}

TEST(Manager, ADeadServerIsAManagerErrorOnPendingAndNextCalls) {
  mproc::Manager m;
  auto b = m.Barrier(2);
  auto d = m.dict<int, int>();
  pid_t server = m.pid();
  std::atomic<bool> threw{false};
  std::thread waiter([&] {
    try {
      b.wait();  // blocks forever unless the server's death ends it
    } catch (const mproc::ManagerError&) {
      threw = true;
    }
  });
  ASSERT_TRUE(until([&] { return b.n_waiting() == 1; }));  // the wait is pending on the server
  ::kill(server, SIGKILL);
  waiter.join();
  EXPECT_TRUE(threw);
  EXPECT_THROW(d.set(1, 1), mproc::ManagerError);
  EXPECT_THROW(d.get(1), mproc::ManagerError);
}

// Threads of one process share its session; each call that finds no idle
// connection opens one while the other threads' calls check their proxies'
// server instance. Opening a connection once rewrote that instance id, a data
// race with those checks (ThreadSanitizer caught it in
// ADeadServerIsAManagerErrorOnPendingAndNextCalls). Every thread here waits on
// one barrier, so each holds a connection of its own while the next opens.
TEST(Manager, ThreadsOpeningConnectionsAtOnceShareOneSession) {
  constexpr int kThreads = 8;
  for (int manager = 0; manager < 3; ++manager) {  // each with a new session, no connection yet
    mproc::Manager m;
    auto b = m.Barrier(kThreads);
    auto d = m.dict<int, int>();
    std::latch go(kThreads);
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t) {
      ts.emplace_back([&, t] {
        go.arrive_and_wait();
        for (int round = 0; round < 3; ++round) {
          d.set(t, round);
          b.wait();
        }
      });
    }
    for (auto& t : ts) t.join();
    for (int t = 0; t < kThreads; ++t) EXPECT_EQ(d.get(t), 2) << "thread " << t;
  }
}

/// Sends `sig` to `pid` and waits until /proc says it is stopped (or running again).
bool signal_and_wait_state(pid_t pid, int sig, bool stopped) {
  if (::kill(pid, sig) != 0) return false;
  return until([&] {
    std::FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
    if (!f) return false;
    char state = 0;
    int rc = std::fscanf(f, "%*d (%*[^)]) %c", &state);
    std::fclose(f);
    return rc == 1 && ((state == 'T') == stopped);
  });
}

template <class F>
std::string manager_error_of(F f) {
  try {
    f();
  } catch (const mproc::ManagerError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("another exception: ") + e.what();
  }
  return "no exception";
}

// A SIGSTOP'd server answers nothing, yet its kernel still accepts connections:
// without call_timeout every call below waited forever. Each now fails with a
// ManagerError saying what to do, and the session survives: once the server is
// continued, the same proxies work again.
TEST(Manager, AStoppedServerIsAManagerErrorNotAHang) {
  mproc::Manager m({.call_timeout = 300ms});
  auto d = m.dict<int, int>();
  auto q = m.Queue<int>();
  auto b = m.Barrier(2);
  d.set(1, 1);
  pid_t server = m.pid();
  // A wait parked on the server before it stops: it fails once a ping goes unanswered.
  std::promise<std::string> parked;
  auto parked_result = parked.get_future();
  std::thread waiter([&] { parked.set_value(manager_error_of([&] { b.wait(); })); });
  ASSERT_TRUE(until([&] { return b.n_waiting() == 1; }));
  ASSERT_TRUE(signal_and_wait_state(server, SIGSTOP, true));
  bool answered = parked_result.wait_for(60s) == std::future_status::ready;
  if (!answered) ::kill(server, SIGCONT);  // let the waiter go before failing
  waiter.join();
  ASSERT_TRUE(answered) << "a parked Barrier.wait() hung on a stopped server";
  std::string e = parked_result.get();
  EXPECT_NE(e.find("no answer from the server within 300 ms"), std::string::npos) << e;
  EXPECT_NE(e.find("nor to a ping"), std::string::npos) << e;
  EXPECT_NE(e.find("call_timeout"), std::string::npos) << e;
  // Calls made while it is stopped: plain requests, blocking ones with and
  // without their own timeout, a new object (each on a new connection, whose
  // handshake gets no answer either).
  for (auto& [what, call] : std::vector<std::pair<std::string, std::function<void()>>>{
           {"d.set", [&] { d.set(2, 2); }},
           {"d.get", [&] { (void)d.get(1); }},
           {"q.get()", [&] { (void)q.get(); }},
           {"q.get(100ms)", [&] { (void)q.get(100ms); }},
           {"m.dict()", [&] { (void)m.dict<int, int>(); }},
       }) {
    std::string err = manager_error_of(call);
    EXPECT_NE(err.find("SIGSTOP"), std::string::npos) << what << ": " << err;
    EXPECT_NE(err.find("call_timeout"), std::string::npos) << what << ": " << err;
  }
  ASSERT_TRUE(signal_and_wait_state(server, SIGCONT, false));
  // The session lived on (its lifeline stayed open): the objects are still there.
  EXPECT_EQ(d.get(1), 1);
  q.put(5);
  EXPECT_EQ(q.get(), 5);
  EXPECT_EQ(b.n_waiting(), 0u);
}

// call_timeout bounds the server's silence, not a blocking call's wait: a get()
// on a live server waits well past it (pings answered) and returns the item.
TEST(Manager, ABlockingCallOnALiveServerOutlastsCallTimeout) {
  mproc::Manager m({.call_timeout = 50ms});
  auto q = m.Queue<int>();
  std::thread producer([&] {
    // Long enough for several pings of the waiting get() (every 50 ms of silence).
    std::this_thread::sleep_for(400ms);
    q.put(7);
  });
  EXPECT_EQ(q.get(), 7);
  producer.join();
}

// Shutting down a stopped server: the shutdown request goes unanswered
// (call_timeout), the server is killed after its grace period; no hang.
TEST(Manager, DestroyingAManagerWhoseServerIsStoppedReturns) {
  pid_t server = 0;
  {
    mproc::Manager m({.call_timeout = 200ms});
    auto d = m.dict<int, int>();
    d.set(1, 1);
    server = m.pid();
    ASSERT_TRUE(signal_and_wait_state(server, SIGSTOP, true));
  }
  EXPECT_TRUE(wait_pid_gone(server, 30s));
}

TEST(Manager, CallTimeoutMustBePositive) {
  EXPECT_THROW(mproc::Manager({.call_timeout = 0ms}), mproc::UsageError);
  EXPECT_THROW(mproc::Manager({.call_timeout = -5ms}), mproc::UsageError);
  mproc::Manager m({.call_timeout = std::chrono::milliseconds::max()});  // no limit
  auto d = m.dict<int, int>();
  d.set(1, 2);
  EXPECT_EQ(d.get(1), 2);
  EXPECT_THROW(mproc::Manager::connect(m.address(), m.authkey(), 10s, 0ms), mproc::UsageError);
}

TEST(Manager, TheServerDiesWithItsOwnerEvenOnKill9) {
  auto [rx, tx] = mproc::Pipe<int>(false);
  mproc::Process owner(mproc::ProcessOptions{.start_method = mproc::StartMethod::fork}, start_manager_then_wait, tx);
  owner.start();
  tx.close();
  pid_t server = rx.recv(30s);
  ASSERT_GT(server, 0);
  EXPECT_FALSE(wait_pid_gone(server, 0ms));
  owner.kill();
  owner.join();
  EXPECT_TRUE(wait_pid_gone(server, 30s));
}

TEST(Manager, ShutdownStopsTheServerAndProxiesFailClearly) {
  { mproc::Manager warm_up; }  // the first start opens the forkserver's connection, for good
  int fds_before = open_fd_count();
  {
    mproc::Manager m;
    auto d = m.dict<int, int>();
    d.set(1, 1);
    pid_t server = m.pid();
    m.shutdown();
    EXPECT_TRUE(wait_pid_gone(server, 0ms));
    EXPECT_FALSE(m.running());
    try {
      d.get(1);
      ADD_FAILURE() << "no error";
    } catch (const mproc::ManagerError& e) {
      EXPECT_NE(std::string(e.what()).find("unix:@mproc-manager-"), std::string::npos) << e.what();
    }
    EXPECT_THROW((m.dict<int, int>()), mproc::ManagerError);
  }
  EXPECT_LE(open_fd_count(), fds_before);
}

TEST(Manager, AProxyToARestartedServerFailsClearly) {
  std::string dir = "/tmp/mproc-test-mgr-" + std::to_string(::getpid());
  std::filesystem::create_directory(dir);
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all);
  struct Cleanup {
    std::string d;
    ~Cleanup() { std::filesystem::remove_all(d); }
  } cleanup{dir};
  mproc::Address a{.path = dir + "/sock"};
  mproc::DictProxy<int, int> old;
  {
    mproc::Manager m({.address = a, .authkey = "k"});
    old = m.dict<int, int>();
    old.set(1, 1);
  }
  std::filesystem::remove(dir + "/sock");
  mproc::Manager m2({.address = a, .authkey = "k"});
  try {
    old.get(1);
    ADD_FAILURE() << "no error";
  } catch (const mproc::ManagerError& e) {
    EXPECT_NE(std::string(e.what()).find("restarted"), std::string::npos) << e.what();
  }
  auto fresh = mproc::Manager::connect(a, "k");
  auto d = fresh.dict<int, int>();
  d.set(2, 2);
  EXPECT_EQ(d.at(2), 2);
  m2.shutdown();
}

TEST(Manager, WrongAuthkeyIsRefused) {
  mproc::Manager m({.authkey = "right"});
  try {
    auto c = mproc::Manager::connect(m.address(), "wrong");
    ADD_FAILURE() << "connected with a wrong key";
  } catch (const mproc::ManagerError& e) {
    EXPECT_NE(std::string(e.what()).find("authentication failed"), std::string::npos) << e.what();
  }
  auto c = mproc::Manager::connect(m.address(), "right");
  EXPECT_EQ((c.dict<int, int>().size()), 0u);
}

TEST(Manager, ATcpManagerNeedsAnExplicitAuthkey) {
  EXPECT_THROW(mproc::Manager({.address = {"127.0.0.1", 0}}), mproc::UsageError);
  mproc::Manager m({.address = {"127.0.0.1", 0}, .authkey = "secret"});
  EXPECT_NE(m.address().port, 0);
  auto c = mproc::Manager::connect(m.address(), "secret");
  auto q = c.Queue<int>();
  q.put(3);
  EXPECT_EQ(q.get(), 3);
}

namespace {

int raw_connect(const mproc::Address& a) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, a.path.data(), a.path.size());
  if (a.path[0] == '@') sa.sun_path[0] = '\0';
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + a.path.size());
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), len), 0);
  return fd;
}

/// Reads until EOF (with a deadline); returns everything read.
std::string read_to_eof(int fd) {
  std::string s;
  char buf[4096];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 30'000) != 1) return s + "<timeout>";
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return s;
    s.append(buf, static_cast<std::size_t>(n));
  }
}

std::string header(std::uint16_t version, std::uint16_t type, std::uint32_t len) {
  std::string h(16, '\0');
  std::uint32_t magic = 0x4d50524d;
  std::memcpy(h.data(), &magic, 4);
  std::memcpy(h.data() + 4, &version, 2);
  std::memcpy(h.data() + 6, &type, 2);
  std::memcpy(h.data() + 8, &len, 4);
  return h;
}

}  // namespace

TEST(Manager, BadFramesCloseThatConnectionAndTheServerGoesOn) {
  mproc::Manager m;
  auto d = m.dict<int, int>();
  struct Case {
    const char* what;
    std::string bytes;
  } cases[] = {
      {"garbage", std::string(64, 'x')},
      {"other protocol version", header(99, 2, 0)},  // the others speak version 2 (protocol.hpp)
      {"the previous protocol version", header(1, 2, 0)},
      {"oversized before auth", header(2, 2, 1u << 30)},
      {"truncated", header(2, 2, 100) + "abc"},
      {"request before auth", header(2, 5, 26) + std::string(26, '\0')},
      {"bad auth payload", header(2, 2, 3) + "abc"},
  };
  for (auto& c : cases) {
    int fd = raw_connect(m.address());
    ASSERT_EQ(::send(fd, c.bytes.data(), c.bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(c.bytes.size()));
    if (std::string(c.what) == "truncated") ::shutdown(fd, SHUT_WR);
    std::string got = read_to_eof(fd);  // the hello, then the server closes
    EXPECT_EQ(got.find("<timeout>"), std::string::npos) << c.what;
    ::close(fd);
    d.set(1, 1);  // the server is still serving
  }
  EXPECT_EQ(d.at(1), 1);
}

// A fake server that greets with another protocol version: 7, and 1 (the version
// before extended slices, l *= n and d |= other, whose servers would not know
// those requests: the handshake refuses it, as the build check cannot tell).
TEST(Manager, AServerOfAnotherProtocolVersionIsRefusedClearly) {
  for (std::uint16_t version : {std::uint16_t{7}, std::uint16_t{1}}) {
    SCOPED_TRACE(version);
    std::string path = "@mproc-test-fake-" + std::to_string(::getpid()) + "-" + std::to_string(version);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, path.data(), path.size());
    sa.sun_path[0] = '\0';
    int lfd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
    ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&sa), len), 0);
    ASSERT_EQ(::listen(lfd, 4), 0);
    std::thread fake([&] {
      int c = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      std::string h = header(version, 1, 56) + std::string(56, '\0');
      ::send(c, h.data(), h.size(), MSG_NOSIGNAL);
      read_to_eof(c);
      ::close(c);
    });
    try {
      auto c = mproc::Manager::connect({.path = path}, "k", 10s);
      ADD_FAILURE() << "connected";
    } catch (const mproc::ManagerError& e) {
      EXPECT_NE(std::string(e.what()).find("protocol version " + std::to_string(version)), std::string::npos)
          << e.what();
    }
    fake.join();
    ::close(lfd);
  }
}

TEST(Manager, SixtyFourClientProcessesHammeringADictLoseNothing) {
  mproc::Manager m;
  auto d = m.dict<int, int>();
  constexpr int kProcs = 64, kEach = 50;
  std::vector<mproc::Process> ps;
  for (int i = 0; i < kProcs; ++i) ps.emplace_back(mproc::ProcessOptions{.start_method = mproc::StartMethod::fork}, hammer, d, i, kEach);
  for (auto& p : ps) p.start();
  for (auto& p : ps) {
    p.join();
    EXPECT_EQ(p.exitcode(), 0);
  }
  EXPECT_EQ(d.size(), static_cast<std::size_t>(kProcs * kEach + 1));
  EXPECT_EQ(d.at(-1), kProcs * kEach);
  EXPECT_EQ(d.at(63 * 1000 + 49), 49);
}

TEST(Manager, ArrayAndListReverse) {
  mproc::Manager m;
  auto a = m.Array<int>({3, 1, 2});
  EXPECT_EQ(a.size(), 3u);
  EXPECT_EQ(a[1], 1);
  a.set(-1, 7);
  EXPECT_EQ(a.snapshot(), (std::vector<int>{3, 1, 7}));
  a.sort();
  EXPECT_EQ(a.snapshot(), (std::vector<int>{1, 3, 7}));
  EXPECT_THROW(a.set(3, 0), mproc::IndexError);
  auto z = m.Array<double>(4);
  EXPECT_EQ(z.snapshot(), std::vector<double>(4, 0.0));
  auto l = m.list<int>({1, 2, 3});
  l.reverse();
  EXPECT_EQ(l.snapshot(), (std::vector<int>{3, 2, 1}));
}

TEST(Manager, DictPopitemAndCopy) {
  mproc::Manager m;
  auto d = m.dict<std::string, int>();
  EXPECT_THROW(d.popitem(), mproc::KeyError);
  d.set("a", 1);
  d.set("b", 2);
  d.set("c", 3);
  d.set("a", 10);  // an update keeps its place: "c" is still the last inserted
  EXPECT_EQ(d.popitem(), (std::pair<std::string, int>{"c", 3}));  // Python >= 3.7: LIFO
  EXPECT_EQ(d.size(), 2u);
  auto c = d.copy();  // a local snapshot, not a proxy
  EXPECT_EQ(c, (std::map<std::string, int>{{"a", 10}, {"b", 2}}));
  c["z"] = 26;
  EXPECT_FALSE(d.contains("z"));
  auto u = d.copy<std::unordered_map<std::string, int>>();
  EXPECT_EQ(u.size(), 2u);
  EXPECT_EQ(d.popitem().first, "b");
  EXPECT_EQ(d.popitem().first, "a");
  EXPECT_THROW(d.popitem(), mproc::KeyError);
}

TEST(Manager, ListSlicesAsInPython) {
  mproc::Manager m;
  auto l = m.list<int>({0, 1, 2, 3, 4, 5});
  using V = std::vector<int>;
  EXPECT_EQ(l.slice(1, 3), (V{1, 2}));           // l[1:3]
  EXPECT_EQ(l.slice(-2), (V{4, 5}));             // l[-2:]
  EXPECT_EQ(l.slice(0, -4), (V{0, 1}));          // l[:-4]
  EXPECT_EQ(l.slice(4, 2), V{});                 // empty, as in Python
  EXPECT_EQ(l.slice(-100, 100), l.snapshot());   // clamped, never IndexError
  EXPECT_EQ(l.slice(std::numeric_limits<std::int64_t>::min(), 1), (V{0}));
  l.set_slice(1, 3, {9});                        // l[1:3] = [9]: shrinks
  EXPECT_EQ(l.snapshot(), (V{0, 9, 3, 4, 5}));
  l.set_slice(5, 5, {6, 7});                     // l[5:5] = [6, 7]: appends
  EXPECT_EQ(l.snapshot(), (V{0, 9, 3, 4, 5, 6, 7}));
  l.erase(0, 2);                                 // del l[0:2]
  EXPECT_EQ(l.snapshot(), (V{3, 4, 5, 6, 7}));
  l.erase(-1);                                   // del l[-1]
  EXPECT_EQ(l.snapshot(), (V{3, 4, 5, 6}));
  EXPECT_THROW(l.erase(10), mproc::IndexError);
  l += {8, 9};                                   // l += [8, 9]
  EXPECT_EQ(l.snapshot(), (V{3, 4, 5, 6, 8, 9}));
}

// Extended slices (issue 12): every expectation is what Python 3 prints for the same
// expression on list(range(10)).
TEST(Manager, ListExtendedSlicesAsInPython) {
  mproc::Manager m;
  using V = std::vector<int>;
  constexpr auto none = std::nullopt;
  const V ten{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  auto l = m.list<int>(ten);
  EXPECT_EQ(l.slice(none, none, 2), (V{0, 2, 4, 6, 8}));  // l[::2]
  EXPECT_EQ(l.slice(1, none, 3), (V{1, 4, 7}));           // l[1::3]
  EXPECT_EQ(l.slice(none, none, -1), (V{9, 8, 7, 6, 5, 4, 3, 2, 1, 0}));  // l[::-1]
  EXPECT_EQ(l.slice(8, 2, -2), (V{8, 6, 4}));             // l[8:2:-2]
  EXPECT_EQ(l.slice(-1, -4, -1), (V{9, 8, 7}));           // l[-1:-4:-1]
  EXPECT_EQ(l.slice(2, 8, -1), V{});                      // l[2:8:-1]
  EXPECT_EQ(l.slice(100, none, -3), (V{9, 6, 3, 0}));     // l[100::-3]
  EXPECT_EQ(l.slice(-100, 3, 2), (V{0, 2}));              // l[-100:3:2]
  EXPECT_EQ(l.slice(none, none, std::numeric_limits<std::int64_t>::min()), (V{9}));  // l[::-(2**63)]
  EXPECT_EQ(l.slice(none, none, std::numeric_limits<std::int64_t>::max()), (V{0}));
  EXPECT_EQ(l.slice(2, 5, 1), l.slice(2, 5));
  try {
    (void)l.slice(none, none, 0);
    ADD_FAILURE() << "a zero step was accepted";
  } catch (const mproc::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("step cannot be zero"), std::string::npos) << e.what();
  }

  l.set_slice(none, none, 2, {10, 12, 14, 16, 18});  // l[::2] = [10, 12, 14, 16, 18]
  EXPECT_EQ(l.snapshot(), (V{10, 1, 12, 3, 14, 5, 16, 7, 18, 9}));
  l.set_slice(none, none, -1, ten);  // l[::-1] = range(10)
  EXPECT_EQ(l.snapshot(), (V{9, 8, 7, 6, 5, 4, 3, 2, 1, 0}));
  l.set_slice(none, none, 1, ten);  // a step of 1 is a plain slice assignment
  try {
    l.set_slice(none, none, 2, {1, 2});  // Python: ValueError, sequence of size 2 to extended slice of size 5
    ADD_FAILURE() << "a wrong-length extended slice assignment was accepted";
  } catch (const mproc::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("a sequence of 2 items for an extended slice of 5"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(l.snapshot(), ten);  // unchanged by the refused assignment
  l.set_slice(1, 3, 1, {7});     // l[1:3:1] = [7]: shrinks, as l[1:3] = [7]
  EXPECT_EQ(l.snapshot(), (V{0, 7, 3, 4, 5, 6, 7, 8, 9}));
  l.set_slice(4, 4, 1, {});  // empty, nothing to assign
  EXPECT_THROW(l.set_slice(none, none, 0, {}), mproc::UsageError);

  auto del = [&](std::optional<std::int64_t> a, std::optional<std::int64_t> b, std::int64_t k) {
    auto x = m.list<int>(ten);
    x.erase(a, b, k);
    return x.snapshot();
  };
  EXPECT_EQ(del(none, none, 2), (V{1, 3, 5, 7, 9}));        // del l[::2]
  EXPECT_EQ(del(none, none, -3), (V{1, 2, 4, 5, 7, 8}));    // del l[::-3]
  EXPECT_EQ(del(7, 2, -2), (V{0, 1, 2, 4, 6, 8, 9}));       // del l[7:2:-2]
  EXPECT_EQ(del(2, 8, -1), ten);                            // nothing selected
  EXPECT_EQ(del(none, none, -1), V{});                      // del l[::-1]
  EXPECT_THROW(l.erase(none, none, 0), mproc::UsageError);

  // Array: extended reads and one-for-one assignments (it keeps its size).
  auto a = m.Array<int>({1, 2, 3, 4, 5});
  EXPECT_EQ(a.slice(none, none, -2), (V{5, 3, 1}));
  a.set_slice(1, none, 2, {20, 40});
  EXPECT_EQ(a.snapshot(), (V{1, 20, 3, 40, 5}));
  EXPECT_THROW(a.set_slice(none, none, 2, {0}), mproc::UsageError);
  EXPECT_THROW(a.set_slice(0, 2, 1, {0}), mproc::UsageError);  // step 1: still its size
  EXPECT_EQ(a.snapshot(), (V{1, 20, 3, 40, 5}));
}

std::size_t length_of(const std::string& s) { return s.size(); }
int refuse_key(const int&) { throw std::runtime_error("no key"); }
int distance_to(int center, const int& x) { return x > center ? x - center : center - x; }

TEST(Manager, SortByKeyOnTheServerIsStableAsInPython) {
  mproc::Manager m;
  using S = std::vector<std::string>;
  const S words{"bb", "a", "ccc", "dd", "e"};
  auto l = m.list<std::string>(words);
  l.sort(length_of);  // l.sort(key=len)
  EXPECT_EQ(l.snapshot(), (S{"a", "e", "bb", "dd", "ccc"}));
  l.set_slice(0, 5, words);
  l.sort(length_of, true);  // l.sort(key=len, reverse=True): equal keys keep their order
  EXPECT_EQ(l.snapshot(), (S{"ccc", "bb", "dd", "a", "e"}));
  l.sort([](const std::string& s) { return -static_cast<int>(s[0]); });  // a captureless lambda
  EXPECT_EQ(l.snapshot(), (S{"e", "dd", "ccc", "bb", "a"}));

  auto pairs = m.list<std::pair<int, std::string>>({{2, "x"}, {1, "y"}, {2, "a"}, {1, "b"}});
  pairs.sort([](const std::pair<int, std::string>& p) { return p.first; });
  EXPECT_EQ(pairs.snapshot(), (std::vector<std::pair<int, std::string>>{{1, "y"}, {1, "b"}, {2, "x"}, {2, "a"}}));

  auto a = m.Array<int>({3, -1, 2, -5});
  a.sort([](const int& x) { return x < 0 ? -x : x; });  // by absolute value
  EXPECT_EQ(a.snapshot(), (std::vector<int>{-1, 2, 3, -5}));
  a.sort(mproc::bind(distance_to, 2));  // key(x) = distance_to(2, x): bound values come first
  EXPECT_EQ(a.snapshot(), (std::vector<int>{2, 3, -1, -5}));
  EXPECT_THROW(a.sort(refuse_key), mproc::RemoteError);
  EXPECT_EQ(a.snapshot(), (std::vector<int>{2, 3, -1, -5}));  // unchanged by the throwing key
  auto empty = m.list<int>();
  empty.sort(refuse_key);  // no item, no key computed
}

TEST(Manager, DictInPlaceUnionAndFromkeys) {
  mproc::Manager m;
  using P = std::vector<std::pair<std::string, int>>;
  auto d = m.dict<std::string, int>({{"a", 1}, {"b", 2}});  // m.dict({'a': 1, 'b': 2})
  d |= P{{"b", 20}, {"c", 3}};                               // d |= {'b': 20, 'c': 3}
  EXPECT_EQ(d.items(), (P{{"a", 1}, {"b", 20}, {"c", 3}}));
  d |= std::map<std::string, int>{{"d", 4}};
  auto other = m.dict<std::string, int>({{"a", 100}, {"z", 26}});
  d |= other;  // merged on the server: an existing key keeps its place
  EXPECT_EQ(d.items(), (P{{"a", 100}, {"b", 20}, {"c", 3}, {"d", 4}, {"z", 26}}));
  d |= d;  // changes nothing
  EXPECT_EQ(d.size(), 5u);
  (d |= P{{"e", 5}}) |= P{{"f", 6}};  // returns the proxy, as Python's __ior__
  EXPECT_EQ(d.at("f"), 6);
  mproc::Manager m2;  // a dict of another server: through a snapshot
  auto far = m2.dict<std::string, int>({{"y", 25}});
  d |= far;
  EXPECT_EQ(d.at("y"), 25);

  auto f = m.dict_fromkeys<std::string, int>({"x", "y", "x"}, 7);  // dict.fromkeys(['x', 'y', 'x'], 7)
  EXPECT_EQ(f.items(), (P{{"x", 7}, {"y", 7}}));
  auto z = m.dict_fromkeys<int, std::string>({3, 1});  // values: V{}
  EXPECT_EQ(z.items(), (std::vector<std::pair<int, std::string>>{{3, ""}, {1, ""}}));
  EXPECT_TRUE((m.dict_fromkeys<int, int>({}).empty()));
  auto dup = m.dict<std::string, int>({{"k", 1}, {"j", 0}, {"k", 2}});  // as dict([...]): the last value wins
  EXPECT_EQ(dup.items(), (P{{"k", 2}, {"j", 0}}));
}

TEST(Manager, ListRepeatInPlace) {
  mproc::Manager m;
  using V = std::vector<int>;
  auto l = m.list<int>({1, 2});
  l *= 3;  // l *= 3
  EXPECT_EQ(l.snapshot(), (V{1, 2, 1, 2, 1, 2}));
  l *= 1;
  EXPECT_EQ(l.size(), 6u);
  (l *= 0) += V{5};  // n <= 0 empties, as Python
  EXPECT_EQ(l.snapshot(), (V{5}));
  l *= -3;
  EXPECT_TRUE(l.empty());
  l *= std::numeric_limits<std::int64_t>::max();  // an empty list stays empty
  EXPECT_TRUE(l.empty());
  l.append(1);
  try {
    l *= std::numeric_limits<std::int64_t>::max();
    ADD_FAILURE() << "an unbounded repeat was accepted";
  } catch (const mproc::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("64 MiB"), std::string::npos) << e.what();
  }
  EXPECT_EQ(l.snapshot(), (V{1}));  // unchanged by the refused request
}

void bump(int& v, int n) { v += n; }
void refuse(int&) { throw std::runtime_error("no"); }

void child_bumps_element(mproc::ArrayProxy<int> a, int n) {
  for (int i = 0; i < n; ++i) a.apply(1, bump, 1);
}

TEST(Manager, ArrayAndListElementApplyIsAtomic) {
  mproc::Manager m;
  auto a = m.Array<int>({0, 0, 0});
  std::vector<mproc::Process> ps;
  for (int i = 0; i < 4; ++i) ps.emplace_back(child_bumps_element, a, 250);
  for (auto& p : ps) p.start();
  for (auto& p : ps) {
    p.join();
    EXPECT_EQ(p.exitcode(), 0);
  }
  EXPECT_EQ(a.snapshot(), (std::vector<int>{0, 1000, 0}));
  EXPECT_EQ(a.apply(-1, bump, 5), 5);
  EXPECT_THROW(a.apply(3, bump, 1), mproc::IndexError);
  EXPECT_THROW(a.apply(0, refuse), mproc::RemoteError);
  EXPECT_EQ(a[0], 0);  // unchanged by the throwing f
  // Array slices: reads, and assignments that keep the size.
  EXPECT_EQ(a.slice(1), (std::vector<int>{1000, 5}));
  a.set_slice(0, 2, {7, 8});
  EXPECT_EQ(a.snapshot(), (std::vector<int>{7, 8, 5}));
  EXPECT_THROW(a.set_slice(0, 2, {1}), mproc::UsageError);
  auto l = m.list<int>({1, 2});
  EXPECT_EQ(l.apply(0, bump, 41), 42);
  EXPECT_EQ(l.snapshot(), (std::vector<int>{42, 2}));
}

TEST(Manager, JoinableQueueJoinsWhenEveryItemIsDone) {
  mproc::Manager m;
  auto q = m.JoinableQueue<int>();
  EXPECT_TRUE(q.join(0s));
  for (int i = 0; i < 3; ++i) q.put(i);
  EXPECT_FALSE(q.join(10ms));
  mproc::Process p(mproc::ProcessOptions{.start_method = mproc::StartMethod::fork}, consume_all, q, 3);
  p.start();
  EXPECT_TRUE(q.join(30s));
  p.join();
  EXPECT_THROW(q.task_done(), mproc::UsageError);
}

TEST(Manager, ConditionAcrossProcesses) {
  mproc::Manager m;
  auto cond = m.Condition();
  auto ns = m.Namespace();
  ns.set("go", 0);
  ns.set("seen", 0);
  EXPECT_THROW(cond.wait(1ms), mproc::UsageError);  // without the lock
  mproc::Process p(mproc::ProcessOptions{.start_method = mproc::StartMethod::forkserver}, wait_for_go, cond, ns);
  p.start();
  {
    std::unique_lock g(cond);
    EXPECT_FALSE(cond.wait(5ms));  // nobody notifies: times out, lock held again
    ns.set("go", 1);
    cond.notify_all();
  }
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(ns.get<int>("seen"), 1);

  auto lock = m.Lock();
  auto c2 = m.Condition(lock);
  std::atomic<bool> woke{false};
  lock.acquire();
  std::thread t([&] {
    std::unique_lock g(c2);
    c2.notify();
    woke = true;
  });
  EXPECT_TRUE(c2.wait(30s));  // woken by the thread's notify
  EXPECT_TRUE(lock.locked());
  lock.release();
  t.join();
  EXPECT_TRUE(woke);
}

TEST(Manager, BarrierReleasesAllPartiesAndBreaks) {
  mproc::Manager m;
  auto b = m.Barrier(3);
  auto out = m.list<int>();
  EXPECT_EQ(b.parties(), 3u);
  std::vector<mproc::Process> ps;
  for (int i = 0; i < 2; ++i) ps.emplace_back(mproc::ProcessOptions{.start_method = mproc::StartMethod::fork}, barrier_party, b, out);
  for (auto& p : ps) p.start();
  out.append(static_cast<int>(b.wait(30s)));
  for (auto& p : ps) p.join();
  auto got = out.snapshot();
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<int>{0, 1, 2}));

  EXPECT_THROW(b.wait(5ms), mproc::BrokenBarrierError);  // a timeout breaks it
  EXPECT_TRUE(b.broken());
  EXPECT_THROW(b.wait(), mproc::BrokenBarrierError);
  b.reset();
  EXPECT_FALSE(b.broken());

  // A waiting party whose process dies breaks the barrier for the others.
  auto [rx, tx] = mproc::Pipe<int>(false);
  mproc::Process w(mproc::ProcessOptions{.start_method = mproc::StartMethod::fork}, barrier_wait_forever, b, tx);
  w.start();
  tx.close();
  EXPECT_EQ(rx.recv(30s), 1);
  ASSERT_TRUE(until([&] { return b.n_waiting() == 1; }));  // its wait is pending on the server
  w.kill();
  w.join();
  EXPECT_THROW(b.wait(30s), mproc::BrokenBarrierError);
}

TEST(Manager, PublishAndLookupByName) {
  mproc::Manager m;
  auto q = m.Queue<int>();
  m.publish("jobs", q);
  auto c = mproc::Manager::connect(m.address(), m.authkey());
  auto q2 = c.lookup<mproc::QueueProxy<int>>("jobs");
  q2.put(5);
  EXPECT_EQ(q.get(), 5);
  EXPECT_THROW(c.lookup<mproc::QueueProxy<std::string>>("jobs"), mproc::ManagerError);  // another element type
  EXPECT_THROW(c.lookup<mproc::ListProxy<int>>("jobs"), mproc::ManagerError);           // another kind
  EXPECT_THROW(c.lookup<mproc::QueueProxy<int>>("nope"), mproc::ManagerError);
  EXPECT_THROW(c.serve_forever(), mproc::UsageError);
}

TEST(Manager, ServeForeverReturnsWhenAClientStopsTheServer) {
  mproc::Manager m;
  std::thread t([addr = m.address(), key = m.authkey()] {
    auto c = mproc::Manager::connect(addr, key);
    c.shutdown_server();
  });
  m.serve_forever();
  t.join();
  EXPECT_FALSE(m.running());
}

namespace user_types {

struct Child {
  std::string name;
  explicit Child(std::string n) : name(std::move(n)) {}
  std::string hello() const { return "I am " + name; }
};

struct Counter {
  long long n = 0;
  std::vector<std::string> log;
  explicit Counter(long long start) : n(start) {}
  long long add(long long k) {
    n += k;
    return n;
  }
  long long get() const { return n; }
  void note(const std::string& s) { log.push_back(s); }
  std::vector<std::string> notes() const { return log; }
  long long fail() { throw std::invalid_argument("no such thing"); }
  std::unique_ptr<Child> spawn_child(std::string name) { return std::make_unique<Child>(std::move(name)); }
  long long secret() const { return 42; }  // not exposed
};

}  // namespace user_types

template <>
constexpr auto mproc::exposed<user_types::Counter> =
    mproc::register_type<user_types::Counter>("Counter", &user_types::Counter::add, &user_types::Counter::get,
                                              &user_types::Counter::note, &user_types::Counter::notes,
                                              &user_types::Counter::fail, &user_types::Counter::spawn_child);
template <>
constexpr auto mproc::exposed<user_types::Child> =
    mproc::register_type<user_types::Child>("Child", &user_types::Child::hello);

namespace user_types {
void add_many(mproc::ObjectProxy<Counter> c, int n) {
  for (int i = 0; i < n; ++i) c.call<&Counter::add>(1);
}
}  // namespace user_types

TEST(Manager, RegisteredUserTypes) {
  using user_types::Counter;
  mproc::Manager m;
  auto c = m.create<Counter>(10);
  EXPECT_EQ(c.call<&Counter::add>(5), 15);
  EXPECT_EQ(c.call<&Counter::get>(), 15);
  c.call<&Counter::note>("first");
  EXPECT_EQ(c.call<&Counter::notes>(), std::vector<std::string>{"first"});
  EXPECT_THROW(c.call<&Counter::fail>(), mproc::RemoteError);
  // A method returning std::unique_ptr<U> leaves the U on the server: a proxy comes back.
  auto child = c.call<&Counter::spawn_child>("kid");
  EXPECT_EQ(child.call<&user_types::Child::hello>(), "I am kid");
  // c.call<&Counter::secret>() does not compile: not exposed (tests/compile_fail would show it).

  std::vector<mproc::Process> ps;
  for (int i = 0; i < 3; ++i) ps.emplace_back(mproc::ProcessOptions{.start_method = mproc::StartMethod::spawn}, user_types::add_many, c, 100);
  for (auto& p : ps) p.start();
  for (auto& p : ps) {
    p.join();
    EXPECT_EQ(p.exitcode(), 0);
  }
  EXPECT_EQ(c.call<&Counter::get>(), 315);
}

TEST(Manager, AManagerInheritedThroughForkConnectsAgain) {
  mproc::Manager m;
  g_manager = &m;
  auto out = m.dict<int, int>();
  mproc::Process p(mproc::ProcessOptions{.start_method = mproc::StartMethod::fork}, use_inherited_manager, out);
  p.start();
  p.join();
  g_manager = nullptr;
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(out.at(0), 11);
  EXPECT_TRUE(m.running());  // the child's exit shut nothing down
  EXPECT_EQ((m.dict<int, int>().size()), 0u);
}
