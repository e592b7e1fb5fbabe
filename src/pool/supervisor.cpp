// The supervisor of PoolCore::Impl (engine.hpp): starts workers (pipelined,
// with back-off after failures), watches their pidfds, charges a death to the
// item its worker had in hand (from its slot, wire.hpp), kills workers past the
// per-task timeout, and replaces them.
#include "engine.hpp"

#include "mproc/background_error.hpp"

#include <poll.h>
#include <sys/eventfd.h>

#include <cstdio>
#include <cstring>

#include "worker.hpp"

namespace mproc::detail {

namespace {

std::string describe_exit(int code) {
  if (code < 0) {
    const char* name = sigabbrev_np(-code);
    return "killed by signal " + std::to_string(-code) + (name ? std::string(" (SIG") + name + ")" : "");
  }
  return "exited with code " + std::to_string(code);
}

}  // namespace

// Starts workers for the slots `ids` at once: their start requests go to the
// forkserver (or the zygote) together, pipelined. The ones that started are in
// `workers` even when another failed (the first error is then thrown), so the
// caller's clean-up finds them.
void PoolCore::Impl::spawn_workers(std::span<const std::size_t> ids) {
  std::vector<Process> procs;
  for (std::size_t id : ids) {
    ProcessOptions o;
    o.name = "PoolWorker-" + std::to_string(id + 1);
    o.daemon = true;
    o.start_method = cfg.method;
    slots[id].phase.store(0, std::memory_order_relaxed);
    slots[id].job.store(0, std::memory_order_relaxed);
    Process p(o, pool_worker_main, tasks, results, table, static_cast<std::uint32_t>(id), cfg.initializer,
              static_cast<long long>(cfg.maxtasksperchild), static_cast<long long>(cfg.max_memory_mb), spin,
              cfg.timeline != nullptr, cfg.timeout.has_value());
    if (zygote) process_state(p).via = zygote;
    procs.push_back(std::move(p));
  }
  std::int64_t started = now_ns();
  std::exception_ptr error;
  try {
    start_all(procs);
  } catch (...) {
    error = std::current_exception();
  }
  for (std::size_t k = 0; k < ids.size(); ++k) {
    if (procs[k].pid() == 0) continue;  // did not start
    if (cfg.timeline) cfg.timeline->worker_started(static_cast<int>(ids[k]), procs[k].pid(), started);
    workers[ids[k]] = Worker{std::move(procs[k]), false};
  }
  if (error) std::rethrow_exception(error);
}

void PoolCore::Impl::wake_supervisor() const {
  std::uint64_t one = 1;
  [[maybe_unused]] auto r = ::write(wake_fd, &one, sizeof one);
}

void PoolCore::Impl::post_lost(std::uint32_t id, ResultKind kind, int exitcode, const std::string& what) {
  WorkerSlot& s = slots[id];
  auto phase = static_cast<SlotPhase>(s.phase.load(std::memory_order_acquire));
  if (phase == SlotPhase::idle) return;
  std::uint64_t begin = s.begin.load(), end = s.end.load();
  ResultHeader h{kind, phase, id, exitcode, s.job.load(), begin, end - begin, s.index.load(),
                 phase == SlotPhase::running ? s.started_ns.load() : 0, now_ns(), s.ticket.load()};
  Writer w;
  w.write(&h, sizeof h);
  dump(w, ExceptionInfo{kind == ResultKind::timeout ? "mproc::TaskTimeoutError" : "mproc::WorkerLostError", what, {}});
  // Through the result channel, so it arrives after anything the worker sent
  // before it died (the collector then knows what was already delivered).
  results.send(w, std::nullopt);
}

void PoolCore::Impl::supervisor_loop() {
  std::vector<pollfd> pfds;
  std::vector<std::size_t> ids;
  for (;;) {
    pfds.assign(1, pollfd{wake_fd, POLLIN, 0});
    ids.clear();
    int wait_ms = -1;
    {
      std::lock_guard lock(mu);
      if (stopping) return;
      for (std::size_t i = 0; i < workers.size(); ++i) {
        if (!workers[i]) continue;
        pfds.push_back(pollfd{workers[i]->proc.sentinel(), POLLIN, 0});
        ids.push_back(i);
      }
      if (cfg.timeout) {
        // Next deadline among running items.
        std::int64_t limit = cfg.timeout->count();
        std::int64_t now = now_ns();
        for (std::size_t i : ids) {
          if (slots[i].phase.load(std::memory_order_acquire) != static_cast<std::uint32_t>(SlotPhase::running)) continue;
          std::int64_t left = slots[i].started_ns.load() + limit - now;
          if (left <= 0 && !workers[i]->timed_out) {
            workers[i]->timed_out = true;
            workers[i]->proc.kill();
            left = 0;
          }
          int ms = static_cast<int>(std::max<std::int64_t>(left / 1'000'000 + 1, 1));
          wait_ms = wait_ms < 0 ? ms : std::min(wait_ms, ms);
        }
        if (wait_ms < 0) wait_ms = 100;  // a task may start any moment
      }
      if (int ms = refill_wait_ms_locked(); ms >= 0) wait_ms = wait_ms < 0 ? ms : std::min(wait_ms, ms);
    }
    int r = ::poll(pfds.data(), pfds.size(), wait_ms);
    if (r < 0 && errno != EINTR) return;
    if (pfds[0].revents & POLLIN) {
      std::uint64_t v;
      [[maybe_unused]] auto n = ::read(wake_fd, &v, sizeof v);
    }
    for (std::size_t k = 1; k < pfds.size(); ++k) {
      if (!(pfds[k].revents & POLLIN)) continue;
      std::size_t id = ids[k - 1];
      std::optional<Worker> w;
      {
        std::lock_guard lock(mu);
        w = std::move(workers[id]);
        workers[id].reset();
      }
      w->proc.join();
      // Reaped: free any channel lock it died holding now, instead of after the
      // channel's 100 ms slice (a stall of every other worker, or of this notice).
      try {
        tasks.release_dead_holders();
        results.release_dead_holders();
      } catch (const std::exception& e) {
        report_background_error("pool supervisor", e.what());
      }
      int code = w->proc.exitcode().value_or(255);
      std::string what = "worker " + w->proc.name() + " (pid " + std::to_string(w->proc.pid()) + ") " +
                         (w->timed_out ? "was killed: the task ran past the pool's timeout" : describe_exit(code) +
                                                                                               " while running this task");
      try {
        post_lost(static_cast<std::uint32_t>(id), w->timed_out ? ResultKind::timeout : ResultKind::lost, code, what);
      } catch (const std::exception& e) {
        report_background_error("pool supervisor", e.what());
      }
      w->proc.close();
    }
    refill();
  }
}

// With mu held: whether the pool still needs workers (for queued work or new).
bool PoolCore::Impl::need_workers_locked() const {
  return !stopping && (state == State::running || (state == State::closing && !jobs.empty()));
}

// With mu held: ms until the supervisor should try to fill empty slots, -1: never.
int PoolCore::Impl::refill_wait_ms_locked() const {
  if (!need_workers_locked() || std::all_of(workers.begin(), workers.end(), [](const auto& w) { return w.has_value(); })) {
    return -1;
  }
  if (work_arrived) return 0;
  std::int64_t left = next_start_ns - now_ns();
  return left <= 0 ? 0 : static_cast<int>(left / 1'000'000 + 1);
}

// Starts workers for the empty slots, if the pool needs them and the back-off
// after failed starts has passed. A pool that could not start a worker
// kStartAttempts times in a row and has none left fails all its pending work
// (WorkerLostError saying why) and then each new task after one more try;
// it keeps trying, backing off, and runs tasks again once a start succeeds.
void PoolCore::Impl::refill() {
  std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>> fail;
  std::string why;
  {
    std::lock_guard lock(mu);
    if (refill_wait_ms_locked() != 0) {
      workers_cv.notify_all();
      return;
    }
    work_arrived = false;
    std::vector<std::size_t> ids;
    for (std::size_t i = 0; i < workers.size(); ++i) {
      if (!workers[i]) ids.push_back(i);
    }
    try {
      spawn_workers(ids);
      if (start_failures >= kStartAttempts) report_background_error("pool supervisor", "workers start again");
      start_failures = 0;
    } catch (const std::exception& e) {
      ++start_failures;
      std::int64_t backoff = std::int64_t{10'000'000} << std::min(start_failures - 1, 6);
      next_start_ns = now_ns() + std::min<std::int64_t>(backoff, 500'000'000);
      bool none = std::none_of(workers.begin(), workers.end(), [](const auto& w) { return w.has_value(); });
      if (start_failures == 1) {
          report_background_error("pool supervisor", std::string("could not start a worker: ") + e.what() +
                                                         " (retrying, backing off)");
        }
      if (none && start_failures >= kStartAttempts) {
        why = "mproc: the pool could not start a worker process " + std::to_string(start_failures) +
              " times in a row and has none (last error: " + e.what() +
              "); its pending tasks fail. It keeps trying: tasks run again once a worker starts.";
        fail_pending_locked(fail);
      }
    }
    workers_cv.notify_all();
  }
  ExceptionInfo info{"mproc::WorkerLostError", why, {}};
  for (auto& [sink, index] : fail) sink->on_failure(index, Failure::worker_lost, info, 0, ItemTiming{});
}

void PoolCore::Impl::stop_threads() {
  {
    std::lock_guard lock(mu);
    if (stopping) return;
    stopping = true;
  }
  feed_cv.notify_all();
  wake_supervisor();
  ResultHeader h{ResultKind::wake, SlotPhase::idle, 0, 0, 0, 0, 0, 0, 0, 0};
  try {
    results.send(std::span<const std::byte>(reinterpret_cast<const std::byte*>(&h), sizeof h), {}, std::nullopt);
  } catch (...) {
  }
  if (feeder.joinable()) feeder.join();
  if (collector.joinable()) collector.join();
  if (supervisor.joinable()) supervisor.join();
}

}  // namespace mproc::detail
