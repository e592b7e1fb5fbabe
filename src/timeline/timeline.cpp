// Task timelines (mproc/timeline.hpp, docs/timeline.md): the recorder a pool
// writes to, the insights computed from its records, and the exports (text
// summary, Chrome trace JSON, SVG Gantt chart, HTML page).
#include "mproc/timeline.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>
#include <system_error>
#include <tuple>

#include "mproc/detail/timeline_recorder.hpp"

namespace mproc {

namespace {
constexpr std::array<std::string_view, 5> kOutcomeNames{"ok", "raised", "worker_lost", "timeout",
                                                        "cancelled"};
// Gantt colours, by outcome: blue, red, purple, orange, grey.
constexpr std::array<const char*, 5> kOutcomeColours{"#4e79a7", "#e15759", "#9c4fb0", "#f28e2b", "#9d9d9d"};
}  // namespace

std::string_view to_string(TaskOutcome outcome) {
  auto i = static_cast<std::size_t>(outcome);
  return i < kOutcomeNames.size() ? kOutcomeNames[i] : "unknown";
}

// ---- the recorder ------------------------------------------------------------------

namespace detail {
namespace {

std::int64_t steady_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

TimelineRecorder::TimelineRecorder(int workers)
    : workers_(workers),
      owner_pid_(static_cast<int>(::getpid())),
      origin_ns_(steady_now_ns()),
      starts_(static_cast<std::size_t>(std::max(workers, 0))) {}

TimelineRecorder::~TimelineRecorder() {
  for (auto& b : blocks_) ::munmap(b.data, b.size);
}

void TimelineRecorder::worker_started(int slot, int pid, std::int64_t at_ns) {
  std::lock_guard lock(mu_);
  if (slot >= 0 && slot < workers_) starts_[static_cast<std::size_t>(slot)].emplace_back(at_ns, pid);
}

int TimelineRecorder::pid_at(int slot, std::int64_t t) const {
  if (slot < 0 || slot >= workers_ || t == 0) return 0;
  const auto& v = starts_[static_cast<std::size_t>(slot)];  // in start order
  auto it =
      std::upper_bound(v.begin(), v.end(), t, [](std::int64_t x, const auto& e) { return x < e.first; });
  return it == v.begin() ? 0 : std::prev(it)->second;
}

std::uint8_t* TimelineRecorder::reserve(std::size_t n) {
  static const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  constexpr std::size_t kBlock = std::size_t{1} << 20;
  if (blocks_.empty() || blocks_.back().size - blocks_.back().used < n) {
    std::size_t size = std::max(kBlock, (n + page - 1) / page * page);
    blocks_.reserve(blocks_.size() + 1);
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    blocks_.push_back(Block{static_cast<std::uint8_t*>(p), size, 0, 0});
  }
  Block& b = blocks_.back();
  if (b.used + n > b.populated) {
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older kernels say EINVAL and fault pages in one by one
#endif
    // Ahead by what is populated already, 16 KiB to 256 KiB: a small pool's
    // records stay small, a big one's pay one call per 256 KiB.
    std::size_t ahead = std::clamp<std::size_t>(b.populated, 16 << 10, 256 << 10);
    std::size_t to = std::min(b.size, (std::max(b.used + n, b.populated + ahead) + page - 1) / page * page);
    (void)::madvise(b.data + b.populated, to - b.populated, MADV_POPULATE_WRITE);
    b.populated = to;
  }
  std::uint8_t* out = b.data + b.used;
  b.used += n;
  return out;
}

void TimelineRecorder::add(Batch b, std::span<const std::uint8_t> outcomes,
                           std::span<const std::uint8_t> times) {
  batches_.reserve(batches_.size() + 1);
  std::uint8_t* p = reserve(outcomes.size() + times.size());
  std::copy(outcomes.begin(), outcomes.end(), p);
  std::copy(times.begin(), times.end(), p + outcomes.size());
  b.bytes = p;
  b.size = outcomes.size() + times.size();
  batches_.push_back(b);
  items_ += b.count;
}

namespace {

// Start, end of each of `count` items from their ItemTimes; when those are
// missing or malformed, [base, end] shared out evenly.
void decode_times(std::span<const std::uint8_t> times, std::uint64_t count, std::int64_t base,
                  std::int64_t end, std::vector<std::int64_t>& out) {
  out.clear();
  std::size_t p = 0;
  std::int64_t prev = base;
  for (std::uint64_t k = 0; k < count; ++k) {
    std::int64_t gap = 0, dur = 0;
    if (!ItemTimes::get(times, p, gap) || !ItemTimes::get(times, p, dur)) break;
    out.push_back(prev + gap);
    out.push_back(prev = prev + gap + dur);
  }
  if (out.size() == 2 * count && p == times.size()) return;
  out.clear();
  double step = static_cast<double>(end - base) / static_cast<double>(std::max<std::uint64_t>(count, 1));
  for (std::uint64_t k = 0; k < count; ++k) {
    out.push_back(base + static_cast<std::int64_t>(step * static_cast<double>(k)));
    out.push_back(base + static_cast<std::int64_t>(step * static_cast<double>(k + 1)));
  }
}

}  // namespace

void TimelineRecorder::ran(const TimelineSource& src, std::uint64_t first, std::uint64_t count,
                           const std::uint8_t* status, const std::uint8_t* fresh,
                           std::span<const std::uint8_t> times, std::int64_t batch_start,
                           std::int64_t batch_end) noexcept try {
  std::vector<std::uint8_t> outcomes(count);
  for (std::uint64_t k = 0; k < count; ++k)
    outcomes[k] = static_cast<std::uint8_t>(status[k] ? TaskOutcome::raised : TaskOutcome::ok);
  std::lock_guard lock(mu_);
  Batch b{src.call,      first,           src.chunk,
          src.queued_ns, src.received_ns, batch_start,
          batch_end,     src.worker,      pid_at(src.worker, batch_start),
          count,         nullptr,         0};
  if (std::all_of(fresh, fresh + count, [](std::uint8_t f) { return f != 0; })) {
    add(b, outcomes, times);  // the common case: the bytes as they came
    return;
  }
  // Some items were re-runs of delivered ones: each run of fresh items becomes a
  // batch of its own, its times encoded again from its first start.
  std::vector<std::int64_t> t;
  decode_times(times, count, batch_start, batch_end, t);
  std::vector<std::uint8_t> enc;
  for (std::uint64_t k = 0; k < count;) {
    if (!fresh[k]) {
      ++k;
      continue;
    }
    std::uint64_t j = k;
    enc.clear();
    std::int64_t prev = t[2 * k];
    for (; j < count && fresh[j]; ++j) {
      ItemTimes::put(enc, t[2 * j] - prev);
      ItemTimes::put(enc, t[2 * j + 1] - t[2 * j]);
      prev = t[2 * j + 1];
    }
    Batch run = b;
    run.first = first + k;
    run.count = j - k;
    run.base = t[2 * k];
    run.end = prev;
    add(run, std::span<const std::uint8_t>(outcomes).subspan(k, j - k), enc);
    k = j;
  }
} catch (...) {
  // No memory for more records: the pool goes on without them.
}

void TimelineRecorder::failed(const TimelineSource& src, std::uint64_t index, TaskOutcome outcome,
                              std::int64_t start_ns, std::int64_t end_ns) noexcept try {
  bool started = start_ns != 0;
  std::int64_t s = started ? start_ns : end_ns;
  std::vector<std::uint8_t> enc;
  ItemTimes::put(enc, 0);
  ItemTimes::put(enc, end_ns - s);
  std::uint8_t o = static_cast<std::uint8_t>(outcome);
  std::lock_guard lock(mu_);
  add(Batch{src.call, index, src.chunk, src.queued_ns, std::max(src.received_ns, end_ns), s, end_ns,
            started ? src.worker : -1, started ? pid_at(src.worker, start_ns) : 0, 1, nullptr, 0},
      std::span<const std::uint8_t>(&o, 1), enc);
} catch (...) {
}

std::vector<TaskRecord> TimelineRecorder::snapshot() const {
  // Only the batch list is copied under the lock, so that reading a big timeline
  // does not hold up the pool's collector: the bytes a batch points to are
  // written before it is listed and never move or change afterwards.
  std::vector<Batch> batches;
  std::size_t items = 0;
  {
    std::lock_guard lock(mu_);
    batches = batches_;
    items = items_;
  }
  std::vector<TaskRecord> out;
  out.reserve(items);
  auto rel = [&](std::int64_t t) { return std::chrono::nanoseconds(t - origin_ns_); };
  std::vector<std::int64_t> t;
  for (const auto& b : batches) {
    std::span<const std::uint8_t> bytes(b.bytes, b.size);
    decode_times(bytes.subspan(b.count), b.count, b.base, b.end, t);
    for (std::uint64_t k = 0; k < b.count; ++k) {
      auto o = static_cast<TaskOutcome>(std::min<std::uint8_t>(bytes[k], 4));
      out.push_back(TaskRecord{b.call, b.first + k, b.chunk, b.worker, b.pid, rel(b.queued), rel(t[2 * k]),
                               rel(t[2 * k + 1]), rel(b.received), o});
    }
  }
  std::sort(out.begin(), out.end(), [](const TaskRecord& a, const TaskRecord& b) {
    return std::tie(a.start, a.call, a.index) < std::tie(b.start, b.call, b.index);
  });
  return out;
}

}  // namespace detail

// ---- insights ----------------------------------------------------------------------

double Insights::work_percent() const {
  auto total = work + dispatch + worker_overhead + result_latency;
  return total.count() > 0 ? 100.0 * static_cast<double>(work.count()) / static_cast<double>(total.count())
                           : 0.0;
}

namespace {

using ns = std::chrono::nanoseconds;

bool ran(const TaskRecord& r) { return r.outcome != TaskOutcome::cancelled && r.worker >= 0; }

Insights compute(std::vector<TaskRecord> recs, int workers, std::size_t nslow) {
  Insights in;
  in.tasks = recs.size();
  in.workers = workers;
  in.per_worker.resize(static_cast<std::size_t>(std::max(workers, 0)));
  for (int w = 0; w < workers; ++w) in.per_worker[static_cast<std::size_t>(w)].worker = w;
  std::set<std::uint64_t> calls;
  std::vector<std::int64_t> durations;
  ns lo = ns::max(), hi = ns::min();
  for (const auto& r : recs) {
    ++in.outcomes[static_cast<std::size_t>(r.outcome)];
    calls.insert(r.call);
    if (!ran(r)) continue;
    ns d = r.duration();
    durations.push_back(d.count());
    in.work += d;
    lo = std::min(lo, r.start);
    hi = std::max(hi, r.end);
    if (r.worker < workers) {
      auto& w = in.per_worker[static_cast<std::size_t>(r.worker)];
      ++w.tasks;
      w.failed += r.outcome != TaskOutcome::ok;
      w.busy += d;
    }
  }
  in.calls = calls.size();
  if (durations.empty()) return in;
  in.span = hi - lo;
  for (auto& w : in.per_worker) {
    if (in.span.count() > 0) {
      w.busy_percent =
          std::min(100.0, 100.0 * static_cast<double>(w.busy.count()) / static_cast<double>(in.span.count()));
    } else {
      w.busy_percent = w.tasks ? 100.0 : 0.0;
    }
  }
  in.mean_task = ns(in.work.count() / static_cast<std::int64_t>(durations.size()));
  std::sort(durations.begin(), durations.end());
  auto rank = static_cast<std::size_t>(std::ceil(0.99 * static_cast<double>(durations.size())));
  in.p99_task = ns(durations[std::max<std::size_t>(rank, 1) - 1]);
  in.max_task = ns(durations.back());

  // Overheads, from the records grouped by chunk, by worker process within a chunk
  // (a chunk's items re-run by the replacement of a lost worker are apart), and by
  // result batch (the items of a batch share their `received`).
  std::erase_if(recs, [](const TaskRecord& r) { return !ran(r); });
  std::sort(recs.begin(), recs.end(), [](const TaskRecord& a, const TaskRecord& b) {
    return std::tie(a.call, a.chunk, a.worker, a.pid, a.received, a.start) <
           std::tie(b.call, b.chunk, b.worker, b.pid, b.received, b.start);
  });
  auto positive = [](ns d) { return std::max(d, ns(0)); };
  for (std::size_t i = 0; i < recs.size();) {  // one chunk
    std::size_t j = i;
    ns first_start = ns::max();
    while (j < recs.size() && recs[j].call == recs[i].call && recs[j].chunk == recs[i].chunk) {
      std::size_t k = j;  // one worker's part of it
      ns s = ns::max(), e = ns::min(), work{0};
      while (k < recs.size() && recs[k].call == recs[j].call && recs[k].chunk == recs[j].chunk &&
             recs[k].worker == recs[j].worker && recs[k].pid == recs[j].pid) {
        std::size_t b = k;  // one batch
        ns last_end = ns::min();
        while (b < recs.size() && recs[b].call == recs[k].call && recs[b].chunk == recs[k].chunk &&
               recs[b].worker == recs[k].worker && recs[b].pid == recs[k].pid &&
               recs[b].received == recs[k].received) {
          s = std::min(s, recs[b].start);
          e = std::max(e, recs[b].end);
          last_end = std::max(last_end, recs[b].end);
          work += recs[b].duration();
          ++b;
        }
        in.result_latency += positive(recs[k].received - last_end);
        k = b;
      }
      in.worker_overhead += positive(e - s - work);
      first_start = std::min(first_start, s);
      j = k;
    }
    in.queue_wait += positive(first_start - recs[i].queued);
    ++in.chunks;
    i = j;
  }
  // Dispatch: per worker in time order, the gap before each chunk's first task.
  std::sort(recs.begin(), recs.end(), [](const TaskRecord& a, const TaskRecord& b) {
    return std::tie(a.worker, a.start) < std::tie(b.worker, b.start);
  });
  for (std::size_t i = 0; i < recs.size(); ++i) {
    const auto& r = recs[i];
    const TaskRecord* prev = i > 0 && recs[i - 1].worker == r.worker ? &recs[i - 1] : nullptr;
    // Within one process's run of a chunk: not a dispatch.
    if (prev && prev->pid == r.pid && prev->call == r.call && prev->chunk == r.chunk) continue;
    ns from = prev ? std::max(r.queued, prev->end) : r.queued;
    in.dispatch += positive(r.start - from);
  }

  std::size_t n = std::min(nslow, recs.size());
  std::partial_sort(recs.begin(), recs.begin() + static_cast<std::ptrdiff_t>(n), recs.end(),
                    [](const TaskRecord& a, const TaskRecord& b) {
                      return std::make_tuple(b.duration(), a.call, a.index) <
                             std::make_tuple(a.duration(), b.call, b.index);
                    });
  in.slowest.assign(recs.begin(), recs.begin() + static_cast<std::ptrdiff_t>(n));
  return in;
}

// "812 ns", "12.34 us", "3.210 ms", "1.234 s" (ASCII, so text tables line up).
std::string duration_text(ns d) {
  char buf[48];
  double v = static_cast<double>(d.count());
  double a = std::fabs(v);
  if (a < 1e3) {
    std::snprintf(buf, sizeof buf, "%lld ns", static_cast<long long>(d.count()));
  } else if (a < 1e6) {
    std::snprintf(buf, sizeof buf, "%.2f us", v / 1e3);
  } else if (a < 1e9) {
    std::snprintf(buf, sizeof buf, "%.3f ms", v / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.3f s", v / 1e9);
  }
  return buf;
}

template <class... A>
void appendf(std::string& out, const char* fmt, A... a) {
  char buf[512];
  int n = std::snprintf(buf, sizeof buf, fmt, a...);
  if (n > 0) out.append(buf, std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1));
}

std::string summary_text(const Insights& in) {
  std::string s;
  appendf(s, "mproc timeline: %llu tasks in %llu calls on %d workers, active span %s\n",
          static_cast<unsigned long long>(in.tasks), static_cast<unsigned long long>(in.calls), in.workers,
          duration_text(in.span).c_str());
  appendf(s, "  task time   mean %s, p99 %s, max %s\n", duration_text(in.mean_task).c_str(),
          duration_text(in.p99_task).c_str(), duration_text(in.max_task).c_str());
  appendf(s, "  time        work %s (%.1f%%), dispatch %s, worker overhead %s, result latency %s\n",
          duration_text(in.work).c_str(), in.work_percent(), duration_text(in.dispatch).c_str(),
          duration_text(in.worker_overhead).c_str(), duration_text(in.result_latency).c_str());
  appendf(s, "  chunks      %llu, mean wait in the queue %s\n", static_cast<unsigned long long>(in.chunks),
          duration_text(in.chunks ? in.queue_wait / static_cast<std::int64_t>(in.chunks) : ns(0)).c_str());
  s += "  outcomes   ";
  for (std::size_t o = 0; o < in.outcomes.size(); ++o) {
    appendf(s, " %s %llu", std::string(to_string(static_cast<TaskOutcome>(o))).c_str(),
            static_cast<unsigned long long>(in.outcomes[o]));
  }
  s += "\n\n";
  appendf(s, "  %6s %9s %7s %12s %7s\n", "worker", "tasks", "failed", "busy", "busy%");
  for (const auto& w : in.per_worker) {
    appendf(s, "  %6d %9llu %7llu %12s %7.1f\n", w.worker, static_cast<unsigned long long>(w.tasks),
            static_cast<unsigned long long>(w.failed), duration_text(w.busy).c_str(), w.busy_percent);
  }
  if (!in.slowest.empty()) {
    s += "\n  slowest tasks\n";
    appendf(s, "  %6s %9s %7s %8s %12s  %s\n", "call", "index", "worker", "pid", "duration", "outcome");
    for (const auto& r : in.slowest) {
      appendf(s, "  %6llu %9llu %7d %8d %12s  %s\n", static_cast<unsigned long long>(r.call),
              static_cast<unsigned long long>(r.index), r.worker, r.pid, duration_text(r.duration()).c_str(),
              std::string(to_string(r.outcome)).c_str());
    }
  }
  return s;
}

// ---- exports -----------------------------------------------------------------------

// Text and attribute values for XML/HTML.
std::string xml_escape(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (char c : in) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// Microseconds with nanosecond digits, as trace viewers expect.
std::string micros(ns t) {
  char buf[40];
  long long v = t.count();
  std::snprintf(buf, sizeof buf, "%s%lld.%03lld", v < 0 ? "-" : "", std::llabs(v) / 1000,
                std::llabs(v) % 1000);
  return buf;
}

std::string chrome_json(const std::vector<TaskRecord>& recs, int workers, int owner_pid) {
  std::string s;
  s.reserve(256 + recs.size() * 240);
  bool unstarted = std::any_of(recs.begin(), recs.end(), [](const TaskRecord& r) { return r.worker < 0; });
  s += "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
  appendf(s,
          "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,\"args\":{\"name\":\"mproc pool (pid "
          "%d)\"}}",
          owner_pid, owner_pid);
  for (int w = 0; w < workers; ++w) {
    appendf(
        s,
        ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"args\":{\"name\":\"worker %d\"}}",
        owner_pid, w, w);
    appendf(
        s,
        ",\n{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"args\":{\"sort_index\":%d}}",
        owner_pid, w, w);
  }
  if (unstarted) {
    appendf(
        s, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"args\":{\"name\":\"not run\"}}",
        owner_pid, workers);
  }
  for (const auto& r : recs) {
    std::string outcome(to_string(r.outcome));
    int tid = r.worker >= 0 ? r.worker : workers;
    appendf(s,
            ",\n{\"name\":\"call %llu "
            "#%llu\",\"cat\":\"%s\",\"ph\":\"X\",\"ts\":%s,\"dur\":%s,\"pid\":%d,\"tid\":%d",
            static_cast<unsigned long long>(r.call), static_cast<unsigned long long>(r.index),
            outcome.c_str(), micros(r.start).c_str(), micros(std::max(r.duration(), ns(0))).c_str(),
            owner_pid, tid);
    if (r.outcome != TaskOutcome::ok) s += ",\"cname\":\"terrible\"";
    appendf(s,
            ",\"args\":{\"call\":%llu,\"index\":%llu,\"chunk\":%llu,\"outcome\":\"%s\",\"worker_pid\":%d,"
            "\"queued_us\":%s,\"received_us\":%s}}",
            static_cast<unsigned long long>(r.call), static_cast<unsigned long long>(r.index),
            static_cast<unsigned long long>(r.chunk), outcome.c_str(), r.pid, micros(r.queued).c_str(),
            micros(r.received).c_str());
  }
  s += "\n]}\n";
  return s;
}

// One bar of the Gantt chart: a task, or tasks merged (see svg_chart).
struct Bar {
  int row;
  ns start, end;
  TaskOutcome outcome;
  std::uint64_t call, first, last, chunk, n;
  bool calls_mixed = false;
  int pid;
};

constexpr std::size_t kOneBarPerTask = 5000;  // up to this many tasks: one bar each
constexpr std::size_t kMaxChunkBars = 20000;  // more bars than this after merging per chunk: merge per pixel

const char* colour(TaskOutcome o) {
  return kOutcomeColours[std::min<std::size_t>(static_cast<std::size_t>(o), 4)];
}

// A tick's label: its time in the unit of the step, without needless digits.
std::string tick_label(std::int64_t t, std::int64_t step) {
  double unit = step >= 1'000'000'000 ? 1e9 : step >= 1'000'000 ? 1e6 : step >= 1000 ? 1e3 : 1;
  const char* name = unit == 1e9 ? "s" : unit == 1e6 ? "ms" : unit == 1e3 ? "us" : "ns";
  char buf[48];
  std::snprintf(buf, sizeof buf, "%g %s", static_cast<double>(t) / unit, name);
  return buf;
}

// A tick step of 1, 2 or 5 times a power of ten, giving about `want` ticks.
std::int64_t tick_step(std::int64_t span, int want) {
  double raw = static_cast<double>(span) / want;
  double p = std::pow(10.0, std::floor(std::log10(std::max(raw, 1.0))));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * p >= raw) return std::max<std::int64_t>(1, static_cast<std::int64_t>(m * p));
  }
  return static_cast<std::int64_t>(10 * p);
}

bool is_failure(TaskOutcome o) {
  return o == TaskOutcome::raised || o == TaskOutcome::worker_lost || o == TaskOutcome::timeout;
}

// Bar geometry, in chart pixels (the viewBox's; the HTML page scales the chart to the
// window's width).
constexpr double kMinBarPx = 0.5;      // an ok task: at least half a pixel
constexpr double kFailMarkerPx = 7.0;  // a failed task: at least this wide, full row height, outlined
constexpr double kNotRunPx = 3.0;      // a cancelled task that never ran (no duration)
constexpr double kDensePx = 3.0;       // bars narrower than this that lie within
constexpr double kDenseGapPx = 2.0;    //   this of each other form a dense run, hovered as one
constexpr double kDenseMinPx = 6.0;    // a dense run's hover target is at least this wide
constexpr std::size_t kDenseListed = 12;  // tasks named in a dense run's tooltip

// What a bar is, for its hover title.
std::string bar_text(const Bar& b) {
  std::string what;
  if (b.n == 1) {
    what = "call " + std::to_string(b.call) + ", index " + std::to_string(b.first) + " (chunk " +
           std::to_string(b.chunk) + "), " + duration_text(b.end - b.start) + ", " +
           std::string(to_string(b.outcome));
    if (b.pid) what += ", pid " + std::to_string(b.pid);
  } else {
    what = std::to_string(b.n) + " tasks merged: " +
           (b.calls_mixed ? std::string("several calls") : "call " + std::to_string(b.call)) + ", indices " +
           std::to_string(b.first) + "-" + std::to_string(b.last) + ", " + duration_text(b.end - b.start) +
           ", " + std::string(to_string(b.outcome));
  }
  return what;
}

// `heading`: draw the title as text at the top (the standalone SVG; the HTML page has
// its own heading). `fluid`: width 100% (the HTML page: the chart fits the window).
std::string svg_chart(const std::vector<TaskRecord>& recs, int workers, std::string_view title, bool heading = true,
                      bool fluid = false) {
  const double left = 90, plot_w = 1090, top = heading ? 40 : 12, row_h = 18, pitch = 24;
  const double width = left + plot_w + 20;
  bool unstarted = std::any_of(recs.begin(), recs.end(), [](const TaskRecord& r) { return r.worker < 0; });
  int rows = std::max(workers, 0) + (unstarted ? 1 : 0);
  auto row_of = [&](const TaskRecord& r) { return r.worker >= 0 && r.worker < workers ? r.worker : workers; };
  if (rows == 0) rows = 1;
  ns t0{0}, t1{1000};
  if (!recs.empty()) {
    t0 = ns::max();
    t1 = ns::min();
    for (const auto& r : recs) {
      t0 = std::min(t0, r.start);
      t1 = std::max({t1, r.end, r.start});
    }
    if (t1 <= t0) t1 = t0 + ns(1000);
  }
  const double scale = plot_w / static_cast<double>((t1 - t0).count());
  auto px = [&](ns t) { return left + static_cast<double>((t - t0).count()) * scale; };

  // Bars, row by row in start order (recs are sorted by start).
  std::vector<Bar> bars;
  auto one = [&](const TaskRecord& r) {
    return Bar{row_of(r), r.start, r.end, r.outcome, r.call, r.index, r.index, r.chunk, 1, false, r.pid};
  };
  if (recs.size() <= kOneBarPerTask) {
    for (const auto& r : recs) bars.push_back(one(r));
  } else {
    // A run of a row's tasks from one chunk with one outcome becomes one bar.
    std::vector<std::size_t> open(static_cast<std::size_t>(rows + 1), SIZE_MAX);
    for (const auto& r : recs) {
      auto& o = open[static_cast<std::size_t>(row_of(r))];
      if (o != SIZE_MAX && bars[o].call == r.call && bars[o].chunk == r.chunk &&
          bars[o].outcome == r.outcome) {
        Bar& b = bars[o];
        b.end = std::max(b.end, r.end);
        b.first = std::min(b.first, r.index);
        b.last = std::max(b.last, r.index);
        ++b.n;
      } else {
        o = bars.size();
        bars.push_back(one(r));
      }
    }
    if (bars.size() > kMaxChunkBars) {
      // Still too many: bars of a row with one outcome that start in the same
      // pixel column become one (at most one bar per row, outcome and pixel).
      std::vector<Bar> merged;
      std::vector<std::size_t> last(static_cast<std::size_t>(rows + 1) * 5, SIZE_MAX);
      for (const auto& b : bars) {
        auto& l = last[static_cast<std::size_t>(b.row) * 5 + static_cast<std::size_t>(b.outcome)];
        if (l != SIZE_MAX && std::floor(px(merged[l].start)) == std::floor(px(b.start))) {
          Bar& m = merged[l];
          m.end = std::max(m.end, b.end);
          m.calls_mixed = m.calls_mixed || m.call != b.call;
          m.first = std::min(m.first, b.first);
          m.last = std::max(m.last, b.last);
          m.n += b.n;
        } else {
          l = merged.size();
          merged.push_back(b);
        }
      }
      bars.swap(merged);
    }
  }

  const double axis_y = top + rows * pitch + 2;
  const double legend_y = axis_y + 38;
  const double height = legend_y + 24;
  std::string s;
  s.reserve(4096 + bars.size() * 200);
  if (fluid) {
    appendf(s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"100%%\" viewBox=\"0 0 %.0f %.0f\" "
            "font-family=\"monospace\" font-size=\"11\">\n",
            width, height);
  } else {
    appendf(s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
            "font-family=\"monospace\" font-size=\"11\">\n",
            width, height, width, height);
  }
  s += "<title>" + xml_escape(title) + "</title>\n";
  appendf(s, "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"#ffffff\"/>\n", width, height);
  if (heading) {
    s += "<text x=\"8\" y=\"22\" font-size=\"14\" font-weight=\"bold\">" + xml_escape(title) + "</text>\n";
  }
  for (int row = 0; row < rows; ++row) {
    double y = top + row * pitch;
    appendf(s, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n", left, y, plot_w,
            row_h, row % 2 ? "#f4f4f4" : "#fafafa");
    std::string label = row < workers ? "worker " + std::to_string(row) : std::string("not run");
    appendf(s, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", left - 6, y + row_h - 5,
            label.c_str());
  }
  // Time axis: ticks at round times since the pool was created.
  appendf(s, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333333\"/>\n", left, axis_y,
          left + plot_w, axis_y);
  std::int64_t step = tick_step((t1 - t0).count(), 8);
  for (std::int64_t t = (t0.count() + step - 1) / step * step; t <= t1.count(); t += step) {
    double x = px(ns(t));
    appendf(s, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333333\"/>\n", x, axis_y, x,
            axis_y + 5);
    appendf(s, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#dddddd\"/>\n", x, top, x,
            axis_y);
    appendf(s, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", x, axis_y + 17,
            xml_escape(tick_label(t, step)).c_str());
  }
  appendf(s, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">time since the pool started</text>\n",
          left + plot_w, axis_y + 31);
  // Bars, with what they are in a hover title: ok and cancelled ones first, then the
  // hover targets of dense runs, then the failures on top of everything, each at least
  // kFailMarkerPx wide, full height and outlined, so that a lost worker or a task that
  // raised after microseconds in a run of seconds is still seen (and hovered).
  struct Placed {
    double x, w;
  };
  auto place = [&](const Bar& b) {
    double min_w = is_failure(b.outcome) ? kFailMarkerPx : b.outcome == TaskOutcome::cancelled ? kNotRunPx : kMinBarPx;
    double w = std::max(min_w, static_cast<double>((b.end - b.start).count()) * scale);
    // A failure marker is centred on its task; every bar stays inside the plot.
    double x = is_failure(b.outcome) && w == min_w ? px(b.start) - w / 2 : px(b.start);
    x = std::clamp(x, left, std::max(left, left + plot_w - w));
    return Placed{x, w};
  };
  auto draw = [&](const Bar& b, const Placed& p) {
    bool fail = is_failure(b.outcome);
    double y = top + b.row * pitch + (fail ? 0 : 2);
    double h = fail ? row_h : row_h - 4;
    appendf(s, "<rect class=\"t %s%s\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" fill=\"%s\"%s>",
            std::string(to_string(b.outcome)).c_str(), b.n == 1 ? "" : " merged", p.x, y, p.w, h, colour(b.outcome),
            fail ? " stroke=\"#222222\" stroke-width=\"1\"" : "");
    s += "<title>" + xml_escape(bar_text(b)) + "</title></rect>\n";
  };
  std::vector<Placed> placed;
  placed.reserve(bars.size());
  for (const auto& b : bars) placed.push_back(place(b));
  for (std::size_t i = 0; i < bars.size(); ++i) {
    if (!is_failure(bars[i].outcome)) draw(bars[i], placed[i]);
  }
  // Dense runs: in each row, thin bars (under kDensePx) that start within kDenseGapPx
  // of the previous one's end. Each run of two or more gets a transparent hover target
  // over it whose tooltip names its tasks (the first kDenseListed of them).
  {
    std::vector<std::vector<std::size_t>> by_row(static_cast<std::size_t>(rows + 1));
    for (std::size_t i = 0; i < bars.size(); ++i) {
      if (placed[i].w < kDensePx) by_row[static_cast<std::size_t>(bars[i].row)].push_back(i);
    }
    auto flush = [&](const std::vector<std::size_t>& run, double x0, double x1) {
      std::uint64_t tasks = 0;
      for (auto i : run) tasks += bars[i].n;
      if (run.size() < 2) return;
      const Bar& first = bars[run.front()];
      ns from = first.start, to = first.end;
      for (auto i : run) to = std::max(to, bars[i].end);
      // Times since the pool started, as on the axis.
      std::string what = std::to_string(tasks) + " tasks from " + duration_text(from) + " to " + duration_text(to) + ":";
      // Appended piece by piece: `"literal" + std::string&&` trips g++ 12's -Wrestrict.
      for (std::size_t k = 0; k < run.size() && k < kDenseListed; ++k) {
        what += '\n';
        what += bar_text(bars[run[k]]);
      }
      if (run.size() > kDenseListed) {
        what += "\n... and ";
        what += std::to_string(run.size() - kDenseListed);
        what += " more bars";
      }
      double w = std::max(kDenseMinPx, x1 - x0);
      double x = std::clamp(x0 - (w - (x1 - x0)) / 2, left, std::max(left, left + plot_w - w));
      appendf(s,
              "<rect class=\"dense\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" fill=\"#000000\" "
              "fill-opacity=\"0\"><title>",
              x, top + first.row * pitch, w, row_h);
      s += xml_escape(what) + "</title></rect>\n";
    };
    for (const auto& row : by_row) {
      std::vector<std::size_t> run;
      double x0 = 0, x1 = 0;
      for (auto i : row) {  // in start order within the row
        const Placed& p = placed[i];
        if (!run.empty() && p.x <= x1 + kDenseGapPx) {
          run.push_back(i);
          x1 = std::max(x1, p.x + p.w);
          continue;
        }
        if (!run.empty()) flush(run, x0, x1);
        run.assign(1, i);
        x0 = p.x;
        x1 = p.x + p.w;
      }
      if (!run.empty()) flush(run, x0, x1);
    }
  }
  for (std::size_t i = 0; i < bars.size(); ++i) {
    if (is_failure(bars[i].outcome)) draw(bars[i], placed[i]);
  }
  // Legend.
  double x = left;
  for (std::size_t o = 0; o < 5; ++o) {
    auto out = static_cast<TaskOutcome>(o);
    appendf(s, "<rect class=\"legend\" x=\"%.1f\" y=\"%.1f\" width=\"12\" height=\"12\" fill=\"%s\"/>", x,
            legend_y, colour(out));
    appendf(s, "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", x + 16, legend_y + 10,
            std::string(to_string(out)).c_str());
    x += 120;
  }
  s += "</svg>\n";
  return s;
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (f) f.write(text.data(), static_cast<std::streamsize>(text.size()));
  if (f) f.flush();
  if (!f) {
    int e = errno ? errno : EIO;
    throw std::system_error(e, std::generic_category(), "mproc: cannot write " + path.string());
  }
}

constexpr std::string_view kDefaultTitle = "mproc timeline";

}  // namespace

// ---- Timeline ------------------------------------------------------------------------

Timeline::Timeline(std::shared_ptr<const detail::TimelineRecorder> recorder) : rec_(std::move(recorder)) {}

std::vector<TaskRecord> Timeline::tasks() const {
  return rec_ ? rec_->snapshot() : std::vector<TaskRecord>{};
}
int Timeline::workers() const { return rec_ ? rec_->workers() : 0; }

Insights Timeline::insights() const { return insights(5); }
Insights Timeline::insights(std::size_t slowest) const { return compute(tasks(), workers(), slowest); }
std::string Timeline::summary() const { return summary_text(insights()); }

std::string Timeline::chrome_trace_json() const {
  return chrome_json(tasks(), workers(), rec_ ? rec_->owner_pid() : static_cast<int>(::getpid()));
}
void Timeline::write_chrome_trace(const std::filesystem::path& path) const {
  write_text(path, chrome_trace_json());
}

std::string Timeline::svg() const { return svg(kDefaultTitle); }
std::string Timeline::svg(std::string_view title) const { return svg_chart(tasks(), workers(), title); }
void Timeline::write_svg(const std::filesystem::path& path) const { write_text(path, svg()); }
void Timeline::write_svg(const std::filesystem::path& path, std::string_view title) const {
  write_text(path, svg(title));
}

std::string Timeline::html() const { return html(kDefaultTitle); }
std::string Timeline::html(std::string_view title) const {
  auto recs = tasks();
  std::string t = xml_escape(title);
  std::string s;
  s += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>" + t + "</title>\n";
  s += "<style>body{font-family:sans-serif;margin:16px;color:#222222}pre{font-size:12px;line-height:1.3}"
       "svg{display:block;width:100%;height:auto}</style>\n</head><body>\n";
  s += "<h1>" + t + "</h1>\n";
  s += svg_chart(recs, workers(), title, /*heading=*/false, /*fluid=*/true);
  s += "<pre>" + xml_escape(summary_text(compute(recs, workers(), 10))) + "</pre>\n";
  s += "<p>One row per worker slot, one bar per task (tasks merged per chunk past " +
       std::to_string(kOneBarPerTask) +
       " tasks); hover a bar for its call, index, duration and outcome, or a dense run of short tasks for the "
       "tasks in it. Failed tasks (raised, worker_lost, timeout) are outlined markers at least " +
       std::to_string(static_cast<int>(kFailMarkerPx)) + " px wide, drawn over everything else.</p>\n";
  s += "</body></html>\n";
  return s;
}
void Timeline::write_html(const std::filesystem::path& path) const { write_text(path, html()); }
void Timeline::write_html(const std::filesystem::path& path, std::string_view title) const {
  write_text(path, html(title));
}

}  // namespace mproc
