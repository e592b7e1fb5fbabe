// Progress bars for the map family (mproc/progress.hpp, docs/pool.md).
#include "mproc/progress.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "mproc/pool.hpp"

namespace mproc {
namespace {

constexpr std::uint64_t kNoTotal = ~std::uint64_t{0};

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// "mm:ss", or "h:mm:ss" past an hour (tqdm's format).
std::string clock_text(double seconds) {
  if (!(seconds >= 0) || seconds > 1e9) return "?";
  auto s = static_cast<long long>(seconds);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%02lld:%02lld", s / 60, s % 60);
  }
  return buf;
}

int terminal_width(int fd) {
  winsize ws{};
  if (::ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

// One write per line, so a line is never split by another writer's output (a
// write to a pipe of up to PIPE_BUF bytes is atomic; a terminal line is short).
void write_all(int fd, const std::string& s) noexcept {
  const char* p = s.data();
  std::size_t left = s.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // a closed or full stderr is not the task's failure
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

}  // namespace

ProgressBar::ProgressBar(ProgressOptions options)
    : desc_(std::move(options.desc)),
      fd_(options.fd),
      terminal_(options.terminal.value_or(::isatty(options.fd) == 1)),
      interval_ns_(options.interval ? options.interval->count() : terminal_ ? 100'000'000 : 1'000'000'000),
      start_ns_(now_ns()),
      total_(options.total.value_or(kNoTotal)),
      next_draw_ns_(start_ns_ + interval_ns_),
      next_step_(0) {
  std::lock_guard lock(draw_mu_);
  draw(false);
  if (total_.load() == 0) {
    closed_ = true;
    draw(true);
  }
}

ProgressBar::~ProgressBar() { close(); }

void ProgressBar::update(std::uint64_t ok, std::uint64_t failed) noexcept {
  if (closed_.load(std::memory_order_acquire)) return;
  if (ok) ok_.fetch_add(ok, std::memory_order_relaxed);
  if (failed) failed_.fetch_add(failed, std::memory_order_relaxed);
  std::uint64_t d = done();
  std::uint64_t total = total_.load(std::memory_order_relaxed);
  if (total != kNoTotal && d >= total) {
    close();
    return;
  }
  bool due = now_ns() >= next_draw_ns_.load(std::memory_order_relaxed) ||
             (!terminal_ && total != kNoTotal && d >= next_step_.load(std::memory_order_relaxed));
  if (!due) return;
  std::unique_lock lock(draw_mu_, std::try_to_lock);
  if (!lock || closed_.load(std::memory_order_relaxed)) return;  // another thread draws
  draw(false);
}

void ProgressBar::set_total(std::uint64_t total) noexcept {
  total_.store(total, std::memory_order_relaxed);
  if (done() >= total) close();
}

void ProgressBar::close() noexcept {
  std::lock_guard lock(draw_mu_);  // waits for a draw in progress, so the final line comes last
  if (closed_.exchange(true, std::memory_order_acq_rel)) return;
  draw(true);
}

void ProgressBar::draw(bool final) noexcept {
  try {
    std::uint64_t failed = failed_.load(std::memory_order_relaxed);
    std::uint64_t d = ok_.load(std::memory_order_relaxed) + failed;
    std::uint64_t t = total_.load(std::memory_order_relaxed);
    std::optional<std::uint64_t> total = t == kNoTotal ? std::nullopt : std::optional<std::uint64_t>(t);
    std::int64_t now = now_ns();
    next_draw_ns_.store(now + interval_ns_, std::memory_order_relaxed);
    if (total && *total > 0) {
      // The next 10 % boundary: ceil(k * total / 10) for the first k past d.
      std::uint64_t k = d * 10 / *total + 1;
      next_step_.store((k * *total + 9) / 10, std::memory_order_relaxed);
    }
    if (!terminal_ && final && d == last_drawn_) return;  // the last line already says it
    std::string line = format(desc_, d, failed, total, static_cast<double>(now - start_ns_) / 1e9,
                              terminal_ ? terminal_width(fd_) - 1 : 0);
    std::string out;
    if (terminal_) {
      // Redraw in place; pad with spaces over what is left of a longer line.
      out = "\r" + line;
      if (line.size() < last_len_) out.append(last_len_ - line.size(), ' ');
      last_len_ = line.size();
      if (final) out += '\n';
    } else {
      out = line + '\n';
    }
    last_drawn_ = d;
    write_all(fd_, out);
  } catch (...) {
    // Out of memory while formatting: skip this draw.
  }
}

std::string ProgressBar::format(const std::string& desc, std::uint64_t done, std::uint64_t failed,
                                std::optional<std::uint64_t> total, double elapsed_s, int width) {
  std::string prefix = desc.empty() ? std::string() : desc + ": ";
  double rate = elapsed_s > 0 ? static_cast<double>(done) / elapsed_s : 0;
  char buf[64];
  if (rate <= 0) {
    std::snprintf(buf, sizeof buf, "? it/s");
  } else if (rate >= 1) {
    std::snprintf(buf, sizeof buf, "%.1f it/s", rate);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f s/it", 1 / rate);
  }
  std::string stats = clock_text(elapsed_s);
  if (total) {
    stats += '<';
    stats += rate > 0 && done <= *total ? clock_text(static_cast<double>(*total - done) / rate) : "?";
  }
  stats += std::string(", ") + buf;
  if (failed) stats.append(", ").append(std::to_string(failed)).append(" failed");
  if (!total) return prefix + std::to_string(done) + " [" + stats + "]";

  std::uint64_t pct = *total == 0 ? 100 : std::min<std::uint64_t>(100, done * 100 / *total);
  std::snprintf(buf, sizeof buf, "%3llu%%", static_cast<unsigned long long>(pct));
  std::string head = prefix + buf;
  std::string tail = " ";
  tail.append(std::to_string(done)).append("/").append(std::to_string(*total)).append(" [").append(stats).append("]");
  int room = width - static_cast<int>(head.size() + tail.size()) - 2;
  if (room < 4) return head + tail;
  auto filled = static_cast<std::size_t>(*total == 0 ? room : std::min<std::uint64_t>(done, *total) * room / *total);
  return head + "|" + std::string(filled, '#') + std::string(static_cast<std::size_t>(room) - filled, ' ') + "|" + tail;
}

namespace detail {
namespace {

// Counts a Pool job's items into a bar on the pool's result thread, then hands
// them on. The bar is updated (and, at the end, closed) before the inner sink
// makes a result ready, so the final line is out before the waiting call returns.
class ProgressSink final : public JobSink {
 public:
  ProgressSink(std::shared_ptr<JobSink> inner, std::shared_ptr<ProgressBar> bar, bool end_on_failure)
      : inner_(std::move(inner)), bar_(std::move(bar)), end_on_failure_(end_on_failure) {}

  void on_batch(std::uint64_t first, std::uint64_t count, const std::uint8_t* status, const std::uint8_t* fresh,
                Reader& payload, const ItemTiming& t) noexcept override {
    std::uint64_t ok = 0, failed = 0;
    if (!status && !fresh) {
      ok = count;
    } else {
      for (std::uint64_t k = 0; k < count; ++k) {
        if (fresh_at(fresh, k)) ++(status_at(status, k) ? failed : ok);
      }
    }
    bar_->update(ok, failed);
    if (failed && end_on_failure_) bar_->close();
    inner_->on_batch(first, count, status, fresh, payload, t);
  }
  void on_failure(std::uint64_t index, Failure kind, const ExceptionInfo& info, int exitcode,
                  const ItemTiming& t) noexcept override {
    bar_->update(0, 1);
    if (end_on_failure_) bar_->close();
    inner_->on_failure(index, kind, info, exitcode, t);
  }

 private:
  std::shared_ptr<JobSink> inner_;
  std::shared_ptr<ProgressBar> bar_;
  bool end_on_failure_;
};

}  // namespace

std::shared_ptr<JobSink> progress_sink(std::shared_ptr<JobSink> inner, std::shared_ptr<ProgressBar> bar,
                                       bool end_on_failure) {
  if (!bar) return inner;
  return std::make_shared<ProgressSink>(std::move(inner), std::move(bar), end_on_failure);
}

}  // namespace detail
}  // namespace mproc
