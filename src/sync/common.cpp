// What every sync object uses: shared pages and their codec, the robust mutex,
// thread identity, deadlines (see src/sync/internal.hpp).
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <string>
#include <system_error>

#include "internal.hpp"

// ThreadSanitizer builds (MPROC_TSAN): see robust_lock.
#if defined(__SANITIZE_THREAD__)
#define MPROC_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MPROC_UNDER_TSAN 1
#endif
#endif
#ifdef MPROC_UNDER_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace mproc::detail {
namespace {

// Bumped in the child after every fork() that runs atfork handlers (all of
// glibc's fork(), hence every mproc fork). Read relaxed: it only ever changes in
// a child that is single-threaded at that moment.
std::atomic<unsigned> fork_generation{0};

[[maybe_unused]] const int atfork_registered = [] {
  ::pthread_atfork(nullptr, nullptr, [] { fork_generation.fetch_add(1, std::memory_order_relaxed); });
  return 0;
}();

constexpr std::size_t page_size = 4096;

timespec to_timespec(std::chrono::steady_clock::time_point t) {
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  if (ns < 0) ns = 0;
  return timespec{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
}

void check(int rc, const char* call) {
  if (rc != 0)
    throw std::system_error(rc, std::generic_category(), std::string("mproc: ") + call + " failed");
}

// Mappings kept for the life of the process (see ~Attachment). A lock-free list,
// never freed: pushing needs no mutex (safe in a child forked while another thread
// pushed) and it outlives static destruction, when global handles go away.
struct Pinned {
  Segment seg;
  Pinned* next;
};
std::atomic<Pinned*> pinned{nullptr};

void pin(const Segment& seg) noexcept {
  try {
    auto* node = new Pinned{seg, pinned.load(std::memory_order_relaxed)};
    while (!pinned.compare_exchange_weak(node->next, node, std::memory_order_relaxed)) {
    }
  } catch (...) {
    // Out of memory in a destructor: unmapping anyway is the only option left.
  }
}

}  // namespace

Attachment::~Attachment() {
  if (!ref.seg) return;
  SyncKind kind;
  std::memcpy(&kind, ref.at(), sizeof kind);
  switch (kind) {
    case SyncKind::lock:
    case SyncKind::rlock:
      // Held by a thread of this process (the owner fields name it; a stale
      // value names a pid that is not ours once released, since release clears them).
      if (mutex_state(ref.at())->owner_pid.load(std::memory_order_relaxed) == thread_ids().pid) pin(ref.seg);
      break;
    case SyncKind::semaphore:
      semaphore_forget(ref);
      break;
    default:
      break;
  }
}

const ThreadIds& thread_ids() noexcept {
  thread_local ThreadIds ids{~0u, 0, 0, {}};
  unsigned g = fork_generation.load(std::memory_order_relaxed);
  if (ids.generation != g) {
    ids = ThreadIds{g, static_cast<std::int32_t>(::getpid()),
                    static_cast<std::int32_t>(::syscall(SYS_gettid)), self_token()};
  }
  return ids;
}

void init_robust_mutex(pthread_mutex_t* m, bool recursive) {
  pthread_mutexattr_t a;
  check(::pthread_mutexattr_init(&a), "pthread_mutexattr_init");
  // PROCESS_SHARED: the mutex lives in a mapping several processes use.
  // ROBUST: the kernel walks a dying thread's robust list (also on SIGKILL) and
  // marks mutexes it held OWNER_DIED, so the next locker gets EOWNERDEAD instead of
  // waiting forever. ERRORCHECK for the plain kind: relocking by the owner returns
  // EDEADLK rather than deadlocking, and unlock by a non-owner returns EPERM.
  check(::pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED), "pthread_mutexattr_setpshared");
  check(::pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST), "pthread_mutexattr_setrobust");
  check(::pthread_mutexattr_settype(&a, recursive ? PTHREAD_MUTEX_RECURSIVE : PTHREAD_MUTEX_ERRORCHECK),
        "pthread_mutexattr_settype");
  int rc = ::pthread_mutex_init(m, &a);
  ::pthread_mutexattr_destroy(&a);
  check(rc, "pthread_mutex_init");
}

MutexResult robust_lock(pthread_mutex_t* m, deadline_t deadline, bool block) {
  int rc;
  if (!block) {
    rc = ::pthread_mutex_trylock(m);
  } else if (!deadline) {
    rc = ::pthread_mutex_lock(m);
  } else {
    // CLOCK_MONOTONIC, the clock of our deadlines: a wall-clock jump neither
    // stretches nor cuts the wait. A deadline already past still tries once.
    timespec ts = to_timespec(*deadline);
#ifdef MPROC_UNDER_TSAN
    // ThreadSanitizer intercepts pthread_mutex_lock, trylock, timedlock and unlock,
    // but not clocklock (GCC 12's libtsan, clang 14's): it saw the unlock of a
    // mutex it never saw taken ("unlock of an unlocked mutex") and missed the
    // ordering the lock gives. Tell it, as its own interceptors do.
    __tsan_mutex_pre_lock(m, __tsan_mutex_try_lock);
    rc = ::pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
    __tsan_mutex_post_lock(
        m, __tsan_mutex_try_lock | (rc == 0 || rc == EOWNERDEAD ? 0u : __tsan_mutex_try_lock_failed), 0);
#else
    rc = ::pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
#endif
  }
  switch (rc) {
    case 0:
      return MutexResult::ok;
    case EOWNERDEAD:
      return MutexResult::owner_died;
    case ETIMEDOUT:
      return MutexResult::timed_out;
    case EBUSY:
      return MutexResult::busy;
    case EDEADLK:
      return MutexResult::deadlock;
    case ENOTRECOVERABLE:
      throw Error(
          "mproc: a lock's previous owner died and the lock was left unrecoverable "
          "(ENOTRECOVERABLE); create a new lock");
    default:
      throw std::system_error(rc, std::generic_category(), "mproc: pthread_mutex_lock failed");
  }
}

void robust_consistent(pthread_mutex_t* m) noexcept { ::pthread_mutex_consistent(m); }

FutexWait futex_wait_slice(std::atomic<std::uint32_t>* word, std::uint32_t expected, deadline_t deadline,
                           std::chrono::nanoseconds slice) {
  auto until = std::chrono::steady_clock::now() + slice;
  if (deadline && *deadline < until) until = *deadline;
  return futex_wait(word, expected, until);
}

SyncRef new_sync_page(SyncKind kind, const char* tag) {
  SyncRef ref{Segment::create(page_size, tag), 0};
  // The tag is written before the handle can reach anyone: sending it (fd over a
  // socket or fork) orders this store before any read in the receiver.
  std::memcpy(ref.at(), &kind, sizeof kind);
  return ref;
}

SyncRef init_mutex_state(SyncRef ref, bool recursive) {
  auto* st = new (ref.at()) MutexState{};
  st->kind = recursive ? SyncKind::rlock : SyncKind::lock;
  init_robust_mutex(&st->mu, recursive);
  return ref;
}

void encode_sync_ref(Writer& w, const SyncRef& ref) {
  codec<Segment>::encode(w, ref.seg);
  w.write(&ref.offset, sizeof ref.offset);
}

SyncRef decode_sync_ref(Reader& r, SyncKind a, SyncKind b) {
  SyncRef ref;
  ref.seg = codec<Segment>::decode(r);
  r.read(&ref.offset, sizeof ref.offset);
  SyncKind found{};
  if (std::size_t{ref.offset} + mutex_state_size > ref.seg.size() ||
      (std::memcpy(&found, ref.at(), sizeof found), found != a && found != b)) {
    throw SerializationError(
        "mproc: a received lock/semaphore/event handle does not refer to an object of "
        "the expected type (corrupt message, or a different build of the program)");
  }
  return ref;
}

}  // namespace mproc::detail
