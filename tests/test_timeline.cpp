// Timelines (PoolOptions::timeline): the records match what ran, failures carry
// their outcome, insights agree with the records, and the exports are well-formed
// (JSON parsed by a checker here and by Python's json when python3 is present;
// SVG/HTML tags balanced, text escaped, one bar per task for a small map).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <cstdlib>
#include <map>
#include <mproc/detail/timeline_recorder.hpp>
#include <mproc/executor.hpp>
#include <mproc/pool.hpp>
#include <mproc/sync.hpp>
#include <mproc/thread_pool.hpp>
#include <mproc/timeline.hpp>
#include <numeric>
#include <ranges>
#include <set>
#include <string>
#include <vector>

#include "pool_test_tasks.hpp"
#include "util.hpp"

using namespace std::chrono_literals;
using namespace pool_tasks;
using mproc::Pool;
using mproc::PoolOptions;
using mproc::TaskOutcome;
using mproc::TaskRecord;

namespace {

int segv_on_5(int x) {
  if (x == 5) {
    std::signal(SIGSEGV, SIG_DFL);
    std::raise(SIGSEGV);
  }
  return x;
}
int hang(int x) {
  for (;;) ::pause();
  return x;
}

std::size_t count_of(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto p = text.find(needle); p != std::string::npos; p = text.find(needle, p + needle.size())) ++n;
  return n;
}

// ---- a small JSON checker (RFC 8259 grammar; values are not kept) -----------------

class JsonChecker {
 public:
  explicit JsonChecker(const std::string& s) : s_(s) {}
  bool valid() {
    ws();
    if (!value()) return false;
    ws();
    return i_ == s_.size();
  }

 private:
  void ws() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool lit(const char* w) {
    std::string_view v(w);
    if (s_.compare(i_, v.size(), v) != 0) return false;
    i_ += v.size();
    return true;
  }
  bool value() {
    if (i_ >= s_.size()) return false;
    switch (s_[i_]) {
      case '{':
        return object();
      case '[':
        return array();
      case '"':
        return string();
      case 't':
        return lit("true");
      case 'f':
        return lit("false");
      case 'n':
        return lit("null");
      default:
        return number();
    }
  }
  bool object() {
    ++i_;
    ws();
    if (i_ < s_.size() && s_[i_] == '}') return ++i_, true;
    for (;;) {
      ws();
      if (!string()) return false;
      ws();
      if (i_ >= s_.size() || s_[i_++] != ':') return false;
      ws();
      if (!value()) return false;
      ws();
      if (i_ >= s_.size()) return false;
      char c = s_[i_++];
      if (c == '}') return true;
      if (c != ',') return false;
    }
  }
  bool array() {
    ++i_;
    ws();
    if (i_ < s_.size() && s_[i_] == ']') return ++i_, true;
    for (;;) {
      ws();
      if (!value()) return false;
      ws();
      if (i_ >= s_.size()) return false;
      char c = s_[i_++];
      if (c == ']') return true;
      if (c != ',') return false;
    }
  }
  bool string() {
    if (i_ >= s_.size() || s_[i_] != '"') return false;
    for (++i_; i_ < s_.size(); ++i_) {
      char c = s_[i_];
      if (c == '"') return ++i_, true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c == '\\') ++i_;
    }
    return false;
  }
  bool number() {
    std::size_t start = i_;
    if (i_ < s_.size() && s_[i_] == '-') ++i_;
    std::size_t digits = i_;
    while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
    if (i_ == digits) return false;
    if (i_ < s_.size() && s_[i_] == '.') {
      std::size_t f = ++i_;
      while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
      if (i_ == f) return false;
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      std::size_t e = i_;
      while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
      if (i_ == e) return false;
    }
    return i_ > start;
  }
  const std::string& s_;
  std::size_t i_ = 0;
};

// ---- markup: tags balance, no stray '<' or '&' ---------------------------------------

// Empty string when `text` is balanced XML-style markup (self-closed `<x/>`,
// `<!...>` declarations skipped); otherwise what is wrong.
std::string markup_error(const std::string& text) {
  std::vector<std::string> open;
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '&') {
      auto semi = text.find(';', i);
      std::string ent = semi == std::string::npos ? "" : text.substr(i, semi - i + 1);
      static const std::set<std::string> ok{"&amp;", "&lt;", "&gt;", "&quot;", "&#39;"};
      if (!ok.count(ent)) return "bare & at " + std::to_string(i);
      continue;
    }
    if (c == '>') return "bare > at " + std::to_string(i);
    if (c != '<') continue;
    auto close = text.find('>', i);
    if (close == std::string::npos) return "unterminated tag at " + std::to_string(i);
    std::string tag = text.substr(i + 1, close - i - 1);
    i = close;
    if (tag.empty()) return "empty tag";
    if (tag[0] == '!') continue;
    // Attribute values must not hold '<' (escaped as &lt;) and quotes must pair.
    if (tag.find('<') != std::string::npos || count_of(tag, "\"") % 2) return "bad tag <" + tag + ">";
    if (tag.back() == '/') continue;
    if (tag[0] == '/') {
      std::string name = tag.substr(1);
      if (open.empty() || open.back() != name)
        return "</" + name + "> closes " + (open.empty() ? "nothing" : open.back());
      open.pop_back();
      continue;
    }
    open.push_back(tag.substr(0, tag.find_first_of(" \t\n")));
  }
  return open.empty() ? "" : "unclosed <" + open.back() + ">";
}

// Takes every result of an imap; returns how many threw E (the others must not throw).
template <class E, class Results>
int drain(Results& results) {
  int thrown = 0;
  for (;;) {
    try {
      if (!results.next()) return thrown;
    } catch (const E&) {
      ++thrown;
    }
  }
}

void expect_well_formed_records(const std::vector<TaskRecord>& recs, int workers) {
  for (const auto& r : recs) {
    SCOPED_TRACE("call " + std::to_string(r.call) + " index " + std::to_string(r.index));
    EXPECT_LE(r.queued, r.start);
    EXPECT_LE(r.start, r.end);
    EXPECT_LE(r.end, r.received);
    EXPECT_GE(r.queued.count(), 0);  // after the pool was created
    EXPECT_LE(r.chunk, r.index);
    if (r.outcome == TaskOutcome::cancelled) {
      EXPECT_EQ(r.worker, -1);
    } else {
      EXPECT_GE(r.worker, 0);
      EXPECT_LT(r.worker, workers);
      EXPECT_GT(r.pid, 0);
    }
  }
  EXPECT_TRUE(std::is_sorted(recs.begin(), recs.end(), [](auto& a, auto& b) { return a.start < b.start; }));
}

}  // namespace

// ---- recording -------------------------------------------------------------------------

class TimelineWorkers : public ::testing::TestWithParam<int> {};
INSTANTIATE_TEST_SUITE_P(Workers, TimelineWorkers, ::testing::Values(1, 2, 4));

TEST_P(TimelineWorkers, RecordsMatchWhatRan) {
  const int n = GetParam();
  Pool pool({.processes = n, .timeline = true});
  auto got = pool.map(square, std::views::iota(0, 200), 7);  // call 1
  ASSERT_EQ(got.size(), 200u);
  EXPECT_EQ(pool.apply_async(square, 9).get(), 81);  // call 2
  std::vector<int> streamed;
  for (int v : pool.imap_unordered(square, std::views::iota(0, 30))) streamed.push_back(v);  // call 3
  auto pids = pool.worker_pids();  // nothing was replaced: these ran everything
  std::set<int> pool_pids(pids.begin(), pids.end());

  auto recs = pool.timeline().tasks();
  ASSERT_EQ(recs.size(), 200u + 1 + 30);
  expect_well_formed_records(recs, n);
  std::map<std::uint64_t, std::vector<std::uint64_t>> by_call;
  for (const auto& r : recs) {
    EXPECT_EQ(r.outcome, TaskOutcome::ok);
    EXPECT_TRUE(pool_pids.count(r.pid)) << r.pid;
    by_call[r.call].push_back(r.index);
    if (r.call == 1) {
      EXPECT_EQ(r.chunk, r.index / 7 * 7);
    }
  }
  ASSERT_EQ(by_call.size(), 3u);
  for (auto& [call, idx] : by_call) {
    std::sort(idx.begin(), idx.end());
    std::vector<std::uint64_t> want(call == 1 ? 200 : call == 2 ? 1 : 30);
    std::iota(want.begin(), want.end(), 0);
    EXPECT_EQ(idx, want) << "call " << call;  // each index exactly once
  }
}

TEST_P(TimelineWorkers, InsightsAgreeWithRecords) {
  const int n = GetParam();
  Pool pool({.processes = n, .timeline = true});
  (void)pool.map(square, std::views::iota(0, 500), 10);
  auto t = pool.timeline();
  auto recs = t.tasks();
  auto in = t.insights(3);
  EXPECT_EQ(in.tasks, recs.size());
  EXPECT_EQ(in.calls, 1u);
  EXPECT_EQ(in.workers, n);
  ASSERT_EQ(in.per_worker.size(), static_cast<std::size_t>(n));
  std::uint64_t sum = 0;
  std::chrono::nanoseconds work{0}, longest{0};
  for (const auto& r : recs) {
    work += r.duration();
    longest = std::max(longest, r.duration());
  }
  std::chrono::nanoseconds busy{0};
  for (const auto& w : in.per_worker) {
    sum += w.tasks;
    busy += w.busy;
    EXPECT_EQ(w.failed, 0u);
    if (w.tasks) {
      EXPECT_GT(w.busy_percent, 0.0);
      EXPECT_LE(w.busy_percent, 100.0);
    }
  }
  EXPECT_EQ(sum, in.tasks);
  EXPECT_EQ(busy, work);
  EXPECT_EQ(in.work, work);
  EXPECT_EQ(in.max_task, longest);
  EXPECT_LE(in.mean_task, in.max_task);
  EXPECT_LE(in.p99_task, in.max_task);
  EXPECT_GT(in.span.count(), 0);
  EXPECT_EQ(in.chunks, 50u);
  EXPECT_GE(in.dispatch.count(), 0);
  EXPECT_GE(in.queue_wait.count(), 0);
  EXPECT_GE(in.result_latency.count(), 0);
  EXPECT_EQ(in.count(TaskOutcome::ok), in.tasks);
  EXPECT_EQ(in.failures(), 0u);
  EXPECT_GT(in.work_percent(), 0.0);
  EXPECT_LE(in.work_percent(), 100.0);
  ASSERT_EQ(in.slowest.size(), 3u);
  EXPECT_EQ(in.slowest[0].duration(), longest);
  EXPECT_GE(in.slowest[0].duration(), in.slowest[1].duration());
  EXPECT_GE(in.slowest[1].duration(), in.slowest[2].duration());
  auto text = t.summary();
  EXPECT_NE(text.find("500 tasks in 1 calls on " + std::to_string(n) + " workers"), std::string::npos)
      << text;
  EXPECT_NE(text.find("slowest tasks"), std::string::npos) << text;
}

TEST(Timeline, RaisedTaskIsMarked) {
  Pool pool({.processes = 2, .timeline = true});
  auto results = pool.imap(raise_on_7, std::views::iota(0, 20), 3);
  EXPECT_EQ(drain<mproc::TaskError>(results), 1);
  auto recs = pool.timeline().tasks();
  ASSERT_EQ(recs.size(), 20u);
  expect_well_formed_records(recs, 2);
  for (const auto& r : recs)
    EXPECT_EQ(r.outcome, r.index == 7 ? TaskOutcome::raised : TaskOutcome::ok) << r.index;
  auto in = pool.timeline().insights();
  EXPECT_EQ(in.count(TaskOutcome::raised), 1u);
  EXPECT_EQ(in.failures(), 1u);
}

TEST(Timeline, LostWorkerIsMarked) {
  Pool pool({.processes = 2, .timeline = true});
  auto before = pool.worker_pids();
  auto results = pool.imap(segv_on_5, std::views::iota(0, 10), 1);
  EXPECT_EQ(drain<mproc::WorkerLostError>(results), 1);
  auto recs = pool.timeline().tasks();
  ASSERT_EQ(recs.size(), 10u);
  expect_well_formed_records(recs, 2);
  for (const auto& r : recs) {
    EXPECT_EQ(r.outcome, r.index == 5 ? TaskOutcome::worker_lost : TaskOutcome::ok) << r.index;
    if (r.index == 5) {
      // The process that died: one of the first workers, no longer in the pool.
      EXPECT_NE(std::find(before.begin(), before.end(), r.pid), before.end()) << r.pid;
      auto now = pool.worker_pids();
      EXPECT_EQ(std::find(now.begin(), now.end(), r.pid), now.end());
    }
  }
}

TEST(Timeline, TimeoutIsMarked) {
  Pool pool({.processes = 1, .timeout = 200ms, .timeline = true});
  EXPECT_THROW(pool.apply(hang, 1), mproc::TaskTimeoutError);
  EXPECT_EQ(pool.apply(square, 3), 9);  // the replacement
  auto recs = pool.timeline().tasks();
  ASSERT_EQ(recs.size(), 2u);
  expect_well_formed_records(recs, 1);
  EXPECT_EQ(recs[0].call, 1u);
  EXPECT_EQ(recs[0].outcome, TaskOutcome::timeout);
  EXPECT_GE(recs[0].duration(), 200ms);
  EXPECT_EQ(recs[1].outcome, TaskOutcome::ok);
  EXPECT_NE(recs[0].pid, recs[1].pid);  // a new process in the same slot
  EXPECT_EQ(recs[0].worker, recs[1].worker);
}

TEST(Timeline, CancelledFuturesAndTerminatedWorkAreMarked) {
  mproc::Event started, go;
  {
    mproc::ProcessPoolExecutor ex({.max_workers = 1, .timeline = true});
    auto running = ex.submit(block, started, go, 1);  // call 1
    ASSERT_TRUE(started.wait_for(30s));
    std::vector<mproc::Future<int>> queued;
    for (int i = 0; i < 6; ++i) queued.push_back(ex.submit(square, i));  // calls 2..7
    ASSERT_TRUE(queued.back().cancel());                                 // call 7 waits in the parent
    go.set();
    EXPECT_EQ(running.get(), 1);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(queued[static_cast<std::size_t>(i)].get(), i * i);
    auto recs = ex.timeline().tasks();
    ASSERT_EQ(recs.size(), 7u);
    expect_well_formed_records(recs, 1);
    for (const auto& r : recs) {
      EXPECT_EQ(r.index, 0u);
      EXPECT_EQ(r.outcome, r.call == 7 ? TaskOutcome::cancelled : TaskOutcome::ok) << r.call;
    }
  }
  // terminate(): what had not finished is cancelled.
  started.clear();
  go.clear();
  Pool pool({.processes = 1, .timeline = true});
  auto blocked = pool.apply_async(block, started, go, 1);
  ASSERT_TRUE(started.wait_for(30s));
  auto rest = pool.map_async(square, std::views::iota(0, 8), 2);
  pool.terminate();
  EXPECT_THROW(rest.get(), mproc::CancelledError);
  EXPECT_THROW(blocked.get(), mproc::CancelledError);
  auto recs = pool.timeline().tasks();
  ASSERT_EQ(recs.size(), 9u);
  expect_well_formed_records(recs, 1);
  for (const auto& r : recs) EXPECT_EQ(r.outcome, TaskOutcome::cancelled);
  EXPECT_EQ(pool.timeline().insights().count(TaskOutcome::cancelled), 9u);
}

TEST_P(TimelineWorkers, ThreadPoolRecordsToo) {
  const int n = GetParam();
  mproc::ThreadPool pool({.processes = n, .timeline = true});
  auto got = pool.map(square, std::views::iota(0, 200), 7);               // call 1
  EXPECT_EQ(pool.apply_async([](int x) { return x + 1; }, 9).get(), 10);  // call 2
  auto results = pool.imap(raise_on_7, std::views::iota(0, 30), 4);       // call 3
  EXPECT_EQ(drain<std::invalid_argument>(results), 1);
  auto recs = pool.timeline().tasks();
  ASSERT_EQ(recs.size(), 200u + 1 + 30);
  expect_well_formed_records(recs, n);
  std::map<std::uint64_t, std::set<std::uint64_t>> by_call;
  for (const auto& r : recs) {
    EXPECT_EQ(r.pid, static_cast<int>(::getpid()));  // threads: this process
    bool raised = r.call == 3 && r.index == 7;
    EXPECT_EQ(r.outcome, raised ? TaskOutcome::raised : TaskOutcome::ok) << r.call << " " << r.index;
    EXPECT_TRUE(by_call[r.call].insert(r.index).second);  // each index once
    if (r.call == 1) {
      EXPECT_EQ(r.chunk, r.index / 7 * 7);
    }
  }
  EXPECT_EQ(by_call[1].size(), 200u);
  EXPECT_EQ(by_call[2].size(), 1u);
  EXPECT_EQ(by_call[3].size(), 30u);
  auto in = pool.timeline().insights();
  std::uint64_t sum = 0;
  for (const auto& w : in.per_worker) sum += w.tasks;
  EXPECT_EQ(sum, in.tasks);
  EXPECT_EQ(in.count(TaskOutcome::raised), 1u);
}

TEST(Timeline, ThreadPoolExecutorCancelledFuture) {
  mproc::Event started, go;
  mproc::ThreadPoolExecutor ex({.max_workers = 1, .timeline = true});
  auto running = ex.submit(block, started, go, 1);  // call 1
  ASSERT_TRUE(started.wait_for(30s));
  std::vector<mproc::Future<int>> queued;
  for (int i = 0; i < 3; ++i) queued.push_back(ex.submit(square, i));  // calls 2..4
  ASSERT_TRUE(queued.back().cancel());
  go.set();
  EXPECT_EQ(running.get(), 1);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(queued[static_cast<std::size_t>(i)].get(), i * i);
  ex.shutdown();  // the cancelled task is dropped by its thread: recorded then
  auto recs = ex.timeline().tasks();
  ASSERT_EQ(recs.size(), 4u);
  expect_well_formed_records(recs, 1);
  for (const auto& r : recs)
    EXPECT_EQ(r.outcome, r.call == 4 ? TaskOutcome::cancelled : TaskOutcome::ok) << r.call;
}

TEST(Timeline, OffByDefault) {
  Pool pool({.processes = 1});
  EXPECT_THROW((void)pool.timeline(), mproc::UsageError);
  mproc::ProcessPoolExecutor ex({.max_workers = 1});
  EXPECT_THROW((void)ex.timeline(), mproc::UsageError);
  mproc::ThreadPool threads({.processes = 1});
  EXPECT_THROW((void)threads.timeline(), mproc::UsageError);
  mproc::ThreadPoolExecutor tex({.max_workers = 1});
  EXPECT_THROW((void)tex.timeline(), mproc::UsageError);
  mproc::Timeline empty;
  EXPECT_TRUE(empty.tasks().empty());
  EXPECT_EQ(empty.insights().tasks, 0u);
  EXPECT_TRUE(JsonChecker(empty.chrome_trace_json()).valid());
  EXPECT_EQ(markup_error(empty.svg()), "");
}

TEST(Timeline, ReadWhileThePoolRuns) {
  Pool pool({.processes = 2, .timeline = true});
  auto t = pool.timeline();
  std::size_t seen = 0, taken = 0;
  for (int v : pool.imap(square, std::views::iota(0, 3000), 10)) {
    (void)v;
    if (++taken % 250 == 0) {
      auto recs = t.tasks();  // while the collector records more
      EXPECT_GE(recs.size(), seen);
      EXPECT_GE(recs.size(), taken);  // a result taken has its record
      seen = recs.size();
    }
  }
  auto recs = t.tasks();
  EXPECT_EQ(recs.size(), 3000u);
  expect_well_formed_records(recs, 2);
}

TEST(Timeline, OutlivesThePool) {
  mproc::Timeline t;
  {
    Pool pool({.processes = 2, .timeline = true});
    (void)pool.map(square, std::views::iota(0, 50));
    t = pool.timeline();
  }
  EXPECT_EQ(t.tasks().size(), 50u);
  EXPECT_EQ(t.insights().tasks, 50u);
}

// ---- exports -------------------------------------------------------------------------

TEST(Timeline, ChromeTraceParses) {
  Pool pool({.processes = 3, .timeline = true});
  (void)pool.map(square, std::views::iota(0, 40), 4);
  EXPECT_THROW(pool.apply(raise_on_7, 7), mproc::TaskError);
  auto t = pool.timeline();
  std::string json = t.chrome_trace_json();
  EXPECT_TRUE(JsonChecker(json).valid()) << json.substr(0, 2000);
  EXPECT_EQ(count_of(json, "\"ph\":\"X\""), 41u);
  EXPECT_EQ(count_of(json, "\"name\":\"thread_name\""), 3u);
  EXPECT_NE(json.find("\"name\":\"worker 2\""), std::string::npos);
  EXPECT_NE(json.find("\"outcome\":\"raised\""), std::string::npos);
  EXPECT_TRUE(JsonChecker("{\"a\":[1,2.5,-3e2,true,null,\"x\\\"y\"]}").valid());  // the checker checks
  EXPECT_FALSE(JsonChecker("{\"a\":[1,2,]}").valid());
  EXPECT_FALSE(JsonChecker("{\"a\":1} x").valid());

  mproc_test::TempDir dir;
  auto path = dir.file("trace.json");
  t.write_chrome_trace(path);
  EXPECT_EQ(mproc_test::read_file(path), json);
  if (std::system("command -v python3 >/dev/null 2>&1") == 0) {
    std::string cmd =
        "python3 -c \"import json,sys; d=json.load(open(sys.argv[1])); "
        "x=[e for e in d['traceEvents'] if e['ph']=='X']; "
        "sys.exit(0 if len(x)==41 and all(e['dur']>=0 and 'index' in e['args'] for e in x) else 3)\" " +
        path;
    EXPECT_EQ(std::system(cmd.c_str()), 0);
  }
  EXPECT_THROW(t.write_chrome_trace(dir.file("no/such/dir/trace.json")), std::system_error);
}

TEST(Timeline, SvgAndHtmlHaveOneBarPerTaskAndEscape) {
  Pool pool({.processes = 2, .timeline = true});
  (void)pool.map(square, std::views::iota(0, 20), 3);
  EXPECT_THROW(pool.apply(raise_on_7, 7), mproc::TaskError);
  auto t = pool.timeline();
  const std::string title = "run <1> & \"quoted\"";
  std::string svg = t.svg(title);
  EXPECT_EQ(markup_error(svg), "") << svg;
  EXPECT_EQ(count_of(svg, "class=\"t "), 21u);
  EXPECT_EQ(count_of(svg, "class=\"t raised\""), 1u);
  // Every bar has a hover title, and so has each dense run's hover target, plus the chart.
  EXPECT_EQ(count_of(svg, "<title>"), 21u + 1 + count_of(svg, "class=\"dense\""));
  EXPECT_EQ(count_of(svg, "class=\"legend\""), 5u);
  EXPECT_NE(svg.find("run &lt;1&gt; &amp; &quot;quoted&quot;"), std::string::npos);
  EXPECT_EQ(svg.find(title), std::string::npos);
  EXPECT_NE(svg.find("worker 1"), std::string::npos);
  EXPECT_NE(svg.find("call 1, index 0 (chunk 0)"), std::string::npos);

  std::string html = t.html(title);
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_EQ(markup_error(html), "");
  EXPECT_EQ(count_of(html, "class=\"t "), 21u);
  EXPECT_EQ(html.find(title), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("http://"), html.find("http://www.w3.org/2000/svg"));  // only the SVG namespace
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_NE(html.find("worker overhead"), std::string::npos);  // the summary

  mproc_test::TempDir dir;
  t.write_html(dir.file("t.html"));
  t.write_svg(dir.file("t.svg"));
  EXPECT_EQ(mproc_test::read_file(dir.file("t.svg")), t.svg());
  EXPECT_EQ(markup_error(mproc_test::read_file(dir.file("t.html"))), "");
}

TEST(Timeline, BigRunsAreMergedIntoFewBars) {
  Pool pool({.processes = 2, .timeline = true});
  (void)pool.map(square, std::views::iota(0, 30000), 100);
  auto t = pool.timeline();
  ASSERT_EQ(t.tasks().size(), 30000u);
  std::string svg = t.svg();
  EXPECT_EQ(markup_error(svg), "");
  std::size_t bars = count_of(svg, "class=\"t ");
  EXPECT_GT(bars, 0u);
  EXPECT_LE(bars, 300u);  // at most one bar per chunk of 100
  EXPECT_EQ(count_of(svg, "merged\""), bars);
  EXPECT_LT(svg.size(), 300'000u);
  EXPECT_NE(svg.find("100 tasks merged: call 1"), std::string::npos);
}

// ---- timeline.html as a browser shows it --------------------------------------------

// The demo's shape: 1 s of work on two workers, a dense burst of 300 tasks of 30 us on
// worker 0, 2 ms tasks on worker 1, and one task whose worker was lost after 50 us,
// at 600 ms: 0.05 px wide at the chart's scale.
mproc::Timeline lost_worker_timeline() {
  auto rec = std::make_shared<mproc::detail::TimelineRecorder>(2);
  const std::int64_t t0 = rec->origin_ns();
  rec->worker_started(0, 100, t0 + 1);
  rec->worker_started(1, 200, t0 + 1);
  rec->worker_started(1, 300, t0 + 600'100'000);  // the replacement
  auto batch = [&](int worker, std::uint64_t call, std::uint64_t first, int n, std::int64_t start,
                   std::int64_t each) {
    std::vector<std::uint8_t> times, ok(static_cast<std::size_t>(n), 0), fresh(static_cast<std::size_t>(n), 1);
    for (int k = 0; k < n; ++k) {
      mproc::detail::ItemTimes::put(times, 0);
      mproc::detail::ItemTimes::put(times, each);
    }
    mproc::detail::TimelineSource src{call, first, t0, start + n * each + 1000, worker};
    rec->ran(src, first, static_cast<std::uint64_t>(n), ok.data(), fresh.data(), times, start, start + n * each);
  };
  batch(0, 1, 0, 300, t0 + 1'000'000, 30'000);         // the dense burst
  batch(1, 1, 300, 200, t0 + 100'000'000, 2'000'000);  // 100..500 ms
  rec->failed(mproc::detail::TimelineSource{1, 500, t0, t0 + 600'100'000, 1}, 500, TaskOutcome::worker_lost,
              t0 + 600'000'000, t0 + 600'050'000);
  batch(1, 1, 501, 100, t0 + 700'000'000, 3'000'000);  // the replacement: 700 ms..1 s
  return mproc::Timeline(std::shared_ptr<const mproc::detail::TimelineRecorder>(rec));
}

TEST(TimelineHtml, FailuresAreMarkersAndDenseRunsAreHovered) {
  auto t = lost_worker_timeline();
  ASSERT_EQ(t.tasks().size(), 601u);
  std::string svg = t.svg();
  EXPECT_EQ(markup_error(svg), "") << svg;
  // The lost worker: an outlined marker 7 px wide, full row height, drawn last.
  auto at = svg.find("class=\"t worker_lost\"");
  ASSERT_NE(at, std::string::npos);
  std::string bar = svg.substr(at, svg.find('>', at) - at);
  EXPECT_NE(bar.find("width=\"7.00\""), std::string::npos) << bar;
  EXPECT_NE(bar.find("height=\"18.0\""), std::string::npos) << bar;
  EXPECT_NE(bar.find("stroke="), std::string::npos) << bar;
  EXPECT_GT(at, svg.rfind("class=\"t ok\""));
  // The burst: one hover target naming its tasks.
  EXPECT_GE(count_of(svg, "class=\"dense\""), 1u);
  EXPECT_NE(svg.find("300 tasks from 1.000 ms to 10.000 ms:"), std::string::npos) << svg;
  EXPECT_NE(svg.find("... and 288 more bars"), std::string::npos);
  EXPECT_EQ(count_of(svg, "class=\"t "), 601u);  // still one bar per task
  // The HTML page: one heading (the SVG's own is left out) and a chart as wide as the window.
  std::string html = t.html("run");
  EXPECT_EQ(markup_error(html), "");
  EXPECT_EQ(count_of(html, "<h1>run</h1>"), 1u);
  EXPECT_EQ(html.find("font-weight=\"bold\""), std::string::npos);  // the SVG's heading
  EXPECT_NE(html.find("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"100%\""), std::string::npos);
}

// In headless Chromium: the lost worker's colour covers a marker of several pixels, and
// the chart spans the window. Skipped only where chromium is not installed
// (scripts/deps.sh installs it).
TEST(TimelineHtml, ChromiumShowsTheLostWorker) {
  if (std::system("command -v chromium >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "chromium is not installed (scripts/deps.sh installs it): timeline.html not rendered";
  }
  if (std::system("command -v python3 >/dev/null 2>&1") != 0) GTEST_SKIP() << "python3 is not installed";
  mproc_test::TempDir dir;
  lost_worker_timeline().write_html(dir.file("t.html"));
  // A temp profile, no GPU, no sandbox (containers), a bounded run.
  std::string shot = dir.file("shot.png");
  std::string cmd = "timeout 90 chromium --headless --disable-gpu --no-sandbox --hide-scrollbars "
                    "--no-first-run --disable-extensions --user-data-dir=" + dir.file("profile") +
                    " --window-size=1500,700 --screenshot=" + shot + " file://" + dir.file("t.html") +
                    " >" + dir.file("chromium.log") + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << mproc_test::read_file(dir.file("chromium.log"));
  const std::string check = std::string("python3 ") + MPROC_TESTS_DIR + "/png_colour_check.py " + shot;
  // Two regions of worker_lost purple at least 4x8 px: the legend's swatch and the marker.
  EXPECT_EQ(std::system((check + " --marker 9c4fb0 --min-markers 2 --min-w 4 --min-h 8").c_str()), 0);
  // The first row's stripe spans 80 % of the window (the plot is 91 % of the chart).
  EXPECT_EQ(std::system((check + " --stripe fafafa --min-run-frac 0.8").c_str()), 0);
}

// ---- the recorder, directly: re-runs, malformed times, outcomes ------------------------

TEST(TimelineRecorder, KeepsFreshItemsAndSurvivesBadTimes) {
  mproc::detail::TimelineRecorder rec(2);
  const std::int64_t t0 = rec.origin_ns();
  rec.worker_started(0, 111, t0 + 1);
  rec.worker_started(1, 222, t0 + 1);
  rec.worker_started(1, 333, t0 + 5000);  // a replacement in slot 1
  std::vector<std::uint8_t> times;
  // Four items from t0+100: starts 100, 200, 300, 400; each lasts 50 ns.
  std::int64_t prev = t0 + 100;
  for (int k = 0; k < 4; ++k) {
    mproc::detail::ItemTimes::put(times, t0 + 100 + 100 * k - prev);
    mproc::detail::ItemTimes::put(times, 50);
    prev = t0 + 100 + 100 * k + 50;
  }
  const std::uint8_t status[4] = {0, 1, 0, 0};
  const std::uint8_t fresh[4] = {1, 0, 1, 1};  // item 1 was delivered before
  mproc::detail::TimelineSource src{7, 10, t0 + 50, t0 + 1000, 1};
  rec.ran(src, 10, 4, status, fresh, times, t0 + 100, t0 + 450);
  // Malformed times (truncated): the batch's span is shared out evenly.
  const std::uint8_t bad[1] = {0x80};
  const std::uint8_t ok2[2] = {0, 0};
  const std::uint8_t fresh2[2] = {1, 1};
  mproc::detail::TimelineSource src2{8, 0, t0 + 5500, t0 + 9000, 1};
  rec.ran(src2, 0, 2, ok2, fresh2, std::span<const std::uint8_t>(bad, 1), t0 + 6000, t0 + 8000);
  rec.failed(mproc::detail::TimelineSource{9, 0, t0 + 10, t0 + 20000, 0}, 3, TaskOutcome::timeout, t0 + 100,
             t0 + 9000);
  rec.failed(mproc::detail::TimelineSource{9, 0, t0 + 10, 0, -1}, 4, TaskOutcome::cancelled, 0, t0 + 9500);

  auto recs = rec.snapshot();
  ASSERT_EQ(recs.size(), 3u + 2 + 2);
  std::map<std::pair<std::uint64_t, std::uint64_t>, TaskRecord> by;
  for (const auto& r : recs) by.emplace(std::make_pair(r.call, r.index), r);
  auto at = [&](std::uint64_t c, std::uint64_t i) { return by.at({c, i}); };
  EXPECT_EQ(by.count({7, 11}), 0u);  // not fresh: not recorded
  EXPECT_EQ(at(7, 10).start.count(), 100);
  EXPECT_EQ(at(7, 10).end.count(), 150);
  EXPECT_EQ(at(7, 12).start.count(), 300);
  EXPECT_EQ(at(7, 13).end.count(), 450);
  EXPECT_EQ(at(7, 13).pid, 222);  // slot 1 before its replacement
  EXPECT_EQ(at(7, 12).chunk, 10u);
  EXPECT_EQ(at(7, 12).queued.count(), 50);
  EXPECT_EQ(at(7, 12).received.count(), 1000);
  EXPECT_EQ(at(8, 0).start.count(), 6000);
  EXPECT_EQ(at(8, 0).end.count(), 7000);
  EXPECT_EQ(at(8, 1).end.count(), 8000);
  EXPECT_EQ(at(8, 1).pid, 333);  // after it
  EXPECT_EQ(at(9, 3).outcome, TaskOutcome::timeout);
  EXPECT_EQ(at(9, 3).worker, 0);
  EXPECT_EQ(at(9, 3).pid, 111);
  EXPECT_EQ(at(9, 3).duration().count(), 8900);
  EXPECT_EQ(at(9, 4).outcome, TaskOutcome::cancelled);
  EXPECT_EQ(at(9, 4).worker, -1);
  EXPECT_EQ(at(9, 4).pid, 0);
  EXPECT_EQ(at(9, 4).start, at(9, 4).end);
  EXPECT_EQ(at(9, 4).received.count(), 9500);
  EXPECT_EQ(mproc::to_string(TaskOutcome::worker_lost), "worker_lost");
}

// A chunk whose worker timed out: its first item is re-run later by the slot's
// replacement. The gap between the two processes is neither worker overhead
// (it is not inside one process's run of the chunk) nor work.
TEST(TimelineRecorder, ReRunsByAReplacementAreNotOverhead) {
  mproc::detail::TimelineRecorder rec(1);
  const std::int64_t t0 = rec.origin_ns();
  rec.worker_started(0, 100, t0 + 1);
  rec.worker_started(0, 200, t0 + 1'000'000);  // the replacement, 1 ms in
  // Item 1 of chunk 0 ran 100..900 us in pid 100 and timed out.
  rec.failed(mproc::detail::TimelineSource{1, 0, t0 + 10, t0 + 950'000, 0}, 1, TaskOutcome::timeout,
             t0 + 100'000, t0 + 900'000);
  // Item 0 of the same chunk, re-run by pid 200 at 2.0..2.1 ms.
  std::vector<std::uint8_t> times;
  mproc::detail::ItemTimes::put(times, 0);
  mproc::detail::ItemTimes::put(times, 100'000);
  const std::uint8_t ok[1] = {0}, fresh[1] = {1};
  rec.ran(mproc::detail::TimelineSource{1, 0, t0 + 10, t0 + 2'200'000, 0}, 0, 1, ok, fresh, times,
          t0 + 2'000'000, t0 + 2'100'000);
  mproc::Timeline t(std::shared_ptr<const mproc::detail::TimelineRecorder>(
      std::shared_ptr<const mproc::detail::TimelineRecorder>(), &rec));  // not owned: rec outlives t
  auto recs = t.tasks();
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[0].pid, 100);
  EXPECT_EQ(recs[1].pid, 200);
  auto in = t.insights();
  EXPECT_EQ(in.worker_overhead.count(), 0);
  EXPECT_EQ(in.work.count(), 800'000 + 100'000);
  EXPECT_EQ(in.chunks, 1u);
  EXPECT_EQ(in.queue_wait.count(), 100'000 - 10);  // first start - queued
  EXPECT_EQ(in.result_latency.count(), (950'000 - 900'000) + (2'200'000 - 2'100'000));
  // Dispatch: the first run from its queueing, the re-run from the timeout's end.
  EXPECT_EQ(in.dispatch.count(), (100'000 - 10) + (2'000'000 - 900'000));
}
