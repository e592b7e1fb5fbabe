// The feeder thread of PoolCore::Impl (engine.hpp): moves queued chunks into
// the task channel, which may be full, and never exits on an error it can retry.
#include "engine.hpp"

#include "mproc/background_error.hpp"

#include <cstring>

namespace mproc::detail {

void PoolCore::Impl::feeder_loop() {
  for (;;) {
    Pending p;
    std::uint64_t ticket = 0;
    {
      std::unique_lock lock(mu);
      for (;;) {
        feed_cv.wait(lock, [&] { return stopping || !feed.empty(); });
        if (stopping) return;
        p = std::move(feed.front());
        feed.pop_front();
        if (!p.chunk) break;
        if (p.chunk->cancelled) continue;  // cancel_job dropped it while it waited here
        // From here on the chunk may reach a worker: cancellable only by its ticket.
        if (auto jt = jobs.find(p.chunk->job); jt != jobs.end()) {
          ticket = take_ticket_locked(jt->second, *p.chunk, p.from, p.to);
        }
        break;
      }
    }
    std::vector<std::byte> msg;
    std::span<const int> fds;
    if (!p.chunk) {
      ChunkHeader stop{0, 0, 0};
      msg.resize(sizeof stop);
      std::memcpy(msg.data(), &stop, sizeof stop);
    } else {
      msg = message_for(*p.chunk, p.from, p.to, ticket);
      fds = p.chunk->msg.fds;
    }
    // Never gives up on a chunk while the pool runs: a full channel with no
    // worker attached (all dead at this instant, replacements starting) reports
    // BrokenPipeError, which passes once a worker attaches; the supervisor fails
    // the pending work if none can start. Any other error fails this chunk's
    // items, loudly, and the feeder goes on with the next.
    for (;;) {
      try {
        if (tasks.send(msg, fds, clock::now() + std::chrono::milliseconds(50))) break;
      } catch (const BrokenPipeError&) {
        std::unique_lock lock(mu);
        if (stopping) return;
        feed_cv.wait_for(lock, std::chrono::milliseconds(5), [&] { return stopping; });
        continue;
      } catch (const std::exception& e) {
        report_background_error("pool feeder", std::string(e.what()) + " (that chunk's tasks fail)");
        if (p.chunk) fail_range(*p.chunk, p.from, p.to, e.what());
        break;
      }
      std::lock_guard lock(mu);
      if (stopping) return;
    }
  }
}

// Without mu: items [from, to) of chunk c fail (their message could not be
// sent), each through its job's sink, unless delivered already.
void PoolCore::Impl::fail_range(const Chunk& c, std::uint64_t from, std::uint64_t to, const std::string& why) {
  ExceptionInfo info{"mproc::Error", "mproc: the pool could not send this task to a worker: " + why, {}};
  for (std::uint64_t i = from; i < to; ++i) {
    std::shared_ptr<JobSink> sink;
    {
      std::lock_guard lock(mu);
      std::vector<std::uint8_t> fresh;
      bool all_fresh = false;
      sink = settle(c.job, i, 1, fresh, all_fresh);
      if (!all_fresh) sink = nullptr;
    }
    if (sink) sink->on_failure(i, Failure::raised, info, 0, ItemTiming{});
  }
}

}  // namespace mproc::detail
