// The pool engine's parent side: PoolCore::Impl, the state its threads share,
// and the declarations of its parts. Each part is defined in its own file:
//
//   pool_core.cpp       - lifecycle and the public PoolCore calls (open, submit,
//                         cancel, seal, close, terminate, join);
//   jobs.cpp            - the job table: jobs, chunks, per-item delivery, settle,
//                         re-queue after a death, cancel, fail-all;
//   feeder.cpp          - the feeder thread: queued chunks into the task channel;
//   result_receiver.cpp - the collector thread and ResultReceiver: result
//                         messages settled in channel order, then delivered;
//   supervisor.cpp      - the supervisor thread: worker starts (with back-off),
//                         deaths and timeouts, replacements.
//
// The worker side is worker.cpp; what both sides share is wire.hpp, and the
// ticket protocol is TicketTable (ticket_table.hpp). Three threads, as in
// Python's Pool and for the same reasons. Workers are mproc::Processes started
// with the pool's start method; with the default (forkserver) a replacement is
// forked by the single-threaded server, so respawning from the supervisor
// thread never forks this multi-threaded process.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <unistd.h>

#include "mproc/detail/channel.hpp"
#include "mproc/detail/pool_core.hpp"
#include "mproc/detail/segment.hpp"
#include "mproc/detail/timeline_recorder.hpp"
#include "mproc/process.hpp"
#include "../os/internal.hpp"
#include "item_bits.hpp"
#include "ticket_table.hpp"
#include "wire.hpp"

namespace mproc::detail {

struct PoolCore::Impl {
  PoolConfig cfg;
  ChannelEnd tasks;
  ChannelEnd results;
  Segment table;
  WorkerSlot* slots = nullptr;
  TicketTable tickets;  // its words are in `table`
  std::uint64_t next_ticket = 1;

  struct Chunk {
    Chunk() = default;
    Chunk(const Chunk&) = delete;
    Chunk& operator=(const Chunk&) = delete;
    // The chunk owns the fds its message carries; they close with its last
    // reference, never sooner: the feeder may be sending them (a cancelled or
    // settled chunk can still be in its hands, or in the feed queue).
    ~Chunk() {
      for (int fd : msg.fds) ::close(fd);
    }
    std::uint64_t job;
    std::uint64_t first;
    ChunkMessage msg;
    ItemBits delivered;
    std::size_t left;
    std::map<std::uint64_t, int> deaths;  // per item: deaths charged to it (retries)
    bool cancelled = false;  // dropped by cancel_job: the feeder skips it
    std::int64_t queued_ns = 0;  // when submitted (recorded with a timeline only)
    std::uint64_t ticket = 0;    // the ticket of its first, whole send (0: none)
  };
  struct Job {
    std::shared_ptr<JobSink> sink;
    std::uint64_t outstanding = 0;  // submitted, not yet delivered
    bool sealed = false;
    bool dispatched = false;   // a send other than its first, whole one went out: no cancelling
    std::uint64_t ticket = 0;  // its one chunk went with this ticket (cancellable pools)

    std::map<std::uint64_t, std::shared_ptr<Chunk>> chunks;  // by first item
    // One small chunk (a single call): released on a submitting thread (dead_*).
    bool small = false;
    bool any_chunk = false;
  };
  struct Pending {  // a (sub)chunk waiting for the feeder
    std::shared_ptr<Chunk> chunk;
    std::uint64_t from = 0, to = 0;  // item range (absolute indices)
  };
  struct Worker {
    Process proc;
    bool timed_out = false;
  };

  mutable std::mutex mu;
  std::condition_variable feed_cv;
  std::condition_variable idle_cv;
  std::condition_variable workers_cv;  // a worker slot was emptied
  enum class State { running, closing, terminated } state = State::running;
  bool stopping = false;  // threads must exit
  bool stop_sent = false;
  int init_failures = 0;
  // Failed worker starts in a row, when to try next, and whether new work came
  // meanwhile (then the supervisor tries at once). See refill().
  static constexpr int kStartAttempts = 6;
  int start_failures = 0;
  std::int64_t next_start_ns = 0;
  bool work_arrived = false;
  std::unordered_map<std::uint64_t, Job> jobs;
  std::uint64_t next_job = 1;
  std::deque<Pending> feed;
  std::vector<std::optional<Worker>> workers;
  int wake_fd = -1;  // eventfd: wakes the supervisor
  // With the fork start method: a fork of this process taken when the pool was
  // built (before its threads existed), which forks every worker, the first ones
  // and the replacements alike. A worker thus never comes from fork() in this
  // multi-threaded process, and every worker sees memory as it was at construction.
  std::shared_ptr<ForkServerClient> zygote;
  std::thread feeder, collector, supervisor;
  // How long workers and callers spin before sleeping (spin_ns()).
  std::int64_t spin = kDefaultSpinNs;
  // Held from taking result messages off the channel until they are settled, by
  // the result thread or a waiter receiving its own results (ResultReceiver), so
  // that results are settled in the order they were sent (a lost worker's message
  // comes after the batches it sent before it died).
  std::mutex take_mu;
  // Finished small jobs' chunks, released by the next submit instead of by the
  // result thread: glibc's malloc serves a thread's allocations from its own
  // cache only when that thread also frees them. Freed by the result thread, the
  // ~8 allocations of every submit went through the shared arena (its lock and
  // free lists were a quarter of the submitting thread's time in a profile of many
  // executor submits). At most kMaxDead wait; bigger or fd-carrying chunks are
  // released at once. Jobs are not kept: a job holds its sink, and through it the
  // result, which must go when its user drops it.
  static constexpr std::size_t kMaxDead = 1024;
  std::vector<std::map<std::uint64_t, std::shared_ptr<Chunk>>::node_type> dead_chunks;
  std::shared_ptr<ResultReceiver> receiver = std::make_shared<ResultReceiver>();

  // -- workers --

  // Starts workers for the slots `ids` at once: their start requests go to the
  // forkserver (or the zygote) together, pipelined. The ones that started are in
  // `workers` even when another failed (the first error is then thrown), so the
  // caller's clean-up finds them.
  void spawn_workers(std::span<const std::size_t> ids);


  void wake_supervisor() const;

  // -- chunks --

  // With mu held, for a chunk about to go to the task channel: the send's ticket
  // (every send of a cancellable pool's, while its word is free), or 0. Only the
  // first, whole send of a job's one chunk keeps the job cancellable; any other
  // send marks it dispatched (jobs.cpp).
  std::uint64_t take_ticket_locked(Job& j, Chunk& c, std::uint64_t from, std::uint64_t to);
  // With mu held: whether a worker has (or may have) taken job j's chunk.
  bool claimed_locked(const Job& j) const;

  // Builds the message for items [from, to) of a chunk (the whole chunk, or what
  // is left of it after a lost worker), with the header patched.
  std::vector<std::byte> message_for(const Chunk& c, std::uint64_t from, std::uint64_t to, std::uint64_t ticket) const;

  // With mu held: the chunk of job `job` that contains item `index`.
  std::shared_ptr<Chunk> chunk_of(std::unordered_map<std::uint64_t, Job>::iterator jt, std::uint64_t index);

  // With mu held: items [first, first + count) of job `job` have outcomes. Marks
  // them delivered; fresh[k] says whether item first + k was new (re-runs after a
  // lost worker can deliver an item twice). Returns the job's sink, or null if
  // the job is gone (terminated) — then nothing is to be delivered.
  // `all_fresh` is set when every item was new; `fresh` is then filled only with
  // a timeline (which reads it).
  std::shared_ptr<JobSink> settle(std::uint64_t job, std::uint64_t first, std::uint64_t count, std::vector<std::uint8_t>& fresh, bool& all_fresh);

  // With mu held, from a submitting thread: takes the finished small jobs'
  // chunks kept for it to release (`out`, destroyed once mu is released).
  struct Dead {
    std::vector<std::map<std::uint64_t, std::shared_ptr<Chunk>>::node_type> chunk_nodes;
  };
  void take_dead(Dead& out);

  void maybe_finish_job(std::unordered_map<std::uint64_t, Job>::iterator jt);

  void send_stops_locked();

  // -- threads --

  void feeder_loop();

  // Without mu: items [from, to) of chunk c fail (their message could not be
  // sent), each through its job's sink, unless delivered already.
  void fail_range(const Chunk& c, std::uint64_t from, std::uint64_t to, const std::string& why);

  // One result message between its two steps: settled (under take_mu, in channel
  // order) and then delivered to its job's sink (without any lock: user callbacks
  // run there). The message's bytes stay where they were received.
  struct Settled {
    ResultHeader h{};
    std::span<const std::byte> rest;  // after the header
    std::shared_ptr<JobSink> sink;    // null: nothing to deliver
    TimelineSource src{};
    std::vector<std::uint8_t> fresh;
    bool all_fresh = false;    // fresh is then filled only with a timeline
    std::size_t statuses = 0;  // status bytes after the payload (0 for batch_ok)
    std::size_t times = 0;     // batch_timed: bytes of item times and their count
    ExceptionInfo info;        // lost, timeout
    bool init_failed = false;
  };

  void collector_loop();

  // Step one of a result message, under take_mu: marks its items delivered
  // (or re-queues a lost worker's) and finds the sink to tell.
  void settle_message(std::span<const std::byte> m, Settled& s);

  // Step two, without locks: tells the sink (and so the user's callbacks).
  void deliver(Settled& s);

  // ResultReceiver::receive on the waiting thread (see there).
  bool receive_for(std::uint64_t job, bool (*stop)(void*), void* ctx, std::int64_t spin_for);

  // With mu held: where item `index` of `job` came from, for the timeline.
  TimelineSource timeline_source(std::uint64_t job, std::uint64_t index, std::uint32_t worker);

  // A result batch for the timeline, with the per-item times the worker sent
  // (kept encoded: decoding waits until someone reads the timeline).
  void record_batch(TimelineSource src, const ResultHeader& h, const std::uint8_t* status, const std::uint8_t* fresh, std::span<const std::byte> times);

  // With mu held: a chunk's undelivered item will never run (the timeline's record).
  void record_unrun(std::uint64_t job, const Chunk& c, std::uint64_t index, TaskOutcome why);

  // With mu held. A worker died holding items [h.first, h.first + h.count) of
  // job h.job, in phase h.phase with item h.index in hand. Every item of that
  // range not yet delivered goes back to the feeder, except the one in hand
  // (any phase past claimed: decoding, running, sending), which is charged with
  // the death: it fails, or is re-run while its own retries last. Returns the
  // sink to tell, if the item failed.
  std::shared_ptr<JobSink> on_lost(const ResultHeader& h);

  void handle_init_failure(Reader& payload);

  // With mu held: cancels job `jt` if no chunk of it has left the feed queue (see
  // PoolCore::cancel_job); its undelivered items go to `out` to be failed.
  bool cancel_locked(std::unordered_map<std::uint64_t, Job>::iterator jt, std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>>& out);

  // Without mu: tells each sink that its item will never run.
  static void fail_cancelled(const std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>>& items, const char* why);

  // With mu held: every item submitted and not settled, settled now; jobs cleared.
  void collect_outstanding(std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>>& out, TaskOutcome why = TaskOutcome::cancelled);

  void post_lost(std::uint32_t id, ResultKind kind, int exitcode, const std::string& what);

  void supervisor_loop();

  // With mu held: whether the pool still needs workers (for queued work or new).
  bool need_workers_locked() const;
  // With mu held: ms until the supervisor should try to fill empty slots, -1: never.
  int refill_wait_ms_locked() const;

  // Starts workers for the empty slots, if the pool needs them and the back-off
  // after failed starts has passed. A pool that could not start a worker
  // kStartAttempts times in a row and has none left fails all its pending work
  // (WorkerLostError saying why) and then each new task after one more try;
  // it keeps trying, backing off, and runs tasks again once a start succeeds.
  void refill();

  // With mu held: every item submitted and not delivered fails (to `out`); the
  // jobs stay (an open job may get more chunks), their chunks are dropped.
  void fail_pending_locked(std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>>& out);

  void stop_threads();
};

}  // namespace mproc::detail
