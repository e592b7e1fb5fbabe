// Task functions shared by the ThreadPool, executor and progress tests. Plain
// functions, so they run in worker processes as well as in threads; a task that
// must stay busy waits on a process-shared Event the test sets (no sleeps).
#pragma once

#include <mproc/sync.hpp>
#include <stdexcept>
#include <utility>
#include <vector>

namespace pool_tasks {

inline int square(int x) { return x * x; }

inline int raise_on_7(int x) {
  if (x == 7) throw std::invalid_argument("seven is not allowed");
  return x;
}

/// Says it started, then waits for `go`.
inline int block(mproc::Event started, mproc::Event go, int v) {
  started.set();
  go.wait();
  return v;
}

/// Per worker (process or thread): tasks run so far, and what the initializer set.
inline thread_local int t_tasks = 0;
inline thread_local int t_init = 0;
inline int count_tasks(int) { return ++t_tasks; }
inline int read_init(int) { return t_init; }
inline void init_worker(int v) { t_init = v; }

/// An argument that counts its copies (tests that the pools encode the caller's
/// values without copying them first). Moves are free.
struct CopyCounted {
  static inline int copies = 0;
  std::vector<int> data;
  CopyCounted() = default;
  explicit CopyCounted(std::vector<int> d) : data(std::move(d)) {}
  CopyCounted(const CopyCounted& o) : data(o.data) { ++copies; }
  CopyCounted(CopyCounted&&) noexcept = default;
  CopyCounted& operator=(const CopyCounted& o) {
    data = o.data;
    ++copies;
    return *this;
  }
  CopyCounted& operator=(CopyCounted&&) noexcept = default;
  ~CopyCounted() = default;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(data);
  }
};
inline int counted_size(const CopyCounted& c) { return static_cast<int>(c.data.size()); }

}  // namespace pool_tasks
