// mproc/detail/pool_jobs.hpp — the typed sinks of a Pool call: the JobSinks
// through which the backend (PoolBackend; PoolCore locally) delivers a job's
// results and failures on its delivery thread, decoding them into a ResultCore (GatherJob: apply, map) or
// into an OutcomeBuffer for the iterating thread (StreamJob: imap).
#pragma once

#include "mproc/detail/config.hpp"

#include <array>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <vector>

#include "mproc/detail/huge_pages.hpp"
#include "mproc/detail/pool_backend.hpp"
#include "mproc/detail/pool_entry.hpp"
#include "mproc/progress.hpp"
#include "mproc/results.hpp"
#include "mproc/serial.hpp"

namespace mproc::detail {

/// Turns a failed item into the exception the user sees.
std::exception_ptr make_item_error(Failure kind, const ExceptionInfo& info, int exitcode, std::uint64_t index);

/// `inner` with its items counted into `bar` first (src/pool/progress.cpp); with
/// `end_on_failure` (map: the first failure ends the call) the bar is closed at the
/// first failure. Returns `inner` itself when `bar` is null.
std::shared_ptr<JobSink> progress_sink(std::shared_ptr<JobSink> inner, std::shared_ptr<ProgressBar> bar,
                                       bool end_on_failure);

/// A job whose results are gathered into one value (apply) or a vector (map),
/// into a ResultCore, or into `Core` (a type derived from it, such as the
/// executor's FutureCore, whose own finish() is then the one called).
template <class V, bool Single, class Core = void>
class GatherJob final : public JobSink {
 public:
  using T = std::conditional_t<Single, V, std::vector<V>>;
  using CoreT = std::conditional_t<std::is_void_v<Core>,
                                   ResultCore<std::conditional_t<Single && std::is_same_v<V, std::monostate>, void, T>>,
                                   Core>;
  GatherJob(std::size_t n, std::shared_ptr<CoreT> core) : values_(sized(n)), left_(n), owner_(std::move(core)), core_(owner_.get()) {}
  /// Delivering into `core` without owning it: they are allocated together (SingleCall).
  GatherJob(std::size_t n, CoreT* core) : values_(sized(n)), left_(n), core_(core) {}

  void on_batch(std::uint64_t first, std::uint64_t count, const std::uint8_t* status, const std::uint8_t* fresh,
                Reader& payload, const ItemTiming&) noexcept override {
    bool done = false;
    try {
      std::lock_guard lock(mu_);
      bool copied = false;
      if constexpr (bulk_type<V>) {
        // Every item new and successful, results back to back: one copy.
        if (!status && !fresh && first <= values_.size() && count <= values_.size() - first && count <= left_) {
          if (count != 0) payload.read(values_.data() + first, count * sizeof(V));
          left_ -= count;
          copied = true;
        }
      }
      for (std::uint64_t k = 0; k < count && !copied; ++k) {
        std::uint64_t i = first + k;
        if (status_at(status, k) != 0) {
          ExceptionInfo info = load<ExceptionInfo>(payload);
          if (fresh_at(fresh, k)) {
            // Like Python's MapResult: the first failure makes the whole result ready.
            failed_ = true;
            error_ = make_item_error(Failure::raised, info, 1, i);
            break;
          }
          continue;
        }
        // A fresh item is delivered once (the backend tracks which were), so no
        // index is decoded into twice.
        if (fresh_at(fresh, k) && i < values_.size() && left_ > 0) {
          decode_into(payload, values_[i]);
          --left_;
        } else {
          (void)load<V>(payload);
        }
      }
      done = left_ == 0 || failed_;
    } catch (...) {
      core_->finish(std::nullopt, std::current_exception());
      return;
    }
    if (done) complete();
  }
  void on_failure(std::uint64_t index, Failure kind, const ExceptionInfo& info, int exitcode,
                  const ItemTiming&) noexcept override {
    core_->finish(std::nullopt, make_item_error(kind, info, exitcode, index));
  }

 private:
  void complete() noexcept {
    try {
      if (failed_) {
        core_->finish(std::nullopt, error_);
      } else if constexpr (Single) {
        core_->finish(std::move(values_[0]), nullptr);
      } else {
        core_->finish(std::move(values_), nullptr);
      }
    } catch (...) {
      core_->finish(std::nullopt, std::current_exception());
    }
  }
  // One value inline for a single call (apply, submit: no allocation), a vector for map.
  using Values = std::conditional_t<Single, std::array<V, 1>, std::vector<V>>;
  static Values sized(std::size_t n) {
    if constexpr (Single) {
      return Values{};
    } else {
      return make_values<V>(n);
    }
  }
  std::mutex mu_;
  Values values_;
  std::size_t left_;
  bool failed_ = false;
  std::exception_ptr error_;
  std::shared_ptr<CoreT> owner_;  // null for a SingleCall's
  CoreT* core_;
};

/// A single call's result core and the job that delivers into it, in one
/// allocation (apply_async, submit): each allocation of a submit costs the
/// submitting thread, whose many submits in a row drain malloc's thread cache.
/// The job's and the core's shared_ptrs alias this object, so neither outlives
/// the other.
template <class V, class Core>
struct SingleCall {
  Core core;
  GatherJob<V, true, Core> job{1, &core};
};

/// Items of a lazily-fed job, buffered until the iterating thread takes them.
template <class V>
class StreamJob final : public JobSink {
 public:
  using Outcome = typename OutcomeBuffer<V>::Outcome;

  void on_batch(std::uint64_t first, std::uint64_t count, const std::uint8_t* status, const std::uint8_t* fresh,
                Reader& payload, const ItemTiming&) noexcept override {
    buffer_.add([&](auto& buffered) {
      for (std::uint64_t k = 0; k < count; ++k) {
        Outcome o;
        try {
          if (status_at(status, k) != 0) {
            ExceptionInfo info = load<ExceptionInfo>(payload);
            o = make_item_error(Failure::raised, info, 1, first + k);
          } else {
            o = load<V>(payload);
          }
        } catch (...) {
          o = std::current_exception();
          if (fresh_at(fresh, k)) buffered.emplace(first + k, std::move(o));
          break;  // the rest of the batch cannot be decoded
        }
        if (fresh_at(fresh, k)) buffered.emplace(first + k, std::move(o));
      }
    });
  }
  void on_failure(std::uint64_t index, Failure kind, const ExceptionInfo& info, int exitcode,
                  const ItemTiming&) noexcept override {
    buffer_.add([&](auto& buffered) { buffered.emplace(index, make_item_error(kind, info, exitcode, index)); });
  }

  /// Waits for item `index` (ordered) or any item (unordered), then takes up to
  /// `max` ready ones; see OutcomeBuffer::take_batch.
  template <class Out>
  bool take_batch(std::optional<std::uint64_t> index, std::optional<std::chrono::steady_clock::time_point> deadline,
                  Out& out, std::size_t max) {
    return buffer_.take_batch(index, deadline, out, max);
  }
  void set_spin(std::int64_t ns) { buffer_.set_spin(ns); }
  void set_receiver(std::shared_ptr<ResultReceiver> r, std::uint64_t job) { buffer_.set_receiver(std::move(r), job); }
  void set_receiver_job(std::uint64_t job) { buffer_.set_receiver_job(job); }

 private:
  OutcomeBuffer<V> buffer_;
};

}  // namespace mproc::detail
