// Progress bars: the line format, plain lines to a file, in-place redraws for a
// terminal, and the bars of Pool / ThreadPool / executor maps with stderr (fd 2)
// redirected to a file, checking the lines they print.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

#include <mproc/executor.hpp>
#include <mproc/progress.hpp>
#include <mproc/thread_pool.hpp>
#include <ranges>
#include <regex>
#include <sstream>

#include "pool_test_tasks.hpp"
#include "util.hpp"

using namespace std::chrono_literals;
using namespace pool_tasks;
using mproc::MapOptions;
using mproc::ProgressBar;
using mproc::ProgressOptions;

namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// Points fd 2 at a fresh file until restore() or destruction (as test_process.cpp
// does with stdout): what a bar draws on stderr lands there.
class StderrToFile {
 public:
  StderrToFile() : path_(dir_.file("stderr")) {
    int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    saved_ = ::dup(2);
    ::dup2(fd, 2);
    ::close(fd);
  }
  ~StderrToFile() { restore(); }
  StderrToFile(const StderrToFile&) = delete;
  StderrToFile& operator=(const StderrToFile&) = delete;
  void restore() {
    if (saved_ < 0) return;
    ::dup2(saved_, 2);
    ::close(saved_);
    saved_ = -1;
  }
  std::string text() const { return mproc_test::read_file(path_); }

 private:
  mproc_test::TempDir dir_;
  std::string path_;
  int saved_ = -1;
};

// Runs `body` with stderr going to a file; returns what was written to it.
template <class Body>
std::string capture_stderr(Body&& body) {
  StderrToFile file;
  body();
  file.restore();
  return file.text();
}

// Checks the lines a bar over `total` items printed without a terminal: counts
// never go down, every line ends with a newline, the last says total/total.
void expect_complete_bar(const std::string& out, std::uint64_t total, const std::string& desc) {
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out.back(), '\n');
  EXPECT_EQ(out.find('\r'), std::string::npos) << "no terminal: plain lines only";
  auto lines = lines_of(out);
  std::regex re("^" + desc + ": +([0-9]+)% ([0-9]+)/([0-9]+) \\[.*\\]$");
  std::uint64_t prev = 0;
  for (const auto& line : lines) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(line, m, re)) << line;
    std::uint64_t done = std::stoull(m[2]);
    EXPECT_GE(done, prev) << out;
    EXPECT_EQ(std::stoull(m[3]), total);
    prev = done;
  }
  EXPECT_NE(lines.back().find("100% " + std::to_string(total) + "/" + std::to_string(total)), std::string::npos) << out;
  EXPECT_LE(lines.size(), 13u) << "about one line per 10 %: " << out;
}

}  // namespace

TEST(ProgressFormat, KnownTotal) {
  EXPECT_EQ(ProgressBar::format("squares", 450, 0, 1000, 3.0, 0), "squares:  45% 450/1000 [00:03<00:03, 150.0 it/s]");
  EXPECT_EQ(ProgressBar::format("", 450, 2, 1000, 3.0, 0), " 45% 450/1000 [00:03<00:03, 150.0 it/s, 2 failed]");
  EXPECT_EQ(ProgressBar::format("x", 0, 0, 10, 0.0, 0), "x:   0% 0/10 [00:00<?, ? it/s]");
  EXPECT_EQ(ProgressBar::format("x", 10, 0, 10, 3725.0, 0), "x: 100% 10/10 [1:02:05<00:00, 372.5 s/it]");
  // With a width (a terminal), a bar graphic fills what is left of it.
  std::string line = ProgressBar::format("d", 5, 0, 10, 1.0, 60);
  EXPECT_EQ(line.size(), 60u) << line;
  EXPECT_TRUE(std::regex_search(line, std::regex("^d:  50%\\|(#+)( +)\\| 5/10 \\[00:01<00:01, 5.0 it/s\\]$"))) << line;
  std::size_t hashes = static_cast<std::size_t>(std::count(line.begin(), line.end(), '#'));
  EXPECT_EQ(hashes * 2, line.find_last_of('|') - line.find('|') - 1) << line;  // half full
  EXPECT_EQ(ProgressBar::format("d", 0, 0, 0, 0.0, 0), "d: 100% 0/0 [00:00<?, ? it/s]");
}

TEST(ProgressFormat, UnknownTotal) {
  EXPECT_EQ(ProgressBar::format("stream", 1234, 0, std::nullopt, 2.0, 80), "stream: 1234 [00:02, 617.0 it/s]");
  EXPECT_EQ(ProgressBar::format("", 5, 1, std::nullopt, 0.5, 0), "5 [00:00, 10.0 it/s, 1 failed]");
}

TEST(ProgressBar, PlainLinesWithoutATerminal) {
  mproc_test::TempDir dir;
  std::string path = dir.file("out");
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  {
    ProgressOptions o;
    o.desc = "job";
    o.total = 100;
    o.fd = fd;
    o.terminal = false;
    o.interval = 1h;  // only the 10 % steps print
    ProgressBar bar(o);
    for (int i = 0; i < 100; ++i) bar.update(1);
    EXPECT_TRUE(bar.closed());  // the count reached the total
    bar.update(5);              // ignored once closed
    EXPECT_EQ(bar.done(), 100u);
  }
  ::close(fd);
  std::string out = mproc_test::read_file(path);
  auto lines = lines_of(out);
  ASSERT_EQ(lines.size(), 11u) << out;  // 0 %, then each 10 %
  for (std::size_t k = 0; k <= 10; ++k) {
    char want[32];
    std::snprintf(want, sizeof want, "job: %3zu%% %zu/100 [", k * 10, k * 10);
    EXPECT_EQ(lines[k].rfind(want, 0), 0u) << lines[k];
  }
}

TEST(ProgressBar, RedrawsInPlaceOnATerminal) {
  mproc_test::TempDir dir;
  std::string path = dir.file("out");
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  {
    ProgressOptions o;
    o.total = 50;
    o.fd = fd;
    o.terminal = true;
    o.interval = 0ns;  // draw on every update
    ProgressBar bar(o);
    for (int i = 0; i < 49; ++i) bar.update(1);
    bar.update(0, 1);
  }
  ::close(fd);
  std::string out = mproc_test::read_file(path);
  // Each draw starts with '\r' (back to the line start); only the last ends the line.
  EXPECT_EQ(std::count(out.begin(), out.end(), '\r'), 51);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1);
  EXPECT_EQ(out.back(), '\n');
  auto final_line = out.substr(out.rfind('\r') + 1);
  EXPECT_NE(final_line.find("100%|"), std::string::npos) << final_line;
  EXPECT_NE(final_line.find("50/50"), std::string::npos) << final_line;
  EXPECT_NE(final_line.find("1 failed"), std::string::npos) << final_line;
}

TEST(ProgressBar, ManyThreadsCountEveryItem) {
  mproc_test::TempDir dir;
  int fd = ::open(dir.file("out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ProgressOptions o;
  o.fd = fd;
  o.terminal = true;
  o.interval = 0ns;
  ProgressBar bar(o);  // unknown total
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) bar.update(1, i % 100 == 0);
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(bar.done(), 4u * 10000 + 400);
  EXPECT_EQ(bar.failed(), 400u);
  bar.close();
  ::close(fd);
  std::string out = mproc_test::read_file(dir.file("out"));
  EXPECT_NE(out.substr(out.rfind('\r')).find("40400 ["), std::string::npos);
}

TEST(ProgressPool, MapDrawsToStderr) {
  mproc::Pool pool(mproc::PoolOptions{.processes = 2});
  std::vector<int> got;
  std::string out = capture_stderr([&] { got = pool.map(square, std::views::iota(0, 200), {5, true, "squares"}); });
  EXPECT_EQ(got.size(), 200u);
  expect_complete_bar(out, 200, "squares");
  // No bar unless asked for.
  EXPECT_EQ(capture_stderr([&] { (void)pool.map(square, std::views::iota(0, 200)); }), "");
}

TEST(ProgressPool, FailedMapEndsTheBarBeforeThrowing) {
  mproc::ThreadPool tpool(mproc::PoolOptions{.processes = 2});
  mproc::Pool pool(mproc::PoolOptions{.processes = 2});
  for (int round = 0; round < 2; ++round) {
    StderrToFile file;
    MapOptions o(1, true, "risky");
    bool threw = false;
    try {
      if (round == 0) {
        (void)pool.map(raise_on_7, std::views::iota(0, 50), o);
      } else {
        (void)tpool.map(raise_on_7, std::views::iota(0, 50), o);
      }
    } catch (const std::exception&) {
      threw = true;
    }
    std::string at_return = file.text();
    // The rest of the map may still run: it must not draw any more.
    if (round == 0) {
      pool.apply(square, 1);
    } else {
      tpool.apply(square, 1);
    }
    file.restore();
    EXPECT_TRUE(threw);
    ASSERT_FALSE(at_return.empty());
    EXPECT_EQ(at_return.back(), '\n');
    EXPECT_NE(lines_of(at_return).back().find("failed"), std::string::npos) << at_return;
    EXPECT_EQ(file.text(), at_return) << "drawn after map() returned";
  }
}

TEST(ProgressPool, ImapUnboundedShowsCountAndRate) {
  mproc::Pool pool(mproc::PoolOptions{.processes = 2});
  std::string out = capture_stderr([&] {
    int n = 0;
    for (int v : pool.imap_unordered(square, std::views::iota(0), MapOptions(0, true, "stream"))) {
      (void)v;
      if (++n == 3000) break;
    }
  });  // the range's destructor draws the final line
  auto lines = lines_of(out);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(out.back(), '\n');
  std::regex re("^stream: ([0-9]+) \\[[0-9:]+, .* it/s\\]$");
  for (const auto& line : lines) EXPECT_TRUE(std::regex_match(line, re)) << line;
  EXPECT_GE(std::stoull(lines.back().substr(8)), 3000u);
}

TEST(ProgressPool, ImapOverUnsizedInputLearnsItsTotal) {
  mproc::ThreadPool tpool(mproc::PoolOptions{.processes = 2});
  mproc::Pool pool(mproc::PoolOptions{.processes = 2});
  auto evens = std::views::iota(0, 100) | std::views::filter([](int x) { return x % 2 == 0; });  // not sized
  for (int round = 0; round < 2; ++round) {
    std::vector<int> got;
    std::string out = capture_stderr([&] {
      if (round == 0) {
        for (int v : pool.imap(square, evens, MapOptions(0, true, "evens"))) got.push_back(v);
      } else {
        for (int v : tpool.imap(square, evens, MapOptions(0, true, "evens"))) got.push_back(v);
      }
    });
    EXPECT_EQ(got.size(), 50u);
    // The final line appears before the loop ends, with the total learnt at the input's end.
    EXPECT_NE(lines_of(out).back().find("100% 50/50"), std::string::npos) << out;
  }
}

TEST(ProgressThreadPool, MapStarmapImap) {
  mproc::ThreadPool pool(mproc::PoolOptions{.processes = 3});
  expect_complete_bar(capture_stderr([&] { (void)pool.map(square, std::views::iota(0, 1000), {0, true, "map"}); }),
                      1000, "map");
  std::vector<std::tuple<int, int>> pairs(300, {2, 3});
  expect_complete_bar(capture_stderr([&] {
                        (void)pool.starmap([](int a, int b) { return a * b; }, pairs, {0, true, "star"});
                      }),
                      300, "star");
  expect_complete_bar(capture_stderr([&] {
                        for (int v : pool.imap(square, std::views::iota(0, 500), {0, true, "imap"})) (void)v;
                      }),
                      500, "imap");
}

TEST(ProgressExecutor, MapHasABar) {
  mproc::ProcessPoolExecutor pex(mproc::ExecutorOptions{.max_workers = 2});
  mproc::ThreadPoolExecutor tex(mproc::ExecutorOptions{.max_workers = 2});
  expect_complete_bar(capture_stderr([&] {
                        for (int v : pex.map(square, std::views::iota(0, 400), 60s, {0, true, "procs"})) (void)v;
                      }),
                      400, "procs");
  expect_complete_bar(capture_stderr([&] {
                        for (int v : tex.map(square, std::views::iota(0, 400), 60s, {0, true, "threads"})) (void)v;
                      }),
                      400, "threads");
}
