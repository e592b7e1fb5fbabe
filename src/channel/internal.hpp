// Internals of the channel layer (see mproc/detail/channel.hpp and docs/queue.md):
// the shared-memory layout, the process-local Channel, and the helpers the
// channel sources share. Not installed.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "mproc/detail/channel.hpp"
#include "mproc/detail/futex.hpp"
#include "mproc/detail/segment.hpp"

namespace mproc::detail {

// ---- constants ---------------------------------------------------------------------

inline constexpr std::uint32_t kChannelMagic = 0x6d70'6368;  // "mpch"
// 2: out-of-band records carry the message's first kClaimPrefixBytes bytes.
// 3: the header's shutdown word (Queue.shutdown()).
// 4: out-of-band segments start with a release word; the bytes follow at
//    kOobDataOffset; SidebandInfo::oob 2 marks a recycled segment.
inline constexpr std::uint32_t kChannelVersion = 4;
inline constexpr std::size_t kMinCapacity = std::size_t{4} << 10;
inline constexpr std::size_t kMaxCapacity = std::size_t{64} << 20;
/// Attachment slots: processes that hold the channel. Beyond this many at once,
/// detection of departed peers and of dead lock owners switches itself off.
inline constexpr int kSlots = 256;
/// Side-band messages (fds, out-of-band segments) in flight per ring. Each holds a
/// socket buffer entry (~1 KiB of the 208 KiB default) and counts against the
/// sender's in-flight fd limit (RLIMIT_NOFILE for unprivileged users), so a sender
/// waits, as for a full ring, once this many are unreceived.
inline constexpr std::uint64_t kMaxSideband = 128;
/// Most fds one message may carry (SCM_MAX_FD is 253; one goes to the segment).
inline constexpr std::size_t kMaxMessageFds = 200;
/// Blocking waits sleep at most this long before they look at their peers again.
inline constexpr std::chrono::milliseconds kSlice{100};

// ---- positions ---------------------------------------------------------------------
// A ring's head and tail are each one 64-bit word: a byte position (40 bits,
// modulo 2^40) and a record count (24 bits, modulo 2^24). One word per side means
// a single store publishes both, so a process that dies between "bytes written"
// and "count updated" cannot exist. Differences are taken modulo the field width;
// a ring holds at most 64 MiB / 8 B = 2^23 records, so neither field can alias.

inline constexpr std::uint64_t kPosMask = (std::uint64_t{1} << 40) - 1;
inline constexpr std::uint64_t kCountMask = (std::uint64_t{1} << 24) - 1;
inline std::uint64_t pos_of(std::uint64_t w) { return w & kPosMask; }
inline std::uint64_t count_of(std::uint64_t w) { return w >> 40; }
inline std::uint64_t pack(std::uint64_t pos, std::uint64_t count) {
  return (pos & kPosMask) | ((count & kCountMask) << 40);
}
inline std::uint64_t bytes_between(std::uint64_t head, std::uint64_t tail) { return (pos_of(tail) - pos_of(head)) & kPosMask; }
inline std::uint64_t records_between(std::uint64_t head, std::uint64_t tail) {
  return (count_of(tail) - count_of(head)) & kCountMask;
}

// ---- records -----------------------------------------------------------------------

enum class RecordKind : std::uint32_t {
  pad = 1,       // filler to the end of the ring; the next record starts at offset 0
  inline_ = 2,   // the message's bytes follow
  sideband = 3,  // a SidebandInfo follows (then the bytes, unless out of band)
};

struct RecordHeader {
  std::uint32_t size;  // bytes after the header
  RecordKind kind;
};
static_assert(sizeof(RecordHeader) == 8);

/// What a sideband record says about the socket message that goes with it.
struct SidebandInfo {
  std::uint64_t seq;       // matches the 8-byte payload of the socket message
  std::uint64_t oob_size;  // message bytes in the out-of-band segment (fd 0); 0: inline
  std::uint32_t nfds;      // message fds (after the segment's, if any)
  std::uint32_t oob;       // an out-of-band segment travels as the first fd: OobKind
};

/// SidebandInfo::oob.
enum OobKind : std::uint32_t {
  kNoOob = 0,
  kOobFresh = 1,     // a segment made for this message alone
  kOobRecycled = 2,  // one of the sender's cached segments: the receiver releases it
};

/// Layout of an out-of-band segment: a release word (OobCache), then the bytes.
inline constexpr std::size_t kOobDataOffset = 4096;

constexpr std::size_t record_span(std::size_t payload) { return (sizeof(RecordHeader) + payload + 7) & ~std::size_t{7}; }
// An out-of-band record (SidebandInfo, then the message's first min(size,
// kClaimPrefixBytes) bytes for a claim step) is never longer than the record the
// message would take inline, and stays within a quarter of the smallest ring, the
// bound the oob threshold keeps every record under (channel.cpp).
static_assert(record_span(sizeof(SidebandInfo) + kClaimPrefixBytes) <= kMinCapacity / 4);

// ---- shared state ------------------------------------------------------------------

/// A lock word in shared memory: 0 free; else (owner << 1) | contended. The owner
/// is the holder's attachment (slot + 1, 9 bits) and that slot's generation (22
/// bits), so a waiter can tell a holder that died (or whose slot was reused) and
/// take the lock over. Every critical section leaves the ring consistent at each
/// instruction (see docs/queue.md), which is what makes taking over safe.
struct alignas(64) SharedLock {
  std::atomic<std::uint32_t> word;
};

/// A condition some processes sleep on. `seq` is the futex word, bumped by each
/// wake; `waiters` counts sleepers (no sleeper, no system call); `pending` is set
/// by a waker and cleared by a woken sleeper, so a burst of publishes while the
/// sleeper is being scheduled costs one futex_wake, not one each. `spin_end`
/// (consumers' `data` word only): a consumer spinning for a record until this
/// steady-clock time in ns (0: none); a sender skips waking a sleeper meanwhile,
/// since the spinner takes the record (ring.cpp, "wake-ups").
struct alignas(64) WaitWord {
  std::atomic<std::uint32_t> seq;
  std::atomic<std::uint32_t> waiters;
  std::atomic<std::uint32_t> pending;
  std::atomic<std::int64_t> spin_end;
};

struct alignas(64) RingState {
  // Constant after creation.
  std::uint64_t offset;    // of the ring's bytes in the segment
  std::uint64_t capacity;  // power of two
  std::uint64_t max_items;
  std::uint64_t oob_threshold;
  std::uint32_t joinable;

  // Producer side, written under plock.
  alignas(64) std::atomic<std::uint64_t> tail;  // published (pos, count)
  std::atomic<std::uint64_t> cached_head;       // producers' last view of head
  std::atomic<std::uint64_t> sb_sent;           // last side-band sequence number used
  SharedLock plock;

  // Consumer side, written under clock.
  alignas(64) std::atomic<std::uint64_t> head;
  std::atomic<std::uint64_t> sb_received;  // last side-band sequence number received
  SharedLock clock;

  // Sleeping, one WaitWord per condition (see ring.cpp, "wake-ups").
  WaitWord data;   // consumers wait for records
  WaitWord space;  // producers wait for room
  WaitWord join;   // JoinableQueue.join() waits for unfinished == 0
  // JoinableQueue: unfinished tasks = count_of(tail) - done (mod 2^24). Derived
  // from the published tail instead of counted at put, so a producer that dies
  // mid-put can never leave the count off by one.
  alignas(64) std::atomic<std::uint32_t> done;
};

/// One process holding the channel. pid: 0 free, -1 being claimed, else the
/// holder; start_time is written before pid is published (release), so a reader
/// that sees a pid sees its start time.
struct Slot {
  std::atomic<std::int32_t> pid;
  std::atomic<std::uint32_t> gen;
  std::atomic<std::uint64_t> start_time;
  std::atomic<std::uint32_t> closed;  // the holder called close(): no longer a peer
};

struct ChannelHeader {
  std::uint32_t magic;
  std::uint32_t version;
  std::uint64_t id;
  ChannelKind kind;
  std::uint32_t nrings;
  std::uint64_t segment_size;

  alignas(64) std::atomic<std::uint32_t> membership_seq;  // bumped on attach/detach
  std::atomic<std::uint32_t> multi;                       // a second process has attached
  std::atomic<std::int32_t> handles_in_flight;            // encoded, not yet decoded
  std::atomic<std::uint32_t> slot_overflow;               // more holders than slots
  std::atomic<std::uint32_t> shutdown;                    // ShutdownState (Queue.shutdown())

  RingState rings[2];
  Slot slots[kSlots];
};

inline constexpr std::size_t kHeaderBytes = (sizeof(ChannelHeader) + 4095) & ~std::size_t{4095};

/// ChannelHeader::shutdown. Only ever grows: open -> shut (a send throws ShutDown, a
/// receive throws it once the ring is empty) -> drained (shutdown(immediate) has
/// emptied the ring: a receive throws it at once). Any other value reads as shut.
enum ShutdownState : std::uint32_t { kOpen = 0, kShut = 1, kDrained = 2 };

// ---- recycled out-of-band segments (sideband.cpp) ------------------------------------

/// An out-of-band segment holding one message being sent. A recycled one is the
/// cache's (fd borrowed, its release word set); if the message never leaves
/// (deadline, exception), destroying the lease frees the segment for the next one.
struct OobLease {
  int fd = -1;
  std::atomic<std::uint32_t>* busy = nullptr;  // recycled: the segment's release word
  bool handed_over = false;                    // the socket message went: the receiver releases it
  OobLease() = default;
  OobLease(const OobLease&) = delete;
  OobLease& operator=(const OobLease&) = delete;
  ~OobLease();
  OobKind kind() const noexcept { return busy ? kOobRecycled : kOobFresh; }
};

/// The out-of-band segments one process sends a channel's messages in, kept for
/// the next message once their receiver has released them (docs/queue.md,
/// "Recycled segments"): a fresh memfd costs a page allocation per 4 KiB written.
/// A segment's first word is 1 while a message in it is in flight (set by the
/// sender with a CAS, so any process holding the same fd could share it safely)
/// and 0 once its receiver consumed the message (written by pwrite). A receiver
/// killed in between leaves it 1 for good; such a segment is skipped and, once
/// the cache is full, dropped (the kernel frees it with its last fd).
class OobCache {
 public:
  OobCache() noexcept;
  ~OobCache();
  OobCache(const OobCache&) = delete;
  OobCache& operator=(const OobCache&) = delete;
  /// Copies bytes into a segment: a free cached one, a new cached one, or (cache
  /// full of busy segments, or bytes too large to keep) a fresh uncached one.
  /// `fd_floor`: cached segments get descriptors >= it (ChannelEnd::move_fds_above).
  void fill(OobLease& lease, std::span<const std::byte> bytes, int fd_floor);
  /// In a fork child (single-threaded): the parent's segments are the parent's.
  void forget_after_fork() noexcept;
  /// Segments created, for tests.
  std::uint64_t created() const noexcept { return created_.load(std::memory_order_relaxed); }

 private:
  struct Entry {
    int fd;
    std::atomic<std::uint32_t>* busy;  // mapping of the segment's first page
    std::size_t written;               // high-water mark of bytes written (pages held)
    std::uint64_t dev, ino;            // the file fd must still name (fstat)
  };
  /// Unmaps e; closes its fd unless `fd_lost` (someone else closed it: the number
  /// may name another file by now).
  void drop(Entry& e, bool fd_lost = false) noexcept;
  std::mutex mu_;
  std::vector<Entry> entries_;
  unsigned gen_;
  std::atomic<std::uint64_t> created_{0};
};

/// Frees a recycled segment for its sender's next message (the receiver consumed it).
void oob_release(int fd) noexcept;

// ---- the process-local object ---------------------------------------------------

enum class EndRole : std::uint8_t { queue = 0, a = 1, b = 2 };

/// This process's view of one end of a channel. Shared by every ChannelEnd copy
/// here; see channel.cpp for attachment and closing.
class Channel {
 public:
  Channel() = default;
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  ~Channel();

  Segment seg;
  ChannelHeader* h = nullptr;
  EndRole role = EndRole::queue;
  int tx = -1;  // ring this end sends on, or -1
  int rx = -1;  // ring this end receives from, or -1
  int sock_tx = -1;  // socket this end sends side-band messages on
  int sock_rx = -1;  // socket this end receives them on
  int socks[2] = {-1, -1};  // the sockets this end owns (closed on release)

  // Attachment of this process (slot index, or -1 when out of slots).
  std::atomic<unsigned> fork_gen{0};
  int slot = -1;
  std::uint32_t slot_gen = 0;
  std::int32_t pid = 0;
  std::atomic<bool> attached{false};

  // close() only marks the end closed and swaps its sockets for dead ones (see
  // close_here); fds and mapping are released by ~Channel, when no call can be
  // running on it any more (each call holds a ChannelEnd, which holds the Channel).
  std::atomic<bool> closed{false};
  std::atomic<bool> inherited{false};  // a pipe end this fork child got from its parent

  // Cached peer check (see peers_gone).
  std::atomic<std::int64_t> last_check_ns{0};
  std::atomic<std::uint32_t> last_membership{0};
  std::atomic<bool> last_gone{false};

  std::atomic<std::uint64_t> n_sent{0}, n_sent_oob{0}, n_received{0}, n_received_oob{0};
  std::atomic<std::uint64_t> n_slow_takeovers{0};
  std::atomic<std::uint64_t> n_sent_recycled{0};

  OobCache oob_cache;  // segments this process sends out-of-band messages in
  std::atomic<int> fd_floor{0};  // move_fds_above's floor: new descriptors go above it

  // How long a waiting call on this end spins before it sleeps (set_spin).
  std::atomic<std::int64_t> spin_ns{kDefaultSpinNs};

  RingState& ring(int i) const { return h->rings[i]; }
  std::byte* ring_bytes(const RingState& r) const { return seg.data() + r.offset; }

  /// Called at the start of every operation: throws UsageError when closed, and
  /// attaches this process after a fork.
  void enter();
  /// close() for this process: see ChannelEnd::close.
  void close_here() noexcept;
  /// This process's lock-owner id (never 0).
  std::uint32_t owner_id() const noexcept;
  /// Whether the holder identified by a lock word's owner field has ended.
  bool owner_dead(std::uint32_t owner) const;
  /// Whether no other process can ever take (for send) or give (for recv) a
  /// message: Queue: every other holder has left or died; Pipe: the peer's
  /// socket is closed everywhere. `force` ignores the per-slice cache.
  bool peers_gone(bool force);
  /// Wakes every waiter of every ring (after a membership change).
  void wake_all() const noexcept;
  const char* noun() const noexcept { return h->kind == ChannelKind::queue ? "Queue" : "Connection"; }
  /// In a fork child: closes an inherited pipe end's socket (see after_fork_child).
  void drop_inherited() noexcept;
  /// Claims a slot for this process; `received`: the handle came from another
  /// process (decoded, or inherited through fork), so more than one holds it.
  void attach(bool received = false);
  void detach() noexcept;
};

/// Incremented in every fork child (pthread_atfork), so handles notice they were
/// inherited and attach the child.
unsigned fork_generation() noexcept;

std::int64_t now_ns() noexcept;

// ---- side band (sideband.cpp) ---------------------------------------------------

/// Sends one side-band message (payload: seq) with fds on sock, waiting while the
/// socket buffer is full. Returns false at the deadline. Throws BrokenPipeError if
/// the peer socket is gone (pipes), std::system_error otherwise.
bool sideband_send(Channel& ch, int sock, std::uint64_t seq, std::span<const int> fds, deadline_t deadline);
/// Receives the side-band message with sequence number `seq` (already in the
/// socket: senders send before they publish), dropping older ones left by a
/// sender or receiver that died half-way. Returns its fds (owned). With `peek`,
/// the message stays in the socket (its fds are duplicated into this process:
/// MSG_PEEK), to be removed by sideband_drop once it has been decoded.
std::vector<int> sideband_recv(int sock, std::uint64_t seq, std::size_t nfds, bool peek);
/// Removes the socket message `seq` (and older orphans) from the socket without
/// receiving its fds. `known_front`: a peek just saw `seq` at the front, so one
/// receive does. Errors are ignored (the next receive reports an out-of-step socket).
void sideband_drop(int sock, std::uint64_t seq, bool known_front) noexcept;
/// An out-of-band message's bytes, valid until the next oob_read on this thread
/// (or while `seg` lives).
struct OobMessage {
  std::span<const std::byte> bytes;
  Segment seg;
};
/// Reads an out-of-band message (fd borrowed).
OobMessage oob_read(int fd, std::size_t size);

/// Closes every fd in the list (ignoring errors).
void close_fds(std::span<const int> fds) noexcept;

}  // namespace mproc::detail
