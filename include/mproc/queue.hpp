// mproc/queue.hpp — Queue, SimpleQueue and JoinableQueue, mirroring
// multiprocessing.Queue, SimpleQueue and JoinableQueue.
//
//   mproc::Queue<std::string> q;            // maxsize 0: bounded by its 1 MiB ring only
//   mproc::Process p(producer, q);           // the child gets a handle to the same queue
//   p.start();
//   std::string s = q.get();                 // blocks; get(1s) throws mproc::Empty on timeout
//
// A queue is a handle: copies, copies sent to a Process (any start method) and
// copies inherited through fork all reach the same queue, a ring buffer in shared
// memory. Any number of processes and threads may put and get at once. Items are
// serialized with mproc's serializer (T must be mproc::Serializable), decoded
// straight from the ring; items larger than 64 KiB travel out of band in their own
// shared-memory segment. There is no feeder thread: put() has written the item into
// shared memory when it returns, so a process may exit right after put().
//
// Unlike Python, a blocked call does not hang forever when it cannot complete:
//   * get() on an empty queue throws EOFError, and put() on a full one
//     BrokenPipeError, once no other process can ever put (get): every other
//     process that held the queue has exited, been killed or called close(), and
//     no handle to it is on its way to another process. Detected within ~200 ms
//     (a death) or at once (close, exit). Only other processes count, and only
//     once one has held the queue: threads of a single process never see it.
// Details, capacity semantics and the design: docs/queue.md.
#pragma once

#include "mproc/detail/config.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <ranges>
#include <vector>

#include "mproc/detail/channel.hpp"
#include "mproc/detail/type_name.hpp"
#include "mproc/error.hpp"
#include "mproc/serial.hpp"

namespace mproc {

/// Size of a queue's ring buffer unless QueueOptions say otherwise.
inline constexpr std::size_t kDefaultQueueCapacity = std::size_t{1} << 20;

/// A Queue's tunables (Python has only maxsize).
struct QueueOptions {
  /// Most items the queue holds at once (Python's maxsize); 0: no item limit, only
  /// the byte capacity below. At most 8,388,607.
  std::size_t maxsize = 0;
  /// Bytes of the ring buffer, rounded up to a power of two in [4 KiB, 64 MiB].
  /// Each item takes its encoded size + 8 bytes, rounded up to 8 (an int: 16 bytes),
  /// or 32 bytes when it travels out of band. A put waits when the ring is full,
  /// even below maxsize.
  std::size_t capacity = kDefaultQueueCapacity;
  /// Items whose encoding is longer than this go out of band, in their own
  /// shared-memory segment (capped at about capacity / 4).
  std::size_t oob_threshold = std::size_t{64} << 10;
};

template <class T>
class Queue;
template <class T>
class JoinableQueue;
template <class T>
class SimpleQueue;

namespace detail {

enum class QueueFlavor : std::uint8_t { queue = 1, joinable = 2, simple = 3 };

/// The typed part of a queue handle: the item type's identity and the flavour,
/// checked when a handle is decoded.
template <class T>
void encode_queue(Writer& w, const ChannelEnd& ch, QueueFlavor flavor) {
  std::uint64_t tag = type_hash<T>();
  w.write(&tag, sizeof tag);
  w.write(&flavor, sizeof flavor);
  ch.encode(w);
}

template <class T>
ChannelEnd decode_queue(Reader& r, QueueFlavor flavor) {
  std::uint64_t tag;
  QueueFlavor f;
  r.read(&tag, sizeof tag);
  r.read(&f, sizeof f);
  if (tag != type_hash<T>() || f != flavor) {
    throw SerializationError("mproc: a queue handle was received as a different queue type (item type or "
                             "Queue/JoinableQueue/SimpleQueue differ)");
  }
  return ChannelEnd::decode(r);
}

}  // namespace detail

/// A multi-producer, multi-consumer FIFO queue between processes, like
/// multiprocessing.Queue. All members are safe to call from several threads and
/// several processes at once. FIFO order holds for the items of one producer
/// thread; items of different producers interleave in the order they were put.
template <class T>
class Queue {
 public:
  using value_type = T;

  /// A new, empty queue holding at most `maxsize` items (0: only the default
  /// 1 MiB ring bounds it). Throws UsageError for a maxsize above 8,388,607,
  /// std::system_error if shared memory or sockets are refused.
  explicit Queue(std::size_t maxsize = 0) : Queue(QueueOptions{.maxsize = maxsize}) {}
  explicit Queue(const QueueOptions& options) : Queue(options, false) {}

  /// Puts an item, blocking while the queue is full. Throws BrokenPipeError if it
  /// is full and no other process can take from it any more; UsageError after
  /// close(); whatever serializing the item throws.
  void put(const T& item) { put_until(item, std::nullopt, "Queue.put()"); }
  /// Blocks at most `timeout`; throws Full if the queue is still full then.
  template <class Rep, class Period>
  void put(const T& item, std::chrono::duration<Rep, Period> timeout) {
    put_until(item, detail::timeout_deadline(timeout, "Queue.put()"), "Queue.put()");
  }
  /// Puts only if there is room now (the lock may be waited for briefly);
  /// throws Full otherwise.
  void put_nowait(const T& item) { put_until(item, detail::no_wait(), "Queue.put_nowait()"); }

  /// Puts every item of the range, in order, blocking as needed (beyond Python).
  /// Items are written in batches under one lock: much faster than put() in a loop
  /// for small items. Not atomic: other producers' items may interleave between
  /// batches. Throws like put().
  template <std::ranges::input_range R>
    requires std::convertible_to<std::ranges::range_reference_t<R>, const T&>
  void put_many(R&& items) {
    Writer& w = detail::scratch_writer();
    struct Give {
      Writer& w;
      ~Give() { detail::release_scratch_writer(w); }
    } give{w};
    std::vector<std::size_t> ends;
    for (const T& item : items) {
      std::size_t start = w.size();
      dump(w, item);
      if (!w.fds().empty()) {  // items carrying fds (handles) go one by one
        flush_batch(w, ends);  // the items before it
        ch_.send(w.bytes().subspan(start), w.fds(), std::nullopt);
        w.clear();
        continue;
      }
      ends.push_back(w.size());
      if (w.size() >= (std::size_t{1} << 20)) {
        flush_batch(w, ends);
        w.clear();
      }
    }
    flush_batch(w, ends);
  }

  /// Removes and returns the next item, blocking while the queue is empty.
  /// Throws EOFError if it is empty and no other process can put any more;
  /// UsageError after close(); SerializationError if the item cannot be decoded.
  T get() { return get_until(std::nullopt, "Queue.get()"); }
  /// Blocks at most `timeout`; throws Empty if nothing came.
  template <class Rep, class Period>
  T get(std::chrono::duration<Rep, Period> timeout) {
    return get_until(detail::timeout_deadline(timeout, "Queue.get()"), "Queue.get()");
  }
  /// Returns an item if one is there now; throws Empty otherwise.
  T get_nowait() { return get_until(detail::no_wait(), "Queue.get_nowait()"); }

  /// Beyond Python: waits for at least one item, then returns up to `max` of those
  /// already there, taken under one lock. Throws like get().
  std::vector<T> get_many(std::size_t max) { return get_many_until(max, std::nullopt); }
  /// Waits at most `timeout` for the first item; returns an empty vector if none came.
  template <class Rep, class Period>
  std::vector<T> get_many(std::size_t max, std::chrono::duration<Rep, Period> timeout) {
    return get_many_until(max, detail::timeout_deadline(timeout, "Queue.get_many()"));
  }

  /// Items in the queue now. Exact only while no one else puts or gets
  /// (Python's qsize is approximate too). Non-blocking.
  std::size_t qsize() const { return ch_.size(); }
  bool empty() const { return ch_.empty(); }
  /// Whether a put of a small item would block now.
  bool full() const { return ch_.full(); }
  /// The item limit (0: none) — Python's maxsize.
  std::size_t maxsize() const { return ch_.max_items(); }
  /// The ring's size in bytes.
  std::size_t capacity() const { return ch_.capacity(); }

  /// Python 3.13's Queue.shutdown(immediate), for every process that holds the
  /// queue: put() (put_nowait, put_many) throws ShutDown from now on; get() returns
  /// what is left, then throws ShutDown instead of blocking (get_nowait, get(timeout)
  /// and get_many too, instead of Empty). `immediate`: the items left are dropped
  /// (decoded and destroyed where they carry handles, so queues, pipe ends and
  /// shared memory inside them are released; for a JoinableQueue each counts as
  /// done, so join() returns) and get() throws ShutDown at once. Threads blocked in
  /// put()/get(), here and in other processes, wake up and throw ShutDown.
  /// Idempotent; a later shutdown(true) still drains. Unlike close(), which is this
  /// process's, shutdown is the queue's. Blocks only for the queue's internal locks.
  void shutdown(bool immediate = false) { ch_.shutdown(immediate, &drop_item); }
  /// Whether shutdown() was called, by any process (Python's is_shutdown). Non-blocking.
  bool is_shutdown() const { return ch_.is_shutdown(); }

  /// This process will use the queue no more (Python: will put no more): every
  /// copy of the handle in this process becomes closed, further put/get here throw
  /// UsageError, threads blocked on it here wake up with UsageError, and other
  /// processes stop counting this one as a peer. Items already put stay in the
  /// queue for the others. Idempotent.
  void close() { ch_.close(); }
  bool closed() const { return ch_.closed(); }

  /// The channel underneath (statistics, tests).
  const detail::ChannelEnd& channel() const noexcept { return ch_; }

 protected:
  Queue(const QueueOptions& o, bool joinable)
      : ch_(detail::ChannelEnd::create_queue(
            {.capacity = o.capacity, .max_items = o.maxsize, .oob_threshold = o.oob_threshold, .joinable = joinable})) {
    detail::diagnose<T>();
  }
  explicit Queue(detail::ChannelEnd ch) : ch_(std::move(ch)) { detail::diagnose<T>(); }

  /// shutdown(true)'s drop: an item that carries descriptors may hold handles
  /// (a queue counts one in flight until it is decoded), so it is decoded and
  /// destroyed as a received one would be; one without is only skipped.
  static void drop_item(Reader& r) {
    if (r.fd_count() > 0) (void)detail::load_message<T>(r);
  }

  void put_until(const T& item, detail::deadline_t deadline, const char* call) {
    detail::with_encoded(item, [&](const Writer& w) { send_one(w, deadline, call); });
  }
  void send_one(const Writer& w, detail::deadline_t deadline, const char* call) {
    if (!ch_.send(w, deadline)) throw Full(std::string("mproc: ") + call + ": the queue is full");
  }
  void flush_batch(const Writer& w, std::vector<std::size_t>& ends) {
    if (ends.empty()) return;
    std::size_t n = ch_.send_many(w.bytes(), ends, std::nullopt);
    (void)n;  // without a deadline every message is sent (or an error thrown)
    ends.clear();
  }
  T get_until(detail::deadline_t deadline, const char* call) {
    std::optional<T> out;
    if (!ch_.recv(deadline, [&](Reader& r) { out.emplace(detail::load_message<T>(r)); })) {
      throw Empty(std::string("mproc: ") + call + ": the queue is empty");
    }
    return std::move(*out);
  }
  std::vector<T> get_many_until(std::size_t max, detail::deadline_t deadline) {
    std::vector<T> out;
    ch_.recv_many(max, deadline, [&](Reader& r) { out.push_back(detail::load_message<T>(r)); });
    return out;
  }

  friend struct codec<Queue<T>>;
  friend struct codec<SimpleQueue<T>>;
  friend class SimpleQueue<T>;
  detail::ChannelEnd ch_;
};

/// A Queue whose consumers report each item done, like multiprocessing.JoinableQueue.
template <class T>
class JoinableQueue : public Queue<T> {
 public:
  explicit JoinableQueue(std::size_t maxsize = 0) : JoinableQueue(QueueOptions{.maxsize = maxsize}) {}
  explicit JoinableQueue(const QueueOptions& options) : Queue<T>(options, true) {}

  /// Marks one item taken with get() as processed. Throws UsageError if called
  /// more times than items were put (Python's ValueError). Non-blocking.
  void task_done() { this->ch_.task_done(); }
  /// Blocks until every item ever put has been task_done()'d. Throws
  /// BrokenPipeError if tasks are unfinished and every other process that held
  /// the queue is gone (see Queue). At most 16,777,215 tasks may be unfinished.
  void join() { this->ch_.join(std::nullopt); }
  /// Blocks at most `timeout`; returns false if tasks are still unfinished then.
  template <class Rep, class Period>
  bool join(std::chrono::duration<Rep, Period> timeout) {
    return this->ch_.join(detail::timeout_deadline(timeout, "JoinableQueue.join()"));
  }

 private:
  friend struct codec<JoinableQueue<T>>;
  explicit JoinableQueue(detail::ChannelEnd ch) : Queue<T>(std::move(ch)) {}
};

/// An unbounded (but for its ring) queue with only put, get, empty and close, like
/// multiprocessing.SimpleQueue. Same mechanism and guarantees as Queue.
template <class T>
class SimpleQueue {
 public:
  using value_type = T;
  SimpleQueue() : q_(QueueOptions{}) {}
  explicit SimpleQueue(const QueueOptions& options) : q_(options) {}

  /// Blocks while the ring is full; throws like Queue::put().
  void put(const T& item) { q_.put(item); }
  /// Blocks while empty; throws like Queue::get().
  T get() { return q_.get(); }
  bool empty() const { return q_.empty(); }
  void close() { q_.close(); }

 private:
  friend struct codec<SimpleQueue<T>>;
  explicit SimpleQueue(Queue<T> q) : q_(std::move(q)) {}
  Queue<T> q_;
};

/// Queues travel as handles: the receiving process maps the same ring.
template <class T>
struct codec<Queue<T>> {
  static void encode(Writer& w, const Queue<T>& q) {
    detail::encode_queue<T>(w, q.ch_, detail::QueueFlavor::queue);
  }
  static Queue<T> decode(Reader& r) { return Queue<T>(detail::decode_queue<T>(r, detail::QueueFlavor::queue)); }
};

template <class T>
struct codec<JoinableQueue<T>> {
  static void encode(Writer& w, const JoinableQueue<T>& q) {
    detail::encode_queue<T>(w, q.ch_, detail::QueueFlavor::joinable);
  }
  static JoinableQueue<T> decode(Reader& r) {
    return JoinableQueue<T>(detail::decode_queue<T>(r, detail::QueueFlavor::joinable));
  }
};

template <class T>
struct codec<SimpleQueue<T>> {
  static void encode(Writer& w, const SimpleQueue<T>& q) {
    detail::encode_queue<T>(w, q.q_.ch_, detail::QueueFlavor::simple);
  }
  static SimpleQueue<T> decode(Reader& r) {
    return SimpleQueue<T>(Queue<T>(detail::decode_queue<T>(r, detail::QueueFlavor::simple)));
  }
};

}  // namespace mproc
