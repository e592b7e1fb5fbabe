// mproc/detail/channel.hpp — the one message channel under Queue, Pipe and the pool.
//
// A channel is one or two rings of variable-length byte records in a shared
// memory Segment (memfd), plus a SOCK_SEQPACKET socketpair for what cannot live in
// the ring: file descriptors a message carries, and messages larger than the
// out-of-band threshold, which travel in their own memfd Segment whose fd goes
// through the socket, in ring order. See docs/queue.md ("Design") for the layout,
// the locking and what is detected when a process dies.
//
// ChannelEnd is a handle: copies in one process share one mapping and one
// attachment. All members are safe to call from several threads and processes.
// The typed wrappers (Queue<T>, Connection<T>) serialize with mproc::dump and
// decode with mproc::load straight from the ring, through the callbacks below.
#pragma once

#include "mproc/detail/config.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <type_traits>
#include <utility>

#include "mproc/detail/futex.hpp"
#include "mproc/detail/timeout.hpp"  // timeout_deadline
#include "mproc/error.hpp"
#include "mproc/serial.hpp"

namespace mproc::detail {

/// Tunables of one channel. Validated (and rounded) by ChannelEnd::create_*.
struct ChannelOptions {
  /// Bytes of each ring; rounded up to a power of two in [4 KiB, 64 MiB].
  std::size_t capacity = std::size_t{1} << 20;
  /// Most records a ring holds at once (Queue's maxsize); 0: only the bytes bound it.
  std::size_t max_items = 0;
  /// Messages whose encoding is longer go out of band (capped at capacity / 4).
  std::size_t oob_threshold = std::size_t{64} << 10;
  /// Keep Python's unfinished-task count (JoinableQueue).
  bool joinable = false;
};

/// Bytes of a message that ChannelEnd::recv's claim callback sees, at most. An
/// out-of-band message keeps a copy of this many in its ring record, so that the
/// claim can run before the record leaves the ring (see docs/queue.md).
inline constexpr std::size_t kClaimPrefixBytes = 64;

/// How long a waiter spins before it sleeps, unless ChannelEnd::set_spin says
/// otherwise. A futex sleep and wake-up costs ~1.6 µs each way on a quiet
/// machine (far more on a loaded VM); a peer that answers within the spin is
/// caught without either. Kept short: where cores are scarce a spinning waiter
/// takes the core its peer needs.
inline constexpr std::int64_t kDefaultSpinNs = 4'000;

/// What the channel is, for error messages and for how peer loss is detected.
enum class ChannelKind : std::uint8_t {
  queue,  // many processes put and get; peers are tracked in the segment
  pipe,   // two ends; a peer is gone when its socket is closed in every process
};

/// Counters of this process's traffic on one ChannelEnd (for tests and benchmarks).
struct ChannelStats {
  std::uint64_t sent = 0, sent_oob = 0, received = 0, received_oob = 0;
  /// Ring locks this process took over from a dead holder after waiting out a
  /// 100 ms slice (release_dead_holders() spares that wait).
  std::uint64_t slow_takeovers = 0;
  /// Out-of-band messages sent in a recycled segment (one kept from an earlier
  /// message), and the segments this end's cache created in this process.
  std::uint64_t sent_recycled = 0, oob_segments_created = 0;
};

class Channel;  // process-local state; src/channel/channel.cpp

/// One end of a channel: the whole queue, or one end of a pipe.
class ChannelEnd {
 public:
  ChannelEnd() = default;

  /// A new queue channel (one ring). Throws UsageError for bad options,
  /// std::system_error if memory or sockets are refused.
  static ChannelEnd create_queue(const ChannelOptions& options);
  /// A new pipe: duplex (two rings) or one-way (first = receive-only end,
  /// second = send-only end).
  static std::pair<ChannelEnd, ChannelEnd> create_pipe(const ChannelOptions& options, bool duplex);

  /// Sends one message (bytes plus the fds it carries, borrowed). Blocks while
  /// the ring is full, until the deadline: returns false if it passed first.
  /// Throws BrokenPipeError when no receiver can ever take it (see docs),
  /// UsageError after close() or on a receive-only end.
  bool send(std::span<const std::byte> bytes, std::span<const int> fds, deadline_t deadline) const;
  bool send(const Writer& w, deadline_t deadline) const { return send(w.bytes(), w.fds(), deadline); }
  /// Sends the messages buf[ends[i-1], ends[i]) in order, as many per lock as fit.
  /// Messages without fds only. Returns how many went before the deadline.
  std::size_t send_many(std::span<const std::byte> buf, std::span<const std::size_t> ends,
                        deadline_t deadline) const;

  /// Receives one message and calls f(Reader&) on it (the Reader sees the
  /// message's bytes and fds, valid only during the call; an exception from f
  /// still consumes the message). f runs under the consumer lock, and the message
  /// leaves the channel only when f has returned: a receiver dying before that
  /// (for out-of-band messages too: while their segment is read) leaves it to the
  /// next one. Blocks until the deadline: false if it passed with nothing to
  /// receive. Throws EOFError when nothing can arrive any more.
  template <class F>
  bool recv(deadline_t deadline, F&& f) const {
    return recv_erased(deadline, &call<F>, const_cast<void*>(static_cast<const void*>(&f)));
  }
  /// As recv(deadline, f), with a claim step first: claim(Reader& prefix) is
  /// called under the consumer lock, before the message leaves the ring, with its
  /// first min(size, kClaimPrefixBytes) bytes (no fds); then f(Reader&) with the
  /// whole message, as above. Crash order: a receiver that dies inside claim leaves
  /// the message in the ring, and the next receiver gets it (and runs claim on it
  /// again), and so does one that dies inside f; once f has returned the message
  /// is gone, so what must survive this process dying while it holds (or runs) the
  /// message is recorded in claim. An exception from claim consumes the message
  /// without calling f. The pool's workers use this to record which chunk they hold.
  template <class C, class F>
  bool recv(deadline_t deadline, C&& claim, F&& f) const {
    return recv_erased(deadline, &call<F>, const_cast<void*>(static_cast<const void*>(&f)), &call<C>,
                       const_cast<void*>(static_cast<const void*>(&claim)));
  }
  /// Receives up to `max` messages (at least one, waiting until the deadline
  /// for it), calling f(Reader&) on each. Returns how many.
  template <class F>
  std::size_t recv_many(std::size_t max, deadline_t deadline, F&& f) const {
    return recv_many_erased(max, deadline, &call<F>, const_cast<void*>(static_cast<const void*>(&f)));
  }
  /// What recv_spinning() did.
  enum class Spun : std::uint8_t { received, declined, idle, stopped };
  /// Receives one message without sleeping or waiting for a lock, for a thread
  /// that wants its own answer sooner than a wake-up brings it (the pool's result
  /// waiters). Spins for up to `spin`, marked as a spinning consumer (senders skip
  /// waking sleepers meanwhile), until a message is at the head of the ring, then
  /// offers it to take(Reader&) under the consumer lock: true receives it (it is
  /// consumed, also if take throws), false leaves it to the other consumers
  /// (`declined`; a sleeping one is woken for it). Side-band messages are always
  /// declined. stop() is polled while spinning (`stopped`); `idle`: the spin
  /// ended with nothing, or with the lock held by another consumer throughout.
  template <class Take, class Stop>
  Spun recv_spinning(std::chrono::nanoseconds spin, Take&& take, Stop&& stop) const {
    return recv_spinning_erased(spin.count(), &erased_call<Take, bool, Reader&>,
                                const_cast<void*>(static_cast<const void*>(&take)), &erased_call<Stop, bool>,
                                const_cast<void*>(static_cast<const void*>(&stop)));
  }
  /// Waits until a message can be received, or the peer is gone (then a recv
  /// throws EOFError at once). False on timeout.
  bool poll(deadline_t deadline) const;
  /// For a thread that sleeps on several channels at once (mproc::wait, with
  /// futex_waitv): does what poll() does before it sleeps. Returns false, arming
  /// nothing, when poll() would be true now (a message, the peer gone, shut down);
  /// else counts this thread as a sleeper on the receive side, so that senders wake
  /// its futex, and sets `word`/`value`: the caller sleeps while *word == value
  /// (woken by a send, a close or a shutdown, here or in any process), then calls
  /// disarm_poll() exactly once. Readiness is re-checked after the futex value is
  /// read, so a send between the two is never lost. Throws as poll().
  bool arm_poll(std::atomic<std::uint32_t>*& word, std::uint32_t& value) const;
  /// Ends what a true arm_poll() began. If a message is waiting and other
  /// receivers sleep, wakes one: this sleeper may have taken the wake-up a receiver
  /// needed, and it receives nothing itself. Non-blocking; never throws.
  void disarm_poll() const noexcept;

  /// Records in the ring now (approximate while others run). Non-blocking.
  std::size_t size() const;
  bool empty() const { return size() == 0; }
  /// Whether a small message would have to wait now.
  bool full() const;
  std::size_t max_items() const;
  std::size_t capacity() const;
  std::size_t oob_threshold() const;

  /// Closes this end in this process (every copy here): further calls throw
  /// UsageError; other processes see this one leave. Idempotent.
  void close() const;
  bool closed() const;
  bool readable() const;
  bool writable() const;

  /// Queue.shutdown() (queues only, else UsageError): from now on, in every process,
  /// sends throw ShutDown, and receives throw it once the ring is empty (instead of
  /// waiting, or of a timeout's false); poll() is true. A send that had passed its
  /// check has published when this returns. With `immediate` the items left are
  /// received and dropped, `drop(Reader&)` (if given) called on each (its exceptions
  /// ignored; fds and out-of-band segments are closed either way), each counted as
  /// done for a JoinableQueue; then receives throw at once. Wakes every blocked
  /// sender and receiver, here and in other processes. Idempotent; a later immediate
  /// call still drains. Blocks only for the ring locks. Safe from any thread/process.
  void shutdown(bool immediate, void (*drop)(Reader&) = nullptr) const;
  /// Whether shutdown() was called on this queue (by any process). Non-blocking.
  bool is_shutdown() const;

  /// JoinableQueue: one item processed; UsageError when called more often than
  /// items were put.
  void task_done() const;
  /// JoinableQueue: waits until every item put has been task_done()'d. False on timeout.
  bool join(deadline_t deadline) const;

  ChannelStats stats() const;
  ChannelKind kind() const;

  /// How long a blocking call on this end, in this process, spins before it
  /// sleeps (kDefaultSpinNs unless set). A longer spin turns the futex wake-up
  /// (several µs) into a cache-line hand-off, but only pays where the spinner has
  /// a core of its own; the pool sets it from the machine's core count.
  void set_spin(std::chrono::nanoseconds spin) const;

  /// Frees every ring lock of this channel held by a process that is dead, and
  /// wakes its waiters: for a caller that knows of a death at once (the pool's
  /// supervisor, after reaping a worker), so the next holder does not wait out
  /// the 100 ms slice after which waiters check the holder themselves. Safe at
  /// any time (every critical section keeps the ring consistent at each step, as
  /// for that takeover). Returns how many locks it freed.
  std::size_t release_dead_holders() const;

  /// The descriptors this end uses after it was set up (its side-band sockets),
  /// for a process that checks they are still open (the pool's workers, after
  /// each task). Non-blocking.
  std::vector<int> fds() const;
  /// Moves those descriptors to numbers >= floor (F_DUPFD_CLOEXEC, then the old
  /// ones are closed), for every copy of this end in this process: the pool's
  /// workers move their own out of the range a task's "close every descriptor
  /// 3..1024" sweeps. Returns false, changing nothing, when the descriptor limit
  /// refuses (raise RLIMIT_NOFILE first). Not while another thread uses this end.
  bool move_fds_above(int floor) const;

  /// Identity of the shared channel (equal for every handle of it, in any process).
  std::uint64_t id() const;
  explicit operator bool() const noexcept { return ch_ != nullptr; }

  /// Handle transport (used by the codecs of Queue and Connection).
  void encode(Writer& w) const;
  static ChannelEnd decode(Reader& r);

 private:
  using RecvFn = void (*)(void* ctx, Reader& r);
  template <class F>
  static void call(void* ctx, Reader& r) {
    (*static_cast<std::remove_reference_t<F>*>(ctx))(r);
  }
  using TakeFn = bool (*)(void* ctx, Reader& r);
  using StopFn = bool (*)(void* ctx);
  Spun recv_spinning_erased(std::int64_t spin_ns, TakeFn take, void* take_ctx, StopFn stop, void* stop_ctx) const;
  bool recv_erased(deadline_t deadline, RecvFn fn, void* ctx, RecvFn claim = nullptr, void* claim_ctx = nullptr) const;
  std::size_t recv_many_erased(std::size_t max, deadline_t deadline, RecvFn fn, void* ctx) const;
  Channel& ch() const;

  explicit ChannelEnd(std::shared_ptr<Channel> ch) : ch_(std::move(ch)) {}
  std::shared_ptr<Channel> ch_;
};

/// A deadline that has already passed: "do not block".
inline deadline_t no_wait() { return std::chrono::steady_clock::time_point{}; }

/// A per-thread Writer for encoding one message, reused across calls (its buffer
/// is kept unless it grew past 64 MiB). Not reentrant: finish with it before
/// encoding the next message on this thread.
Writer& scratch_writer();
/// Gives the scratch writer back, releasing its buffer if it grew too large.
void release_scratch_writer(Writer& w) noexcept;

/// Encodes v into the thread's scratch writer and calls f(const Writer&) with it.
template <class T, class F>
decltype(auto) with_encoded(const T& v, F&& f) {
  Writer& w = scratch_writer();
  struct Give {
    Writer& w;
    ~Give() { release_scratch_writer(w); }
  } give{w};
  dump(w, v);
  return f(static_cast<const Writer&>(w));
}

/// Decodes one T that must use all of the message.
template <class T>
T load_message(Reader& r) {
  T v = load<T>(r);
  if (!r.at_end()) throw SerializationError("mproc: received message has trailing bytes (sent as another type?)");
  return v;
}

}  // namespace mproc::detail
