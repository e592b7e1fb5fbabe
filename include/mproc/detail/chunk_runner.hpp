// mproc/detail/chunk_runner.hpp — a backend's worker side in one piece: runs a
// chunk message (as PoolBackend::submit received it) in this process and hands
// its items' outcomes to the job's JobSink as one batch. For backends other than
// the local process engine (whose workers batch through the channels instead):
// the in-process fake of tests/test_pool_backend.cpp, a cluster rank. Not
// included by pool.hpp.
#pragma once

#include "mproc/detail/config.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "mproc/detail/pool_backend.hpp"
#include "mproc/detail/pool_entry.hpp"  // PoolEntryCtx
#include "mproc/error.hpp"
#include "mproc/serial.hpp"
#include "mproc/task.hpp"  // decode_entry

namespace mproc::detail {

/// Runs chunks and keeps the outcomes of the last one: each item's encoded
/// result, or its ExceptionInfo, in order, as JobSink::on_batch reads them. One
/// per thread (not thread-safe); reusable, its buffers keep their memory.
class ChunkRunner final : public ItemSink {
 public:
  ChunkRunner() { running_ = &index_; }
  ChunkRunner(const ChunkRunner&) = delete;
  ChunkRunner& operator=(const ChunkRunner&) = delete;

  /// The header a backend writes into the first bytes of a submitted chunk
  /// (PoolBackend::submit: the message is the front end's, the header the
  /// backend's) before it runs or sends it.
  static void write_header(ChunkMessage& chunk, std::uint64_t job, std::uint64_t first) noexcept {
    ChunkHeader h{job, first, chunk.items()};
    std::memcpy(chunk.bytes.data(), &h, sizeof h);
  }

  /// Runs `message` (header written: write_header) with `fds` as its
  /// descriptors, on this thread. Every item ends up with an outcome: a chunk
  /// whose entry or callable cannot be decoded fails all its items with that
  /// error. Throws SerializationError only for a message shorter than a header.
  void run(std::span<const std::byte> message, std::span<const int> fds = {}) {
    if (message.size() < sizeof(ChunkHeader)) {
      throw SerializationError("mproc: a chunk message of " + std::to_string(message.size()) +
                               " bytes is shorter than its header");
    }
    std::memcpy(&header_, message.data(), sizeof header_);
    payload_.clear();
    status_.clear();
    any_failed_ = false;
    start_ns_ = now_ns();
    Reader r(message.subspan(sizeof(ChunkHeader)), fds);
    PoolEntryCtx ctx{this, header_.first, header_.count};
    try {
      Entry e = decode_entry(r);
      e(&r, &ctx);
    } catch (...) {
      // The entry reports an item's own failure itself; this is the chunk's.
      ExceptionInfo info = capture_current_exception();
      for (std::uint64_t i = status_.size(); i < header_.count; ++i) failed(header_.first + i, info);
    }
    end_ns_ = now_ns();
  }

  /// The last chunk's header.
  const ChunkHeader& header() const noexcept { return header_; }

  /// Hands the last chunk's outcomes to `sink` as one batch (all fresh), as run
  /// by worker `worker`. Never throws (JobSink's rule).
  void deliver(JobSink& sink, std::uint32_t worker = 0) noexcept {
    Reader payload(payload_.bytes());
    ItemTiming t{worker, start_ns_, end_ns_};
    sink.on_batch(header_.first, status_.size(), any_failed_ ? status_.data() : nullptr, nullptr, payload, t);
  }

  // ItemSink (called by the entry while run() runs).
  void starting(std::uint64_t index) noexcept override { index_.store(index, std::memory_order_relaxed); }
  Writer& result_writer() override { return payload_; }
  void ok(std::uint64_t) override { status_.push_back(0); }
  void failed(std::uint64_t, const ExceptionInfo& info) override {
    dump(payload_, info);
    status_.push_back(1);
    any_failed_ = true;
  }
  bool bulk() const noexcept override { return true; }
  std::span<std::byte> run_begin(std::uint64_t index, std::size_t n, std::size_t size) override {
    starting(index);
    run_size_ = size;
    run_at_ = payload_.size();
    return payload_.extend(std::min(n, kRun) * size);
  }
  void run_end(std::size_t done) override {
    const std::size_t given = (payload_.size() - run_at_) / run_size_;
    if (done < given) payload_.truncate(payload_.size() - (given - done) * run_size_);
    status_.insert(status_.end(), done, 0);
  }

 private:
  static std::int64_t now_ns() noexcept {
    // CLOCK_MONOTONIC, as ItemTiming wants (libstdc++'s steady_clock).
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  std::atomic<std::uint64_t> index_{0};
  ChunkHeader header_{};
  Writer payload_;
  std::vector<std::uint8_t> status_;  // one per item so far
  bool any_failed_ = false;
  std::size_t run_at_ = 0;
  std::size_t run_size_ = 1;
  std::int64_t start_ns_ = 0;
  std::int64_t end_ns_ = 0;
};

}  // namespace mproc::detail
