// The job table of PoolCore::Impl (engine.hpp): jobs, their chunks and which
// items were delivered; settling results, re-queueing after a death (the item
// in hand charged, docs/pool.md "A task's life"), cancelling, failing all.
#include "engine.hpp"

#include <cstring>

namespace mproc::detail {

// With mu held, for a chunk about to go to the task channel: the send's ticket,
// or 0. In a cancellable pool every send gets one while its word is free (the
// send TicketTable::kWords tickets ago is no longer queued): it decides, when a
// worker dies inside the receive, whether the worker the ring hands the record
// to or the death notice's re-queue runs the items, so that exactly one does
// (a re-queued send without one could run twice). Only the first send of a
// job's first chunk, whole, keeps the job cancellable (j.ticket); any other
// send marks the job dispatched.
std::uint64_t PoolCore::Impl::take_ticket_locked(Job& j, Chunk& c, std::uint64_t from, std::uint64_t to) {
  const bool first_send = !j.dispatched && j.ticket == 0 && from == c.first && to == c.first + c.delivered.size() &&
                          j.chunks.size() == 1;
  std::uint64_t t = 0;
  if (cfg.cancellable) {
    t = next_ticket++;
    if (!tickets.issue(t)) t = 0;  // issued: published by the channel's send
  }
  if (first_send && t != 0) {
    j.ticket = t;
    c.ticket = t;
  } else {
    j.dispatched = true;
  }
  return t;
}

// With mu held: whether a worker has (or may have) taken job j's chunk.
bool PoolCore::Impl::claimed_locked(const Job& j) const {
  if (j.dispatched) return true;
  if (j.ticket == 0) return false;
  return tickets.taken(j.ticket);
}

// Builds the message for items [from, to) of a chunk (the whole chunk, or what
// is left of it after a lost worker), with the header patched.
std::vector<std::byte> PoolCore::Impl::message_for(const Chunk& c, std::uint64_t from, std::uint64_t to, std::uint64_t ticket) const {
  const auto& m = c.msg;
  std::size_t a = m.offset(from - c.first);
  std::size_t b = m.offset(to - c.first);
  std::vector<std::byte> out;
  out.reserve(m.prefix + (b - a));
  out.insert(out.end(), m.bytes.begin(), m.bytes.begin() + static_cast<std::ptrdiff_t>(m.prefix));
  out.insert(out.end(), m.bytes.begin() + static_cast<std::ptrdiff_t>(a), m.bytes.begin() + static_cast<std::ptrdiff_t>(b));
  ChunkHeader h{c.job, from, to - from, ticket};
  std::memcpy(out.data(), &h, sizeof h);
  return out;
}

// With mu held: the chunk of job `job` that contains item `index`.
std::shared_ptr<PoolCore::Impl::Chunk> PoolCore::Impl::chunk_of(std::unordered_map<std::uint64_t, Job>::iterator jt, std::uint64_t index) {
  auto& chunks = jt->second.chunks;
  auto ct = chunks.upper_bound(index);
  if (ct == chunks.begin()) return nullptr;
  --ct;
  if (index - ct->second->first >= ct->second->delivered.size()) return nullptr;
  return ct->second;
}

// With mu held: items [first, first + count) of job `job` have outcomes. Marks
// them delivered; fresh[k] says whether item first + k was new (re-runs after a
// lost worker can deliver an item twice). Returns the job's sink, or null if
// the job is gone (terminated) — then nothing is to be delivered.
// `all_fresh` is set when every item was new; `fresh` is then filled only with
// a timeline (which reads it).
std::shared_ptr<JobSink> PoolCore::Impl::settle(std::uint64_t job, std::uint64_t first, std::uint64_t count, std::vector<std::uint8_t>& fresh, bool& all_fresh) {
  all_fresh = false;
  auto jt = jobs.find(job);
  if (jt == jobs.end()) {
    fresh.assign(count, 0);
    return nullptr;
  }
  auto chunk = chunk_of(jt, first);
  if (!chunk) {
    fresh.assign(count, 0);
    return nullptr;
  }
  Job& j = jt->second;
  auto sink = j.sink;
  const std::uint64_t from = first - chunk->first;
  const std::uint64_t to = std::min<std::uint64_t>(from + count, chunk->delivered.size());
  std::uint64_t added = 0;
  if (to - from == count && chunk->delivered.none(from, to)) {
    // The common case, a word at a time: every item is new.
    chunk->delivered.set(from, to);
    added = count;
    all_fresh = true;
    if (cfg.timeline) fresh.assign(count, 1);
  } else {
    // Some were delivered before (a re-run after a lost worker).
    fresh.assign(count, 0);
    for (std::uint64_t pos = from; pos < to; ++pos) {
      if (chunk->delivered[pos]) continue;
      chunk->delivered.set(pos);
      fresh[pos - from] = 1;
      ++added;
    }
  }
  j.outstanding -= added;
  chunk->left -= added;
  if (chunk->left == 0) {
    auto node = j.chunks.extract(chunk->first);
    if (j.small && dead_chunks.size() < kMaxDead) dead_chunks.push_back(std::move(node));
  }
  maybe_finish_job(jt);
  return sink;
}

void PoolCore::Impl::take_dead(Dead& out) {
  if (!dead_chunks.empty()) out.chunk_nodes.swap(dead_chunks);
}

void PoolCore::Impl::maybe_finish_job(std::unordered_map<std::uint64_t, Job>::iterator jt) {
  if (jt->second.sealed && jt->second.outstanding == 0) {
    jobs.erase(jt);
    if (jobs.empty()) {
      idle_cv.notify_all();
      if (state == State::closing) send_stops_locked();
    }
  }
}

void PoolCore::Impl::send_stops_locked() {
  if (stop_sent) return;
  stop_sent = true;
  for (std::size_t i = 0; i < workers.size(); ++i) {
    Pending p;
    p.chunk = nullptr;
    feed.push_back(p);
  }
  feed_cv.notify_all();
}

// With mu held. A worker died holding items [h.first, h.first + h.count) of
// job h.job, in phase h.phase with item h.index in hand. Every item of that
// range not yet delivered goes back to the feeder, except the one in hand
// (any phase past claimed: decoding, running, sending), which is charged with
// the death: it fails, or is re-run while its own retries last. Returns the
// sink to tell, if the item failed.
std::shared_ptr<JobSink> PoolCore::Impl::on_lost(const ResultHeader& h) {
  // The dead worker may have died after its claim, before the record left the
  // ring, and the ring may have handed the record to another worker, which took
  // the ticket over: then that worker runs the items (TicketTable::on_death).
  // The ticket is the one of the send the worker held (its slot's), and it is
  // settled first, even when the job is over: a takeover's word stays busy
  // until its notice comes.
  const bool taken_over = h.ticket != 0 && tickets.on_death(h.ticket) == TicketTable::Death::taken_over;
  auto jt = jobs.find(h.job);
  if (jt == jobs.end()) return nullptr;
  auto chunk = chunk_of(jt, h.first);
  if (!chunk) return nullptr;
  std::uint64_t lo = h.first, hi = h.first + h.count;
  const bool charged = h.phase != SlotPhase::claimed && h.index >= lo && h.index < hi &&
                       h.index - chunk->first < chunk->delivered.size();
  auto undelivered = [&](std::uint64_t i) {
    return !chunk->delivered[i - chunk->first] && !(charged && i == h.index);
  };
  if (taken_over) lo = hi;  // the taker runs the rest (its item in hand is still charged)
  for (std::uint64_t from = lo; from < hi;) {
    while (from < hi && !undelivered(from)) ++from;
    std::uint64_t to = from;
    while (to < hi && undelivered(to)) ++to;
    if (from < to && state != State::terminated) feed.push_back(Pending{chunk, from, to});
    from = to;
  }
  feed_cv.notify_all();
  if (!charged || chunk->delivered[h.index - chunk->first]) return nullptr;
  // Retries count per item (docs/pool.md): each death is charged to one item.
  if (h.kind == ResultKind::lost && chunk->deaths[h.index]++ < cfg.retries) {
    feed.push_back(Pending{chunk, h.index, h.index + 1});
    feed_cv.notify_all();
    return nullptr;
  }
  std::vector<std::uint8_t> fresh;
  bool all_fresh = false;
  auto sink = settle(h.job, h.index, 1, fresh, all_fresh);
  return all_fresh ? sink : nullptr;
}

// With mu held: cancels job `jt` if no chunk of it has left the feed queue (see
// PoolCore::cancel_job); its undelivered items go to `out` to be failed.
bool PoolCore::Impl::cancel_locked(std::unordered_map<std::uint64_t, Job>::iterator jt, std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>>& out) {
  Job& j = jt->second;
  if (!j.sealed || j.dispatched) return false;
  // Sent: the worker that would take it may be faster.
  if (j.ticket != 0 && !tickets.cancel(j.ticket)) return false;
  for (auto& [first, c] : j.chunks) {
    c->cancelled = true;
    for (std::size_t k = 0; k < c->delivered.size(); ++k) {
      if (c->delivered[k]) continue;
      out.emplace_back(j.sink, c->first + k);
      record_unrun(jt->first, *c, c->first + k, TaskOutcome::cancelled);
    }
  }
  j.chunks.clear();
  j.outstanding = 0;
  maybe_finish_job(jt);
  return true;
}

// Without mu: tells each sink that its item will never run.
void PoolCore::Impl::fail_cancelled(const std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>>& items, const char* why) {
  ExceptionInfo info{"mproc::CancelledError", why, {}};
  for (auto& [sink, index] : items) sink->on_failure(index, Failure::cancelled, info, 0, ItemTiming{});
}

// With mu held: every item submitted and not settled, settled now; jobs cleared.
void PoolCore::Impl::collect_outstanding(std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>>& out, TaskOutcome why) {
  for (auto& [id, j] : jobs) {
    for (auto& [first, c] : j.chunks) {
      for (std::size_t k = 0; k < c->delivered.size(); ++k) {
        if (c->delivered[k]) continue;
        out.emplace_back(j.sink, c->first + k);
        record_unrun(id, *c, c->first + k, why);
      }
    }
  }
  jobs.clear();
  feed.clear();
  idle_cv.notify_all();
}

// With mu held: every item submitted and not delivered fails (to `out`); the
// jobs stay (an open job may get more chunks), their chunks are dropped.
void PoolCore::Impl::fail_pending_locked(std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>>& out) {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, j] : jobs) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (std::uint64_t id : ids) {
    auto jt = jobs.find(id);
    Job& j = jt->second;
    for (auto& [first, c] : j.chunks) {
      c->cancelled = true;  // the feeder skips it
      if (c->ticket != 0) tickets.cancel(c->ticket);  // still in the channel: a worker taking it drops it
      for (std::size_t k = 0; k < c->delivered.size(); ++k) {
        if (c->delivered[k]) continue;
        c->delivered.set(k);
        out.emplace_back(j.sink, c->first + k);
        record_unrun(id, *c, c->first + k, TaskOutcome::worker_lost);
      }
    }
    j.chunks.clear();
    j.outstanding = 0;
    maybe_finish_job(jt);
  }
  std::erase_if(feed, [](const Pending& p) { return p.chunk != nullptr; });
}

// With mu held: where item `index` of `job` came from, for the timeline.
TimelineSource PoolCore::Impl::timeline_source(std::uint64_t job, std::uint64_t index, std::uint32_t worker) {
  TimelineSource src{job, index, 0, 0, static_cast<int>(worker)};
  if (auto jt = jobs.find(job); jt != jobs.end()) {
    if (auto chunk = chunk_of(jt, index)) {
      src.chunk = chunk->first;
      src.queued_ns = chunk->queued_ns;
    }
  }
  return src;
}

// With mu held: a chunk's undelivered item will never run (the timeline's record).
void PoolCore::Impl::record_unrun(std::uint64_t job, const Chunk& c, std::uint64_t index, TaskOutcome why) {
  if (!cfg.timeline) return;
  std::int64_t now = now_ns();
  cfg.timeline->failed(TimelineSource{job, c.first, c.queued_ns, now, -1}, index, why, 0, now);
}

}  // namespace mproc::detail
