// An in-process PoolBackend for tests (docs/design.md, "The pool's backend
// seam"): `workers` threads of this process take submitted chunks in order, run
// each with detail::ChunkRunner and deliver it as one batch. It proves that the
// typed Pool front end (map, imap, apply_async, progress, chunking) needs
// nothing of the local process engine, and is the smallest example of a backend.
//
// Simplifications a real backend would not make: terminate() fails the chunks
// still queued but lets running ones finish (a thread cannot be killed), there
// is no cancellation (cancel_job answers false), no ResultReceiver, no timeline.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mproc/detail/chunk_runner.hpp>
#include <mproc/detail/pool_backend.hpp>
#include <mproc/error.hpp>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include <unistd.h>

namespace mproc_test {

class FakePoolBackend final : public mproc::detail::PoolBackend {
  using ChunkMessage = mproc::detail::ChunkMessage;
  using JobSink = mproc::detail::JobSink;

 public:
  explicit FakePoolBackend(int workers) : workers_(workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this, i] { work(static_cast<std::uint32_t>(i)); });
  }
  ~FakePoolBackend() override {
    terminate();
    join_threads();
  }

  std::uint64_t open_job(std::shared_ptr<JobSink> sink) override {
    std::lock_guard lock(mu_);
    if (state_ != State::running) throw mproc::UsageError("fake backend: not running (closed or terminated)");
    std::uint64_t id = next_job_++;
    jobs_[id].sink = std::move(sink);
    return id;
  }
  void submit(std::uint64_t job, std::uint64_t first, ChunkMessage chunk) override {
    struct CloseFds {  // ours from here on, whether we return or throw
      ChunkMessage* chunk;
      ~CloseFds() {
        if (chunk) close_fds(*chunk);
      }
    } guard{&chunk};
    const std::uint64_t n = chunk.items();
    if (n == 0) return;
    mproc::detail::ChunkRunner::write_header(chunk, job, first);
    std::lock_guard lock(mu_);
    auto it = jobs_.find(job);
    if (state_ == State::terminated || it == jobs_.end()) throw mproc::CancelledError("fake backend: terminated");
    it->second.outstanding += n;
    guard.chunk = nullptr;
    queue_.push_back(Queued{job, std::move(chunk)});
    ++chunks_submitted_;
    cv_.notify_one();
  }
  void seal_job(std::uint64_t job) override {
    std::lock_guard lock(mu_);
    auto it = jobs_.find(job);
    if (it == jobs_.end()) return;
    it->second.sealed = true;
    forget_if_done(it);
  }

  bool cancel_job(std::uint64_t) override { return false; }
  std::size_t cancel_queued_jobs() override { return 0; }
  bool job_dispatched(std::uint64_t job) const override {
    std::lock_guard lock(mu_);
    auto it = jobs_.find(job);
    return it != jobs_.end() && it->second.dispatched;
  }

  void close() override {
    std::lock_guard lock(mu_);
    if (state_ == State::running) state_ = State::closed;
    cv_.notify_all();
  }
  void terminate() override {
    std::deque<Queued> dropped;
    std::vector<std::shared_ptr<JobSink>> sinks;
    {
      std::lock_guard lock(mu_);
      state_ = State::terminated;
      dropped.swap(queue_);
      for (auto& q : dropped) sinks.push_back(jobs_[q.job].sink);
      cv_.notify_all();
    }
    // Outside the lock: a sink's callbacks may call back into the backend.
    const mproc::detail::ExceptionInfo info{"mproc::CancelledError", "the pool was terminated", ""};
    for (std::size_t k = 0; k < dropped.size(); ++k) {
      const std::uint64_t first = header_first(dropped[k].chunk);
      for (std::uint64_t i = 0; i < dropped[k].chunk.items(); ++i) {
        sinks[k]->on_failure(first + i, mproc::detail::Failure::cancelled, info, 0, {});
      }
      close_fds(dropped[k].chunk);
      settle(dropped[k].job, dropped[k].chunk.items());
    }
  }
  void join() override {
    {
      std::lock_guard lock(mu_);
      if (state_ == State::running) throw mproc::UsageError("fake backend: join() needs close() or terminate() first");
    }
    join_threads();
  }
  bool accepting() const override {
    std::lock_guard lock(mu_);
    return state_ == State::running;
  }
  int processes() const override { return workers_; }
  std::int64_t spin_ns() const override { return 0; }
  const std::shared_ptr<mproc::detail::ResultReceiver>& receiver() const override { return no_receiver_; }
  std::vector<pid_t> worker_pids() const override { return {}; }
  std::shared_ptr<mproc::detail::TimelineRecorder> timeline() const override { return nullptr; }

  /// Chunks submitted so far (to see that work went through this backend).
  std::size_t chunks_submitted() const {
    std::lock_guard lock(mu_);
    return chunks_submitted_;
  }

 private:
  enum class State { running, closed, terminated };
  struct Job {
    std::shared_ptr<JobSink> sink;
    std::uint64_t outstanding = 0;
    bool sealed = false;
    bool dispatched = false;
  };
  struct Queued {
    std::uint64_t job = 0;
    ChunkMessage chunk;
  };

  static void close_fds(ChunkMessage& c) {
    for (int fd : c.fds) ::close(fd);
    c.fds.clear();
  }
  static std::uint64_t header_first(const ChunkMessage& c) {
    mproc::detail::ChunkHeader h{};
    std::memcpy(&h, c.bytes.data(), sizeof h);
    return h.first;
  }
  void forget_if_done(std::map<std::uint64_t, Job>::iterator it) {
    if (!it->second.sealed || it->second.outstanding != 0) return;
    jobs_.erase(it);
    if (jobs_.empty()) cv_.notify_all();  // a closed backend's workers may exit now
  }
  void settle(std::uint64_t job, std::uint64_t n) {
    std::lock_guard lock(mu_);
    auto it = jobs_.find(job);
    if (it == jobs_.end()) return;
    it->second.outstanding -= n;
    forget_if_done(it);
  }

  void work(std::uint32_t worker) {
    mproc::detail::ChunkRunner runner;
    for (;;) {
      Queued q;
      std::shared_ptr<JobSink> sink;
      {
        std::unique_lock lock(mu_);
        // After close(), open jobs may still get chunks: the workers stay until
        // every job is done.
        cv_.wait(lock, [&] {
          return !queue_.empty() || state_ == State::terminated || (state_ == State::closed && jobs_.empty());
        });
        if (queue_.empty()) return;
        q = std::move(queue_.front());
        queue_.pop_front();
        Job& j = jobs_[q.job];
        j.dispatched = true;
        sink = j.sink;
      }
      runner.run(q.chunk.bytes, q.chunk.fds);
      close_fds(q.chunk);
      runner.deliver(*sink, worker);  // no lock held: callbacks may submit
      settle(q.job, q.chunk.items());
    }
  }
  void join_threads() {
    std::lock_guard lock(join_mu_);
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

  const int workers_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  State state_ = State::running;
  std::uint64_t next_job_ = 1;
  std::map<std::uint64_t, Job> jobs_;
  std::deque<Queued> queue_;
  std::size_t chunks_submitted_ = 0;
  std::shared_ptr<mproc::detail::ResultReceiver> no_receiver_;
  std::mutex join_mu_;
  std::vector<std::thread> threads_;  // last: started once the rest exists
};

}  // namespace mproc_test
