// mproc/detail/result_receiver.hpp — how a thread waiting on a process pool's
// result receives it itself (part of the backend seam, mproc/detail/
// pool_backend.hpp; apart so that the results header, mproc/results.hpp, needs
// neither the backend nor the serializer). The local process engine's
// (PoolCore's); another backend's PoolBackend::receiver() may be null.
#pragma once

#include "mproc/detail/config.hpp"

#include <atomic>
#include <cstdint>

#include "mproc/detail/futex.hpp"  // erased_call

namespace mproc::detail {

class PoolCore;

/// Lets a thread that waits for a job's results receive them itself, straight
/// off the pool's result channel, instead of being woken by the pool's result
/// thread (one wake-up fewer per round trip: docs/pool.md, "Latency"). One per
/// pool, shared with the results it fills; detached when the pool goes.
class ResultReceiver {
 public:
  /// While stop() is false and this job's result messages arrive, each within
  /// spin_ns: receives and delivers them on this thread, as the result thread
  /// would (results, failures, callbacks). Messages of other jobs and anything
  /// but results are left to the result thread. Returns whether it spun (the
  /// caller should sleep next rather than spin again); false if it could not
  /// start: another thread is receiving, or the pool is gone.
  template <class Stop>
  bool receive(std::uint64_t job, Stop&& stop, std::int64_t spin_ns) {
    return receive_erased(job, &erased_call<Stop, bool>, const_cast<void*>(static_cast<const void*>(&stop)), spin_ns);
  }

 private:
  friend class PoolCore;
  bool receive_erased(std::uint64_t job, bool (*stop)(void*), void* ctx, std::int64_t spin_ns);
  std::atomic<void*> impl_{nullptr};  // PoolCore::Impl; null once detached
  std::atomic<int> active_{0};        // threads inside receive_erased
};

}  // namespace mproc::detail
