// Helpers for the tests of processes sharing sync objects and values
// (test_sync.cpp, test_value.cpp): start a child with a start method, join it
// with a bound, and fail a child with a message the parent can print.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <mproc/process.hpp>
#include <stdexcept>
#include <utility>

namespace mproc_test {

/// In a child: a failed check ends it with exit code 1 and `what` as its exception.
inline void expect(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(what);
}

/// Starts f(args...) in a new process with start method m.
template <class F, class... A>
mproc::Process start(mproc::StartMethod m, F f, A&&... args) {
  mproc::ProcessOptions o;
  o.start_method = m;
  mproc::Process p(o, f, std::forward<A>(args)...);
  p.start();
  return p;
}

/// Joins (bounded, so a bug cannot hang the suite past the CTest timeout) and
/// checks the child succeeded, printing its exception if it threw.
inline void join_ok(mproc::Process& p) {
  using namespace std::chrono_literals;
  if (!p.join(30s)) {
    p.kill();
    p.join();
    ADD_FAILURE() << "child did not finish";
    return;
  }
  auto e = p.exception();
  EXPECT_EQ(p.exitcode(), 0) << (e ? e->what() : "");
}

/// Sends v through the serializer and back, as a receiving process gets it
/// (handles map their shared memory again from the carried fds).
template <class T>
T round_trip(const T& v) {
  mproc::Writer w;
  mproc::dump(w, v);
  mproc::Reader r(w.bytes(), w.fds());
  return mproc::load<T>(r);
}

}  // namespace mproc_test
