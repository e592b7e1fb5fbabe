// The worker loop: what every pool worker process runs (pool_worker_main), and
// the ItemSink that batches its results (WorkerSink). It writes its slot of the
// worker table (wire.hpp) at each step of a task's life, so that the parent's
// supervisor can charge a death to the item in hand (docs/pool.md, "A task's life").
#include "worker.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <optional>
#include <vector>

#include "mproc/detail/timeline_recorder.hpp"  // ItemTimes
#include "mproc/pool.hpp"
#include "wire.hpp"

namespace mproc::detail {
namespace {

// The descriptors a worker cannot do without: its channels' side-band sockets
// (every message that carries fds or goes out of band crosses them). A task
// owns none of them, but may close them all the same: the daemon idiom "close
// every descriptor 3..1024" returned fine and the worker's NEXT task died
// ("sendmsg failed: Bad file descriptor", issue 10 §1). So they live above that
// range (move_above_sweeps), and are checked after each chunk (lost): a task
// that closed one anyway (close_range, closefrom) fails itself, and the worker
// exits to be replaced before it takes another.
//
// The check is a poll() of 4 sockets, ~2.5 µs on the 2-core VM (where the
// cheapest system call takes ~0.5 µs): more than a small task's whole chunk
// (0.25-1 µs), and a quarter of the throughput of many executor submits. Closing a
// descriptor takes a system call, which takes at least as long as the shortest
// one measured here (getppid, re-measured every 1,024 checks); so a chunk whose
// tasks ran for less than that closed nothing and is not checked: the
// descriptors are as the last check left them. (A task's own thread that outlives
// it is not covered, by this or by the check itself.)
class OwnFds {
 public:
  // Above the usual sweeps: 3..1024 (inclusive), FD_SETSIZE.
  static constexpr int kFloor = 1025;

  OwnFds(const ChannelEnd& tasks, const ChannelEnd& results) {
    move_above_sweeps(tasks, results);
    for (const ChannelEnd* c : {&tasks, &results}) {
      for (int fd : c->fds()) p_.push_back(pollfd{fd, 0, 0});
    }
    no_syscall_below_ns_ = shortest_syscall_ns(64);
  }
  /// Tasks run from now on (the worker's own code ran since the last check).
  void tasks_start() noexcept { since_ = now_ns(); }
  /// One of them that is closed now, or -1. One poll(): POLLNVAL marks a
  /// descriptor that is not open. Skipped when the tasks since tasks_start() or
  /// the last check ran for less than any system call takes.
  int lost() {
    if (p_.empty()) return -1;
    // Measured again now and then: the shortest only gets shorter (a CPU that
    // sped up since the start).
    if ((++checks_ & 1023) == 0) no_syscall_below_ns_ = std::min(no_syscall_below_ns_, shortest_syscall_ns(2));
    const std::int64_t t = now_ns();
    if (t - std::exchange(since_, t) < no_syscall_below_ns_) return -1;
    if (::poll(p_.data(), p_.size(), 0) <= 0) return -1;
    for (const pollfd& p : p_) {
      if (p.revents & POLLNVAL) return p.fd;
    }
    return -1;
  }

 private:
  // A descriptor may be placed at or above the soft RLIMIT_NOFILE only while
  // the limit allows it, but stays valid once the limit is lowered again. So the
  // soft limit is raised just enough (never past the hard one) for the move and
  // then restored: the task sees the limit it always had (and a sweep up to
  // sysconf(_SC_OPEN_MAX) still misses ours). Where the hard limit is too low,
  // nothing moves; lost() still catches a task that closes them.
  static void move_above_sweeps(const ChannelEnd& tasks, const ChannelEnd& results) {
    rlimit lim{};
    if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
    const rlim_t need = kFloor + 16;
    const bool raise = lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < need;
    if (raise) {
      if (lim.rlim_max != RLIM_INFINITY && lim.rlim_max < need) return;
      rlimit up{need, lim.rlim_max};
      if (::setrlimit(RLIMIT_NOFILE, &up) != 0) return;
    }
    (void)tasks.move_fds_above(kFloor);
    (void)results.move_fds_above(kFloor);
    if (raise) (void)::setrlimit(RLIMIT_NOFILE, &lim);
  }
  // The shortest of `n` system calls that do no work (getppid, which glibc does
  // not cache), clock reads included, as they are in a chunk's measured time.
  static std::int64_t shortest_syscall_ns(int n) {
    std::int64_t best = std::numeric_limits<std::int64_t>::max();
    for (int i = 0; i < n; ++i) {
      const std::int64_t t0 = now_ns();
      (void)::syscall(SYS_getppid);
      best = std::min(best, now_ns() - t0);
    }
    return best;
  }
  std::vector<pollfd> p_;
  std::int64_t no_syscall_below_ns_ = 0;
  std::int64_t since_ = 0;
  std::uint32_t checks_ = 0;
};

// One per worker, kept from chunk to chunk: its buffers keep their memory (a
// 48 KiB buffer freed after every chunk made malloc give the heap's top back to
// the kernel and fault it in again, a TLB shoot-down and a dozen page faults
// per chunk).
class WorkerSink final : public ItemSink {
 public:
  WorkerSink(const ChannelEnd& results, WorkerSlot& slot, std::uint32_t id, bool item_times, bool item_clock,
             OwnFds& own)
      : results_(results), slot_(slot), id_(id), timed_(item_times), clock_(item_times || item_clock), own_(own) {
    running_ = &slot_.index;
    reset();
  }
  /// The next chunk's items belong to `job` and end before item `end`.
  void begin(std::uint64_t job, std::uint64_t end) {
    job_ = job;
    end_ = end;
  }

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
    after(index);
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
    after(index);
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

  /// Sends what is batched (the end of a chunk, or a full batch mid-chunk).
  void flush() {
    if (count_ == 0) return;
    // Mid-chunk: the worker's descriptors are checked before each send (at the
    // chunk's end, end_chunk() checked them already).
    if (first_ + count_ < end_ && !broken()) check_fds();
    // A death while sending is charged to the batch's last item (the item in
    // hand); afterwards the worker is back at decoding the next one.
    const std::uint64_t sent_to = first_ + count_;
    slot_.index.store(sent_to - 1, std::memory_order_relaxed);
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
    if (sent_to < end_) next(sent_to);  // at the chunk's end: all sent, nothing in hand
  }
  /// The chunk ran: checks the worker's own descriptors, then sends what is
  /// batched. False when a task closed one of them: the items not sent yet
  /// failed instead (they include the culprit), and the worker must exit (its
  /// next receive or send could need the descriptor) to be replaced.
  bool end_chunk() {
    check_fds();
    flush();
    return !broken();
  }
  bool broken() const noexcept { return lost_fd_ >= 0; }

  /// Item `index` is done (its outcome batched): the next one is in hand, being
  /// decoded. The chunk's last item stays in hand until its batch is sent: a
  /// death before then is charged to it, as when it ran (a one-task chunk, an
  /// executor's task, never runs twice because it ran once unreported).
  void after(std::uint64_t index) noexcept {
    if (index + 1 < end_) next(index + 1);
  }
  /// The worker is at item `index` now, before decoding it.
  void next(std::uint64_t index) noexcept {
    slot_.index.store(index, std::memory_order_relaxed);
    slot_.phase.store(static_cast<std::uint32_t>(SlotPhase::decoding), std::memory_order_release);
  }

 private:
  static constexpr std::int64_t kBatchNs = 1'000'000;
  // If a task closed one of the worker's descriptors, the batched outcomes
  // become failures naming it: the culprit is among them, since every earlier
  // batch went out after the same check. Sent inline (ring-sized batches), they
  // need no socket.
  void check_fds() {
    if (broken()) return;
    int fd = own_.lost();
    if (fd < 0) return;
    lost_fd_ = fd;
    ExceptionInfo info{"mproc::UsageError",
                       "mproc: a task closed file descriptor " + std::to_string(fd) +
                           ", which its pool worker uses for the pool's channels (a task must not close "
                           "descriptors it did not open, e.g. with close_range or closefrom); this task fails "
                           "and the worker is replaced",
                       {}};
    const std::uint64_t first = first_, n = count_;
    reset();
    for (std::uint64_t i = 0; i < n; ++i) failed(first + i, info);
  }
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
  std::uint64_t end_ = 0;  // the chunk's end
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
  OwnFds& own_;
  int lost_fd_ = -1;  // a worker descriptor a task closed (check_fds), or -1
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

}  // namespace

void pool_worker_main(ChannelEnd tasks, ChannelEnd results, Segment table, std::uint32_t id,
                      EncodedTask initializer, long long maxtasks, long long max_memory_mb,
                      std::int64_t spin_ns, bool item_times, bool item_clock) {
  tasks.set_spin(std::chrono::nanoseconds(spin_ns));
  // Ctrl-C at a terminal reaches the whole process group; the pool's owner
  // decides what happens to the work (KeyboardInterrupt → terminate), so a
  // worker does not die of it mid-task.
  ::signal(SIGINT, SIG_IGN);
  WorkerSlot* slot = PoolTable::slots(table) + id;
  TicketTable tickets(PoolTable::tickets(table));
  // Before the initializer, which may sweep descriptors as a task may.
  OwnFds own(tasks, results);
  if (!initializer.empty()) {
    try {
      // Its arguments' decoders take their own duplicates of its fds.
      Reader r(initializer.bytes(), initializer.fds());
      Entry e = decode_entry(r);
      e(&r, nullptr);
    } catch (...) {
      send_init_failure(results, id, capture_current_exception());
      throw;  // the worker exits with 1 and prints the error, like any target
    }
  }
  std::vector<std::byte> buf;
  std::vector<int> fds;
  WorkerSink sink(results, *slot, id, item_times, item_clock, own);
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
      // ticket (every send of a cancellable pool's), exactly one of them takes the
      // chunk (the next worker swaps claimed -> reclaimed, on_lost claimed ->
      // cancelled, for the ticket this slot holds); without one (a Pool's), both
      // may run its items and the collector keeps the first result of each
      // (Chunk::delivered), ignoring results of a job already finished.
      tasks.recv(
          std::nullopt,
          [&](Reader& prefix) {
            prefix.read(&h, sizeof h);
            if (h.job == 0) return;
            if (h.ticket != 0 && tickets.claim(h.ticket) == TicketTable::Claim::cancelled) {
              cancelled = true;  // cancel_job won, or the parent re-queued it first
              return;
            }
            // Before the record is released: if this worker dies from here on, the
            // supervisor knows which chunk it held.
            slot->job.store(h.job, std::memory_order_relaxed);
            slot->begin.store(h.first, std::memory_order_relaxed);
            slot->end.store(h.first + h.count, std::memory_order_relaxed);
            slot->ticket.store(h.ticket, std::memory_order_relaxed);
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
    bool intact = true;
    {
      Reader r(buf, fds);
      sink.begin(h.job, h.first + h.count);
      sink.next(h.first);  // the record is ours: from here a death is the first item's
      own.tasks_start();
      PoolEntryCtx ctx{&sink, h.first, h.count};
      try {
        Entry e = decode_entry(r);
        e(&r, &ctx);
      } catch (...) {
        ExceptionInfo info = capture_current_exception();
        for (std::uint64_t i = 0; i < h.count; ++i) sink.failed(h.first + i, info);
      }
      intact = sink.end_chunk();
    }
    for (int fd : fds) ::close(fd);
    slot->phase.store(static_cast<std::uint32_t>(SlotPhase::idle), std::memory_order_release);
    if (!intact) return;  // a task closed a descriptor of ours: replaced, like maxtasksperchild
    // Recycled like maxtasksperchild: exit between chunks; the supervisor replaces us.
    if (max_memory_mb > 0 && rss_mib() > max_memory_mb) return;
  }
}

}  // namespace mproc::detail
