// PoolCore (mproc/detail/pool_core.hpp): the engine's lifecycle and its public
// calls, over PoolCore::Impl (engine.hpp).
#include "engine.hpp"

#include <sys/eventfd.h>

#include <cstring>
#include <numeric>

namespace mproc::detail {

namespace {

// Spin before sleeping, where every spinner has a core (PoolCore::spin_ns): long
// enough to cover a trivial task's round trip and the caller's turnaround
// between two calls, so neither side pays a futex wake-up (~2-10 µs, far more on
// a loaded VM). The cost: up to this much CPU each time a thread goes idle.
constexpr std::int64_t kPoolSpinNs = 50'000;

}  // namespace

PoolCore::PoolCore(PoolConfig config) : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.cfg = std::move(config);
  ChannelOptions copt;
  ChannelOptions task_opt = copt;
  task_opt.max_items = I.cfg.max_queued;
  I.tasks = ChannelEnd::create_queue(task_opt);
  I.results = ChannelEnd::create_queue(copt);
  I.table = Segment::create(PoolTable::bytes(static_cast<std::size_t>(I.cfg.processes)), "mproc-pool");
  I.slots = PoolTable::slots(I.table);
  I.tickets = TicketTable(PoolTable::tickets(I.table));
  I.wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (I.wake_fd < 0) throw std::system_error(errno, std::generic_category(), "mproc: eventfd failed");
  I.workers.resize(static_cast<std::size_t>(I.cfg.processes));
  I.receiver->impl_.store(&I, std::memory_order_release);
  // Workers waiting for a task and callers waiting for a result spin long where
  // each has a core; the collector and the feeder keep the channels' short
  // spin (measured: their long spins cost pipelined throughput, imap with
  // chunksize 1, more than they save).
  if (cpu_count() >= I.cfg.processes + 2) I.spin = kPoolSpinNs;
  try {
    if (I.cfg.method == StartMethod::fork) I.zygote = make_zygote();
    // Workers first, then threads: with the fork start method the workers are
    // forked before this pool adds any thread to the process.
    std::vector<std::size_t> ids(I.workers.size());
    std::iota(ids.begin(), ids.end(), std::size_t{0});
    I.spawn_workers(ids);
  } catch (...) {
    for (auto& w : I.workers) {
      if (w) {
        w->proc.kill();
        w->proc.join();
      }
    }
    if (I.zygote) shutdown_zygote(*I.zygote);
    ::close(I.wake_fd);
    throw;
  }
  I.feeder = std::thread([&I] { I.feeder_loop(); });
  I.collector = std::thread([&I] { I.collector_loop(); });
  I.supervisor = std::thread([&I] { I.supervisor_loop(); });
}

PoolCore::~PoolCore() {
  // No waiter may receive through this pool from here on; wait for those inside.
  ResultReceiver& rr = *impl_->receiver;
  rr.impl_.store(nullptr, std::memory_order_seq_cst);
  while (rr.active_.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  terminate();
  join();
  if (impl_->zygote) shutdown_zygote(*impl_->zygote);
  ::close(impl_->wake_fd);
}

std::int64_t PoolCore::spin_ns() const { return impl_->spin; }
const std::shared_ptr<ResultReceiver>& PoolCore::receiver() const { return impl_->receiver; }

std::uint64_t PoolCore::open_job(std::shared_ptr<JobSink> sink) {
  Impl& I = *impl_;
  std::lock_guard lock(I.mu);
  if (I.state != Impl::State::running) throw UsageError("mproc: Pool is not running (closed or terminated)");
  std::uint64_t id = I.next_job++;
  I.jobs[id].sink = std::move(sink);
  return id;
}

void PoolCore::submit(std::uint64_t job, std::uint64_t first, ChunkMessage chunk) {
  Impl& I = *impl_;
  std::size_t n = chunk.items();
  if (n == 0) return;
  auto c = std::make_shared<Impl::Chunk>();
  c->job = job;
  c->first = first;
  c->delivered = ItemBits(n);
  c->left = n;
  if (I.cfg.timeline) c->queued_ns = now_ns();
  c->msg = std::move(chunk);
  ChunkHeader h{job, first, n};
  std::memcpy(c->msg.bytes.data(), &h, sizeof h);
  bool was_dispatched = false;
  // Swapped with the pool's (both vectors keep their capacity); what it held is
  // released once the lock is (leaving this scope).
  // Not while this thread is releasing already: a user's destructor run by the
  // release (a callback's captures) may submit again.
  thread_local Impl::Dead dead;
  thread_local bool releasing = false;
  struct Release {
    bool mine;
    ~Release() {
      if (!mine) return;
      releasing = true;
      dead.chunk_nodes.clear();
      releasing = false;
    }
  } release{!releasing};
  {
    std::lock_guard lock(I.mu);
    if (release.mine) I.take_dead(dead);
    auto jt = I.jobs.find(job);
    if (jt == I.jobs.end() || I.state == Impl::State::terminated) {
      throw CancelledError("mproc: the pool was terminated");  // ~Chunk closes its fds
    }
    Impl::Job& J = jt->second;
    J.small = !J.any_chunk && n == 1 && c->msg.fds.empty() && c->msg.bytes.size() <= 4096;
    J.any_chunk = true;
    // Registered before it is sent: a result can come back before send() returns.
    jt->second.outstanding += n;
    jt->second.chunks.emplace(first, c);
    if (I.start_failures >= Impl::kStartAttempts && !I.work_arrived) {
      I.work_arrived = true;  // no worker can start: the supervisor tries again now
      I.wake_supervisor();
    }
    if (!I.feed.empty() || I.stopping) {
      I.feed.push_back(Impl::Pending{c, first, first + n});
      I.feed_cv.notify_one();
      return;
    }
    // About to be sent: cancellable only by a ticket from here on.
    was_dispatched = jt->second.dispatched;
    h.ticket = I.take_ticket_locked(jt->second, *c, first, first + n);
    std::memcpy(c->msg.bytes.data(), &h, sizeof h);
  }
  // Fast path: straight into the task channel when it has room, saving the hop
  // through the feeder thread (a thread wake-up, several microseconds). Chunks may
  // overtake one the feeder is sending; results are placed by index, so order
  // does not matter.
  bool sent = false;
  try {
    sent = I.tasks.send(c->msg.bytes, c->msg.fds, no_wait());
  } catch (...) {
  }
  if (!sent) {
    std::lock_guard lock(I.mu);
    if (c->cancelled) return;  // cancel_job won the ticket meanwhile and failed it
    // It waits in the feed queue after all: its ticket's word is free again (no
    // record carries it), and the job is as cancellable as before.
    if (auto jt = I.jobs.find(job); jt != I.jobs.end()) {
      if (h.ticket != 0) {
        I.tickets.withdraw(h.ticket);
        if (jt->second.ticket == h.ticket) jt->second.ticket = 0;
        if (c->ticket == h.ticket) c->ticket = 0;
      }
      jt->second.dispatched = was_dispatched;
    }
    I.feed.push_back(Impl::Pending{c, first, first + n});
    I.feed_cv.notify_one();
  }
}

bool PoolCore::cancel_job(std::uint64_t job) {
  Impl& I = *impl_;
  std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>> fail;
  {
    std::lock_guard lock(I.mu);
    auto jt = I.jobs.find(job);
    if (jt == I.jobs.end() || !I.cancel_locked(jt, fail)) return false;
  }
  Impl::fail_cancelled(fail, "mproc: the task was cancelled before it started");
  return true;
}

std::size_t PoolCore::cancel_queued_jobs() {
  Impl& I = *impl_;
  std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>> fail;
  std::size_t n = 0;
  {
    std::lock_guard lock(I.mu);
    // Ids first: cancelling forgets jobs (and, for the last job of a closing
    // pool, appends stop entries to the feed queue).
    std::vector<std::uint64_t> ids;
    for (const auto& [id, j] : I.jobs) {
      if (j.sealed && !I.claimed_locked(j)) ids.push_back(id);
    }
    std::sort(ids.begin(), ids.end());  // oldest first, as they would have run
    for (std::uint64_t id : ids) {
      auto jt = I.jobs.find(id);
      if (jt != I.jobs.end() && I.cancel_locked(jt, fail)) ++n;
    }
  }
  Impl::fail_cancelled(fail, "mproc: the task was cancelled before it started");
  return n;
}

bool PoolCore::job_dispatched(std::uint64_t job) const {
  std::lock_guard lock(impl_->mu);
  auto jt = impl_->jobs.find(job);
  return jt != impl_->jobs.end() && impl_->claimed_locked(jt->second);
}

void PoolCore::seal_job(std::uint64_t job) {
  Impl& I = *impl_;
  std::lock_guard lock(I.mu);
  auto jt = I.jobs.find(job);
  if (jt == I.jobs.end()) return;
  jt->second.sealed = true;
  I.maybe_finish_job(jt);
}

void PoolCore::close() {
  Impl& I = *impl_;
  std::lock_guard lock(I.mu);
  if (I.state != Impl::State::running) return;
  I.state = Impl::State::closing;
  if (I.jobs.empty()) I.send_stops_locked();
}

void PoolCore::terminate() {
  Impl& I = *impl_;
  std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>> fail;
  {
    std::lock_guard lock(I.mu);
    if (I.state == Impl::State::terminated && I.stopping) return;
    I.state = Impl::State::terminated;
    I.collect_outstanding(fail);
  }
  I.stop_threads();
  // Python sends SIGTERM; a task has nothing to clean up that its process exit
  // does not, and SIGKILL cannot be ignored or caught by a stuck task.
  for (auto& w : I.workers) {
    if (w) w->proc.kill();
  }
  for (auto& w : I.workers) {
    if (w) {
      w->proc.join();
      w.reset();
    }
  }
  I.workers_cv.notify_all();
  Impl::fail_cancelled(fail, "mproc: the pool was terminated before this task finished");
}

void PoolCore::join() {
  Impl& I = *impl_;
  {
    std::unique_lock lock(I.mu);
    if (I.state == Impl::State::running) throw UsageError("mproc: join() needs close() or terminate() first");
    // After close(): the queued work finishes, the workers get their stop messages
    // and exit, and the supervisor, seeing no work left, does not replace them.
    I.workers_cv.wait(lock, [&] {
      if (I.state == Impl::State::terminated) return true;
      return I.jobs.empty() && std::none_of(I.workers.begin(), I.workers.end(), [](const auto& w) { return w.has_value(); });
    });
  }
  I.stop_threads();
  for (auto& w : I.workers) {
    if (w) {
      w->proc.kill();
      w->proc.join();
      w.reset();
    }
  }
}

bool PoolCore::accepting() const {
  std::lock_guard lock(impl_->mu);
  return impl_->state == Impl::State::running;
}

int PoolCore::processes() const { return impl_->cfg.processes; }

std::shared_ptr<TimelineRecorder> PoolCore::timeline() const { return impl_->cfg.timeline; }

std::vector<pid_t> PoolCore::worker_pids() const {
  std::lock_guard lock(impl_->mu);
  std::vector<pid_t> out;
  for (auto& w : impl_->workers) {
    if (w) out.push_back(w->proc.pid());
  }
  return out;
}

}  // namespace mproc::detail
