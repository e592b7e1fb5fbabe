// pipe_lock_value — the small multiprocessing examples of Python's documentation,
// which the articles repeat: a Pipe, a Lock around printing, and a Value and an
// Array changed by a child.
//
//   1. Pipe: the child sends [42, None, 'hello'] and closes its end; the parent
//      receives it. In C++ the message is typed: a tuple<int, optional<int>,
//      string>. A second recv() then throws EOFError: every copy of the child's end
//      is closed, so nothing more can come (Python raises EOFError too).
//   2. Lock: ten processes print "hello world i". Each writes its line in three
//      separate pieces, flushing after each, so without the lock pieces of
//      different lines would interleave; with it, every line comes out whole.
//   3. Value and Array: Value('d', 0.0) and Array('i', range(10)); the child sets
//      the value to 3.1415927 and negates every element; the parent sees both
//      changes, because both live in shared memory, not in copies.
//
// What to look for: "received (42, None, 'hello')", ten whole "hello world"
// lines (in any order), "3.1415927" and "[0, -1, -2, ..., -9]".
//
//   pipe_lock_value [--processes=10] [--no-lock]   (--no-lock: see the lines break)
#include <unistd.h>

#include <cstdio>
#include <optional>
#include <ranges>
#include <string>
#include <tuple>
#include <vector>

#include <mproc/mproc.hpp>

#include "common.hpp"

namespace {

using Message = std::tuple<int, std::optional<int>, std::string>;  // Python's [42, None, 'hello']

void send_hello(mproc::Connection<Message> conn) {
  conn.send({42, std::nullopt, "hello"});
  conn.close();
}

// Writes one line in three flushed pieces, so that only the lock keeps it whole.
void write_line_in_pieces(int i) {
  std::printf("  hello ");
  std::fflush(stdout);
  ::usleep(1000);
  std::printf("world %d ", i);
  std::fflush(stdout);
  ::usleep(1000);
  std::printf("(pid %d)\n", static_cast<int>(::getpid()));
  std::fflush(stdout);
}

void print_locked(mproc::Lock lock, int i) {
  std::lock_guard guard(lock);  // Python: l.acquire(); try: print(...) finally: l.release()
  write_line_in_pieces(i);
}

void print_unlocked(int i) { write_line_in_pieces(i); }

void negate(mproc::Value<double> num, mproc::Array<int> arr) {
  num.set(3.1415927);
  auto guard = arr.lock();  // several steps under the array's own lock
  for (int& x : arr.raw()) x = -x;
}

std::string to_string(const Message& m) {
  auto& [a, b, c] = m;
  return examples::format("(%d, %s, '%s')", a, b ? std::to_string(*b).c_str() : "None", c.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  int nprocs = static_cast<int>(flags.get("processes", 10, "processes printing under the lock"));
  bool no_lock = flags.has("no-lock", "print without the lock, to see lines break");
  flags.check();
  bool ok = true;

  // 1. Pipe.
  std::printf("1. Pipe\n");
  {
    auto [parent_conn, child_conn] = mproc::Pipe<Message>();
    mproc::Process p(send_hello, child_conn);
    p.start();
    child_conn.close();  // as in Python: else our copy keeps the child's end open, and no EOF could come
    Message m = parent_conn.recv();
    std::printf("  received %s\n", to_string(m).c_str());
    ok &= m == Message{42, std::nullopt, "hello"};
    p.join();
    try {
      parent_conn.recv();
      ok = false;
    } catch (const mproc::EOFError&) {
      std::printf("  then EOFError: the child closed its end and exited\n");
    }
  }

  // 2. Lock around printing.
  std::printf("\n2. %d processes printing %s\n", nprocs, no_lock ? "WITHOUT a lock" : "under one Lock");
  std::fflush(stdout);
  {
    mproc::Lock lock;
    std::vector<mproc::Process> procs;
    for (int i = 0; i < nprocs; ++i) {
      if (no_lock) {
        procs.emplace_back(print_unlocked, i);
      } else {
        procs.emplace_back(print_locked, lock, i);  // every child gets a handle to the same lock
      }
      procs.back().start();
    }
    for (auto& p : procs) p.join();
  }

  // 3. Value and Array.
  std::printf("\n3. Value and Array changed by a child\n");
  {
    mproc::Value<double> num(0.0);                    // Value('d', 0.0)
    mproc::Array<int> arr(std::views::iota(0, 10));  // Array('i', range(10))
    mproc::Process p(negate, num, arr);
    p.start();
    p.join();
    std::vector<int> v = arr.to_vector();  // Python's arr[:]
    std::printf("  num = %.7f\n  arr = %s\n", num.get(), examples::to_list(v).c_str());
    ok &= num.get() == 3.1415927;
    for (std::size_t i = 0; i < v.size(); ++i) ok &= v[i] == -static_cast<int>(i);
  }
  return examples::verdict(ok, "pipe message, locked lines, shared Value and Array");
}
