// mproc/progress.hpp — a tqdm-like progress bar for the map family.
//
//   pool.map(f, xs, {0, true, "squares"});            // chunksize 0, progress on
//   MapOptions o; o.progress = true; o.desc = "fetch";
//   for (auto& page : pool.imap_unordered(fetch, urls, o)) ...
//
//   squares:  45%|#########           | 450/1000 [00:03<00:04, 130.2 it/s, 2 failed]
//
// The bar is drawn on stderr by the parent process only (the pool's result thread,
// or the ThreadPool thread that finished an item), one write() per line. On a
// terminal it is redrawn in place ('\r'); elsewhere (a pipe, a log file) it prints
// a plain line now and then. The last line always ends with a newline, before the
// call that owns the bar returns (docs/pool.md, "Progress bars").
#pragma once

#include "mproc/detail/config.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "mproc/detail/timeout.hpp"  // OptionalTimeout

namespace mproc {

/// How a ProgressBar draws. The defaults suit a program; tests set fd/terminal.
struct ProgressOptions {
  /// Label before the counts ("desc: ..."); empty: none.
  std::string desc{};
  /// Items expected; empty when unknown (an unbounded imap): count and rate only.
  std::optional<std::uint64_t> total;
  /// Where to draw.
  int fd = 2;
  /// Redraw in place ('\r') or print lines; empty: isatty(fd).
  std::optional<bool> terminal{};
  /// Least time between two draws; empty: 0.1 s on a terminal, 1 s otherwise.
  /// Without a terminal a line is also printed at each 10 % of a known total.
  detail::OptionalTimeout interval{};
};

/// A progress bar: done/total, percent, elapsed, ETA, rate and failed items.
/// update() is cheap and safe from several threads: it counts with atomics and
/// draws only when a draw is due, from whichever thread calls it (a thread that
/// finds another one drawing skips the draw). The bar closes itself (final line
/// and newline) when the count reaches a known total; close() does it otherwise.
class ProgressBar {
 public:
  explicit ProgressBar(ProgressOptions options);
  /// Closes the bar (draws the final line) if that has not happened yet.
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  /// Counts `ok` items that finished and `failed` items that failed. Never throws;
  /// ignored once the bar is closed.
  void update(std::uint64_t ok, std::uint64_t failed = 0) noexcept;
  /// Sets the total once it is known (a lazy input reached its end). Closes the
  /// bar if everything is already done.
  void set_total(std::uint64_t total) noexcept;
  /// Draws the final line and ends it with a newline; later updates are ignored.
  /// Idempotent, never throws.
  void close() noexcept;

  std::uint64_t done() const noexcept { return ok_.load(std::memory_order_relaxed) + failed_.load(std::memory_order_relaxed); }
  std::uint64_t failed() const noexcept { return failed_.load(std::memory_order_relaxed); }
  bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }

  /// The text of one line (no '\r' or newline): what the bar draws for these
  /// counts after `elapsed_s` seconds; `width` > 0 adds a bar graphic filling it.
  static std::string format(const std::string& desc, std::uint64_t done, std::uint64_t failed,
                            std::optional<std::uint64_t> total, double elapsed_s, int width);

 private:
  void draw(bool final) noexcept;  // with draw_mu_ held

  std::string desc_;
  int fd_;
  bool terminal_;
  std::int64_t interval_ns_;
  std::int64_t start_ns_;
  std::atomic<std::uint64_t> ok_{0};
  std::atomic<std::uint64_t> failed_{0};
  std::atomic<std::uint64_t> total_;  // kNoTotal: unknown
  std::atomic<std::int64_t> next_draw_ns_;
  std::atomic<std::uint64_t> next_step_;  // without a terminal: the done count of the next 10 % line
  std::atomic<bool> closed_{false};
  std::mutex draw_mu_;
  std::size_t last_len_ = 0;          // terminal: length of the line on screen
  std::uint64_t last_drawn_ = ~std::uint64_t{0};  // done count of the last line drawn
};

namespace detail {

/// The bar a map-family call with `progress` set draws, or null.
inline std::shared_ptr<ProgressBar> make_progress(bool on, const std::string& desc, std::optional<std::uint64_t> total) {
  if (!on) return nullptr;
  ProgressOptions o;
  o.desc = desc;
  o.total = total;
  return std::make_shared<ProgressBar>(std::move(o));
}

}  // namespace detail

}  // namespace mproc
