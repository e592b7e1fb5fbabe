// src/mpi/link.cpp — the root's side: one MPI thread per communicator (the
// link), shared by every pool over it, and the pool backend (RankBackend)
// whose chunks it sends and whose outcomes it delivers. docs/cluster.md.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <unistd.h>

#include "internal.hpp"
#include "link.hpp"
#include "mproc/error.hpp"
#include "mproc/mpi.hpp"

namespace mproc::mpi::detail {

using mproc::detail::ChunkMessage;
using mproc::detail::ExceptionInfo;
using mproc::detail::Failure;
using mproc::detail::ItemTiming;
using mproc::detail::JobSink;

// ---- RankBackend's state: everything under the link's mutex --------------------------------

struct RankBackend::Impl {
  struct Job {
    std::shared_ptr<JobSink> sink;
    bool sealed = false;
    bool dispatched = false;
    std::uint64_t submitted = 0;
    std::uint64_t delivered = 0;
    std::vector<bool> done;  // by item index: delivered (terminate fails the rest, once)
  };
  struct Queued {
    std::uint64_t job;
    std::uint64_t first;
    ChunkMessage msg;
  };
  struct Rank {
    int rank = -1;
    int workers = 0;
    pid_t pid = 0;
    std::size_t in_flight = 0;  // chunks sent, not yet ended
    int base = 0;               // first global worker number of this rank (timeline, TaskRecord)
    bool opened = false;
    bool failed = false;
    bool closed = false;
  };
  enum class State { opening, running, closing, close_sent, terminated };

  std::uint64_t id = 0;
  State state = State::opening;
  std::uint64_t next_job = 0;
  std::map<std::uint64_t, Job> jobs;
  std::deque<Queued> queue;
  std::vector<Rank> ranks;
  std::condition_variable changed;  // opened, closed
  std::string open_error;

  Rank* rank_of(int r) {
    for (auto& k : ranks)
      if (k.rank == r) return &k;
    return nullptr;
  }
  bool all_closed() const {
    return std::all_of(ranks.begin(), ranks.end(), [](const Rank& k) { return k.closed; });
  }
  bool work_left() const { return !queue.empty() || !jobs.empty(); }
  // Marks items [first, first + count) delivered; fills `fresh` (1: deliver it).
  std::uint64_t mark(Job& j, std::uint64_t first, std::uint64_t count, const std::uint8_t* sent_fresh,
                     std::vector<std::uint8_t>& fresh) {
    fresh.assign(count, 0);
    std::uint64_t n = 0;
    for (std::uint64_t k = 0; k < count; ++k) {
      std::uint64_t i = first + k;
      if (!mproc::detail::fresh_at(sent_fresh, k) || i >= j.done.size() || j.done[i]) continue;
      j.done[i] = true;
      fresh[k] = 1;
      ++n;
    }
    j.delivered += n;
    return n;
  }
  void forget_if_done(std::uint64_t job) {
    auto it = jobs.find(job);
    if (it != jobs.end() && it->second.sealed && it->second.delivered == it->second.submitted) jobs.erase(it);
  }
};

// ---- the link -----------------------------------------------------------------------------

Link::Link(MPI_Comm comm, int root, bool owns_comm) : comm_(comm), root_(root), owns_comm_(owns_comm), sender_(comm) {
  int n = 0;
  MPI_Comm_size(comm_, &n);
  for (int r = 0; r < n; ++r)
    if (r != root_) servers_.push_back(r);
  thread_ = std::thread([this] { run(); });
}

Link::~Link() { shutdown(); }

void Link::shutdown() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    for (int r : servers_) control_.push_back({r, kShutdown, {}});
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
  if (owns_comm_) MPI_Comm_free(&comm_);
  // A pool still registered (one held by a global, destroyed after finalize() ran
  // at exit) will hear from no rank again: its ranks count as closed, so that its
  // destructor's terminate() and join() return instead of waiting for ever.
  std::lock_guard lock(mu_);
  for (auto& [id, p] : pools_) {
    for (auto& k : p->ranks) k.closed = true;
    p->changed.notify_all();
  }
}

void Link::post(int dest, int tag, std::vector<std::byte> bytes) {
  {
    std::lock_guard lock(mu_);
    control_.push_back({dest, tag, std::move(bytes)});
  }
  wake_.notify_one();
}

std::uint64_t Link::add(RankBackend::Impl* pool) {
  std::lock_guard lock(mu_);
  if (stopping_) throw UsageError("mproc::mpi: the cluster was finalized; create pools before mproc::mpi::finalize()");
  pool->id = ++next_pool_;
  pools_[pool->id] = pool;
  return pool->id;
}

void Link::remove(std::uint64_t id) {
  std::lock_guard lock(mu_);
  pools_.erase(id);
}

void Link::run() {
  MPI_Status st;
  std::vector<std::byte> buf;
  Backoff backoff;
  for (;;) {
    bool busy = false;
    while (try_recv(comm_, MPI_ANY_SOURCE, st, buf)) {
      busy = true;
      dispatch(st.MPI_SOURCE, st.MPI_TAG, buf);
    }
    std::vector<Outgoing> outs;
    bool done = false;
    {
      std::lock_guard lock(mu_);
      for (auto& o : control_) outs.push_back(std::move(o));
      control_.clear();
      for (auto& [id, p] : pools_) schedule(*p, outs);
      done = stopping_;
    }
    for (auto& o : outs) sender_.post(o.dest, o.tag, std::move(o.bytes));
    busy |= !outs.empty();
    busy |= sender_.progress();
    if (done) {
      // kShutdown is out: wait until it has left, so the serving ranks get it.
      sender_.drain();
      return;
    }
    if (busy) {
      backoff.reset();
      continue;
    }
    std::unique_lock lock(mu_);
    if (control_.empty() && !stopping_) backoff.wait(lock, wake_);
  }
}

// Chunks to ranks with room: at most two chunks per local worker in flight on
// a rank, the least loaded rank first. Under mu_.
void Link::schedule(RankBackend::Impl& p, std::vector<Outgoing>& outs) {
  using State = RankBackend::Impl::State;
  if (p.state == State::running || p.state == State::closing) {
    while (!p.queue.empty()) {
      RankBackend::Impl::Rank* best = nullptr;
      for (auto& k : p.ranks) {
        if (!k.opened || k.in_flight >= 2 * static_cast<std::size_t>(k.workers)) continue;
        if (!best || k.in_flight * best->workers < best->in_flight * k.workers) best = &k;
      }
      if (!best) break;
      auto q = std::move(p.queue.front());
      p.queue.pop_front();
      ++best->in_flight;
      auto j = p.jobs.find(q.job);
      if (j != p.jobs.end()) j->second.dispatched = true;
      ChunkHead h{p.id, q.job, q.first, q.msg.prefix, q.msg.stride, q.msg.stride ? 0 : q.msg.offsets.size()};
      Writer w;
      w.reserve(sizeof h + h.offsets * sizeof(std::size_t) + q.msg.bytes.size());
      put_head(w, h);
      if (h.offsets) w.write(q.msg.offsets.data(), h.offsets * sizeof(std::size_t));
      w.write(q.msg.bytes.data(), q.msg.bytes.size());
      outs.push_back({best->rank, kChunk, std::move(w).take_bytes()});
    }
  }
  if (p.state == State::closing && !p.work_left()) {
    for (auto& k : p.ranks)
      if (k.opened && !k.closed) outs.push_back({k.rank, kClose, pool_head(p.id)});
    p.state = State::close_sent;
  }
}

std::vector<std::byte> Link::pool_head(std::uint64_t id) {
  Writer w;
  put_head(w, PoolHead{id});
  return std::move(w).take_bytes();
}

void Link::dispatch(int src, int tag, const std::vector<std::byte>& buf) {
  Reader r(buf);
  switch (tag) {
    case kOpened:
    case kOpenFailed:
    case kClosed: {
      std::uint64_t pool;
      std::memcpy(&pool, buf.data(), sizeof pool);
      std::lock_guard lock(mu_);
      auto it = pools_.find(pool);
      if (it == pools_.end()) return;
      RankBackend::Impl& p = *it->second;
      auto* k = p.rank_of(src);
      if (!k) return;
      if (tag == kOpened) {
        auto h = get_head<OpenedHead>(r);
        k->opened = true;
        k->workers = h.workers;
        k->pid = h.pid;
      } else if (tag == kOpenFailed) {
        (void)get_head<PoolHead>(r);
        auto info = load<ExceptionInfo>(r);
        k->failed = true;
        k->closed = true;
        if (p.open_error.empty()) p.open_error = "rank " + std::to_string(src) + ": " + info.message;
      } else {
        k->closed = true;
      }
      p.changed.notify_all();
      return;
    }
    case kBatch: {
      auto h = get_head<BatchHead>(r);
      const std::uint8_t* status = nullptr;
      const std::uint8_t* sent_fresh = nullptr;
      if (h.has_status) status = reinterpret_cast<const std::uint8_t*>(r.take(h.count));
      if (h.has_fresh) sent_fresh = reinterpret_cast<const std::uint8_t*>(r.take(h.count));
      std::vector<std::uint8_t> fresh;
      ItemTiming t{h.worker, h.start_ns, h.end_ns};
      auto sink = settle(src, h.pool, h.job, h.chunk_done, h.first, h.count, sent_fresh, fresh, t);
      if (!sink) return;
      if (std::none_of(fresh.begin(), fresh.end(), [](std::uint8_t f) { return f != 0; })) return;  // all re-runs
      bool all = std::all_of(fresh.begin(), fresh.end(), [](std::uint8_t f) { return f != 0; });
      Reader payload(std::span<const std::byte>(buf).subspan(buf.size() - r.remaining()));
      sink->on_batch(h.first, h.count, status, all ? nullptr : fresh.data(), payload, t);
      return;
    }
    case kFailure: {
      auto h = get_head<FailureHead>(r);
      auto info = load<ExceptionInfo>(r);
      std::vector<std::uint8_t> fresh;
      ItemTiming t{h.worker, h.start_ns, h.end_ns};
      auto sink = settle(src, h.pool, h.job, h.chunk_done, h.index, 1, nullptr, fresh, t);
      if (!sink || !fresh[0]) return;
      sink->on_failure(h.index, static_cast<Failure>(h.kind), info, h.exitcode, t);
      return;
    }
    default:
      throw std::runtime_error("mproc::mpi: the root got a message with unknown tag " + std::to_string(tag) +
                               " from rank " + std::to_string(src));
  }
}

// Under mu_, for a batch or failure from `src`: frees the rank's room when the
// message ends a chunk, numbers the worker globally, marks the items delivered
// (`fresh`: 1 for those to deliver) and returns the job's sink; null when the
// pool or job is gone (terminated, cancelled: the message is dropped).
std::shared_ptr<JobSink> Link::settle(int src, std::uint64_t pool, std::uint64_t job, bool chunk_done,
                                      std::uint64_t first, std::uint64_t count, const std::uint8_t* sent_fresh,
                                      std::vector<std::uint8_t>& fresh, ItemTiming& t) {
  std::lock_guard lock(mu_);
  auto it = pools_.find(pool);
  if (it == pools_.end()) return nullptr;
  RankBackend::Impl& p = *it->second;
  if (auto* k = p.rank_of(src)) {
    if (chunk_done && k->in_flight) --k->in_flight;  // the rank has room again: schedule() sees it next
    t.worker += static_cast<std::uint32_t>(k->base);
  }
  if (p.state == RankBackend::Impl::State::terminated) return nullptr;
  auto j = p.jobs.find(job);
  if (j == p.jobs.end()) return nullptr;
  p.mark(j->second, first, count, sent_fresh, fresh);
  auto sink = j->second.sink;
  p.forget_if_done(job);
  return sink;
}

// ---- RankBackend --------------------------------------------------------------------------

RankBackend::RankBackend(std::shared_ptr<Link> link, const PoolOptions& options, std::vector<std::byte> initializer)
    : link_(std::move(link)), impl_(std::make_unique<Impl>()) {
  if (options.processes < 0) {
    throw UsageError("mproc::mpi::Pool needs processes >= 1 per rank (or 0 for the rank's share of its node's cores), got " +
                     std::to_string(options.processes));
  }
  if (options.maxtasksperchild < 0) throw UsageError("mproc: maxtasksperchild must be >= 1 (or 0 for no limit)");
  if (options.timeout && *options.timeout <= std::chrono::nanoseconds::zero()) {
    throw UsageError("mproc: the per-task timeout must be positive");
  }
  if (options.retries < 0) throw UsageError("mproc: retries must be >= 0");
  if (options.max_memory_mb < 0) throw UsageError("mproc: max_memory_mb must be >= 0 (0: no limit)");
  if (options.timeline) {
    throw UsageError("mproc::mpi::Pool: the timeline is not available across ranks yet (docs/cluster.md, \"Status\")");
  }
  StartMethod method = options.start_method.value_or(StartMethod::forkserver);
  if (method == StartMethod::fork) {
    throw UsageError("mproc::mpi::Pool: the fork start method is not available on MPI ranks (fork after MPI_Init "
                     "copies MPI's state into the worker); use forkserver (the default) or spawn");
  }
  if (link_->servers().empty()) {
    throw UsageError("mproc::mpi::Pool needs at least one serving rank: run the program under mpirun -np N with "
                     "N >= 2 (one rank runs main, the others serve tasks)");
  }
  Impl& p = *impl_;
  int base = 0;
  for (int r : link_->servers()) p.ranks.push_back({.rank = r});
  std::uint64_t id = link_->add(impl_.get());
  OpenHead h{id,
             options.processes,
             static_cast<std::int32_t>(method),
             options.retries,
             static_cast<std::uint64_t>(options.maxtasksperchild),
             static_cast<std::uint64_t>(options.max_memory_mb),
             options.timeout ? options.timeout->count() : -1};
  for (int r : link_->servers()) {
    Writer w;
    put_head(w, h);
    w.write(initializer.data(), initializer.size());
    link_->post(r, kOpen, std::move(w).take_bytes());
  }
  std::unique_lock lock(link_->mu_);
  p.changed.wait(lock, [&] {
    return std::all_of(p.ranks.begin(), p.ranks.end(), [](const Impl::Rank& k) { return k.opened || k.failed; });
  });
  for (auto& k : p.ranks) {
    k.base = base;
    base += k.workers;
  }
  if (!p.open_error.empty()) {
    std::string error = p.open_error;
    lock.unlock();
    terminate();
    join();
    link_->remove(id);
    throw StartError("mproc::mpi::Pool could not start the workers of every rank: " + error);
  }
  p.state = Impl::State::running;
}

RankBackend::~RankBackend() {
  try {
    terminate();
    join();
  } catch (...) {
  }
  link_->remove(impl_->id);
}

std::uint64_t RankBackend::open_job(std::shared_ptr<JobSink> sink) {
  std::lock_guard lock(link_->mu_);
  Impl& p = *impl_;
  if (p.state != Impl::State::running) throw UsageError("mproc: Pool is not running (closed or terminated)");
  std::uint64_t id = ++p.next_job;
  p.jobs[id].sink = std::move(sink);
  return id;
}

void RankBackend::submit(std::uint64_t job, std::uint64_t first, ChunkMessage chunk) {
  if (!chunk.fds.empty()) {
    for (int fd : chunk.fds) ::close(fd);
    throw UsageError("mproc::mpi::Pool: a task's arguments carry a file descriptor (a SharedArray, SharedMemory, "
                     "Queue, Pipe, Lock, Value or other handle), which cannot reach another MPI rank; send the data "
                     "itself (a std::vector) instead");
  }
  const std::uint64_t n = chunk.items();
  if (n == 0) return;
  {
    std::lock_guard lock(link_->mu_);
    Impl& p = *impl_;
    // PoolBackend's contract: CancelledError once terminated (a lazy map's refill
    // racing terminate() raises it in the iteration).
    if (p.state == Impl::State::terminated) throw CancelledError("mproc: the pool was terminated");
    auto j = p.jobs.find(job);
    if (j == p.jobs.end()) throw UsageError("mproc::mpi: submit to a job that is not open");
    j->second.submitted += n;
    if (j->second.done.size() < first + n) j->second.done.resize(first + n, false);
    p.queue.push_back({job, first, std::move(chunk)});
  }
  link_->wake();
}

void RankBackend::seal_job(std::uint64_t job) {
  std::lock_guard lock(link_->mu_);
  auto j = impl_->jobs.find(job);
  if (j == impl_->jobs.end()) return;
  j->second.sealed = true;
  impl_->forget_if_done(job);
}

namespace {
struct Cancelled {
  std::shared_ptr<JobSink> sink;
  std::vector<std::uint64_t> items;
};
ExceptionInfo cancelled_info(const char* why) { return ExceptionInfo{"mproc::CancelledError", why, ""}; }
void deliver(std::vector<Cancelled>& cancelled, Failure kind, const char* why) {
  ExceptionInfo info = cancelled_info(why);
  for (auto& c : cancelled)
    for (std::uint64_t i : c.items) c.sink->on_failure(i, kind, info, 0, ItemTiming{});
}
// Takes job `it`'s undelivered items out (marking them delivered).
Cancelled take_undelivered(RankBackend::Impl::Job& j) {
  Cancelled c{j.sink, {}};
  for (std::uint64_t i = 0; i < j.done.size(); ++i)
    if (!j.done[i]) {
      j.done[i] = true;
      c.items.push_back(i);
    }
  j.delivered = j.submitted;
  return c;
}
}  // namespace

bool RankBackend::cancel_job(std::uint64_t job) {
  std::vector<Cancelled> cancelled;
  {
    std::lock_guard lock(link_->mu_);
    Impl& p = *impl_;
    auto j = p.jobs.find(job);
    if (j == p.jobs.end() || !j->second.sealed || j->second.dispatched) return false;
    std::erase_if(p.queue, [&](const Impl::Queued& q) { return q.job == job; });
    cancelled.push_back(take_undelivered(j->second));
    p.jobs.erase(j);
  }
  deliver(cancelled, Failure::cancelled, "the call was cancelled");
  return true;
}

std::size_t RankBackend::cancel_queued_jobs() {
  std::vector<std::uint64_t> ids;
  {
    std::lock_guard lock(link_->mu_);
    for (auto& [id, j] : impl_->jobs)
      if (j.sealed && !j.dispatched) ids.push_back(id);
  }
  std::size_t n = 0;
  for (auto id : ids) n += cancel_job(id) ? 1 : 0;
  return n;
}

bool RankBackend::job_dispatched(std::uint64_t job) const {
  std::lock_guard lock(link_->mu_);
  auto j = impl_->jobs.find(job);
  return j != impl_->jobs.end() && j->second.dispatched;
}

void RankBackend::close() {
  {
    std::lock_guard lock(link_->mu_);
    if (impl_->state == Impl::State::running) impl_->state = Impl::State::closing;
  }
  link_->wake();
}

void RankBackend::terminate() {
  std::vector<Cancelled> cancelled;
  {
    std::lock_guard lock(link_->mu_);
    Impl& p = *impl_;
    if (p.state == Impl::State::terminated) return;
    p.state = Impl::State::terminated;
    for (auto& [id, j] : p.jobs) cancelled.push_back(take_undelivered(j));
    p.jobs.clear();
    p.queue.clear();
    for (auto& k : p.ranks)
      if (k.opened && !k.closed) link_->control_.push_back({k.rank, kTerminate, Link::pool_head(p.id)});
  }
  link_->wake();
  deliver(cancelled, Failure::cancelled, "the pool was terminated");
}

void RankBackend::join() {
  std::unique_lock lock(link_->mu_);
  Impl& p = *impl_;
  if (p.state == Impl::State::running || p.state == Impl::State::opening) {
    throw UsageError("mproc: join() needs close() or terminate() first");
  }
  p.changed.wait(lock, [&] { return p.all_closed(); });
}

bool RankBackend::accepting() const {
  std::lock_guard lock(link_->mu_);
  return impl_->state == Impl::State::running;
}

int RankBackend::processes() const {
  std::lock_guard lock(link_->mu_);
  int n = 0;
  for (auto& k : impl_->ranks) n += k.workers;
  return n;
}

std::vector<int> RankBackend::ranks() const {
  std::vector<int> v;
  std::lock_guard lock(link_->mu_);
  for (auto& k : impl_->ranks) v.push_back(k.rank);
  return v;
}

std::vector<pid_t> RankBackend::rank_pids() const {
  std::vector<pid_t> v;
  std::lock_guard lock(link_->mu_);
  for (auto& k : impl_->ranks) v.push_back(k.pid);
  return v;
}

}  // namespace mproc::mpi::detail
