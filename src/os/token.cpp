// Process identity tokens (see mproc/detail/futex.hpp).
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "mproc/detail/futex.hpp"

namespace mproc::detail {
namespace {

// Reads state and start time (fields 3 and 22 of /proc/PID/stat). The comm field
// (2) may contain spaces and parentheses, so parse from the last ')'.
bool read_stat(std::int32_t pid, char* state, std::uint64_t* start) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE* f = std::fopen(path, "re");
  if (!f) return false;
  char buf[1024];
  std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  char* p = std::strrchr(buf, ')');
  if (!p || p[1] != ' ') return false;
  p += 2;
  *state = *p;
  // Skip to field 22: we are at field 3.
  for (int field = 3; field < 22; ++field) {
    p = std::strchr(p, ' ');
    if (!p) return false;
    ++p;
  }
  *start = std::strtoull(p, nullptr, 10);
  return true;
}

}  // namespace

ProcessToken self_token() {
  static thread_local ProcessToken cached;
  std::int32_t pid = static_cast<std::int32_t>(::getpid());
  if (cached.pid != pid) {
    char state;
    std::uint64_t start = 0;
    read_stat(pid, &state, &start);
    cached = ProcessToken{pid, start};
  }
  return cached;
}

bool token_alive(const ProcessToken& t) {
  if (t.pid <= 0) return false;
  char state;
  std::uint64_t start;
  if (!read_stat(t.pid, &state, &start)) return false;
  return start == t.start_time && state != 'Z' && state != 'X';
}

}  // namespace mproc::detail
