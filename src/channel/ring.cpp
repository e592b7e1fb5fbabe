// Ring traffic: the producer and consumer locks, sending and receiving records,
// and every blocking wait of the channel layer (see docs/queue.md, "Design").
#include <algorithm>
#include <climits>
#include <cstring>
#include <exception>

#include "../os/internal.hpp"
#include "internal.hpp"

namespace mproc::detail {
namespace {

using std::memory_order_acq_rel;
using std::memory_order_acquire;
using std::memory_order_relaxed;
using std::memory_order_release;
using std::memory_order_seq_cst;
using Clock = std::chrono::steady_clock;

using RecvCallback = void (*)(void* ctx, Reader& r);  // ChannelEnd::RecvFn

bool passed(const deadline_t& d) { return d && Clock::now() >= *d; }

/// The steady clock in ns (CLOCK_MONOTONIC: the same in every process).
std::int64_t steady_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

/// Statistics: a plain load and store, not a locked add (threads racing on one end
/// may lose a count; the hot path stays free of another atomic read-modify-write).
void bump(std::atomic<std::uint64_t>& counter, std::uint64_t n) noexcept {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}


// ---- the shared locks -------------------------------------------------------------

/// Takes l. Waits in slices; at the end of each, a holder that has died is
/// detected (owner_dead) and the lock taken over. The wait for the lock itself
/// lasts at least one slice even for non-blocking calls, since holders only keep
/// it for a copy. False at the deadline.
bool lock(Channel& c, SharedLock& l, deadline_t deadline) {
  const std::uint32_t mine = c.owner_id() << 1;
  std::uint32_t expected = 0;
  if (l.word.compare_exchange_strong(expected, mine, memory_order_acquire, memory_order_relaxed)) return true;
  for (int i = 0; i < 200; ++i) {
    cpu_relax();
    expected = 0;
    if (l.word.load(memory_order_relaxed) == 0 &&
        l.word.compare_exchange_weak(expected, mine, memory_order_acquire, memory_order_relaxed)) {
      return true;
    }
  }
  auto floor = Clock::now() + kSlice;
  deadline_t until = deadline ? std::optional(std::max(*deadline, floor)) : std::nullopt;
  for (;;) {
    std::uint32_t w = l.word.load(memory_order_relaxed);
    if (w == 0) {
      // Taken as "contended": another waiter may be asleep behind us.
      if (l.word.compare_exchange_weak(w, mine | 1, memory_order_acquire, memory_order_relaxed)) return true;
      continue;
    }
    if (!(w & 1)) {
      if (!l.word.compare_exchange_weak(w, w | 1, memory_order_relaxed, memory_order_relaxed)) continue;
      w |= 1;
    }
    auto now = Clock::now();
    if (until && now >= *until) return false;
    auto slice_end = now + kSlice;
    FutexWait r = futex_wait(&l.word, w, until ? std::min(*until, slice_end) : slice_end);
    if (r == FutexWait::timed_out) {
      std::uint32_t cur = l.word.load(memory_order_relaxed);
      // The holder died inside its critical section. Every critical section keeps
      // the ring consistent at each step (docs/queue.md), so taking over is safe.
      if (cur != 0 && c.owner_dead(cur >> 1) &&
          l.word.compare_exchange_strong(cur, mine | 1, memory_order_acquire, memory_order_relaxed)) {
        bump(c.n_slow_takeovers, 1);
        return true;
      }
    }
  }
}

void unlock(SharedLock& l) noexcept {
  if (l.word.exchange(0, memory_order_release) & 1) futex_wake(&l.word, 1);
}

/// Holds a lock for a scope; unlock() early.
class Held {
 public:
  explicit Held(SharedLock& l) : l_(&l) {}
  ~Held() { unlock(); }
  Held(const Held&) = delete;
  Held& operator=(const Held&) = delete;
  void unlock() noexcept {
    if (l_) mproc::detail::unlock(*l_);
    l_ = nullptr;
  }

 private:
  SharedLock* l_;
};

// ---- wake-ups ----------------------------------------------------------------------
// A side publishes (tail or head), then looks at the other side's waiter count; a
// waiter counts itself, then reads the seq word, then re-checks the condition
// before it sleeps on the seq word. Publication, waiter count and re-check are all
// seq_cst, so "publish → read waiters" and "count myself → re-check" are in one
// total order and one of the two always sees the other (Dekker): no wake-up is
// lost, and a side that finds no waiter makes no system call. (On x86 the seq_cst
// store is one xchg, cheaper than a release store plus a fence.)
//
// `pending` spares the waker repeated futex_wake calls while a woken sleeper has
// not run yet (with a busy CPU that is many publishes). A sleeper clears it when
// it registers and when it wakes, each time before it looks at the condition
// again; a waker that skips because it is set has published before the clearing
// store in the modification order of `pending`, so (seq_cst publish → seq_cst
// store → seq_cst load) the sleeper's re-check sees the record. A consumer that
// leaves records behind while others sleep wakes the next one (chain), so no
// record waits for a slice with every consumer asleep.

//
// Spinning consumers. A consumer spinning for a record (wait_for on `data`, and
// recv_spinning) first stores the end of its spin in `spin_end`; a sender that
// finds a spin not yet over skips the futex_wake: the spinner takes the record,
// and a sleeper woken for it would only find the ring empty (on a small machine,
// taking the core the spinner or the sender needs). When its spin ends, the
// spinner clears `spin_end` (if still its own) and then looks at the ring again
// before leaving or sleeping: seq_cst again, so either the sender saw the word
// cleared and woke a sleeper, or the spinner's re-check sees the record (and
// takes it, or wakes a sleeper for it). A spinner that dies mid-spin leaves a
// stale end at most one spin ahead; then a sleeper wakes at its 100 ms slice at
// the latest. Where several spin, the last to start owns the word; an earlier
// one's leaving clears nothing, a later one's end may be the earlier (a wake
// too many, never one too few).

/// Whether a consumer is spinning for a record now (see above). Reads the clock
/// only while one has said it spins.
bool spinner_will_see(const WaitWord& w) noexcept {
  std::int64_t end = w.spin_end.load(memory_order_seq_cst);
  return end != 0 && steady_ns() < end;
}

/// A spin of `ns` on `w`, marked in w.spin_end while it lasts (RAII).
class MarkedSpin {
 public:
  MarkedSpin(WaitWord& w, std::int64_t ns) noexcept : w_(w), end_(steady_ns() + ns) {
    w_.spin_end.store(end_, memory_order_seq_cst);
  }
  ~MarkedSpin() { end(); }
  MarkedSpin(const MarkedSpin&) = delete;
  MarkedSpin& operator=(const MarkedSpin&) = delete;
  std::int64_t end_ns() const noexcept { return end_; }
  /// Clears the mark if it is still ours. The caller re-checks the ring after.
  void end() noexcept {
    if (end_ == 0) return;
    std::int64_t mine = end_;
    w_.spin_end.compare_exchange_strong(mine, 0, memory_order_seq_cst, memory_order_relaxed);
    end_ = 0;
  }

 private:
  WaitWord& w_;
  std::int64_t end_;
};

void notify(WaitWord& w, int n) noexcept {
  if (w.waiters.load(memory_order_seq_cst) != 0 && !spinner_will_see(w) && w.pending.load(memory_order_relaxed) == 0 &&
      w.pending.exchange(1, memory_order_acq_rel) == 0) {
    w.seq.fetch_add(1, memory_order_release);
    futex_wake(&w.seq, n);
  }
}

void notify_consumers(RingState& r, std::size_t n) noexcept {
  notify(r.data, static_cast<int>(std::min<std::size_t>(n, INT_MAX)));
}
void notify_producers(RingState& r) noexcept { notify(r.space, INT_MAX); }

/// After a consumer took records (and released clock): wake producers waiting for
/// room, and another consumer if records remain.
void after_consume(RingState& r) noexcept {
  notify_producers(r);
  if (r.data.waiters.load(memory_order_relaxed) != 0 &&
      count_of(r.tail.load(memory_order_acquire)) != count_of(r.head.load(memory_order_relaxed))) {
    notify(r.data, 1);
  }
}

enum class Gone { send, recv, join };

[[noreturn]] void throw_gone(const Channel& c, Gone what) {
  bool queue = c.h->kind == ChannelKind::queue;
  switch (what) {
    case Gone::send:
      if (queue) {
        throw BrokenPipeError(
            "mproc: Queue.put(): the queue is full and no other process can take from it any more: every other "
            "process that held it has exited, been killed or closed it. Nothing will make room.");
      }
      throw BrokenPipeError("mproc: Connection.send(): the other end of the pipe is closed in every process");
    case Gone::recv:
      if (queue) {
        throw EOFError(
            "mproc: Queue.get(): the queue is empty and no other process can put into it any more: every other "
            "process that held it has exited, been killed or closed it.");
      }
      throw EOFError(
          "mproc: Connection.recv(): nothing left to receive and the other end of the pipe is closed in every "
          "process");
    case Gone::join:
      throw BrokenPipeError(
          "mproc: JoinableQueue.join(): tasks are unfinished and every other process that held the queue has "
          "exited, been killed or closed it; no one is left to call task_done()");
  }
  std::abort();
}

std::uint32_t shutdown_state(const Channel& c) { return c.h->shutdown.load(memory_order_seq_cst); }

[[noreturn]] void throw_shutdown(Gone what) {
  if (what == Gone::send) throw ShutDown("mproc: Queue.put(): the queue was shut down (Queue.shutdown())");
  throw ShutDown("mproc: Queue.get(): the queue was shut down (Queue.shutdown()) and is empty");
}

[[noreturn]] void throw_closed(const Channel& c) {
  throw UsageError(std::string("mproc: this ") + (c.role == EndRole::queue ? "Queue" : "Connection") +
                   " was closed in this process while a call was waiting on it");
}

/// Waits until ready() or the deadline (false). Spins for c.spin_ns, then sleeps on
/// `seq` in slices. Before each sleep it asks whether the peers are gone (cached
/// per slice for queues); if so and still not ready, throws the `what` error, or
/// returns true when gone_is_ready (poll()).
/// Who waits: consumers waiting for a record mark their spin (see "Spinning
/// consumers"); the chain in after_consume makes one spinner enough for any
/// number of records. Producers waiting for room do not: nothing chains their
/// wake-ups, so each sleeper must be woken.
enum class Waiter { other, consumer };

/// A queue that was shut down: a send throws ShutDown, so does a receive that is
/// not ready (empty ring), and poll() is ready (a get would not block). False: not
/// shut down, or join() (which shutdown does not end).
template <class Ready>
bool shut_ready(const Channel& c, Ready& ready, Gone what, bool gone_is_ready) {
  if (what == Gone::join || shutdown_state(c) == kOpen) return false;
  if (gone_is_ready || (what == Gone::recv && ready())) return true;
  throw_shutdown(what);
}

template <class Ready>
bool wait_for(Channel& c, WaitWord& w, deadline_t deadline, Ready ready, Gone what, bool gone_is_ready = false,
              Waiter who = Waiter::other) {
  if (ready()) return true;
  // Before the deadline: a shut-down queue's get_nowait() throws ShutDown, not Empty.
  if (shut_ready(c, ready, what, gone_is_ready)) return true;
  if (passed(deadline)) return false;
  if (std::int64_t spin = c.spin_ns.load(memory_order_relaxed); spin > 0) {
    std::optional<MarkedSpin> mark;
    if (who == Waiter::consumer) mark.emplace(w, spin);
    if (spin_until(ready, spin)) return true;  // the mark ends before the record is taken
  }
  for (;;) {
    if (c.closed.load(memory_order_acquire)) throw_closed(c);
    if (shut_ready(c, ready, what, gone_is_ready)) return true;
    if (c.peers_gone(false)) {
      // Whatever a departed peer published before it went is visible now.
      if (ready() || gone_is_ready) return true;
      // A timed get on a queue waits out its timeout (Python's Empty): this process
      // still holds the queue, and another of its threads may put meanwhile. Only a
      // get that would wait forever reports that no other process can put.
      if (!(what == Gone::recv && deadline && c.h->kind == ChannelKind::queue)) throw_gone(c, what);
    }
    w.waiters.fetch_add(1, memory_order_seq_cst);
    // Cleared on registering too, not only when woken: a waker that skipped its
    // wake because `pending` was set published before that (its exchange precedes
    // this store), so the re-check below sees its record; and no stale `pending`
    // can outlive the sleepers it was meant for.
    w.pending.store(0, memory_order_seq_cst);
    std::uint32_t s = w.seq.load(memory_order_seq_cst);
    if (ready()) {
      w.waiters.fetch_sub(1, memory_order_relaxed);
      return true;
    }
    // shutdown() stores its word, then bumps seq and wakes (wake_all). Had it done
    // so between the check above and the seq load, this sleep would miss the wake:
    // a shutdown seen here (seq_cst, after the seq load) goes round the loop instead.
    if (what != Gone::join && shutdown_state(c) != kOpen) {
      w.waiters.fetch_sub(1, memory_order_relaxed);
      continue;
    }
    auto slice_end = Clock::now() + kSlice;
    futex_wait(&w.seq, s, deadline ? std::min(*deadline, slice_end) : slice_end);
    w.waiters.fetch_sub(1, memory_order_relaxed);
    w.pending.store(0, memory_order_seq_cst);
    if (ready()) return true;
    if (passed(deadline)) return false;
  }
}

// ---- producer side -------------------------------------------------------------------

std::uint64_t sideband_in_flight(const RingState& r) {
  return r.sb_sent.load(memory_order_relaxed) - r.sb_received.load(memory_order_acquire);
}

/// Whether a record of `span` bytes fits after `tail`, given `head`.
bool fits(const RingState& r, std::uint64_t head, std::uint64_t tail, std::size_t span) {
  if (r.max_items && records_between(head, tail) >= r.max_items) return false;
  std::uint64_t used = bytes_between(head, tail);
  std::uint64_t off = pos_of(tail) & (r.capacity - 1);
  std::uint64_t contiguous = r.capacity - off;
  std::uint64_t need = span <= contiguous ? span : contiguous + span;  // padding to the end, then the record
  return used + need <= r.capacity;
}

/// Under plock: room for a record after `tail`? Reads the consumers' head only
/// when the producers' cached copy says no.
bool has_room(RingState& r, std::uint64_t tail, std::size_t span, bool sideband) {
  if (sideband && sideband_in_flight(r) >= kMaxSideband) return false;
  if (fits(r, r.cached_head.load(memory_order_relaxed), tail, span)) return true;
  std::uint64_t head = r.head.load(memory_order_acquire);
  r.cached_head.store(head, memory_order_relaxed);
  return fits(r, head, tail, span);
}

/// Lock-free estimate of has_room, for waiting.
bool room_hint(const RingState& r, std::size_t span, bool sideband) {
  if (sideband && sideband_in_flight(r) >= kMaxSideband) return false;
  return fits(r, r.head.load(memory_order_seq_cst), r.tail.load(memory_order_seq_cst), span);
}

/// Under plock, after has_room: writes the record header (and a pad before it if
/// it would cross the end), returns a pointer to its payload and the new tail.
std::byte* place(const Channel& c, const RingState& r, std::uint64_t& tail, std::size_t payload, RecordKind kind) {
  std::byte* base = c.ring_bytes(r);
  std::uint64_t pos = pos_of(tail);
  std::uint64_t off = pos & (r.capacity - 1);
  std::size_t span = record_span(payload);
  if (span > r.capacity - off) {
    RecordHeader pad{static_cast<std::uint32_t>(r.capacity - off - sizeof(RecordHeader)), RecordKind::pad};
    std::memcpy(base + off, &pad, sizeof pad);
    pos += r.capacity - off;
    off = 0;
  }
  RecordHeader hdr{static_cast<std::uint32_t>(payload), kind};
  std::memcpy(base + off, &hdr, sizeof hdr);
  tail = pack(pos + span, count_of(tail) + 1);
  return base + off + sizeof hdr;
}

/// Checks the peer of a pipe now and then (every ms at most) on the send path,
/// where a full ring would otherwise be the first sign: like Python, sending to a
/// closed pipe fails rather than filling a buffer nobody reads.
void check_pipe_peer(Channel& c) {
  if (c.h->kind != ChannelKind::pipe) return;
  std::int64_t now = now_ns();
  if (now - c.last_check_ns.load(memory_order_relaxed) < 1'000'000) return;
  c.last_check_ns.store(now, memory_order_relaxed);
  if (c.peers_gone(true)) throw_gone(c, Gone::send);
}

RingState& tx_ring(Channel& c) {
  if (c.tx < 0) throw UsageError("mproc: Connection.send(): this end of a one-way Pipe is receive-only");
  return c.ring(c.tx);
}
RingState& rx_ring(Channel& c) {
  if (c.rx < 0) throw UsageError("mproc: Connection.recv(): this end of a one-way Pipe is send-only");
  return c.ring(c.rx);
}

/// Owns fds until released.
struct FdList {
  std::vector<int> fds;
  ~FdList() { close_fds(fds); }
};

// ---- consumer side -------------------------------------------------------------------

/// The record at `head` after skipping a pad (under clock, with a message present).
const RecordHeader* record_at(const Channel& c, const RingState& r, std::uint64_t& head) {
  const std::byte* base = c.ring_bytes(r);
  auto at = [&] { return reinterpret_cast<const RecordHeader*>(base + (pos_of(head) & (r.capacity - 1))); };
  auto corrupt = [] {
    throw Error("mproc: channel ring corrupted (bad record header); was the shared memory written to by other code?");
  };
  // Records start at multiples of 8 (record_span), so a header never straddles the
  // ring's end; a head that is not aligned was written by something else.
  if (pos_of(head) % 8 != 0) corrupt();
  const RecordHeader* h = at();
  if (h->kind == RecordKind::pad) {
    // A pad fills the ring to its end, exactly (place()): any other size would put
    // the next header off alignment or past the end of the ring.
    if (h->size != r.capacity - (pos_of(head) & (r.capacity - 1)) - sizeof(RecordHeader)) corrupt();
    head = pack(pos_of(head) + sizeof(RecordHeader) + h->size, count_of(head));
    h = at();
  }
  std::uint64_t off = pos_of(head) & (r.capacity - 1);
  if ((h->kind != RecordKind::inline_ && h->kind != RecordKind::sideband) ||
      h->size > r.capacity - off - sizeof(RecordHeader) ||
      (h->kind == RecordKind::sideband && h->size < sizeof(SidebandInfo))) {
    corrupt();
  }
  return h;
}

bool messages_waiting(const RingState& r) {
  return count_of(r.tail.load(memory_order_seq_cst)) != count_of(r.head.load(memory_order_relaxed));
}

/// A side-band record being received: its SidebandInfo and the fds peeked from
/// the socket (owned).
struct Sideband {
  SidebandInfo info;
  FdList fds;
};

/// Under clock, for the side-band record `h` at `head` (after any pad): runs claim,
/// peeks its socket message (the fds are duplicated into this process, the message
/// stays in the socket), decodes it with fn, and only then consumes it: head first,
/// then the socket message, then the lock. The record is kept, in the ring and in
/// the socket, until its receiver has decoded it (the same rule as for inline
/// records), so a consumer dying anywhere before fn returns (in claim, in the peek,
/// mapping or reading an out-of-band segment, decoding) leaves the whole message for
/// the next consumer, which takes the lock over. Dying after head moved leaves an
/// orphan socket message, which the next receive drops by its sequence number. An
/// exception from claim or fn consumes the message (its fds closed); from claim,
/// fn is not called.
void receive_sideband(Channel& c, RingState& r, std::uint64_t head, const RecordHeader* h, Held& held,
                      RecvCallback claim, void* claim_ctx, RecvCallback fn, void* ctx) {
  Sideband s;
  const auto* p = reinterpret_cast<const std::byte*>(h + 1);
  std::memcpy(&s.info, p, sizeof s.info);
  const std::size_t inline_bytes = h->size - sizeof s.info;  // record_at checked h->size >= sizeof info
  // An out-of-band record carries the message's first bytes, for claim. A corrupt
  // record is left where it is (its sequence number cannot be trusted either).
  if (s.info.nfds > kMaxMessageFds || s.info.oob > kOobRecycled ||
      (s.info.oob && inline_bytes != std::min<std::uint64_t>(s.info.oob_size, kClaimPrefixBytes))) {
    throw Error("mproc: channel ring corrupted (bad side-band record)");
  }
  const std::size_t oob_fds = s.info.oob != kNoOob ? 1 : 0;
  // A recycled segment is released (for its sender's next message) only once the
  // record has left the ring: until then a receiver dying leaves the message to
  // the next one, which must find the same bytes.
  struct Consume {
    Channel& c;
    RingState& r;
    std::uint64_t next;
    Held& held;
    const SidebandInfo& info;
    bool peeked = false;  // the socket message at the front is known to be seq's
    int release_fd = -1;  // the recycled segment, once peeked
    ~Consume() {
      r.head.store(next, memory_order_seq_cst);
      if (release_fd >= 0) {
        oob_release(release_fd);
      } else if (info.oob == kOobRecycled && !peeked) {
        // Consumed before its fds were peeked (claim threw): take them to release it.
        try {
          FdList got{sideband_recv(c.sock_rx, info.seq, info.nfds + 1, false)};
          oob_release(got.fds[0]);
          peeked = true;  // taken: nothing left to drop
        } catch (...) {   // an out-of-step socket: the drop below and the next receive report it
        }
        if (peeked) {
          r.sb_received.store(info.seq, memory_order_release);
          held.unlock();
          after_consume(r);
          return;
        }
      }
      sideband_drop(c.sock_rx, info.seq, peeked);
      r.sb_received.store(info.seq, memory_order_release);
      held.unlock();
      after_consume(r);
    }
  } consume{c, r, pack(pos_of(head) + record_span(h->size), count_of(head) + 1), held, s.info};
  if (claim) {
    Reader prefix(std::span(p + sizeof s.info, std::min(inline_bytes, kClaimPrefixBytes)));
    claim(claim_ctx, prefix);
  }
  s.fds.fds = sideband_recv(c.sock_rx, s.info.seq, s.info.nfds + oob_fds, /*peek=*/true);
  consume.peeked = true;
  if (s.info.oob) {
    int fd = s.fds.fds[0];  // closed after the release (s outlives consume)
    if (s.info.oob == kOobRecycled) consume.release_fd = fd;
    OobMessage m = oob_read(fd, static_cast<std::size_t>(s.info.oob_size));
    Reader rd(m.bytes, std::span<const int>(s.fds.fds).subspan(1));
    bump(c.n_received_oob, 1);
    fn(ctx, rd);
  } else {
    Reader rd(std::span(p + sizeof s.info, inline_bytes), s.fds.fds);
    fn(ctx, rd);
  }
}

}  // namespace

// ---- sending ---------------------------------------------------------------------------

bool ChannelEnd::send(std::span<const std::byte> bytes, std::span<const int> fds, deadline_t deadline) const {
  Channel& c = ch();
  c.enter();
  RingState& r = tx_ring(c);
  if (fds.size() > kMaxMessageFds) {
    throw UsageError("mproc: a message may carry at most " + std::to_string(kMaxMessageFds) +
                     " file descriptors (shared-memory handles, queues, pipe ends)");
  }
  check_pipe_peer(c);
  const bool oob = bytes.size() > r.oob_threshold;
  const bool sideband = oob || !fds.empty();
  // Out of band, the record still carries the message's first bytes (for a
  // receiver's claim step, ChannelEnd::recv): never more than the ring takes, as
  // kClaimPrefixBytes is far below any ring's capacity / 4 (static_assert in internal.hpp).
  const std::size_t in_ring = oob ? std::min(bytes.size(), kClaimPrefixBytes) : bytes.size();
  const std::size_t payload = sideband ? sizeof(SidebandInfo) + in_ring : bytes.size();
  const std::size_t span = record_span(payload);

  // The out-of-band copy is made before taking the lock, so other producers are
  // not held up while gigabytes are copied.
  OobLease lease;  // the out-of-band segment (freed again unless the message goes)
  if (oob) c.oob_cache.fill(lease, bytes, c.fd_floor.load(memory_order_relaxed));
  FdList send_fds;
  if (oob) send_fds.fds.push_back(lease.fd);
  for (int fd : fds) send_fds.fds.push_back(fd);
  struct Release {  // borrowed (the message's own fds, the lease's): never closed here
    FdList& l;
    ~Release() { l.fds.clear(); }
  } release_borrowed{send_fds};

  if (shutdown_state(c) != kOpen) throw_shutdown(Gone::send);
  for (;;) {
    if (!lock(c, r.plock, deadline)) return false;
    Held held(r.plock);
    // Checked under the producer lock: shutdown() takes it once after storing its
    // word, so a send that saw "open" here has published before shutdown() returns.
    if (shutdown_state(c) != kOpen) throw_shutdown(Gone::send);
    std::uint64_t tail = r.tail.load(memory_order_relaxed);
    if (has_room(r, tail, span, sideband)) {
      std::byte* p = place(c, r, tail, payload, sideband ? RecordKind::sideband : RecordKind::inline_);
      if (sideband) {
        SidebandInfo info{r.sb_sent.load(memory_order_relaxed) + 1, oob ? bytes.size() : 0,
                          static_cast<std::uint32_t>(fds.size()), oob ? lease.kind() : kNoOob};
        std::memcpy(p, &info, sizeof info);
        if (in_ring) std::memcpy(p + sizeof info, bytes.data(), in_ring);
        // The sequence number is used up before the socket message goes: a
        // producer dying after sending leaves an orphan with an older number,
        // which the consumer drops, and the next producer takes a fresh one.
        r.sb_sent.store(info.seq, memory_order_relaxed);
        if (!sideband_send(c, c.sock_tx, info.seq, send_fds.fds, deadline)) return false;
        lease.handed_over = true;  // in the socket: released by its receiver from now on
      } else if (!bytes.empty()) {
        std::memcpy(p, bytes.data(), bytes.size());
      }
      r.tail.store(tail, memory_order_seq_cst);  // publishes bytes and count at once
      held.unlock();
      notify_consumers(r, 1);
      bump(c.n_sent, 1);
      if (oob) bump(c.n_sent_oob, 1);
      if (oob && lease.kind() == kOobRecycled) bump(c.n_sent_recycled, 1);
      return true;
    }
    held.unlock();
    if (!wait_for(c, r.space, deadline, [&] { return room_hint(r, span, sideband); },
                  Gone::send)) {
      return false;
    }
  }
}

std::size_t ChannelEnd::send_many(std::span<const std::byte> buf, std::span<const std::size_t> ends,
                                  deadline_t deadline) const {
  Channel& c = ch();
  c.enter();
  RingState& r = tx_ring(c);
  check_pipe_peer(c);
  std::size_t i = 0;
  auto msg = [&](std::size_t k) {
    std::size_t b = k == 0 ? 0 : ends[k - 1];
    return buf.subspan(b, ends[k] - b);
  };
  while (i < ends.size()) {
    if (msg(i).size() > r.oob_threshold) {  // out of band: one at a time
      if (!send(msg(i), {}, deadline)) return i;
      ++i;
      continue;
    }
    std::size_t sent = 0;
    {
      if (!lock(c, r.plock, deadline)) return i;
      Held held(r.plock);
      if (shutdown_state(c) != kOpen) throw_shutdown(Gone::send);  // as in send()
      std::uint64_t tail = r.tail.load(memory_order_relaxed);
      while (i + sent < ends.size()) {
        auto m = msg(i + sent);
        if (m.size() > r.oob_threshold || !has_room(r, tail, record_span(m.size()), false)) break;
        std::byte* p = place(c, r, tail, m.size(), RecordKind::inline_);
        if (!m.empty()) std::memcpy(p, m.data(), m.size());
        ++sent;
      }
      if (sent) r.tail.store(tail, memory_order_seq_cst);
    }
    if (sent) {
      notify_consumers(r, sent);
      bump(c.n_sent, sent);
      i += sent;
      continue;
    }
    std::size_t span = record_span(msg(i).size());
    if (!wait_for(c, r.space, deadline, [&] { return room_hint(r, span, false); },
                  Gone::send)) {
      return i;
    }
  }
  return i;
}

// ---- receiving ------------------------------------------------------------------------

bool ChannelEnd::recv_erased(deadline_t deadline, RecvFn fn, void* ctx, RecvFn claim, void* claim_ctx) const {
  Channel& c = ch();
  c.enter();
  RingState& r = rx_ring(c);
  for (;;) {
    if (!lock(c, r.clock, deadline)) return false;
    Held held(r.clock);
    if (shutdown_state(c) == kDrained) throw_shutdown(Gone::recv);
    std::uint64_t head = r.head.load(memory_order_relaxed);
    if (count_of(head) != count_of(r.tail.load(memory_order_acquire))) {
      const RecordHeader* h = record_at(c, r, head);
      bump(c.n_received, 1);
      if (h->kind == RecordKind::inline_) {
        // Decoded straight from the ring, under the lock: the record cannot be
        // overwritten until head moves past it. Consumed even if decoding throws.
        struct Consume {
          RingState& r;
          std::uint64_t next;
          Held& held;
          ~Consume() {
            r.head.store(next, memory_order_seq_cst);
            held.unlock();
            after_consume(r);
          }
        } consume{r, pack(pos_of(head) + record_span(h->size), count_of(head) + 1), held};
        const auto* p = reinterpret_cast<const std::byte*>(h + 1);
        if (claim) {  // inline, claim and f both run before head moves
          Reader prefix(std::span(p, std::min<std::size_t>(h->size, kClaimPrefixBytes)));
          claim(claim_ctx, prefix);
        }
        Reader rd(std::span(p, h->size));
        fn(ctx, rd);
        return true;
      }
      receive_sideband(c, r, head, h, held, claim, claim_ctx, fn, ctx);
      return true;
    }
    held.unlock();
    if (!wait_for(c, r.data, deadline, [&] { return messages_waiting(r); }, Gone::recv, false, Waiter::consumer)) {
      return false;
    }
  }
}

ChannelEnd::Spun ChannelEnd::recv_spinning_erased(std::int64_t spin_ns, TakeFn take, void* take_ctx, StopFn stop,
                                                  void* stop_ctx) const {
  Channel& c = ch();
  c.enter();
  RingState& r = rx_ring(c);
  struct Leave {  // the mark ends first, then the re-check ("Spinning consumers")
    RingState& r;
    MarkedSpin mark;
    ~Leave() {
      mark.end();
      if (messages_waiting(r)) notify(r.data, 1);
    }
  } leave{r, MarkedSpin(r.data, spin_ns)};
  const std::uint32_t mine = c.owner_id() << 1;
  for (unsigned i = 0;; ++i) {
    std::uint32_t free = 0;
    if (messages_waiting(r) && r.clock.word.load(memory_order_relaxed) == 0 &&
        r.clock.word.compare_exchange_strong(free, mine, memory_order_acquire, memory_order_relaxed)) {
      Held held(r.clock);
      std::uint64_t head = r.head.load(memory_order_relaxed);
      if (count_of(head) != count_of(r.tail.load(memory_order_acquire))) {
        const RecordHeader* h = record_at(c, r, head);
        if (h->kind != RecordKind::inline_) return Spun::declined;
        struct Consume {  // as in recv_erased, once take() said yes (or threw)
          RingState& r;
          std::uint64_t next;
          Held& held;
          bool armed = true;
          ~Consume() {
            if (!armed) return;
            r.head.store(next, memory_order_seq_cst);
            held.unlock();
            after_consume(r);
          }
        } consume{r, pack(pos_of(head) + record_span(h->size), count_of(head) + 1), held};
        Reader rd(std::span<const std::byte>(reinterpret_cast<const std::byte*>(h + 1), h->size));
        if (!take(take_ctx, rd)) {
          consume.armed = false;
          return Spun::declined;
        }
        bump(c.n_received, 1);
        return Spun::received;
      }
    }
    if (stop(stop_ctx)) return Spun::stopped;
    if (i % 32 == 31 && steady_ns() >= leave.mark.end_ns()) return Spun::idle;
    cpu_relax();
  }
}

std::size_t ChannelEnd::recv_many_erased(std::size_t max, deadline_t deadline, RecvFn fn, void* ctx) const {
  Channel& c = ch();
  c.enter();
  RingState& r = rx_ring(c);
  if (max == 0) return 0;
  for (;;) {
    if (!lock(c, r.clock, deadline)) return 0;
    Held held(r.clock);
    if (shutdown_state(c) == kDrained) throw_shutdown(Gone::recv);
    std::uint64_t head = r.head.load(memory_order_relaxed);
    const std::uint64_t tail = r.tail.load(memory_order_acquire);
    if (count_of(head) == count_of(tail)) {
      held.unlock();
      if (!wait_for(c, r.data, deadline, [&] { return messages_waiting(r); }, Gone::recv, false, Waiter::consumer)) {
        return 0;
      }
      continue;
    }
    {
      std::uint64_t at = head;
      const RecordHeader* h = record_at(c, r, at);
      if (h->kind == RecordKind::sideband) {  // received on its own
        bump(c.n_received, 1);
        receive_sideband(c, r, at, h, held, nullptr, nullptr, fn, ctx);
        return 1;
      }
    }
    std::size_t n = 0;
    std::uint64_t start = head;
    struct Publish {  // the batch's head goes out once, whatever happens
      RingState& r;
      std::uint64_t& head;
      std::uint64_t start;
      Held& held;
      ~Publish() {
        if (head != start) r.head.store(head, memory_order_seq_cst);
        held.unlock();
        after_consume(r);
      }
    } publish{r, head, start, held};
    while (n < max && count_of(head) != count_of(tail)) {
      std::uint64_t at = head;
      const RecordHeader* h = record_at(c, r, at);
      if (h->kind == RecordKind::sideband) break;  // delivered on its own, by the next call
      Reader rd(std::span<const std::byte>(reinterpret_cast<const std::byte*>(h + 1), h->size));
      try {
        fn(ctx, rd);
      } catch (...) {
        // A message that fails to decode is consumed only when it is the first of
        // the batch (and then its error is thrown); otherwise the batch ends
        // before it and the next call reports it, so no decoded message is lost.
        if (n > 0) break;
        head = pack(pos_of(at) + record_span(h->size), count_of(at) + 1);
        bump(c.n_received, 1);
        throw;
      }
      head = pack(pos_of(at) + record_span(h->size), count_of(at) + 1);
      ++n;
    }
    bump(c.n_received, n);
    return n;
  }
}

std::size_t ChannelEnd::release_dead_holders() const {
  Channel& c = ch();
  std::size_t freed = 0;
  for (std::uint32_t i = 0; i < c.h->nrings; ++i) {
    RingState& r = c.ring(static_cast<int>(i));
    for (SharedLock* l : {&r.plock, &r.clock}) {
      std::uint32_t cur = l->word.load(memory_order_relaxed);
      if (cur != 0 && c.owner_dead(cur >> 1) && l->word.compare_exchange_strong(cur, 0, memory_order_release)) {
        futex_wake(&l->word, INT_MAX);  // sleepers retake it now (it was contended or not: wake all)
        ++freed;
      }
    }
  }
  return freed;
}

bool ChannelEnd::poll(deadline_t deadline) const {
  Channel& c = ch();
  c.enter();
  RingState& r = rx_ring(c);
  // Like Python, true at end of file too, so that recv() reports it at once.
  // Not marked as a spinning consumer: poll() promises no receive.
  bool ready = wait_for(c, r.data, deadline, [&] { return messages_waiting(r); }, Gone::recv, true) ||
               c.peers_gone(false);
  // As disarm_poll: a sleeping poll() may have taken the futex_wake(1) meant for a
  // receiver, and receives nothing; pass it on. (A wake still in flight keeps
  // `pending` set, so this costs a system call only where one was taken.)
  if (ready && messages_waiting(r) && r.data.waiters.load(memory_order_seq_cst) != 0) notify(r.data, 1);
  return ready;
}

bool ChannelEnd::arm_poll(std::atomic<std::uint32_t>*& word, std::uint32_t& value) const {
  Channel& c = ch();
  c.enter();
  RingState& r = rx_ring(c);
  WaitWord& w = r.data;
  if (messages_waiting(r)) return false;
  // The sleeper's half of "wake-ups" above, as in wait_for: count ourselves, clear
  // `pending`, read seq, then re-check (seq_cst): a send that published before our
  // count is seen by the re-check, one after it finds the count and wakes seq.
  w.waiters.fetch_add(1, memory_order_seq_cst);
  w.pending.store(0, memory_order_seq_cst);
  std::uint32_t s = w.seq.load(memory_order_seq_cst);
  // Shutdown and a peer's close() store their state, then bump seq (wake_all), so
  // looking at them after the seq load misses neither. A peer killed outright wakes
  // nobody: the caller's sleep is sliced, as wait_for's is.
  if (messages_waiting(r) || shutdown_state(c) != kOpen || c.peers_gone(false)) {
    w.waiters.fetch_sub(1, memory_order_relaxed);
    return false;
  }
  word = &w.seq;
  value = s;
  return true;
}

void ChannelEnd::disarm_poll() const noexcept {
  RingState& r = ch_->ring(ch_->rx);  // armed: the end has a receive side
  r.data.waiters.fetch_sub(1, memory_order_seq_cst);
  r.data.pending.store(0, memory_order_seq_cst);
  // A futex_wake(1) for a record may have gone to us rather than to a receiver
  // asleep in recv(); we take nothing, so pass it on (the chain of after_consume).
  if (messages_waiting(r) && r.data.waiters.load(memory_order_seq_cst) != 0) notify(r.data, 1);
}

void ChannelEnd::shutdown(bool immediate, void (*drop)(Reader&)) const {
  Channel& c = ch();
  c.enter();
  if (c.h->kind != ChannelKind::queue) throw UsageError("mproc: shutdown() is a Queue's; a Connection has close()");
  std::uint32_t open = kOpen;
  c.h->shutdown.compare_exchange_strong(open, kShut, memory_order_seq_cst);
  RingState& r = c.ring(0);
  {
    // A send that saw "open" under the producer lock publishes before releasing
    // it (see send); taking it once here waits for such a send, and every later
    // one sees "shut". Qualified: ADL would find std::lock.
    (void)detail::lock(c, r.plock, std::nullopt);
    Held held(r.plock);
  }
  if (immediate && shutdown_state(c) != kDrained) {
    // Receive and drop what is there; the receive throws ShutDown once the ring is
    // empty (other consumers may take items meanwhile: those are theirs).
    std::size_t dropped = 0;
    try {
      for (;;) {
        recv(std::nullopt, [&](Reader& rd) {
          if (!drop) return;
          try {
            drop(rd);
          } catch (...) {  // a dropped item that does not decode is dropped all the same
          }
        });
        ++dropped;
      }
    } catch (const ShutDown&) {
    }
    if (r.joinable) {
      for (std::size_t k = 0; k < dropped; ++k) task_done();
    }
    c.h->shutdown.store(kDrained, memory_order_seq_cst);
  }
  c.wake_all();  // blocked senders and receivers, in every process
}

bool ChannelEnd::is_shutdown() const {
  Channel& c = ch();
  c.enter();
  return shutdown_state(c) != kOpen;
}

bool ChannelEnd::full() const {
  Channel& c = ch();
  c.enter();
  const RingState& r = c.ring(c.tx >= 0 ? c.tx : c.rx);
  return !room_hint(r, record_span(sizeof(std::uint64_t)), false);
}

// ---- JoinableQueue -----------------------------------------------------------------------

namespace {
std::uint32_t unfinished(const RingState& r) {
  return static_cast<std::uint32_t>((count_of(r.tail.load(memory_order_seq_cst)) - r.done.load(memory_order_seq_cst)) &
                                    kCountMask);
}
RingState& joinable_ring(Channel& c) {
  RingState& r = c.ring(0);
  if (!r.joinable) throw UsageError("mproc: task_done()/join() need a JoinableQueue");
  return r;
}
}  // namespace

void ChannelEnd::task_done() const {
  Channel& c = ch();
  c.enter();
  RingState& r = joinable_ring(c);
  std::uint32_t d = r.done.load(memory_order_relaxed);
  for (;;) {
    std::uint64_t put = count_of(r.tail.load(memory_order_acquire));
    if (((put - d) & kCountMask) == 0) {
      throw UsageError("mproc: JoinableQueue.task_done() called more times than there were items put");
    }
    std::uint32_t next = static_cast<std::uint32_t>((d + 1) & kCountMask);
    if (r.done.compare_exchange_weak(d, next, memory_order_seq_cst, memory_order_relaxed)) {
      if (((put - next) & kCountMask) == 0) notify(r.join, INT_MAX);
      return;
    }
  }
}

bool ChannelEnd::join(deadline_t deadline) const {
  Channel& c = ch();
  c.enter();
  RingState& r = joinable_ring(c);
  return wait_for(c, r.join, deadline, [&] { return unfinished(r) == 0; }, Gone::join);
}

}  // namespace mproc::detail
