// src/mpi/internal.hpp — what the root's link (link.cpp) and the serving ranks
// (serve.cpp) share: the message tags and layouts, and the non-blocking sender.
//
// Every message is mproc's own bytes sent as MPI_BYTE, one message per MPI
// message. A fixed head (a plain struct, memcpy'd: every rank runs the same
// executable on the same architecture, which the task encoding needs anyway)
// is followed by the variable part. docs/cluster.md, "Messages".
#pragma once

#include <mpi.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>
#include <thread>
#include <vector>

#include "mproc/serial.hpp"

namespace mproc::mpi::detail {

enum Tag : int {
  // root -> serving rank
  kOpen = 101,   // OpenHead, then the encoded initializer
  kChunk,        // ChunkHead, offsets, then the task message
  kClose,        // PoolHead: finish the queued work, then stop the rank's workers
  kTerminate,    // PoolHead: stop now
  kShutdown,     // empty: the root is done; the serving loop returns
  // serving rank -> root
  kOpened = 201,  // OpenedHead
  kOpenFailed,    // PoolHead, then an ExceptionInfo
  kBatch,         // BatchHead, status bytes, fresh bytes, then the results
  kFailure,       // FailureHead, then an ExceptionInfo
  kClosed,        // PoolHead: the rank's workers for this pool are gone
};

struct PoolHead {
  std::uint64_t pool;
};
struct OpenHead {
  std::uint64_t pool;
  std::int32_t processes;  // per rank; 0: the cores this rank owns
  std::int32_t method;     // StartMethod
  std::int32_t retries;
  std::uint64_t maxtasksperchild;
  std::uint64_t max_memory_mb;
  std::int64_t timeout_ns;  // < 0: none
};
struct OpenedHead {
  std::uint64_t pool;
  std::int32_t workers;
  std::int32_t pid;  // the serving rank's pid (tools and tests)
};
struct ChunkHead {
  std::uint64_t pool;
  std::uint64_t job;
  std::uint64_t first;
  std::uint64_t prefix;
  std::uint64_t stride;
  std::uint64_t offsets;  // how many offsets follow (0 when stride != 0)
};
struct BatchHead {
  std::uint64_t pool;
  std::uint64_t job;
  std::uint64_t first;
  std::uint64_t count;
  std::int64_t start_ns;
  std::int64_t end_ns;
  std::uint32_t worker;
  std::uint8_t has_status;
  std::uint8_t has_fresh;
  std::uint8_t chunk_done;  // the last item of its chunk: the rank has room for another
  std::uint8_t pad = 0;
};
struct FailureHead {
  std::uint64_t pool;
  std::uint64_t job;
  std::uint64_t index;
  std::int64_t start_ns;
  std::int64_t end_ns;
  std::uint32_t worker;
  std::int32_t exitcode;
  std::uint8_t kind;  // mproc::detail::Failure
  std::uint8_t chunk_done;
  std::uint8_t pad[2] = {};
};

template <class H>
void put_head(Writer& w, const H& h) {
  w.write(&h, sizeof h);
}
template <class H>
H get_head(Reader& r) {
  H h;
  r.read(&h, sizeof h);
  return h;
}

/// Non-blocking sends from one thread: each message's bytes live until MPI says
/// the send is complete. (Blocking sends could deadlock: the root sending a big
/// chunk to a rank that is itself blocked sending results back.)
class Sender {
 public:
  explicit Sender(MPI_Comm comm) : comm_(comm) {}
  Sender(const Sender&) = delete;
  Sender& operator=(const Sender&) = delete;
  ~Sender();
  void post(int dest, int tag, std::vector<std::byte> bytes);
  /// Retires completed sends; returns whether any completed.
  bool progress();
  bool idle() const noexcept { return inflight_.empty(); }
  /// Waits for every send to complete.
  void drain();

 private:
  struct InFlight {
    MPI_Request req = MPI_REQUEST_NULL;
    std::vector<std::byte> bytes;
  };
  MPI_Comm comm_;
  std::list<InFlight> inflight_;  // a list: the buffers must not move
};

/// Receives one waiting message from `source` (MPI_ANY_SOURCE for any) into
/// `buf`; false if none is waiting.
bool try_recv(MPI_Comm comm, int source, MPI_Status& st, std::vector<std::byte>& buf);

/// Throws std::runtime_error naming `what` unless rc is MPI_SUCCESS.
void check(int rc, const char* what);

/// How an MPI loop waits when it found nothing to do. For kSpin after its last
/// activity it only yields the core between polls (polling MPI is cheap, and an
/// MPI message does not wake a sleeper: a sleep on the receiving side is latency
/// the sender cannot cut short); then it sleeps, 20 µs at first, growing to 1 ms,
/// on the loop's condition variable, which local events (new work on the root, a
/// local worker's results on a serving rank) notify at once.
class Backoff {
 public:
  void reset() noexcept { idle_since_ = 0; }
  void wait(std::unique_lock<std::mutex>& lock, std::condition_variable& cv) {
    auto now = std::chrono::steady_clock::now();
    if (idle_since_ == 0) {
      idle_since_ = now.time_since_epoch().count();
      sleeps_ = 0;
    }
    if (now.time_since_epoch().count() - idle_since_ < kSpin.count()) {
      lock.unlock();
      std::this_thread::yield();
      lock.lock();
      return;
    }
    auto us = std::chrono::microseconds(std::min<long>(1000, 20L << std::min(sleeps_++, 6u)));
    cv.wait_for(lock, us);
  }

 private:
  static constexpr std::chrono::nanoseconds kSpin{200'000};
  std::int64_t idle_since_ = 0;  // steady_clock ticks (ns); 0: busy
  unsigned sleeps_ = 0;
};

/// The serving loop (serve.cpp): serves pools for `root` on `comm` until it
/// sends kShutdown. `node_ranks`: how many ranks share this node (each rank's
/// default worker count is its share of the node's cores).
void serve_loop(MPI_Comm comm, int root, int node_ranks);
/// How many ranks of `comm` share this node. Collective over `comm`.
int node_ranks(MPI_Comm comm);

}  // namespace mproc::mpi::detail
