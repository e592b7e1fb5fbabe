// src/mpi/link.hpp — the root's MPI thread over one communicator, shared by
// every pool over it (two threads probing one communicator would take each
// other's messages).
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "internal.hpp"
#include "mproc/mpi.hpp"

namespace mproc::mpi::detail {

class Link {
 public:
  /// Starts the thread. `comm` is freed by shutdown() when owns_comm.
  Link(MPI_Comm comm, int root, bool owns_comm);
  ~Link();
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  /// Sends kShutdown to every serving rank, waits until it has left, stops the
  /// thread. Idempotent. Pools must be gone.
  void shutdown();
  const std::vector<int>& servers() const noexcept { return servers_; }
  MPI_Comm comm() const noexcept { return comm_; }

 private:
  friend class RankBackend;
  struct Outgoing {
    int dest;
    int tag;
    std::vector<std::byte> bytes;
  };
  std::uint64_t add(RankBackend::Impl* pool);
  void remove(std::uint64_t id);
  void post(int dest, int tag, std::vector<std::byte> bytes);
  void wake() { wake_.notify_one(); }
  void run();
  void schedule(RankBackend::Impl& p, std::vector<Outgoing>& outs);
  void dispatch(int src, int tag, const std::vector<std::byte>& buf);
  std::shared_ptr<mproc::detail::JobSink> settle(int src, std::uint64_t pool, std::uint64_t job, bool chunk_done,
                                                 std::uint64_t first, std::uint64_t count,
                                                 const std::uint8_t* sent_fresh, std::vector<std::uint8_t>& fresh,
                                                 mproc::detail::ItemTiming& t);
  static std::vector<std::byte> pool_head(std::uint64_t id);

  MPI_Comm comm_;
  int root_;
  bool owns_comm_;
  std::vector<int> servers_;
  Sender sender_;  // the thread's own
  std::mutex mu_;  // everything below, and every RankBackend::Impl of this link
  std::condition_variable wake_;
  std::deque<Outgoing> control_;
  std::map<std::uint64_t, RankBackend::Impl*> pools_;
  std::uint64_t next_pool_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace mproc::mpi::detail
