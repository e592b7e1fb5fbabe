// src/mpi/serve.cpp — a serving rank: runs the root's chunks in this rank's own
// local pool of worker processes (mproc::detail::PoolCore), and sends every
// outcome back. Two levels: the rank is the unit MPI knows about, its local
// workers the unit of failure (a crash in a task is that task's
// WorkerLostError, handled here exactly as in a local pool). docs/cluster.md.
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <string>

#include "internal.hpp"
#include "mproc/detail/pool_core.hpp"
#include "mproc/error.hpp"
#include "mproc/process.hpp"

namespace mproc::mpi::detail {
namespace {

using mproc::detail::ChunkMessage;
using mproc::detail::ExceptionInfo;
using mproc::detail::Failure;
using mproc::detail::ItemTiming;
using mproc::detail::JobSink;
using mproc::detail::PoolConfig;
using mproc::detail::PoolCore;

struct Outgoing {
  int tag;
  std::vector<std::byte> bytes;
  std::uint64_t done_pool = 0;  // nonzero: this message ends a chunk of that pool
};

/// What the local result threads hand the MPI thread.
struct Outbox {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Outgoing> queue;
  void push(Outgoing o) {
    {
      std::lock_guard lock(mu);
      queue.push_back(std::move(o));
    }
    cv.notify_one();
  }
};

/// One chunk of the root's job, run as one job of the local pool: relays each
/// outcome to the root under the root's job id, and marks the message that
/// ends the chunk.
class RelaySink final : public JobSink {
 public:
  RelaySink(Outbox& out, std::shared_ptr<std::atomic<bool>> muted, std::uint64_t pool, std::uint64_t job,
            std::uint64_t count)
      : out_(out), muted_(std::move(muted)), pool_(pool), job_(job), left_(count) {}

  void on_batch(std::uint64_t first, std::uint64_t count, const std::uint8_t* status, const std::uint8_t* fresh,
                Reader& payload, const ItemTiming& t) noexcept override {
    try {
      std::uint64_t n_fresh = 0;
      for (std::uint64_t k = 0; k < count; ++k) n_fresh += mproc::detail::fresh_at(fresh, k) ? 1 : 0;
      bool done = finish(n_fresh);
      if (muted_->load(std::memory_order_relaxed)) return;
      BatchHead h{pool_, job_, first, count, t.start_ns, t.end_ns, t.worker, std::uint8_t(status != nullptr),
                  std::uint8_t(fresh != nullptr), std::uint8_t(done)};
      Writer w;
      std::size_t rest = payload.remaining();
      w.reserve(sizeof h + 2 * count + rest);
      put_head(w, h);
      if (status) w.write(status, count);
      if (fresh) w.write(fresh, count);
      w.write(payload.take(rest), rest);
      out_.push({kBatch, std::move(w).take_bytes(), done ? pool_ : 0});
    } catch (...) {
      // Out of memory: nothing sensible is left to do for the root's job.
      std::terminate();
    }
  }
  void on_failure(std::uint64_t index, Failure kind, const ExceptionInfo& info, int exitcode,
                  const ItemTiming& t) noexcept override {
    try {
      bool done = finish(1);
      if (muted_->load(std::memory_order_relaxed)) return;
      FailureHead h{pool_, job_, index, t.start_ns, t.end_ns, t.worker, exitcode, std::uint8_t(kind),
                    std::uint8_t(done)};
      Writer w;
      put_head(w, h);
      dump(w, info);
      out_.push({kFailure, std::move(w).take_bytes(), done ? pool_ : 0});
    } catch (...) {
      std::terminate();
    }
  }

 private:
  bool finish(std::uint64_t n) {
    std::lock_guard lock(mu_);
    left_ -= std::min(left_, n);
    return left_ == 0;
  }
  Outbox& out_;
  std::shared_ptr<std::atomic<bool>> muted_;  // set when the pool is terminated: nothing more is sent
  std::uint64_t pool_, job_;
  std::mutex mu_;
  std::uint64_t left_;
};

struct ServedPool {
  std::unique_ptr<PoolCore> core;
  std::shared_ptr<std::atomic<bool>> muted = std::make_shared<std::atomic<bool>>(false);
  std::size_t in_flight = 0;  // chunks received, not yet ended
  bool closing = false;
};

class Server {
 public:
  Server(MPI_Comm comm, int root, int node_ranks)
      : comm_(comm), root_(root), sender_(comm), default_workers_(std::max(1, cpu_count() / std::max(1, node_ranks))) {
    MPI_Comm_rank(comm_, &rank_);
  }

  void run() {
    MPI_Status st;
    std::vector<std::byte> buf;
    Backoff backoff;
    bool stop = false;
    while (!stop || !sender_.idle()) {
      bool busy = false;
      while (!stop && try_recv(comm_, root_, st, buf)) {
        busy = true;
        stop = handle(st.MPI_TAG, buf);
      }
      busy |= flush_outbox();
      finish_closing();
      busy |= sender_.progress();
      if (busy) {
        backoff.reset();
        continue;
      }
      std::unique_lock lock(out_.mu);
      if (out_.queue.empty()) backoff.wait(lock, out_.cv);
    }
  }

 private:
  // Sends what the local result threads queued; returns whether there was any.
  bool flush_outbox() {
    std::deque<Outgoing> outs;
    {
      std::lock_guard lock(out_.mu);
      outs.swap(out_.queue);
    }
    for (auto& o : outs) {
      if (o.done_pool) {
        auto it = pools_.find(o.done_pool);
        if (it != pools_.end() && it->second.in_flight) --it->second.in_flight;
      }
      sender_.post(root_, o.tag, std::move(o.bytes));
    }
    return !outs.empty();
  }

  // Returns true on kShutdown.
  bool handle(int tag, const std::vector<std::byte>& buf) {
    Reader r(buf);
    switch (tag) {
      case kOpen: open(r); return false;
      case kChunk: chunk(r); return false;
      case kClose: {
        auto h = get_head<PoolHead>(r);
        auto it = pools_.find(h.pool);
        if (it != pools_.end()) it->second.closing = true;
        return false;
      }
      case kTerminate: {
        auto h = get_head<PoolHead>(r);
        auto it = pools_.find(h.pool);
        if (it != pools_.end()) stop_pool(it, true);
        return false;
      }
      case kShutdown:
        while (!pools_.empty()) stop_pool(pools_.begin(), true);
        return true;
      default:
        throw std::runtime_error("mproc::mpi: serving rank got a message with unknown tag " + std::to_string(tag));
    }
  }

  void open(Reader& r) {
    auto h = get_head<OpenHead>(r);
    std::vector<std::byte> init(r.remaining());
    if (!init.empty()) r.read(init.data(), init.size());
    try {
      PoolConfig cfg;
      cfg.processes = h.processes > 0 ? h.processes : default_workers_;
      cfg.method = static_cast<StartMethod>(h.method);
      if (cfg.method == StartMethod::fork) {
        // fork() after MPI_Init copies MPI's state (its shared-memory segments,
        // registered memory, the connection to the local daemon) into the child:
        // docs/cluster.md, "Start methods".
        throw UsageError("mproc::mpi: the fork start method is not available on MPI ranks (fork after MPI_Init "
                         "copies MPI's state into the worker); use forkserver (the default) or spawn");
      }
      cfg.retries = h.retries;
      cfg.maxtasksperchild = h.maxtasksperchild;
      cfg.max_memory_mb = h.max_memory_mb;
      if (h.timeout_ns >= 0) cfg.timeout = std::chrono::nanoseconds(h.timeout_ns);
      cfg.initializer = mproc::detail::EncodedTask::received(init, {});  // bytes only across ranks
      ServedPool p;
      p.core = std::make_unique<PoolCore>(std::move(cfg));
      OpenedHead o{h.pool, p.core->processes(), static_cast<std::int32_t>(::getpid())};
      pools_.emplace(h.pool, std::move(p));
      Writer w;
      put_head(w, o);
      sender_.post(root_, kOpened, std::move(w).take_bytes());
    } catch (...) {
      ExceptionInfo info = mproc::detail::capture_current_exception();
      Writer w;
      put_head(w, PoolHead{h.pool});
      dump(w, info);
      sender_.post(root_, kOpenFailed, std::move(w).take_bytes());
    }
  }

  void chunk(Reader& r) {
    auto h = get_head<ChunkHead>(r);
    ChunkMessage msg;
    msg.prefix = h.prefix;
    msg.stride = h.stride;
    msg.offsets.resize(h.offsets);
    if (h.offsets) r.read(msg.offsets.data(), h.offsets * sizeof(std::size_t));
    msg.bytes.resize(r.remaining());
    r.read(msg.bytes.data(), msg.bytes.size());
    auto it = pools_.find(h.pool);
    if (it == pools_.end()) return;  // terminated meanwhile: the root drops its results anyway
    ServedPool& p = it->second;
    const std::uint64_t n = msg.items();
    auto sink = std::make_shared<RelaySink>(out_, p.muted, h.pool, h.job, n);
    try {
      std::uint64_t local = p.core->open_job(sink);
      // submit throws CancelledError when the pool broke between the two calls
      // (its workers' initializer failed meanwhile): then nothing of this chunk
      // was queued, and its items fail below like those open_job refused.
      p.core->submit(local, h.first, std::move(msg));
      p.core->seal_job(local);
    } catch (...) {
      // This rank's pool takes no more work (its workers' initializer keeps
      // failing, say): the chunk's items fail with the reason, and the rank
      // serves on. Letting it escape would end the rank, and with it the job.
      ExceptionInfo info = mproc::detail::capture_current_exception();
      info.message = "rank " + std::to_string(rank_) + " could not run the task: " + info.message;
      for (std::uint64_t k = 0; k < n; ++k) sink->on_failure(h.first + k, Failure::raised, info, 0, ItemTiming{});
      return;
    }
    ++p.in_flight;
  }

  void finish_closing() {
    for (auto it = pools_.begin(); it != pools_.end();) {
      auto next = std::next(it);
      if (it->second.closing && it->second.in_flight == 0) stop_pool(it, false);
      it = next;
    }
  }

  // Closes (after its work) or terminates a pool's local workers, tells the root.
  void stop_pool(std::map<std::uint64_t, ServedPool>::iterator it, bool terminate) {
    ServedPool& p = it->second;
    if (terminate) {
      p.muted->store(true);
      p.core->terminate();
    } else {
      p.core->close();
    }
    p.core->join();
    Writer w;
    put_head(w, PoolHead{it->first});
    // Behind everything this pool's sinks queued: the root settles those first.
    flush_outbox();
    sender_.post(root_, kClosed, std::move(w).take_bytes());
    pools_.erase(it);
  }

  MPI_Comm comm_;
  int root_;
  int rank_ = 0;
  Sender sender_;
  int default_workers_;
  Outbox out_;
  std::map<std::uint64_t, ServedPool> pools_;
};

}  // namespace

int node_ranks(MPI_Comm comm) {
  MPI_Comm node;
  check(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
  int local = 1;
  MPI_Comm_size(node, &local);
  MPI_Comm_free(&node);
  return local;
}

void serve_loop(MPI_Comm comm, int root, int node_ranks) {
  Server s(comm, root, node_ranks);
  s.run();
}

}  // namespace mproc::mpi::detail
