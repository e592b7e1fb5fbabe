// Channel lifecycle: creation, the per-process registry of open channels,
// attachment slots, closing, peer checks and handle transport.
// (Ring traffic is in ring.cpp, the socket side band in sideband.cpp.)
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <climits>
#include <cstring>
#include <mutex>
#include <new>
#include <utility>

#include "../os/internal.hpp"
#include "internal.hpp"

namespace mproc::detail {

// ---- fork awareness ---------------------------------------------------------------

namespace {

std::atomic<unsigned> g_fork_gen{1};

struct Registry {
  std::mutex mu;
  struct Entry {
    std::uint64_t id;
    EndRole role;
    std::weak_ptr<Channel> ch;
  };
  std::vector<Entry> entries;
};
Registry* g_registry = new Registry;  // never freed: usable from exit paths

void after_fork_child() noexcept {
  g_fork_gen.fetch_add(1, std::memory_order_relaxed);
  // The registry's mutex may have been held by a thread that does not exist in the
  // child. If it is free, empty it (each entry belongs to the parent's attachment);
  // otherwise abandon it for a fresh one (the old one is leaked, never unlocked).
  if (g_registry->mu.try_lock()) {
    // Pipe ends are not inherited: their sockets close here, in the child, so that
    // the parent's ends do not stay open in every forked child. That is what lets
    // an end see EOF once its peer's processes are gone (a Python child under fork
    // keeps them open and its recv() hangs instead). Pass an end to a Process as an
    // argument to use it there. Queues stay usable through fork.
    for (auto& e : g_registry->entries) {
      auto c = e.ch.lock();
      if (!c) continue;
      c->oob_cache.forget_after_fork();  // else OobCache sees the new fork generation
      if (e.role != EndRole::queue) c->drop_inherited();
    }
    g_registry->entries.clear();
    g_registry->mu.unlock();
  } else {
    g_registry = new (std::nothrow) Registry;
    if (!g_registry) std::abort();
  }
}

[[maybe_unused]] const bool g_atfork_registered = [] {
  ::pthread_atfork(nullptr, nullptr, after_fork_child);
  return true;
}();

std::uint64_t random_id() {
  std::uint64_t id = 0;
  while (id == 0) {
    if (::getrandom(&id, sizeof id, 0) != static_cast<ssize_t>(sizeof id)) throw_errno("getrandom");
  }
  return id;
}

std::size_t round_capacity(std::size_t c) {
  std::size_t r = kMinCapacity;
  while (r < c && r < kMaxCapacity) r <<= 1;
  return r;
}

void validate(const ChannelOptions& o) {
  if (o.capacity > kMaxCapacity) {
    throw UsageError("mproc: channel capacity " + std::to_string(o.capacity) + " exceeds the maximum of " +
                     std::to_string(kMaxCapacity) + " bytes; messages larger than the ring go out of band anyway");
  }
  if (o.max_items > (kCountMask >> 1)) {
    throw UsageError("mproc: maxsize " + std::to_string(o.max_items) + " exceeds the maximum of " +
                     std::to_string(kCountMask >> 1) + " items");
  }
}

void init_ring(RingState& r, std::uint64_t offset, std::size_t cap, const ChannelOptions& o) {
  r.offset = offset;
  r.capacity = cap;
  r.max_items = o.max_items;
  // A record at most a quarter of the ring always fits in an empty ring, padding
  // to its end included (see docs/queue.md), so a sender can never wait forever.
  r.oob_threshold = std::min<std::uint64_t>(o.oob_threshold, cap / 4 - sizeof(RecordHeader) - sizeof(SidebandInfo));
  r.joinable = o.joinable ? 1 : 0;
}

std::shared_ptr<Channel> new_channel(ChannelKind kind, int nrings, const ChannelOptions& o) {
  validate(o);
  std::size_t cap = round_capacity(o.capacity);
  auto c = std::make_shared<Channel>();
  c->seg = Segment::create(kHeaderBytes + cap * static_cast<std::size_t>(nrings),
                           kind == ChannelKind::queue ? "mproc-queue" : "mproc-pipe");
  // The segment is zero-filled: every atomic starts at 0, which is its initial value.
  auto* h = new (c->seg.data()) ChannelHeader;
  h->magic = kChannelMagic;
  h->version = kChannelVersion;
  h->id = random_id();
  h->kind = kind;
  h->nrings = static_cast<std::uint32_t>(nrings);
  h->segment_size = c->seg.size();
  for (int i = 0; i < nrings; ++i) init_ring(h->rings[i], kHeaderBytes + cap * static_cast<std::size_t>(i), cap, o);
  c->h = h;
  return c;
}

/// The channel's side-band sockets. SEQPACKET: one message per side-band record,
/// boundaries kept, fds attached to exactly that message.
void make_socketpair(int sv[2]) {
  if (sys().socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) throw_errno("socketpair");
}

/// Sets which rings and sockets an end uses, from its role.
void wire(Channel& c) {
  if (c.h->kind == ChannelKind::queue) {
    c.tx = 0;
    c.rx = 0;
    c.sock_tx = c.socks[0];
    c.sock_rx = c.socks[1];
  } else if (c.h->nrings == 2) {  // duplex: a sends on ring 0, b on ring 1; one socket each
    c.tx = c.role == EndRole::a ? 0 : 1;
    c.rx = c.role == EndRole::a ? 1 : 0;
    c.sock_tx = c.sock_rx = c.socks[0];
  } else {  // one-way: a receives, b sends
    c.tx = c.role == EndRole::b ? 0 : -1;
    c.rx = c.role == EndRole::a ? 0 : -1;
    c.sock_tx = c.sock_rx = c.socks[0];
  }
}

void register_channel(const std::shared_ptr<Channel>& c) {
  Registry& reg = *g_registry;
  std::lock_guard lock(reg.mu);
  std::erase_if(reg.entries, [](const Registry::Entry& e) { return e.ch.expired(); });
  reg.entries.push_back({c->h->id, c->role, c});
}

}  // namespace

unsigned fork_generation() noexcept { return g_fork_gen.load(std::memory_order_relaxed); }

std::int64_t now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void close_fds(std::span<const int> fds) noexcept {
  for (int fd : fds) close_fd(fd);
}

// ---- attachment ------------------------------------------------------------------

void Channel::attach(bool received) {
  ProcessToken me = self_token();
  pid = me.pid;
  slot = -1;
  auto claim = [&](int i, std::int32_t expected) {
    Slot& s = h->slots[i];
    if (!s.pid.compare_exchange_strong(expected, -1, std::memory_order_acq_rel)) return false;
    slot_gen = (s.gen.fetch_add(1, std::memory_order_relaxed) + 1) & 0x3F'FFFF;
    s.start_time.store(me.start_time, std::memory_order_relaxed);
    s.closed.store(0, std::memory_order_relaxed);
    s.pid.store(me.pid, std::memory_order_release);
    slot = i;
    return true;
  };
  for (int i = 0; i < kSlots && slot < 0; ++i) {
    if (h->slots[i].pid.load(std::memory_order_relaxed) == 0) claim(i, 0);
  }
  // No free slot: take over one whose process has ended without letting go.
  for (int i = 0; i < kSlots && slot < 0; ++i) {
    std::int32_t p = h->slots[i].pid.load(std::memory_order_acquire);
    if (p <= 0 || p == me.pid) continue;
    if (!token_alive({p, h->slots[i].start_time.load(std::memory_order_relaxed)})) claim(i, p);
  }
  if (slot < 0) h->slot_overflow.store(1, std::memory_order_relaxed);
  // Only now that our slot is published may peers count processes: set before it,
  // a waiter in the creator could see "more than one process" but no live other.
  if (received) h->multi.store(1, std::memory_order_seq_cst);
  fork_gen.store(fork_generation(), std::memory_order_relaxed);
  attached.store(true, std::memory_order_release);
  h->membership_seq.fetch_add(1, std::memory_order_seq_cst);
}

void Channel::detach() noexcept {
  if (!attached.load(std::memory_order_acquire) || fork_gen.load(std::memory_order_relaxed) != fork_generation()) {
    return;  // inherited through fork and never used here: the slot is the parent's
  }
  attached.store(false, std::memory_order_relaxed);
  if (slot >= 0) {
    Slot& s = h->slots[slot];
    std::int32_t expected = pid;
    if ((s.gen.load(std::memory_order_relaxed) & 0x3F'FFFF) == slot_gen) {
      s.pid.compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
    }
  }
  h->membership_seq.fetch_add(1, std::memory_order_seq_cst);
  wake_all();
}

std::uint32_t Channel::owner_id() const noexcept {
  // Out of slots: an owner nobody can check, so nobody ever takes its lock over.
  std::uint32_t s = slot >= 0 ? static_cast<std::uint32_t>(slot + 1) : 0x1FF;
  return (slot_gen << 9) | s;
}

bool Channel::owner_dead(std::uint32_t owner) const {
  std::uint32_t s = owner & 0x1FF;
  if (s == 0 || s > static_cast<std::uint32_t>(kSlots)) return false;
  const Slot& sl = h->slots[s - 1];
  if ((sl.gen.load(std::memory_order_acquire) & 0x3F'FFFF) != (owner >> 9)) return true;  // slot reused
  std::int32_t p = sl.pid.load(std::memory_order_acquire);
  if (p == 0) return true;
  if (p < 0) return false;
  if ((sl.gen.load(std::memory_order_acquire) & 0x3F'FFFF) != (owner >> 9)) return true;
  return !token_alive({p, sl.start_time.load(std::memory_order_relaxed)});
}

// ---- operations in progress, closing ---------------------------------------------

namespace {
[[noreturn]] void closed_error(const Channel& c) {
  throw UsageError(std::string("mproc: this ") +
                   (c.role == EndRole::queue ? "Queue" : "Connection") +
                   " was closed in this process; further use here is an error");
}
}  // namespace

void Channel::drop_inherited() noexcept {
  // In a fork child, before any other thread exists: nothing else uses these fds.
  inherited.store(true, std::memory_order_relaxed);
  closed.store(true, std::memory_order_relaxed);
  int own[2] = {socks[0], socks[1]};
  socks[0] = socks[1] = sock_tx = sock_rx = -1;
  close_fds(own);
}

void Channel::enter() {
  if (closed.load(std::memory_order_acquire)) {
    if (inherited.load(std::memory_order_relaxed)) {
      throw UsageError(
          "mproc: this Connection was inherited through fork, and pipe ends are closed in a fork child; "
          "pass it to the Process as an argument to use it there");
    }
    closed_error(*this);
  }
  if (fork_gen.load(std::memory_order_relaxed) != fork_generation()) {
    // First use in a forked child of a handle inherited from the parent: this
    // process is a new holder. (The parent's slot stays the parent's.)
    std::lock_guard lock(g_registry->mu);
    if (fork_gen.load(std::memory_order_relaxed) != fork_generation()) {
      attach(true);
    }
  }
}

void Channel::close_here() noexcept {
  if (closed.exchange(true, std::memory_order_acq_rel)) return;
  // Other processes stop counting this one as a peer at once. The slot itself is
  // kept until ~Channel: a thread of ours may still be inside a call, holding a
  // ring lock under our owner id, which must not look like a dead owner's.
  if (attached.load(std::memory_order_acquire) && fork_gen.load(std::memory_order_relaxed) == fork_generation() &&
      slot >= 0) {
    h->slots[slot].closed.store(1, std::memory_order_release);
  }
  // Our sockets are replaced (dup3, atomically) by a dead unconnected one: the
  // kernel drops our reference to the real socket now, so a pipe's other end sees
  // the hang-up at once, while a call still running here keeps a valid fd number
  // that can never name someone else's file.
  for (int fd : socks) {
    if (fd < 0) continue;
    int dead = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (dead < 0) continue;  // out of fds: the real socket closes with ~Channel instead
    ::dup3(dead, fd, O_CLOEXEC);
    close_fd(dead);
  }
  h->membership_seq.fetch_add(1, std::memory_order_seq_cst);
  wake_all();  // threads of ours blocked on the channel wake up and see `closed`
}

std::vector<int> ChannelEnd::fds() const {
  Channel& c = ch();
  std::vector<int> out;
  for (int fd : c.socks) {
    if (fd >= 0) out.push_back(fd);
  }
  return out;
}

bool ChannelEnd::move_fds_above(int floor) const {
  Channel& c = ch();
  c.fd_floor.store(floor, std::memory_order_relaxed);  // for the out-of-band segments it makes later
  int moved[2] = {-1, -1};
  for (int i = 0; i < 2; ++i) {
    if (c.socks[i] < 0 || c.socks[i] >= floor) continue;
    moved[i] = ::fcntl(c.socks[i], F_DUPFD_CLOEXEC, floor);
    if (moved[i] < 0) {
      close_fds(moved);
      return false;
    }
  }
  for (int i = 0; i < 2; ++i) {
    if (moved[i] < 0) continue;
    int old = std::exchange(c.socks[i], moved[i]);
    if (c.sock_tx == old) c.sock_tx = moved[i];
    if (c.sock_rx == old) c.sock_rx = moved[i];
    close_fd(old);
  }
  return true;
}

Channel::~Channel() {
  if (!h) return;
  detach();
  close_fds(socks);
}

void Channel::wake_all() const noexcept {
  for (std::uint32_t i = 0; i < h->nrings; ++i) {
    RingState& r = h->rings[i];
    for (WaitWord* w : {&r.data, &r.space, &r.join}) {
      w->seq.fetch_add(1, std::memory_order_seq_cst);
      if (w->waiters.load(std::memory_order_seq_cst) != 0) futex_wake(&w->seq, INT_MAX);
    }
  }
}

bool Channel::peers_gone(bool force) {
  if (h->kind == ChannelKind::pipe) {
    // The kernel knows: our socket reports POLLHUP once the peer's socket is closed
    // in every process (explicitly, or because all of its holders exited or died).
    // An end still in flight inside an unreceived message keeps it open. One
    // poll() is cheap enough to do before every sleep.
    pollfd p{socks[0], 0, 0};
    if (retry_eintr([&] { return ::poll(&p, 1, 0); }) < 0) throw_errno("poll");
    return (p.revents & (POLLHUP | POLLNVAL)) != 0;
  }
  std::uint32_t m = h->membership_seq.load(std::memory_order_acquire);
  std::int64_t now = now_ns();
  if (!force && m == last_membership.load(std::memory_order_relaxed) &&
      now - last_check_ns.load(std::memory_order_relaxed) < std::chrono::nanoseconds(kSlice).count()) {
    return last_gone.load(std::memory_order_relaxed);
  }
  bool gone = [&] {
    // Only other processes count, and only once one has attached: a queue used by
    // the threads of one process never reports its peers gone.
    if (h->multi.load(std::memory_order_acquire) == 0) return false;
    if (h->slot_overflow.load(std::memory_order_relaxed) != 0) return false;
    if (h->handles_in_flight.load(std::memory_order_acquire) > 0) return false;  // on its way to someone
    for (const Slot& s : h->slots) {
      std::int32_t p = s.pid.load(std::memory_order_acquire);
      if (p == 0 || p == pid || s.closed.load(std::memory_order_acquire)) continue;
      if (p < 0) return false;  // being claimed
      if (token_alive({p, s.start_time.load(std::memory_order_relaxed)})) return false;
    }
    return true;
  }();
  last_membership.store(m, std::memory_order_relaxed);
  last_check_ns.store(now, std::memory_order_relaxed);
  last_gone.store(gone, std::memory_order_relaxed);
  return gone;
}

// ---- ChannelEnd: creation and simple members -----------------------------------------

ChannelEnd ChannelEnd::create_queue(const ChannelOptions& options) {
  auto c = new_channel(ChannelKind::queue, 1, options);
  make_socketpair(c->socks);
  c->role = EndRole::queue;
  wire(*c);
  c->attach();
  register_channel(c);
  return ChannelEnd(std::move(c));
}

std::pair<ChannelEnd, ChannelEnd> ChannelEnd::create_pipe(const ChannelOptions& options, bool duplex) {
  auto a = new_channel(ChannelKind::pipe, duplex ? 2 : 1, options);
  int sv[2];
  make_socketpair(sv);
  auto b = std::make_shared<Channel>();
  b->seg = a->seg;
  b->h = a->h;
  a->socks[0] = sv[0];
  b->socks[0] = sv[1];
  a->role = EndRole::a;
  b->role = EndRole::b;
  wire(*a);
  wire(*b);
  // Each end attaches on its own (a process holding both ends has two slots), so
  // either may be closed or dropped first.
  a->attach();
  b->attach();
  register_channel(a);
  register_channel(b);
  return {ChannelEnd(std::move(a)), ChannelEnd(std::move(b))};
}

Channel& ChannelEnd::ch() const {
  if (!ch_) throw UsageError("mproc: this Queue/Connection handle is empty (moved from)");
  return *ch_;
}

std::size_t ChannelEnd::size() const {
  Channel& c = ch();
  c.enter();
  const RingState& r = c.ring(c.rx >= 0 ? c.rx : c.tx);
  return records_between(r.head.load(std::memory_order_acquire), r.tail.load(std::memory_order_acquire));
}

std::size_t ChannelEnd::max_items() const {
  Channel& c = ch();
  return c.ring(0).max_items;
}
std::size_t ChannelEnd::capacity() const { return ch().ring(0).capacity; }
std::size_t ChannelEnd::oob_threshold() const { return ch().ring(0).oob_threshold; }

void ChannelEnd::close() const { ch().close_here(); }

bool ChannelEnd::closed() const { return ch().closed.load(std::memory_order_acquire); }
bool ChannelEnd::readable() const { return ch().rx >= 0; }
bool ChannelEnd::writable() const { return ch().tx >= 0; }
ChannelKind ChannelEnd::kind() const { return ch().h->kind; }
std::uint64_t ChannelEnd::id() const { return ch().h->id; }

void ChannelEnd::set_spin(std::chrono::nanoseconds spin) const {
  if (spin < spin.zero()) throw UsageError("mproc: a channel's spin time must not be negative");
  ch().spin_ns.store(spin.count(), std::memory_order_relaxed);
}

ChannelStats ChannelEnd::stats() const {
  Channel& c = ch();
  return {c.n_sent.load(), c.n_sent_oob.load(), c.n_received.load(), c.n_received_oob.load(),
          c.n_slow_takeovers.load(), c.n_sent_recycled.load(), c.oob_cache.created()};
}

// ---- handle transport ------------------------------------------------------------

namespace {
struct WireHandle {
  std::uint32_t magic;
  std::uint8_t role;
  std::uint8_t nsocks;
  std::uint16_t reserved;
  std::uint64_t id;
  std::uint64_t segment_size;
  std::uint32_t seg_fd, sock_fd[2];
};
}  // namespace

void ChannelEnd::encode(Writer& w) const {
  Channel& c = ch();
  c.enter();
  WireHandle wh{};
  wh.magic = kChannelMagic;
  wh.role = static_cast<std::uint8_t>(c.role);
  wh.nsocks = c.role == EndRole::queue ? 2 : 1;
  wh.id = c.h->id;
  wh.segment_size = c.seg.size();
  wh.seg_fd = w.add_fd(c.seg.fd());
  for (int i = 0; i < wh.nsocks; ++i) wh.sock_fd[i] = w.add_fd(c.socks[i]);
  w.write(&wh, sizeof wh);
  // A queue handle on its way to another process counts as a holder until it is
  // decoded there (see peers_gone). A pipe needs no count: the fds in flight keep
  // its socket open, which is what its peer check looks at.
  if (c.role == EndRole::queue) c.h->handles_in_flight.fetch_add(1, std::memory_order_seq_cst);
}

ChannelEnd ChannelEnd::decode(Reader& r) {
  WireHandle wh;
  r.read(&wh, sizeof wh);
  if (wh.magic != kChannelMagic || wh.role > 2 || wh.nsocks != (wh.role == 0 ? 2 : 1)) {
    throw SerializationError("mproc: corrupt Queue/Connection handle in message");
  }
  auto role = static_cast<EndRole>(wh.role);
  int seg_fd = r.fd(wh.seg_fd);
  int sock_fd[2] = {r.fd(wh.sock_fd[0]), wh.nsocks == 2 ? r.fd(wh.sock_fd[1]) : -1};

  std::shared_ptr<Channel> c;
  {
    Registry& reg = *g_registry;
    std::lock_guard lock(reg.mu);
    for (auto& e : reg.entries) {
      if (e.id != wh.id || e.role != role) continue;
      auto existing = e.ch.lock();
      if (existing && !existing->closed.load() && existing->fork_gen.load() == fork_generation()) c = existing;
    }
  }
  if (!c) {
    struct stat st;
    if (::fstat(seg_fd, &st) < 0) throw_errno("fstat");
    if (static_cast<std::uint64_t>(st.st_size) < wh.segment_size || wh.segment_size < kHeaderBytes) {
      throw SerializationError("mproc: Queue/Connection handle refers to a segment of the wrong size");
    }
    c = std::make_shared<Channel>();
    c->seg = Segment::adopt(seg_fd, static_cast<std::size_t>(wh.segment_size));
    auto* h = reinterpret_cast<ChannelHeader*>(c->seg.data());
    bool ok = h->magic == kChannelMagic && h->version == kChannelVersion && h->id == wh.id &&
              h->segment_size == wh.segment_size && (h->nrings == 1 || h->nrings == 2) &&
              (h->kind == ChannelKind::queue) == (role == EndRole::queue);
    for (std::uint32_t i = 0; ok && i < h->nrings; ++i) {
      const RingState& rs = h->rings[i];
      ok = rs.capacity >= kMinCapacity && (rs.capacity & (rs.capacity - 1)) == 0 && rs.offset >= kHeaderBytes &&
           rs.offset + rs.capacity <= wh.segment_size;
    }
    if (!ok) throw SerializationError("mproc: Queue/Connection handle does not match its shared memory");
    c->h = h;
    c->role = role;
    for (int i = 0; i < wh.nsocks; ++i) {
      c->socks[i] = ::fcntl(sock_fd[i], F_DUPFD_CLOEXEC, 0);
      if (c->socks[i] < 0) throw_errno("fcntl(F_DUPFD_CLOEXEC)");
    }
    wire(*c);
    c->attach(true);
    register_channel(c);
  }
  if (role == EndRole::queue) c->h->handles_in_flight.fetch_sub(1, std::memory_order_seq_cst);
  return ChannelEnd(std::move(c));
}

// ---- scratch writer ------------------------------------------------------------------

namespace {
thread_local std::unique_ptr<Writer> t_scratch;
thread_local bool t_scratch_busy = false;
}  // namespace

Writer& scratch_writer() {
  if (t_scratch_busy) return *new Writer;  // reentered (a codec that sends while encoded)
  if (!t_scratch) t_scratch = std::make_unique<Writer>();
  t_scratch_busy = true;
  t_scratch->clear();
  return *t_scratch;
}

void release_scratch_writer(Writer& w) noexcept {
  if (&w != t_scratch.get()) {
    delete &w;
    return;
  }
  t_scratch_busy = false;
  // Keeping the buffer saves a fresh allocation and its page faults per message
  // (they dominate big messages: ~4 µs per 4 KiB page on this VM); beyond 64 MiB
  // it is given back rather than held by the thread forever.
  if (w.size() > (std::size_t{64} << 20) + 4096) t_scratch.reset();
}

}  // namespace mproc::detail
