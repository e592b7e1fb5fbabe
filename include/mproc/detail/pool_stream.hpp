// mproc/detail/pool_stream.hpp — the feeding side of a Pool's lazy maps
// (imap, imap_unordered, ProcessPoolExecutor::map): StreamSource reads the
// input a bounded window ahead of the consumer, encodes chunks, submits them to
// the engine and hands results to the iterating thread.
#pragma once

#include "mproc/detail/config.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <utility>
#include <variant>

#include "mproc/detail/chunk_encoder.hpp"
#include "mproc/detail/pool_backend.hpp"
#include "mproc/detail/pool_entry.hpp"
#include "mproc/detail/pool_jobs.hpp"
#include "mproc/progress.hpp"
#include "mproc/results.hpp"

namespace mproc::detail {

/// The feeding side of imap: reads the input, encodes chunks, keeps a bounded
/// number of items in flight, and hands results to the iterating thread.
///
/// An executor's map (`per_call`) gives each chunk a job of its own, as Python's
/// Executor.map submits a future per call, so that the chunks no worker has
/// taken can be cancelled when the map times out or is dropped before its end
/// (issue 11, bug 8). Pool.imap keeps one job for all its chunks.
template <bool Ordered, class Fn, class Arg, bool Star, class Range>
class StreamSource final : LazyFeed {
  using Res = pool_result_t<Fn, Arg, Star>;
  using V = stored_value_t<Res>;

 public:
  StreamSource(PoolBackend* core, std::shared_ptr<LazyFeeds> feeds, bool per_call, int workers, const Fn& f, Range&& input,
               std::size_t chunk, std::shared_ptr<ProgressBar> bar = nullptr)
      : core_(core),
        feeds_(std::move(feeds)),
        per_call_(per_call),
        workers_(workers),
        enc_(std::make_unique<ChunkEncoder<Fn, Arg, Star>>(f)),
        input_(std::views::all(std::forward<Range>(input))),
        it_(std::ranges::begin(input_)),
        job_(std::make_shared<TimedStream>()),
        bar_(std::move(bar)) {
    chunk_.fixed = chunk;
    job_->set_spin(core_->spin_ns());
    sink_ = progress_sink(job_, bar_, false);
    // Registered before the job opens: a close() from now on feeds this map
    // (below, if it came before the job was open), or makes open_job throw.
    feeds_->add(this);
    try {
      if (!per_call_) {
        id_ = core_->open_job(sink_);
      } else if (!core_->accepting()) {
        throw UsageError("mproc: Pool is not running (closed or terminated)");
      }
    } catch (...) {
      feeds_->remove(this);
      throw;
    }
    job_->set_receiver(core_->receiver(), id_);
    std::lock_guard lock(mu_);
    opened_ = true;
    if (feed_requested_) refill(true);
  }
  StreamSource(const StreamSource&) = delete;
  StreamSource& operator=(const StreamSource&) = delete;
  ~StreamSource() {
    feeds_->remove(this);  // waits for a close() feeding this map
    std::lock_guard lock(mu_);
    if (per_call_) {
      cancel_unstarted();
    } else if (!sealed_) {
      core_->seal_job(id_);
    }
    if (bar_) bar_->close();
  }

  /// The next result, or empty at the end. With a deadline (executor map's
  /// timeout), throws TimeoutError once it passes without a result.
  ///
  /// Results are taken off the job a run at a time (those ready in order, up to
  /// a chunk), so that the iterating thread locks, refills and waits once per
  /// run, not per item; the read-ahead window counts them as taken.
  std::optional<V> next(std::optional<std::chrono::steady_clock::time_point> deadline = {}) {
    if (ready_.empty()) {
      std::size_t run = 1;
      {
        std::lock_guard lock(mu_);
        refill(false);
        if (taken_ == submitted_) {
          if (bar_) bar_->close();  // the final line before the loop ends
          if (input_error_) std::rethrow_exception(std::exchange(input_error_, nullptr));
          return std::nullopt;
        }
        // Receive the wanted item's results on this thread while spinning: they
        // come under the job of the chunk holding it. An executor's map takes one
        // at a time (its calls' jobs are cancelled by position).
        if (per_call_ && !calls_.empty()) job_->set_receiver_job(calls_.front().first);
        if (!per_call_) run = chunk_.next();
      }
      if (!job_->take_batch(Ordered ? std::optional<std::uint64_t>(taken_) : std::nullopt, deadline, ready_, run)) {
        if (per_call_) {
          // Python's Executor.map cancels what has not started once its iteration
          // raises; so does this one. Later calls time out again.
          std::lock_guard lock(mu_);
          seal();
          cancel_unstarted();
        }
        throw TimeoutError("mproc: the next result was not ready within the map's timeout");
      }
      taken_ += ready_.size();  // this thread's alone (feed_rest does not read it): no lock
      if (per_call_) {
        std::lock_guard lock(mu_);
        while (!calls_.empty() && calls_.front().second <= taken_) calls_.pop_front();
      }
      chunk_.items_done = job_->items();
      chunk_.ns_done = job_->ns();
    }
    auto outcome = std::move(ready_.front().second);
    ready_.pop_front();
    if (auto* e = std::get_if<std::exception_ptr>(&outcome)) std::rethrow_exception(*e);
    return std::move(std::get<V>(outcome));
  }

 private:
  // StreamJob plus the per-item worker time the adaptive chunk size needs.
  class TimedStream final : public JobSink {
   public:
    void on_batch(std::uint64_t first, std::uint64_t count, const std::uint8_t* status, const std::uint8_t* fresh,
                  Reader& payload, const ItemTiming& t) noexcept override {
      ns_ += t.end_ns - t.start_ns;
      items_ += count;
      inner_.on_batch(first, count, status, fresh, payload, t);
    }
    void on_failure(std::uint64_t index, Failure kind, const ExceptionInfo& info, int exitcode,
                    const ItemTiming& t) noexcept override {
      inner_.on_failure(index, kind, info, exitcode, t);
    }
    template <class Out>
    bool take_batch(std::optional<std::uint64_t> i, std::optional<std::chrono::steady_clock::time_point> deadline,
                    Out& out, std::size_t max) {
      return inner_.take_batch(i, deadline, out, max);
    }
    void set_spin(std::int64_t ns) { inner_.set_spin(ns); }
    void set_receiver(std::shared_ptr<ResultReceiver> r, std::uint64_t job) { inner_.set_receiver(std::move(r), job); }
    void set_receiver_job(std::uint64_t job) { inner_.set_receiver_job(job); }
    std::uint64_t items() const { return items_.load(); }
    std::int64_t ns() const { return ns_.load(); }

   private:
    StreamJob<V> inner_;
    std::atomic<std::uint64_t> items_{0};
    std::atomic<std::int64_t> ns_{0};
  };

  void feed_rest() noexcept override {
    std::lock_guard lock(mu_);
    if (opened_) {
      refill(true);
    } else {
      feed_requested_ = true;  // the constructor feeds it once the job is open
    }
  }

  // Reads and queues input, with mu_ held: up to the window, or (`all`) to its end.
  void refill(bool all) noexcept {
    // Window: in flight + buffered results at most ~4 chunks per worker, and
    // never fewer than 64 items per worker, so that small chunks keep every
    // worker and the channels busy (a shallow pipeline caps chunksize=1 at
    // workers / round trip). Past 2 items per worker it also stops at 64 MiB of
    // encoded tasks in flight. Memory does not grow with the input.
    std::size_t chunk = chunk_.next();
    const auto w = static_cast<std::uint64_t>(workers_);
    std::uint64_t window = std::max<std::uint64_t>(64 * w, 4 * w * chunk);
    while (!sealed_ && (all || (submitted_ - taken_ < window &&
                                (submitted_ - taken_ < 2 * w || bytes_in_flight() < kMaxBytes)))) {
      bool input_ended = false;
      std::uint64_t first = submitted_;
      try {
        enc_->begin();
        while (enc_->items() < chunk && it_ != std::ranges::end(input_)) {
          enc_->add(*it_);
          ++it_;
        }
        input_ended = it_ == std::ranges::end(input_);
      } catch (...) {
        // An exception while reading the input surfaces once the results before it
        // have been taken (Python raises it at that point of the iteration).
        input_error_ = std::current_exception();
        input_ended = true;
      }
      try {
        // The items read before an input error go out first, and only then is the
        // job sealed: a job sealed with all its items in is forgotten at once, and
        // a chunk submitted to it after that would fail with CancelledError
        // instead of the input's error (issue 11, bug 7).
        if (std::size_t n = enc_->items()) {
          ChunkMessage msg = enc_->finish();
          sizes_.emplace_back(first + n, msg.bytes.size());
          bytes_ += msg.bytes.size();
          if (per_call_) {
            std::uint64_t id = core_->open_job(sink_);
            calls_.emplace_back(id, first + n);
            try {
              core_->submit(id, first, std::move(msg));
            } catch (...) {
              core_->seal_job(id);
              throw;
            }
            core_->seal_job(id);
          } else {
            core_->submit(id_, first, std::move(msg));
          }
          submitted_ += n;
        }
      } catch (...) {
        // The pool was terminated or closed meanwhile: the iteration raises it
        // once the results already queued have been taken.
        if (!input_error_) input_error_ = std::current_exception();
        input_ended = true;
      }
      if (input_ended) seal();
    }
  }
  void seal() {
    if (!sealed_) {
      if (!per_call_) core_->seal_job(id_);
      // The input's length is known now: what was submitted.
      if (bar_) bar_->set_total(submitted_);
    }
    sealed_ = true;
  }
  // Executor map, with mu_ held: cancels the calls no worker has taken.
  void cancel_unstarted() noexcept {
    for (const auto& [id, end] : calls_) {
      try {
        core_->cancel_job(id);
      } catch (...) {
      }
    }
    calls_.clear();
  }

  // Encoded bytes of the chunks not yet fully taken (approximate for
  // imap_unordered, which takes out of order).
  std::size_t bytes_in_flight() {
    while (!sizes_.empty() && sizes_.front().first <= taken_) {
      bytes_ -= sizes_.front().second;
      sizes_.pop_front();
    }
    return bytes_;
  }
  static constexpr std::size_t kMaxBytes = std::size_t{64} << 20;

  PoolBackend* core_;
  std::shared_ptr<LazyFeeds> feeds_;
  const bool per_call_;
  int workers_;
  // Guards the feeding state below (not taken_, the iterating thread's own):
  // close() may feed the rest of the input from another thread (feed_rest)
  // while this map is iterated.
  std::mutex mu_;
  std::deque<std::pair<std::uint64_t, std::size_t>> sizes_;  // (end index, bytes) per chunk
  std::size_t bytes_ = 0;
  std::unique_ptr<ChunkEncoder<Fn, Arg, Star>> enc_;
  std::views::all_t<Range> input_;  // a reference to an lvalue range, the range itself otherwise
  std::ranges::iterator_t<std::views::all_t<Range>> it_;
  std::shared_ptr<TimedStream> job_;
  std::shared_ptr<JobSink> sink_;  // job_, counted into the progress bar
  std::uint64_t id_ = 0;           // the one job (not per_call)
  // per_call: (job, end index) of each chunk not yet fully taken, in order.
  std::deque<std::pair<std::uint64_t, std::uint64_t>> calls_;
  std::uint64_t submitted_ = 0;
  std::uint64_t taken_ = 0;  // off the job (into ready_ or to the caller)
  std::deque<std::pair<std::uint64_t, typename StreamJob<V>::Outcome>> ready_;  // taken, not yet returned
  bool sealed_ = false;
  bool opened_ = false;          // the constructor is done
  bool feed_requested_ = false;  // close() came before it was
  std::exception_ptr input_error_;
  AdaptiveChunk chunk_;
  std::shared_ptr<ProgressBar> bar_;
};

}  // namespace mproc::detail
