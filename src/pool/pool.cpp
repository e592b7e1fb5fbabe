// The pool engine (see mproc/detail/pool_core.hpp and docs/pool.md).
//
// Parent side, three threads (as in Python's Pool, for the same reasons):
//   feeder     — moves queued chunks into the task channel (which may be full);
//   collector  — takes results off the result channel and hands them to jobs;
//   supervisor — watches worker pidfds: attributes a death to the item the worker
//                was running (from its slot in the shared worker table), kills
//                workers that overrun the per-task timeout, replaces workers.
// Workers are mproc::Processes started with the pool's start method. With the
// default (forkserver) a replacement is forked by the single-threaded server, so
// respawning from the supervisor thread never forks this multi-threaded process.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <csignal>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <numeric>
#include <thread>
#include <unordered_map>

#include "mproc/detail/channel.hpp"
#include "mproc/detail/futex.hpp"
#include "mproc/detail/segment.hpp"
#include "mproc/detail/timeline_recorder.hpp"
#include "mproc/pool.hpp"
#include "../os/internal.hpp"

namespace mproc {

/// Pool workers receive their channels as Process arguments.
template <>
struct codec<detail::ChannelEnd> {
  static void encode(Writer& w, const detail::ChannelEnd& c) { c.encode(w); }
  static detail::ChannelEnd decode(Reader& r) { return detail::ChannelEnd::decode(r); }
};

namespace detail {
namespace {

using clock = std::chrono::steady_clock;

// Spin before sleeping, where every spinner has a core (PoolCore::spin_ns): long
// enough to cover a trivial task's round trip and the caller's turnaround
// between two calls, so neither side pays a futex wake-up (~2-10 µs, far more on
// a loaded VM). The cost: up to this much CPU each time a thread goes idle.
constexpr std::int64_t kPoolSpinNs = 50'000;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now().time_since_epoch()).count();
}

// One per worker, in shared memory: what the worker holds right now. Written
// only by the worker, read by the supervisor after the worker died or to check
// timeouts. Relaxed/acquire-release is enough: the supervisor reads a dead
// worker's slot after reaping it (the reap orders everything the worker wrote),
// and a live worker's slot only for a timeout, where a stale value costs at
// most one extra check.
//
// The phase is the worker's half of a task's state machine (docs/pool.md, "A
// task's life"): a death in any phase but idle and claimed is charged to the
// item in `index`, whatever the item was doing (its argument being decoded, its
// body running, its result being encoded or sent): one event, one rule.
//   claimed  - the chunk's record may still be in the channel (the receive): a
//              death re-queues the chunk, charging nothing (no task code ran);
//   decoding - `index` is the next item: its argument (or the chunk's callable)
//              is being decoded;
//   running  - `index` runs (started_ns: since when, for the timeout);
//   sending  - a batch of results ending with `index` is being sent.
enum class SlotPhase : std::uint32_t { idle = 0, claimed = 1, decoding = 2, running = 3, sending = 4 };
struct alignas(64) WorkerSlot {
  std::atomic<std::uint64_t> job;
  std::atomic<std::uint64_t> begin;  // the items held: [begin, end)
  std::atomic<std::uint64_t> end;
  std::atomic<std::uint64_t> index;  // the item in hand (phases decoding, running, sending)
  std::atomic<std::int64_t> started_ns;
  std::atomic<std::uint32_t> phase;
};

// Tickets (PoolConfig::cancellable): after the worker slots in the same shared
// table, kTickets words. A chunk sent with ticket t owns word t % kTickets,
// holding (t << 2) | state. The worker that receives the chunk flips queued ->
// claimed, cancel_job flips queued -> cancelled; one compare-and-swap each, so
// exactly one wins. A word is reused only once it is no longer `queued` (its
// chunk was claimed, or cancelled and will be dropped), so a worker whose swap
// fails knows its chunk was cancelled.
constexpr std::uint64_t kTickets = 4096;
// The worker claims a chunk from its header alone (ChannelEnd::recv's claim step).
static_assert(sizeof(ChunkHeader) <= kClaimPrefixBytes, "a chunk's header must fit in the channel's claim prefix");
// reclaimed: a worker died inside the receive after claiming, and the record came
// back to another worker, which took it over (see pool_worker_main and on_lost).
enum TicketState : std::uint64_t { ticket_reclaimed = 0, ticket_queued = 1, ticket_claimed = 2, ticket_cancelled = 3 };
std::atomic<std::uint64_t>* ticket_table(const Segment& table) {
  return reinterpret_cast<std::atomic<std::uint64_t>*>(table.data() + table.size()) - kTickets;
}

enum class ResultKind : std::uint8_t {
  batch = 1,
  batch_ok = 2,
  lost = 3,
  timeout = 4,
  wake = 5,
  init_failed = 6,
  batch_timed = 7,
};

bool is_batch(ResultKind k) {
  return k == ResultKind::batch || k == ResultKind::batch_ok || k == ResultKind::batch_timed;
}

// Result messages. batch: items [first, first + count): each item's result or
// ExceptionInfo, then `count` status bytes (1: failed). batch_ok: every item
// succeeded, and no status bytes follow. batch_timed (PoolOptions::timeline): a
// batch followed by its items' times (detail::ItemTimes) and their size in bytes
// (uint32). lost/timeout: the worker held [first, first + count), was in `phase`
// with item `index` in hand, and had been running it since start_ns (0: not
// running).
struct ResultHeader {
  ResultKind kind;
  SlotPhase phase;  // lost/timeout: the dead worker's phase
  std::uint32_t worker;
  std::int32_t exitcode;
  std::uint64_t job;
  std::uint64_t first;
  std::uint64_t count;
  std::uint64_t index;
  std::int64_t start_ns;
  std::int64_t end_ns;
};

// ---- the worker ---------------------------------------------------------------

// One per worker, kept from chunk to chunk: its buffers keep their memory (a
// 48 KiB buffer freed after every chunk made malloc give the heap's top back to
// the kernel and fault it in again, a TLB shoot-down and a dozen page faults
// per chunk).
class WorkerSink final : public ItemSink {
 public:
  WorkerSink(const ChannelEnd& results, WorkerSlot& slot, std::uint32_t id, bool item_times, bool item_clock)
      : results_(results), slot_(slot), id_(id), timed_(item_times), clock_(item_times || item_clock) {
    running_ = &slot_.index;
    reset();
  }
  /// The next chunk's items belong to `job`.
  void begin(std::uint64_t job) { job_ = job; }

  void starting(std::uint64_t index) noexcept override {
    // The clock (~25 ns under a VM's kvm-clock) is read per item only when a
    // timeout or the timeline needs each item's start; otherwise once per batch,
    // and the slot gets 1: "started, time not taken".
    std::int64_t t = clock_ || count_ == 0 ? now_ns() : 1;
    slot_.index.store(index, std::memory_order_relaxed);
    slot_.started_ns.store(t, std::memory_order_relaxed);
    slot_.phase.store(static_cast<std::uint32_t>(SlotPhase::running), std::memory_order_release);
    if (count_ == 0) {
      first_ = index;
      start_ = t;
    }
    if (timed_) item_start_ = t;
  }
  Writer& result_writer() override { return msg_; }
  void ok(std::uint64_t index) override {
    next(index + 1);
    add_status(0);
    if (timed_) item_ended();
    maybe_flush();
  }
  void failed(std::uint64_t index, const ExceptionInfo& info) override {
    if (count_ == 0) {
      first_ = index;
      start_ = now_ns();
    }
    dump(msg_, info);
    next(index + 1);
    add_status(1);
    if (timed_) item_ended();
    maybe_flush();
  }

  bool bulk() const noexcept override { return !clock_; }
  std::span<std::byte> run_begin(std::uint64_t index, std::size_t n, std::size_t size) override {
    starting(index);
    std::size_t used = payload_bytes();
    std::size_t room = used < kAutoChunkBytes ? (kAutoChunkBytes - used) / size : 0;
    run_size_ = size;
    run_at_ = msg_.size();
    return msg_.extend(std::min({n, kRun, std::max<std::size_t>(room, 1)}) * size);
  }
  void run_end(std::size_t done) override {
    std::size_t n = (msg_.size() - run_at_) / run_size_;  // what run_begin gave (run_at_: before it)
    if (done < n) msg_.truncate(msg_.size() - (n - done) * run_size_);
    if (any_failed_) status_.insert(status_.end(), done, 0);
    count_ += done;
    run_at_ = msg_.size();
    if (payload_bytes() + run_size_ > kAutoChunkBytes || now_ns() - start_ > kBatchNs) flush();
  }

  /// Sends what is batched (the end of a chunk).
  void flush() {
    if (count_ == 0) return;
    // A death while sending is charged to the batch's last item (the item in
    // hand); afterwards the worker is back at decoding the next one.
    const std::uint64_t after = first_ + count_;
    slot_.index.store(after - 1, std::memory_order_relaxed);
    slot_.phase.store(static_cast<std::uint32_t>(SlotPhase::sending), std::memory_order_release);
    ResultKind kind = timed_ ? ResultKind::batch_timed : any_failed_ ? ResultKind::batch : ResultKind::batch_ok;
    ResultHeader h{kind, SlotPhase::idle, id_, 0, job_, first_, count_, 0, start_, now_ns()};
    msg_.overwrite(0, &h, sizeof h);
    if (kind != ResultKind::batch_ok) msg_.write(status_.data(), status_.size());
    if (timed_) {
      auto n = static_cast<std::uint32_t>(times_.size());
      msg_.write(times_.data(), times_.size());
      msg_.write(&n, sizeof n);
    }
    results_.send(msg_, std::nullopt);
    reset();
    next(after);
  }
  /// The worker is at item `index` now, before decoding it.
  void next(std::uint64_t index) noexcept {
    slot_.index.store(index, std::memory_order_relaxed);
    slot_.phase.store(static_cast<std::uint32_t>(SlotPhase::decoding), std::memory_order_release);
  }

 private:
  static constexpr std::int64_t kBatchNs = 1'000'000;
  std::size_t payload_bytes() const { return msg_.size() - sizeof(ResultHeader); }
  void reset() {
    msg_.clear();
    msg_.extend(sizeof(ResultHeader));  // written by flush()
    run_at_ = msg_.size();
    status_.clear();
    times_.clear();
    count_ = 0;
    any_failed_ = false;
  }
  // Status bytes are kept only once an item failed (or for the timeline, whose
  // batches always carry them): a batch of successes sends none.
  void add_status(std::uint8_t st) {
    if (st && !any_failed_ && !timed_) status_.assign(count_, 0);
    any_failed_ |= st != 0;
    if (any_failed_ || timed_) status_.push_back(st);
    ++count_;
    run_at_ = msg_.size();
  }
  // Results go out in batches: one message per chunk normally, sooner when the
  // batch passes kAutoChunkBytes (so it fits in the ring) or 1 ms of work, so that a worker crash loses (and the
  // pool re-runs) little, and a long chunk still shows progress.
  void maybe_flush() {
    // times_ (empty without a timeline) counts too: the whole message must fit.
    if (payload_bytes() + times_.size() > kAutoChunkBytes || (count_ % 64 == 0 && now_ns() - start_ > kBatchNs)) {
      flush();
    }
  }
  // Timeline: the item's start (0 if it failed before starting) and end.
  void item_ended() {
    std::int64_t end = now_ns();
    std::int64_t start = std::exchange(item_start_, 0);
    if (!start) start = end;
    ItemTimes::put(times_, start - (times_.empty() ? start_ : prev_end_));
    ItemTimes::put(times_, end - start);
    prev_end_ = end;
  }
  const ChannelEnd& results_;
  WorkerSlot& slot_;
  std::uint32_t id_;
  std::uint64_t job_ = 0;
  bool timed_;
  bool clock_;
  std::int64_t item_start_ = 0;
  std::int64_t prev_end_ = 0;
  std::vector<std::uint8_t> times_;  // ItemTimes
  std::uint64_t first_ = 0;
  std::int64_t start_ = 0;
  std::uint64_t count_ = 0;  // items in the batch
  bool any_failed_ = false;
  std::vector<std::uint8_t> status_;  // per item, once one failed (always with a timeline)
  Writer msg_;                        // a ResultHeader's room, then the items' results
  std::size_t run_at_ = 0;            // msg_'s size before the current run
  std::size_t run_size_ = 1;          // result size of the current run
};

void send_init_failure(const ChannelEnd& results, std::uint32_t id, const ExceptionInfo& info) {
  Writer w;
  ResultHeader h{ResultKind::init_failed, SlotPhase::idle, id, 1, 0, 0, 0, 0, now_ns(), now_ns()};
  w.write(&h, sizeof h);
  dump(w, info);
  results.send(w, std::nullopt);
}

// Resident set size of this process in MiB (/proc/self/statm, field 2, in pages).
long long rss_mib() {
  FILE* f = std::fopen("/proc/self/statm", "re");
  if (!f) return 0;
  long long size = 0, resident = 0;
  int n = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * ::sysconf(_SC_PAGESIZE) / (1 << 20) : 0;
}

void pool_worker_main(ChannelEnd tasks, ChannelEnd results, Segment table, std::uint32_t id,
                      std::vector<std::byte> initializer, long long maxtasks, long long max_memory_mb,
                      std::int64_t spin_ns, bool item_times, bool item_clock) {
  tasks.set_spin(std::chrono::nanoseconds(spin_ns));
  // Ctrl-C at a terminal reaches the whole process group; the pool's owner
  // decides what happens to the work (KeyboardInterrupt → terminate), so a
  // worker does not die of it mid-task.
  ::signal(SIGINT, SIG_IGN);
  auto* slot = reinterpret_cast<WorkerSlot*>(table.data()) + id;
  auto* tickets = ticket_table(table);
  if (!initializer.empty()) {
    try {
      Reader r(initializer);
      Entry e = decode_entry(r);
      e(&r, nullptr);
    } catch (...) {
      send_init_failure(results, id, capture_current_exception());
      throw;  // the worker exits with 1 and prints the error, like any target
    }
  }
  std::vector<std::byte> buf;
  std::vector<int> fds;
  WorkerSink sink(results, *slot, id, item_times, item_clock);
  for (long long done = 0; maxtasks <= 0 || done < maxtasks;) {
    ChunkHeader h{};
    bool cancelled = false;
    try {
      // Two steps (ChannelEnd::recv with a claim). The claim runs under the task
      // channel's consumer lock, before the record leaves the ring, for every kind
      // of record: inline, carrying fds, or out of band (whose record keeps the
      // chunk's first bytes, enough for the header). It takes the ticket and writes
      // the slot, so from the moment the record can be gone from the ring the
      // supervisor knows which chunk this worker holds. f copies the chunk out; for
      // a side-band record it runs after the lock is released and the memfd is read.
      //
      // Dying between the claim and the head's move (inline: anywhere inside f, as
      // f runs under the lock too) hands the record to the next worker AND makes
      // the supervisor re-queue the chunk from the slot. Both are safe: with a
      // ticket, exactly one of them takes the chunk (the next worker swaps claimed
      // -> reclaimed, on_lost claimed -> cancelled); without one, both may run its
      // items and the collector keeps the first result of each (Chunk::delivered),
      // ignoring results of a job already finished.
      tasks.recv(
          std::nullopt,
          [&](Reader& prefix) {
            prefix.read(&h, sizeof h);
            if (h.job == 0) return;
            if (h.ticket != 0) {
              auto& word = tickets[h.ticket % kTickets];
              std::uint64_t expect = h.ticket << 2 | ticket_queued;
              const std::uint64_t claimed = h.ticket << 2 | ticket_claimed;
              if (!word.compare_exchange_strong(expect, claimed)) {
                // Already claimed: a worker died after its claim, before the record
                // left the ring, and the ring handed the record to us. Take it over
                // unless the supervisor re-queued it first (on_lost flips claimed ->
                // cancelled): one wins. Otherwise cancel_job won, and the parent
                // already failed it.
                if (expect != claimed || !word.compare_exchange_strong(expect, h.ticket << 2 | ticket_reclaimed)) {
                  cancelled = true;
                  return;
                }
              }
            }
            // Before the record is released: if this worker dies from here on, the
            // supervisor knows which chunk it held.
            slot->job.store(h.job, std::memory_order_relaxed);
            slot->begin.store(h.first, std::memory_order_relaxed);
            slot->end.store(h.first + h.count, std::memory_order_relaxed);
            slot->phase.store(static_cast<std::uint32_t>(SlotPhase::claimed), std::memory_order_release);
          },
          [&](Reader& r) {
            if (h.job == 0 || cancelled) return;  // its fds are closed by the channel
            r.take(sizeof h);
            std::size_t n = r.remaining();
            const std::byte* p = r.take(n);
            buf.assign(p, p + n);
            fds.clear();
            for (std::uint32_t i = 0; i < r.fd_count(); ++i) fds.push_back(::fcntl(r.fd(i), F_DUPFD_CLOEXEC, 0));
          });
    } catch (const EOFError&) {
      return;  // the pool's process is gone: nothing more will come
    }
    if (h.job == 0) return;  // stop message: close() or a shrinking pool
    if (cancelled) continue;
    ++done;
    {
      Reader r(buf, fds);
      sink.begin(h.job);
      sink.next(h.first);  // the record is ours: from here a death is the first item's
      PoolEntryCtx ctx{&sink, h.first, h.count};
      try {
        Entry e = decode_entry(r);
        e(&r, &ctx);
      } catch (...) {
        ExceptionInfo info = capture_current_exception();
        for (std::uint64_t i = 0; i < h.count; ++i) sink.failed(h.first + i, info);
      }
      sink.flush();
    }
    for (int fd : fds) ::close(fd);
    slot->phase.store(static_cast<std::uint32_t>(SlotPhase::idle), std::memory_order_release);
    // Recycled like maxtasksperchild: exit between chunks; the supervisor replaces us.
    if (max_memory_mb > 0 && rss_mib() > max_memory_mb) return;
  }
}

}  // namespace

// ---- the parent side ------------------------------------------------------------------

namespace {

std::string describe_exit(int code) {
  if (code < 0) {
    const char* name = sigabbrev_np(-code);
    return "killed by signal " + std::to_string(-code) + (name ? std::string(" (SIG") + name + ")" : "");
  }
  return "exited with code " + std::to_string(code);
}

}  // namespace

// Which items of a chunk were delivered: a bitmap whose range operations go a
// 64-bit word at a time (a result batch covers thousands of items).
class ItemBits {
 public:
  explicit ItemBits(std::size_t n = 0) : n_(n), words_((n + 63) / 64, 0) {}
  std::size_t size() const noexcept { return n_; }
  bool operator[](std::size_t i) const noexcept { return (words_[i / 64] >> (i % 64)) & 1; }
  void set(std::size_t i) noexcept { words_[i / 64] |= std::uint64_t{1} << (i % 64); }
  /// Whether no item of [a, b) is set.
  bool none(std::size_t a, std::size_t b) const noexcept {
    bool any = false;
    for_words(words_, a, b, [&](std::uint64_t w, std::uint64_t mask) { any |= (w & mask) != 0; });
    return !any;
  }
  /// Sets [a, b).
  void set(std::size_t a, std::size_t b) noexcept {
    for_words(words_, a, b, [](std::uint64_t& w, std::uint64_t mask) { w |= mask; });
  }

 private:
  // f(word, mask of the bits of [a, b) in it), for each word that [a, b) touches.
  template <class Words, class F>
  static void for_words(Words& words, std::size_t a, std::size_t b, F&& f) {
    while (a < b) {
      std::size_t bit = a % 64, n = std::min<std::size_t>(64 - bit, b - a);
      std::uint64_t mask = (n == 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << n) - 1)) << bit;
      f(words[a / 64], mask);
      a += n;
    }
  }
  std::size_t n_;
  std::vector<std::uint64_t> words_;
};

struct PoolCore::Impl {
  PoolConfig cfg;
  ChannelEnd tasks;
  ChannelEnd results;
  Segment table;
  WorkerSlot* slots = nullptr;
  std::atomic<std::uint64_t>* tickets = nullptr;  // ticket_table(table)
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
    bool dispatched = false;   // a chunk went to the task channel without a ticket: no cancelling
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
  void spawn_workers(std::span<const std::size_t> ids) {
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


  void wake_supervisor() const {
    std::uint64_t one = 1;
    [[maybe_unused]] auto r = ::write(wake_fd, &one, sizeof one);
  }

  // -- chunks --

  // With mu held, for a chunk about to go to the task channel: its ticket, or 0
  // with the job marked dispatched (not cancellable any more). A ticket goes to
  // the first send of a job's first chunk, whole, in a cancellable pool, if its
  // word is free (the chunk kTickets sends ago is no longer queued).
  std::uint64_t take_ticket_locked(Job& j, Chunk& c, std::uint64_t from, std::uint64_t to) {
    if (cfg.cancellable && !j.dispatched && j.ticket == 0 && from == c.first && to == c.first + c.delivered.size() &&
        j.chunks.size() == 1) {
      std::uint64_t t = next_ticket++;
      auto& word = tickets[t % kTickets];
      if ((word.load(std::memory_order_relaxed) & 3) != ticket_queued) {
        word.store(t << 2 | ticket_queued, std::memory_order_relaxed);  // published by the channel's send
        j.ticket = t;
        c.ticket = t;
        return t;
      }
    }
    j.dispatched = true;
    return 0;
  }
  // With mu held: whether a worker has (or may have) taken job j's chunk.
  bool claimed_locked(const Job& j) const {
    if (j.dispatched) return true;
    if (j.ticket == 0) return false;
    std::uint64_t v = tickets[j.ticket % kTickets].load(std::memory_order_acquire);
    return v != (j.ticket << 2 | ticket_queued);
  }

  // Builds the message for items [from, to) of a chunk (the whole chunk, or what
  // is left of it after a lost worker), with the header patched.
  std::vector<std::byte> message_for(const Chunk& c, std::uint64_t from, std::uint64_t to,
                                     std::uint64_t ticket) const {
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
  std::shared_ptr<Chunk> chunk_of(std::unordered_map<std::uint64_t, Job>::iterator jt, std::uint64_t index) {
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
  std::shared_ptr<JobSink> settle(std::uint64_t job, std::uint64_t first, std::uint64_t count,
                                  std::vector<std::uint8_t>& fresh, bool& all_fresh) {
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

  // With mu held, from a submitting thread: takes the finished small jobs'
  // chunks kept for it to release (`out`, destroyed once mu is released).
  struct Dead {
    std::vector<std::map<std::uint64_t, std::shared_ptr<Chunk>>::node_type> chunk_nodes;
  };
  void take_dead(Dead& out) {
    if (!dead_chunks.empty()) out.chunk_nodes.swap(dead_chunks);
  }

  void maybe_finish_job(std::unordered_map<std::uint64_t, Job>::iterator jt) {
    if (jt->second.sealed && jt->second.outstanding == 0) {
      jobs.erase(jt);
      if (jobs.empty()) {
        idle_cv.notify_all();
        if (state == State::closing) send_stops_locked();
      }
    }
  }

  void send_stops_locked() {
    if (stop_sent) return;
    stop_sent = true;
    for (std::size_t i = 0; i < workers.size(); ++i) {
      Pending p;
      p.chunk = nullptr;
      feed.push_back(p);
    }
    feed_cv.notify_all();
  }

  // -- threads --

  void feeder_loop() {
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
  void fail_range(const Chunk& c, std::uint64_t from, std::uint64_t to, const std::string& why) {
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

  void collector_loop() {
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
        std::fprintf(stderr, "mproc: pool collector: %s\n", e.what());
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
  void settle_message(std::span<const std::byte> m, Settled& s) {
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
      std::fprintf(stderr, "mproc: pool collector: %s\n", e.what());
    }
  }

  // Step two, without locks: tells the sink (and so the user's callbacks).
  void deliver(Settled& s) {
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
      std::fprintf(stderr, "mproc: pool collector: %s\n", e.what());
    }
  }

  // ResultReceiver::receive on the waiting thread (see there).
  bool receive_for(std::uint64_t job, bool (*stop)(void*), void* ctx, std::int64_t spin_for) {
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

  // With mu held: where item `index` of `job` came from, for the timeline.
  TimelineSource timeline_source(std::uint64_t job, std::uint64_t index, std::uint32_t worker) {
    TimelineSource src{job, index, 0, 0, static_cast<int>(worker)};
    if (auto jt = jobs.find(job); jt != jobs.end()) {
      if (auto chunk = chunk_of(jt, index)) {
        src.chunk = chunk->first;
        src.queued_ns = chunk->queued_ns;
      }
    }
    return src;
  }

  // A result batch for the timeline, with the per-item times the worker sent
  // (kept encoded: decoding waits until someone reads the timeline).
  void record_batch(TimelineSource src, const ResultHeader& h, const std::uint8_t* status,
                    const std::uint8_t* fresh, std::span<const std::byte> times) {
    src.received_ns = now_ns();
    std::span<const std::uint8_t> t(reinterpret_cast<const std::uint8_t*>(times.data()), times.size());
    cfg.timeline->ran(src, h.first, h.count, status, fresh, t, h.start_ns, h.end_ns);
  }

  // With mu held: a chunk's undelivered item will never run (the timeline's record).
  void record_unrun(std::uint64_t job, const Chunk& c, std::uint64_t index, TaskOutcome why) {
    if (!cfg.timeline) return;
    std::int64_t now = now_ns();
    cfg.timeline->failed(TimelineSource{job, c.first, c.queued_ns, now, -1}, index, why, 0, now);
  }

  // With mu held. A worker died holding items [h.first, h.first + h.count) of
  // job h.job, in phase h.phase with item h.index in hand. Every item of that
  // range not yet delivered goes back to the feeder, except the one in hand
  // (any phase past claimed: decoding, running, sending), which is charged with
  // the death: it fails, or is re-run while its own retries last. Returns the
  // sink to tell, if the item failed.
  std::shared_ptr<JobSink> on_lost(const ResultHeader& h) {
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
    if (chunk->ticket != 0) {
      // The dead worker may have died after its claim, before the record left the
      // ring, and the ring may hand the record to another worker, which then takes
      // the ticket over (claimed -> reclaimed). Flip claimed -> cancelled first:
      // whoever wins runs the items; the other side leaves them alone. (Any other
      // value: the record was consumed long ago, so it cannot come back.)
      const std::uint64_t t = chunk->ticket;
      auto& word = tickets[t % kTickets];
      std::uint64_t expect = t << 2 | ticket_claimed;
      if (!word.compare_exchange_strong(expect, t << 2 | ticket_cancelled) && expect == (t << 2 | ticket_reclaimed)) {
        // Another worker took it over: this notice accounts for that takeover, and
        // puts the word back to claimed, so that the taker's own death, if it comes,
        // re-queues the chunk (otherwise it would find `reclaimed` too, and skip).
        // Notices of several dead claimants may come in any order: each takeover
        // skips one, and the last claimant's death, if any, re-queues. Nothing else
        // writes a reclaimed word (workers swap from queued or claimed, cancel_job
        // from queued, and a word is reused only under mu, held here).
        word.compare_exchange_strong(expect, t << 2 | ticket_claimed);
        lo = hi;  // another worker runs them
      }
    }
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

  void handle_init_failure(Reader& payload) {
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

  // With mu held: cancels job `jt` if no chunk of it has left the feed queue (see
  // PoolCore::cancel_job); its undelivered items go to `out` to be failed.
  bool cancel_locked(std::unordered_map<std::uint64_t, Job>::iterator jt,
                     std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>>& out) {
    Job& j = jt->second;
    if (!j.sealed || j.dispatched) return false;
    if (j.ticket != 0) {  // sent: the worker that would take it may be faster
      std::uint64_t expect = j.ticket << 2 | ticket_queued;
      if (!tickets[j.ticket % kTickets].compare_exchange_strong(expect, j.ticket << 2 | ticket_cancelled)) return false;
    }
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
  static void fail_cancelled(const std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>>& items,
                             const char* why) {
    ExceptionInfo info{"mproc::CancelledError", why, {}};
    for (auto& [sink, index] : items) sink->on_failure(index, Failure::cancelled, info, 0, ItemTiming{});
  }

  // With mu held: every item submitted and not settled, settled now; jobs cleared.
  void collect_outstanding(std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>>& out,
                           TaskOutcome why = TaskOutcome::cancelled) {
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

  void post_lost(std::uint32_t id, ResultKind kind, int exitcode, const std::string& what) {
    WorkerSlot& s = slots[id];
    auto phase = static_cast<SlotPhase>(s.phase.load(std::memory_order_acquire));
    if (phase == SlotPhase::idle) return;
    std::uint64_t begin = s.begin.load(), end = s.end.load();
    ResultHeader h{kind, phase, id, exitcode, s.job.load(), begin, end - begin, s.index.load(),
                   phase == SlotPhase::running ? s.started_ns.load() : 0, now_ns()};
    Writer w;
    w.write(&h, sizeof h);
    dump(w, ExceptionInfo{kind == ResultKind::timeout ? "mproc::TaskTimeoutError" : "mproc::WorkerLostError", what, {}});
    // Through the result channel, so it arrives after anything the worker sent
    // before it died (the collector then knows what was already delivered).
    results.send(w, std::nullopt);
  }

  void supervisor_loop() {
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
        int code = w->proc.exitcode().value_or(255);
        std::string what = "worker " + w->proc.name() + " (pid " + std::to_string(w->proc.pid()) + ") " +
                           (w->timed_out ? "was killed: the task ran past the pool's timeout" : describe_exit(code) +
                                                                                                 " while running this task");
        try {
          post_lost(static_cast<std::uint32_t>(id), w->timed_out ? ResultKind::timeout : ResultKind::lost, code, what);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "mproc: pool supervisor: %s\n", e.what());
        }
        w->proc.close();
      }
      refill();
    }
  }

  // With mu held: whether the pool still needs workers (for queued work or new).
  bool need_workers_locked() const {
    return !stopping && (state == State::running || (state == State::closing && !jobs.empty()));
  }
  // With mu held: ms until the supervisor should try to fill empty slots, -1: never.
  int refill_wait_ms_locked() const {
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
  void refill() {
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
        if (start_failures >= kStartAttempts) std::fprintf(stderr, "mproc: pool workers start again\n");
        start_failures = 0;
      } catch (const std::exception& e) {
        ++start_failures;
        std::int64_t backoff = std::int64_t{10'000'000} << std::min(start_failures - 1, 6);
        next_start_ns = now_ns() + std::min<std::int64_t>(backoff, 500'000'000);
        bool none = std::none_of(workers.begin(), workers.end(), [](const auto& w) { return w.has_value(); });
        if (start_failures == 1) std::fprintf(stderr, "mproc: pool could not start a worker: %s\n", e.what());
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

  // With mu held: every item submitted and not delivered fails (to `out`); the
  // jobs stay (an open job may get more chunks), their chunks are dropped.
  void fail_pending_locked(std::vector<std::pair<std::shared_ptr<JobSink>, std::uint64_t>>& out) {
    std::vector<std::uint64_t> ids;
    for (const auto& [id, j] : jobs) ids.push_back(id);
    std::sort(ids.begin(), ids.end());
    for (std::uint64_t id : ids) {
      auto jt = jobs.find(id);
      Job& j = jt->second;
      for (auto& [first, c] : j.chunks) {
        c->cancelled = true;  // the feeder skips it
        if (c->ticket != 0) {  // still in the channel: a worker taking it drops it
          std::uint64_t expect = c->ticket << 2 | ticket_queued;
          tickets[c->ticket % kTickets].compare_exchange_strong(expect, c->ticket << 2 | ticket_cancelled);
        }
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

  void stop_threads() {
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
};

PoolCore::PoolCore(PoolConfig config) : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.cfg = std::move(config);
  ChannelOptions copt;
  ChannelOptions task_opt = copt;
  task_opt.max_items = I.cfg.max_queued;
  I.tasks = ChannelEnd::create_queue(task_opt);
  I.results = ChannelEnd::create_queue(copt);
  I.table = Segment::create(sizeof(WorkerSlot) * static_cast<std::size_t>(I.cfg.processes) +
                                kTickets * sizeof(std::uint64_t),
                            "mproc-pool");
  I.slots = reinterpret_cast<WorkerSlot*>(I.table.data());
  I.tickets = ticket_table(I.table);
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
        I.tickets[h.ticket % kTickets].store(h.ticket << 2 | ticket_cancelled, std::memory_order_relaxed);
        jt->second.ticket = 0;
        c->ticket = 0;
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

}  // namespace detail
}  // namespace mproc
