// tests/test_mpi_tasks.hpp — the tasks the mpi test programs send to the serving
// ranks (tests/test_mpi.cpp, tests/test_mpi_pool.cpp), and a stderr capture for
// their progress-bar checks.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace mpi_tasks {

inline int square(int x) { return x * x; }
inline int add(int a, int b) { return a + b; }
inline int raise_on_7(int x) {
  if (x == 7) throw std::invalid_argument("seven is not allowed");
  return x;
}
inline int crash_on_3(int x) {
  if (x == 3) ::abort();
  return x;
}
inline int hang(int x) {  // on item 1 only
  if (x == 1) ::pause();
  return x;
}
inline int hang_always(int) {
  ::pause();
  return 0;
}
// The MPI rank whose worker ran the task (the worker inherits its rank's environment).
inline int my_rank(int) {
  const char* r = std::getenv("OMPI_COMM_WORLD_RANK");
  return r ? std::atoi(r) : -1;
}
// Busy long enough (a few ms of CPU) that one rank cannot take every chunk.
inline int spin_rank(int x) {
  volatile std::uint64_t acc = 0;
  for (std::uint64_t i = 0; i < 3'000'000; ++i) acc = acc + i * static_cast<std::uint64_t>(x);
  return my_rank(x);
}

/// Runs fn() with fd 2 pointed at a temporary file; returns what was written
/// there (empty if the file could not be made).
template <class Fn>
std::string capture_stderr(Fn&& fn) {
  std::FILE* file = std::tmpfile();
  if (!file) return {};
  std::fflush(stderr);
  int saved = ::dup(2);
  ::dup2(::fileno(file), 2);
  try {
    fn();
  } catch (...) {
    ::dup2(saved, 2);
    ::close(saved);
    std::fclose(file);
    throw;
  }
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  std::string text;
  std::rewind(file);
  for (int c; (c = std::fgetc(file)) != EOF;) text.push_back(static_cast<char>(c));
  std::fclose(file);
  return text;
}

/// The last line of a progress bar's output (the final state of the bar).
inline std::string last_line(const std::string& text) {
  if (text.size() < 2) return text;
  auto nl = text.rfind('\n', text.size() - 2);
  return nl == std::string::npos ? text : text.substr(nl + 1);
}

}  // namespace mpi_tasks
