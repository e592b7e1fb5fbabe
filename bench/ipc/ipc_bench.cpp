// IPC benchmark: mproc's Queue, Pipe, Lock and SharedArray beside this machine's
// floors (futex and spin round trips between two processes, memcpy), a C++
// std::thread + condition_variable hand-off, and Python's multiprocessing
// (bench/ipc/mp_ipc.py, run by this program with the system python3); and the
// Queue and Pipe round trip against message size (8 B to 1 MiB) beside the same
// hand-off between two C++ threads and Python's Queue and Pipe.
//
//   ipc_bench [--quick] [--json FILE] [--python PATH]
//
// Prints one table of medians (of several runs) with ratios, and writes the same
// numbers as JSON. The machine is shared and noisy: read ratios, not absolutes;
// nothing here is a pass/fail gate.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <mproc/mproc.hpp>
#include <mproc/pipe.hpp>
#include <mproc/pool.hpp>
#include <mproc/queue.hpp>
#include <mproc/shared_memory.hpp>
#include <mproc/sync.hpp>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../common/report.hpp"

using Clock = std::chrono::steady_clock;
using bench::Report;

namespace {

double ns_since(Clock::time_point t0) { return std::chrono::duration<double, std::nano>(Clock::now() - t0).count(); }

// ---- floors -----------------------------------------------------------------------

// Two processes bounce a counter through one shared word; `spin` busy-waits,
// otherwise each side sleeps on the futex until the other wakes it.
std::pair<double, double> word_pingpong(int rounds, bool spin) {
  auto seg = mproc::detail::Segment::create(4096);
  auto* word = reinterpret_cast<std::atomic<std::uint32_t>*>(seg.data());
  word->store(0);
  auto wait_for = [&](std::uint32_t v) {
    for (;;) {
      std::uint32_t cur = word->load(std::memory_order_acquire);
      if (cur == v) return;
      if (!spin) mproc::detail::futex_wait(word, cur, std::nullopt);
    }
  };
  pid_t child = ::fork();
  if (child == 0) {
    for (int i = 0; i < rounds; ++i) {
      wait_for(2 * static_cast<std::uint32_t>(i) + 1);
      word->store(2 * static_cast<std::uint32_t>(i) + 2, std::memory_order_release);
      if (!spin) mproc::detail::futex_wake(word, 1);
    }
    ::_exit(0);
  }
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(rounds));
  for (int i = 0; i < rounds; ++i) {
    auto t0 = Clock::now();
    word->store(2 * static_cast<std::uint32_t>(i) + 1, std::memory_order_release);
    if (!spin) mproc::detail::futex_wake(word, 1);
    wait_for(2 * static_cast<std::uint32_t>(i) + 2);
    lat.push_back(ns_since(t0) / 1e3);
  }
  ::waitpid(child, nullptr, 0);
  return {bench::percentile(lat, 50), bench::percentile(lat, 99)};
}

double memcpy_gib_s(std::size_t bytes) {
  std::vector<char> a(bytes, 1), b(bytes, 0);
  std::memcpy(b.data(), a.data(), bytes);  // fault the pages in
  auto t0 = Clock::now();
  for (int i = 0; i < 4; ++i) std::memcpy(b.data(), a.data(), bytes);
  return 4.0 * static_cast<double>(bytes) / (ns_since(t0) / 1e9) / double(1 << 30);
}

// ---- C++ threads ----------------------------------------------------------------------

// Untimed round trips before `rounds` timed ones (the same count in mp_ipc.py).
int warmup(int rounds) { return std::min(50, rounds); }

// One std::thread echoes `msg` back through a mutex + condition_variable hand-off;
// the message is copied each way, as a queue between threads would copy it.
template <class T>
std::pair<double, double> thread_pingpong(int rounds, const T& msg) {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<T> to_child, to_parent;
  const int total = rounds + warmup(rounds);
  std::thread t([&] {
    for (int i = 0; i < total; ++i) {
      std::unique_lock l(mu);
      cv.wait(l, [&] { return to_child.has_value(); });
      T got = std::move(*to_child);
      to_child.reset();
      to_parent = got;  // the copy back
      cv.notify_all();
    }
  });
  std::vector<double> lat;
  for (int i = 0; i < total; ++i) {
    auto t0 = Clock::now();
    {
      std::lock_guard l(mu);
      to_child = msg;  // the copy there
    }
    cv.notify_all();
    std::unique_lock l(mu);
    cv.wait(l, [&] { return to_parent.has_value(); });
    to_parent.reset();
    if (i >= total - rounds) lat.push_back(ns_since(t0) / 1e3);
  }
  t.join();
  return {bench::percentile(lat, 50), bench::percentile(lat, 99)};
}

// ---- mproc --------------------------------------------------------------------------

// Round trips of one message: round_trip() sends it and receives the echo of `child`.
template <class RoundTrip>
std::pair<double, double> pingpong(int rounds, mproc::Process& child, RoundTrip round_trip) {
  child.start();
  for (int i = 0; i < warmup(rounds); ++i) round_trip();
  std::vector<double> lat;
  for (int i = 0; i < rounds; ++i) {
    auto t0 = Clock::now();
    round_trip();
    lat.push_back(ns_since(t0) / 1e3);
  }
  child.join();
  return {bench::percentile(lat, 50), bench::percentile(lat, 99)};
}

template <class T>
void echo_queue(mproc::Queue<T> in, mproc::Queue<T> out, int n) {
  for (int i = 0; i < n; ++i) out.put(in.get());
}

template <class T>
std::pair<double, double> queue_pingpong(int rounds, const T& msg) {
  mproc::Queue<T> a, b;
  mproc::Process p(echo_queue<T>, a, b, rounds + warmup(rounds));
  return pingpong(rounds, p, [&] {
    a.put(msg);
    (void)b.get();
  });
}

template <class T>
void echo_pipe(mproc::Connection<T> c, int n) {
  for (int i = 0; i < n; ++i) c.send(c.recv());
}

template <class T>
std::pair<double, double> pipe_pingpong(int rounds, const T& msg) {
  auto [mine, theirs] = mproc::Pipe<T>();
  mproc::Process p(echo_pipe<T>, theirs, rounds + warmup(rounds));
  theirs.close();  // p carries its own handle; ours would keep the pipe from ever seeing EOF
  return pingpong(rounds, p, [&] {
    mine.send(msg);
    (void)mine.recv();
  });
}

// Payload sizes of the round-trip sweep: 8 B to 1 MiB, powers of 4 (as mp_ipc.py).
std::vector<std::size_t> sweep_sizes() {
  std::vector<std::size_t> s;
  for (std::size_t b = 8; b < (1 << 20); b *= 4) s.push_back(b);
  s.push_back(1 << 20);
  return s;
}

// Round trips per run at a payload size: `base` up to 4 KiB, fewer above (as mp_ipc.py).
int sweep_rounds(std::size_t size, int base, int least) {
  return std::max(least, static_cast<int>(std::min<std::size_t>(base, base * std::size_t{4096} / size)));
}

void produce(mproc::Queue<std::uint64_t> q, std::uint64_t n) {
  std::vector<std::uint64_t> batch(256);
  for (std::uint64_t sent = 0; sent < n;) {
    std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(batch.size(), n - sent));
    for (std::size_t i = 0; i < k; ++i) batch[i] = sent + i + 1;
    q.put_many(std::span<const std::uint64_t>(batch.data(), k));
    sent += k;
  }
  q.put(0);  // poison pill
}

void consume(mproc::Queue<std::uint64_t> q, mproc::Queue<std::uint64_t> done) {
  std::uint64_t count = 0;
  for (;;) {
    auto items = q.get_many(1024);
    bool stop = false;
    for (auto v : items) {
      if (v == 0) stop = true;
      else ++count;
    }
    if (stop) break;
  }
  done.put(count);
}

double small_messages(int producers, int consumers, std::uint64_t per_producer) {
  mproc::Queue<std::uint64_t> q(mproc::QueueOptions{.maxsize = 0});
  mproc::Queue<std::uint64_t> done;
  std::vector<mproc::Process> ps;
  for (int i = 0; i < consumers; ++i) ps.emplace_back(consume, q, done);
  for (auto& p : ps) p.start();
  auto t0 = Clock::now();
  std::vector<mproc::Process> prods;
  for (int i = 0; i < producers; ++i) prods.emplace_back(produce, q, per_producer);
  for (auto& p : prods) p.start();
  for (auto& p : prods) p.join();
  for (int i = producers; i < consumers; ++i) q.put(0);
  std::uint64_t total = 0;
  for (int i = 0; i < consumers; ++i) total += done.get();
  double secs = ns_since(t0) / 1e9;
  for (auto& p : ps) p.join();
  return static_cast<double>(total) / secs;
}

void take_big(mproc::Queue<std::vector<std::byte>> q, mproc::Queue<std::uint64_t> ack) {
  for (;;) {
    auto v = q.get();
    ack.put(v.size());
    if (v.empty()) return;
  }
}

double big_message_gib_s(std::size_t bytes, int reps) {
  mproc::Queue<std::vector<std::byte>> q;
  mproc::Queue<std::uint64_t> ack;
  mproc::Process p(take_big, q, ack);
  p.start();
  std::vector<std::byte> data(bytes, std::byte{7});
  std::vector<double> secs;
  for (int i = 0; i < reps; ++i) {
    auto t0 = Clock::now();
    q.put(data);
    if (ack.get() != bytes) std::abort();
    secs.push_back(ns_since(t0) / 1e9);
  }
  q.put({});
  ack.get();
  p.join();
  return static_cast<double>(bytes) / bench::percentile(secs, 50) / double(1 << 30);
}

std::uint64_t first_element(mproc::SharedArray<std::uint64_t> a) { return a[0] + a.size(); }
std::uint64_t plus_one(std::uint64_t x) { return x + 1; }

// Round trip of a pool task that receives a SharedArray: the array travels as a
// handle, and a worker maps it once (its mapping cache), so the time does not
// depend on its size. The same array goes to `tasks` tasks, one at a time; the
// median of their round trips.
double shared_array_task_us(std::size_t elements, mproc::Pool& pool, int tasks) {
  mproc::SharedArray<std::uint64_t> a(elements);
  std::vector<double> lat;
  for (int i = 0; i < tasks; ++i) {
    auto t0 = Clock::now();
    if (pool.apply(first_element, a) != elements) std::abort();
    lat.push_back(ns_since(t0) / 1e3);
  }
  return bench::percentile(lat, 50);
}

// The same task with no array (an integer argument), for the ratio.
double no_array_task_us(mproc::Pool& pool, int tasks) {
  std::vector<double> lat;
  for (int i = 0; i < tasks; ++i) {
    auto t0 = Clock::now();
    if (pool.apply(plus_one, std::uint64_t(i)) != std::uint64_t(i) + 1) std::abort();
    lat.push_back(ns_since(t0) / 1e3);
  }
  return bench::percentile(lat, 50);
}

double lock_uncontended_ns(int n) {
  mproc::Lock lock;
  auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    lock.lock();
    lock.unlock();
  }
  return ns_since(t0) / n;
}

void hammer(mproc::Lock lock, int n) {
  for (int i = 0; i < n; ++i) {
    lock.lock();
    lock.unlock();
  }
}

double lock_contended_ns(int n) {
  mproc::Lock lock;
  mproc::Process p(hammer, lock, n);
  auto t0 = Clock::now();
  p.start();
  hammer(lock, n);
  p.join();
  return ns_since(t0) / (2.0 * n);
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  bench::Args args(argc, argv, "bench/results/ipc.json");
  const int rounds = args.quick ? 2000 : 20000;
  const int reps = args.quick ? 1 : 5;
  Report r("IPC", args);

  auto med = [&](auto fn) {  // median over reps of a (median, p99) pair
    std::vector<double> a, b;
    for (int i = 0; i < reps; ++i) {
      auto [x, y] = fn();
      a.push_back(x);
      b.push_back(y);
    }
    return std::make_pair(bench::percentile(a, 50), bench::percentile(b, 50));
  };
  auto med1 = [&](auto fn) {
    std::vector<double> a;
    for (int i = 0; i < reps; ++i) a.push_back(fn());
    return bench::percentile(a, 50);
  };

  auto py = bench::run_python(args, "bench/ipc/mp_ipc.py");

  auto futex = med([&] { return word_pingpong(rounds, false); });
  auto spin = med([&] { return word_pingpong(rounds, true); });
  const std::uint64_t word = 1;
  auto thr = med([&] { return thread_pingpong(rounds, word); });
  auto q = med([&] { return queue_pingpong(rounds, word); });
  auto pp = med([&] { return pipe_pingpong(rounds, word); });
  r.section("Round trip between two processes (µs, lower is better)");
  r.row("queue ping-pong median", q.first, "µs", {{"futex floor", futex.first}, {"spin floor", spin.first},
                                                    {"C++ threads (cv)", thr.first},
                                                    {"Python Queue", py.num("queue_pingpong.median_us")}},
        bench::lower_is_better);
  r.row("queue ping-pong p99", q.second, "µs", {{"futex floor", futex.second}, {"Python Queue", py.num("queue_pingpong.p99_us")}},
        bench::lower_is_better);
  r.row("pipe ping-pong median", pp.first, "µs", {{"futex floor", futex.first}, {"Python Pipe", py.num("pipe_pingpong.median_us")}},
        bench::lower_is_better);

  // Against message size: a std::vector<std::byte> of each size, each way.
  {
    const int base = args.quick ? 300 : 2000, least = args.quick ? 10 : 40, sweep_reps = args.quick ? 3 : 5;
    auto med_of = [&](auto fn) {
      std::vector<double> v;
      for (int i = 0; i < sweep_reps; ++i) v.push_back(fn().first);
      return bench::percentile(v, 50);
    };
    struct Point {
      std::size_t size;
      double queue, pipe, thread;
    };
    std::vector<Point> pts;
    for (std::size_t size : sweep_sizes()) {
      std::vector<std::byte> msg(size, std::byte{7});
      int n = sweep_rounds(size, base, least);
      pts.push_back({size, med_of([&] { return queue_pingpong(n, msg); }), med_of([&] { return pipe_pingpong(n, msg); }),
                     med_of([&] { return thread_pingpong(n, msg); })});
    }
    r.section("Queue round trip against message size (µs, lower is better)");
    for (auto& p : pts) {
      std::string key = "queue_rtt." + std::to_string(p.size) + ".median_us";
      r.point("Queue", static_cast<double>(p.size), "B", p.queue, "µs",
              {{"C++ threads (mutex+cv, copied)", p.thread}, {"Python Queue", py.num(key)}}, bench::lower_is_better);
    }
    r.section("Pipe round trip against message size (µs, lower is better)");
    for (auto& p : pts) {
      std::string key = "pipe_rtt." + std::to_string(p.size) + ".median_us";
      r.point("Pipe", static_cast<double>(p.size), "B", p.pipe, "µs",
              {{"C++ threads (mutex+cv, copied)", p.thread}, {"Python Pipe", py.num(key)}}, bench::lower_is_better);
    }
  }

  std::uint64_t n = args.quick ? 200000 : 2000000;
  r.section("8-byte messages through a Queue (messages/s, higher is better)");
  r.row("1 producer -> 1 consumer (put_many/get_many)", med1([&] { return small_messages(1, 1, n); }), "msg/s",
        {{"Python Queue", py.num("small_1to1.msgs_per_s")}}, bench::higher_is_better);
  r.row("2 producers -> 2 consumers (put_many/get_many)", med1([&] { return small_messages(2, 2, n / 2); }), "msg/s",
        {{"Python Queue", py.num("small_2to2.msgs_per_s")}}, bench::higher_is_better);

  r.section("One 64 MiB message (GiB/s, higher is better)");
  r.row("Queue put -> get", med1([&] { return big_message_gib_s(std::size_t{64} << 20, 3); }), "GiB/s",
        {{"memcpy", memcpy_gib_s(std::size_t{64} << 20)}, {"Python Queue", py.num("big_64mib.gib_per_s")}},
        bench::higher_is_better);

  r.section("SharedArray handed to a pool task (round trip µs: constant in size)");
  {
    // Interleaved: each repetition runs the no-array task and every size on the same
    // warm pool; the medians of the repetitions' medians (`tasks` tasks per row).
    mproc::Pool pool(mproc::PoolOptions{.processes = 1});
    const int tasks = args.quick ? 1000 : 10000, sa_reps = args.quick ? 3 : 5;
    const std::size_t mibs[] = {1, 64, 1024};
    std::vector<double> plain;
    std::vector<std::vector<double>> arr(std::size(mibs));
    for (int rep = 0; rep < sa_reps; ++rep) {
      plain.push_back(no_array_task_us(pool, tasks / sa_reps));
      for (std::size_t k = 0; k < std::size(mibs); ++k) {
        arr[k].push_back(shared_array_task_us((mibs[k] << 20) / 8, pool, tasks / sa_reps));
      }
    }
    const double none = bench::percentile(plain, 50);
    r.row("task with no array", none, "µs", {}, bench::lower_is_better);
    for (std::size_t k = 0; k < std::size(mibs); ++k) {
      r.row("SharedArray of " + std::to_string(mibs[k]) + " MiB", bench::percentile(arr[k], 50), "µs",
            {{"task with no array", none}}, bench::lower_is_better);
    }
  }

  r.section("Lock (ns per acquire+release, lower is better)");
  r.row("uncontended", med1([&] { return lock_uncontended_ns(1'000'000); }), "ns",
        {{"Python Lock", py.num("lock_uncontended.ns_per_pair")}}, bench::lower_is_better);
  r.row("contended, 2 processes", med1([&] { return lock_contended_ns(args.quick ? 100000 : 1'000'000); }), "ns",
        {{"Python Lock", py.num("lock_contended.ns_per_pair")}}, bench::lower_is_better);

  r.finish();
  return 0;
}
