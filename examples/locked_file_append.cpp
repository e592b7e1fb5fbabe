// locked_file_append — many processes appending lines to one file under a Lock,
// and a counter in a Value updated under the Value's own lock.
//
// High Performance Python (chapter 9) ends with "synchronizing file and variable
// access": processes that write to one file or bump one shared counter without a
// lock lose updates and garble data. Here each of the worker processes appends
// lines to one file. To make the danger real, every line is written with several
// write() calls (as a program formatting a record field by field would), so
// without the lock the pieces of different processes' lines interleave. With
// the Lock held around the whole line, every line is intact. Each line carries a
// checksum of its own text, so a damaged line is recognised for sure.
//
// The shared counter: Value<long>, incremented with `auto g = v.lock(); ++v.raw();`
// (two steps under one lock; Python: `with v.get_lock(): v.value += 1`).
// `--no-lock` runs the same without either lock: expect damaged lines and a
// counter that misses increments (the program then reports FAILED).
//
// What to look for: "lines: N written, N read back, 0 damaged, 0 missing" and
// "counter: N (expected N)". The CTest check also reads the file itself and
// matches every line against the expected format.
//
//   locked_file_append [--out=locked_file_append.txt] [--processes=8] [--lines=200] [--no-lock]
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <mproc/mproc.hpp>

#include "common.hpp"

namespace {

// FNV-1a of the text: the last field of every line.
std::uint32_t checksum(const std::string& s) {
  std::uint32_t h = 2166136261u;
  for (unsigned char c : s) h = (h ^ c) * 16777619u;
  return h;
}

// The line: "worker=W line=L pid=P payload=xxxxx... sum=HEX". Its text before
// " sum=" is what the checksum covers.
std::string make_line(int worker, int line) {
  std::string body = examples::format("worker=%d line=%d pid=%d payload=", worker, line, static_cast<int>(::getpid()));
  body += std::string(static_cast<std::size_t>(20 + (worker * 7 + line) % 40), static_cast<char>('a' + worker % 26));
  return body + examples::format(" sum=%08x\n", checksum(body));
}

// write() all of it, in `pieces` calls: O_APPEND makes each call land at the end
// of the file, but nothing keeps the pieces of one line together but the lock.
void write_in_pieces(int fd, const std::string& text, int pieces) {
  std::size_t step = text.size() / static_cast<std::size_t>(pieces) + 1;
  for (std::size_t at = 0; at < text.size(); at += step) {
    std::size_t len = std::min(step, text.size() - at);
    if (::write(fd, text.data() + at, len) != static_cast<ssize_t>(len)) std::exit(3);
    ::sched_yield();  // invite the others in between: without the lock they come
  }
}

void appender(int worker, std::string path, int lines, bool use_lock, mproc::Lock file_lock,
              mproc::Value<long> counter) {
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) std::exit(2);
  for (int l = 0; l < lines; ++l) {
    std::string text = make_line(worker, l);
    if (use_lock) {
      std::lock_guard guard(file_lock);
      write_in_pieces(fd, text, 3);
    } else {
      write_in_pieces(fd, text, 3);
    }
    if (use_lock) {
      auto g = counter.lock();  // read-modify-write in one critical section
      ++counter.raw();
    } else {
      long v = counter.raw();  // the classic lost update: read, yield, write back
      ::sched_yield();
      counter.raw() = v + 1;
    }
  }
  ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  examples::Flags flags(argc, argv);
  std::string path = flags.get_string("out", "locked_file_append.txt", "the file to append to");
  int nprocs = static_cast<int>(flags.get("processes", 8, "appending processes"));
  int lines = static_cast<int>(flags.get("lines", 200, "lines per process"));
  bool no_lock = flags.has("no-lock", "append without the locks, to see the damage");
  flags.check();

  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);  // start empty
  if (fd < 0) {
    std::perror(path.c_str());
    return 1;
  }
  ::close(fd);

  mproc::Lock file_lock;
  mproc::Value<long> counter(0);
  examples::Stopwatch sw;
  std::vector<mproc::Process> procs;
  for (int w = 0; w < nprocs; ++w) {
    procs.emplace_back(appender, w, path, lines, !no_lock, file_lock, counter);
    procs.back().start();
  }
  bool ok = true;
  for (auto& p : procs) {
    p.join();
    ok &= p.exitcode() == 0;
  }
  std::printf("%d processes appended %d lines each to %s %s, in %s\n", nprocs, lines, path.c_str(),
              no_lock ? "WITHOUT locks" : "under one Lock", examples::human_time(sw.seconds()).c_str());

  // Read back: every line must be whole (its checksum matches its text), and every
  // (worker, line) pair must be there exactly once.
  std::ifstream in(path);
  std::set<std::pair<int, int>> seen;
  int read = 0, damaged = 0, duplicated = 0;
  for (std::string line; std::getline(in, line);) {
    ++read;
    auto at = line.rfind(" sum=");
    int w = -1, l = -1;
    unsigned sum = 0;
    bool whole = at != std::string::npos && line.size() == at + 13 &&
                 std::sscanf(line.c_str() + at, " sum=%8x", &sum) == 1 && sum == checksum(line.substr(0, at)) &&
                 std::sscanf(line.c_str(), "worker=%d line=%d ", &w, &l) == 2;
    if (!whole) {
      if (++damaged <= 3) std::printf("  damaged: %.70s...\n", line.c_str());
    } else if (!seen.emplace(w, l).second) {
      ++duplicated;
    }
  }
  int written = nprocs * lines;
  int missing = written - static_cast<int>(seen.size());
  std::printf("lines: %d written, %d read back, %d damaged, %d missing, %d duplicated\n", written, read, damaged,
              missing, duplicated);
  long count = counter.get();
  std::printf("counter: %ld (expected %d)\n", count, written);

  ok &= read == written && damaged == 0 && missing == 0 && duplicated == 0 && count == written;
  return examples::verdict(ok, "every line intact and the counter exact");
}
