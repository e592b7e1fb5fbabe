// The result side of PoolCore::Impl (engine.hpp): the collector thread, and
// ResultReceiver (a waiter receiving its own results). Each result message is
// settled under take_mu, in channel order, then delivered to its job's sink
// without locks (user callbacks run there).
#include "engine.hpp"

#include "mproc/background_error.hpp"

#include <cstdio>
#include <cstring>

#include "mproc/pool.hpp"  // kAutoChunkBytes

namespace mproc::detail {

void PoolCore::Impl::collector_loop() {
  // Messages are copied out of the ring (the sinks and user callbacks run
  // without the channel's lock), into buffers kept from batch to batch.
  std::vector<std::vector<std::byte>> batch;
  std::vector<Settled> settled;
  for (;;) {
    std::size_t n = 0;
    bool pause = false;
    std::unique_lock take(take_mu, std::defer_lock);
    try {
      results.recv_many(64, std::nullopt, [&](Reader& r) {
        // Taken before the first message leaves the ring (a waiter receiving its
        // own results holds it while it spins: at most its spin): results are
        // settled in the order they were sent.
        if (!take.owns_lock()) take.lock();
        std::size_t len = r.remaining();
        const std::byte* p = r.take(len);
        if (batch.size() == n) batch.emplace_back();
        batch[n++].assign(p, p + len);
      });
    } catch (const EOFError&) {
      // Every worker is gone at this instant (e.g. the only one crashed and its
      // replacement has not attached yet). Nothing is lost: wait and look again.
      if (take.owns_lock()) take.unlock();
      std::unique_lock lock(mu);
      if (stopping) return;
      feed_cv.wait_for(lock, std::chrono::milliseconds(5));
      continue;
    } catch (const std::exception& e) {
      // Nothing the result channel throws here is final while the pool runs
      // (out of memory for a batch, a transient fd shortage): report it, and
      // try again a little later, after settling what was received.
      report_background_error("pool collector", e.what());
      pause = true;
    }
    if (settled.size() < n) settled.resize(n);
    for (std::size_t i = 0; i < n; ++i) settle_message(batch[i], settled[i]);
    if (take.owns_lock()) take.unlock();
    for (std::size_t i = 0; i < n; ++i) deliver(settled[i]);
    // Kept for the next batch, unless a large (side-band) message grew one.
    for (std::size_t i = 0; i < n; ++i) {
      if (batch[i].capacity() > kAutoChunkBytes * 2) std::vector<std::byte>().swap(batch[i]);
    }
    std::unique_lock lock(mu);
    if (stopping) return;  // stop_threads() sent a wake message to get us here
    if (pause) feed_cv.wait_for(lock, std::chrono::milliseconds(10));
  }
}

// Step one of a result message, under take_mu: marks its items delivered
// (or re-queues a lost worker's) and finds the sink to tell.
void PoolCore::Impl::settle_message(std::span<const std::byte> m, Settled& s) {
  s.sink = nullptr;
  s.init_failed = false;
  s.all_fresh = false;
  s.statuses = 0;
  s.times = 0;
  if (m.size() < sizeof(ResultHeader)) return;
  std::memcpy(&s.h, m.data(), sizeof s.h);
  const ResultHeader& h = s.h;
  s.rest = m.subspan(sizeof h);
  try {
    switch (h.kind) {
      case ResultKind::wake:
        return;
      case ResultKind::init_failed:
        s.init_failed = true;
        return;
      case ResultKind::batch:
      case ResultKind::batch_ok:
      case ResultKind::batch_timed: {
        // payload | status bytes (not for batch_ok) | times and their size (batch_timed)
        if (h.kind == ResultKind::batch_timed) {
          std::uint32_t n = 0;
          if (s.rest.size() < sizeof n) return;
          std::memcpy(&n, s.rest.data() + s.rest.size() - sizeof n, sizeof n);
          s.times = std::size_t{n} + sizeof n;
        }
        s.statuses = h.kind == ResultKind::batch_ok ? 0 : h.count;
        if (s.rest.size() < s.times || s.rest.size() - s.times < s.statuses) return;
        std::lock_guard lock(mu);
        if (cfg.timeline) s.src = timeline_source(h.job, h.first, h.worker);
        s.sink = settle(h.job, h.first, h.count, s.fresh, s.all_fresh);
        return;
      }
      case ResultKind::lost:
      case ResultKind::timeout: {
        Reader payload(s.rest);
        s.info = load<ExceptionInfo>(payload);
        std::lock_guard lock(mu);
        if (cfg.timeline) s.src = timeline_source(h.job, h.first, h.worker);
        s.sink = on_lost(h);
        return;
      }
    }
  } catch (const std::exception& e) {
    s.sink = nullptr;
    report_background_error("pool collector", e.what());
  }
}

// Step two, without locks: tells the sink (and so the user's callbacks).
void PoolCore::Impl::deliver(Settled& s) {
  std::shared_ptr<JobSink> sink = std::move(s.sink);
  const ResultHeader& h = s.h;
  try {
    if (s.init_failed) {
      s.init_failed = false;
      Reader payload(s.rest);
      handle_init_failure(payload);
      return;
    }
    if (!sink) return;
    ItemTiming t{h.worker, h.start_ns, h.end_ns};
    if (is_batch(h.kind)) {
      const std::size_t payload_size = s.rest.size() - s.times - s.statuses;
      auto status = s.statuses ? reinterpret_cast<const std::uint8_t*>(s.rest.data() + payload_size) : nullptr;
      Reader payload(s.rest.first(payload_size));
      if (cfg.timeline) {
        auto item_times = s.rest.last(s.times).first(s.times ? s.times - sizeof(std::uint32_t) : 0);
        std::vector<std::uint8_t> ok;
        if (!status) ok.assign(h.count, 0);
        record_batch(s.src, h, status ? status : ok.data(), s.fresh.data(), item_times);
      }
      sink->on_batch(h.first, h.count, status, s.all_fresh ? nullptr : s.fresh.data(), payload, t);
      return;
    }
    // lost or timeout: the item that was running failed
    if (cfg.timeline) {
      s.src.received_ns = now_ns();
      auto outcome = h.kind == ResultKind::timeout ? TaskOutcome::timeout : TaskOutcome::worker_lost;
      cfg.timeline->failed(s.src, h.index, outcome, h.start_ns, h.end_ns);
    }
    sink->on_failure(h.index, h.kind == ResultKind::timeout ? Failure::timeout : Failure::worker_lost, s.info,
                     h.exitcode, t);
  } catch (const std::exception& e) {
    report_background_error("pool collector", e.what());
  }
}

// ResultReceiver::receive on the waiting thread (see there).
bool PoolCore::Impl::receive_for(std::uint64_t job, bool (*stop)(void*), void* ctx, std::int64_t spin_for) {
  std::unique_lock take(take_mu, std::try_to_lock);
  if (!take) return false;
  // Not thread_local: a callback delivered below may wait for another result
  // and so come back in here on this thread while `s` is in use.
  std::vector<std::byte> msg;
  Settled s;
  for (;;) {
    auto got = results.recv_spinning(
        std::chrono::nanoseconds(spin_for),
        [&](Reader& r) {
          ResultHeader h;
          if (r.remaining() < sizeof h) return false;
          std::size_t len = r.remaining();
          const std::byte* p = r.take(len);
          std::memcpy(&h, p, sizeof h);
          // Only this job's results: its sink may run the user's callbacks,
          // which must not run on a thread that waits for something else.
          // Lost workers, timeouts and the rest stay with the result thread.
          if (h.job != job || !is_batch(h.kind)) return false;
          try {
            msg.assign(p, p + len);
          } catch (...) {
            return false;  // out of memory: left to the result thread, not lost
          }
          return true;
        },
        [&] { return stop(ctx); });
    if (got != ChannelEnd::Spun::received) return true;
    settle_message(msg, s);
    take.unlock();
    deliver(s);
    if (stop(ctx) || !take.try_lock()) return true;
  }
}

// A result batch for the timeline, with the per-item times the worker sent
// (kept encoded: decoding waits until someone reads the timeline).
void PoolCore::Impl::record_batch(TimelineSource src, const ResultHeader& h, const std::uint8_t* status, const std::uint8_t* fresh, std::span<const std::byte> times) {
  src.received_ns = now_ns();
  std::span<const std::uint8_t> t(reinterpret_cast<const std::uint8_t*>(times.data()), times.size());
  cfg.timeline->ran(src, h.first, h.count, status, fresh, t, h.start_ns, h.end_ns);
}

void PoolCore::Impl::handle_init_failure(Reader& payload) {
  ExceptionInfo info = load<ExceptionInfo>(payload);
  std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>> fail;
  {
    std::lock_guard lock(mu);
    // A worker whose initializer fails cannot run anything. Python's pool
    // respawns such workers forever; after three in a row mproc fails every
    // pending task with the initializer's error and refuses new work.
    if (++init_failures < 3) return;
    state = State::terminated;
    collect_outstanding(fail, TaskOutcome::raised);
  }
  ExceptionInfo why{info.type_name, "the pool's initializer failed in a worker: " + info.message, info.traceback};
  for (auto& [sink, index] : fail) sink->on_failure(index, Failure::raised, why, 1, ItemTiming{});
}

bool ResultReceiver::receive_erased(std::uint64_t job, bool (*stop)(void*), void* ctx, std::int64_t spin_ns) {
  // seq_cst on both sides with ~PoolCore (store impl_, then read active_): either
  // it sees us inside, or we see null.
  active_.fetch_add(1, std::memory_order_seq_cst);
  struct Leave {
    std::atomic<int>& active;
    ~Leave() { active.fetch_sub(1, std::memory_order_seq_cst); }
  } leave{active_};
  auto* impl = static_cast<PoolCore::Impl*>(impl_.load(std::memory_order_seq_cst));
  return impl && spin_ns > 0 && impl->receive_for(job, stop, ctx, spin_ns);
}

}  // namespace mproc::detail
