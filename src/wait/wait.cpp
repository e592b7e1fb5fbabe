// mproc::wait over connections, queues and fds (mproc/wait.hpp), and the
// futex_waitv(2) wrapper it sleeps in (mproc/detail/futex.hpp).
#include "mproc/wait.hpp"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <optional>
#include <string>
#include <system_error>
#include <thread>

#include "../channel/internal.hpp"  // kSlice
#include "mproc/error.hpp"
#include "mproc/process.hpp"

namespace mproc {

namespace detail {
namespace {

long real_futex_waitv(void* waiters, unsigned nr, unsigned flags, const timespec* abs_timeout, int clockid) {
  return ::syscall(SYS_futex_waitv, waiters, nr, flags, abs_timeout, clockid);
}

std::atomic<FutexWaitvSyscall> g_futex_waitv{&real_futex_waitv};
/// Set once futex_waitv answered ENOSYS (a kernel before 5.16, or a seccomp filter
/// that refuses it): mproc::wait then polls, and does not ask again.
std::atomic<bool> g_no_futex_waitv{false};

timespec to_timespec(std::chrono::nanoseconds ns) {
  auto n = std::max<std::int64_t>(0, ns.count());
  return timespec{static_cast<time_t>(n / 1'000'000'000), static_cast<long>(n % 1'000'000'000)};
}

}  // namespace

long futex_waitv(std::span<const FutexWaiter> waiters, deadline_t deadline) {
  if (waiters.empty() || waiters.size() > kFutexWaitvMax) {
    errno = EINVAL;
    return -1;
  }
  struct ::futex_waitv v[kFutexWaitvMax] = {};
  for (std::size_t i = 0; i < waiters.size(); ++i) {
    static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
    v[i].val = waiters[i].expected;
    v[i].uaddr = reinterpret_cast<std::uintptr_t>(waiters[i].word);
    v[i].flags = FUTEX_32;  // shared: the words live in memory other processes map
  }
  timespec ts{};
  const timespec* tsp = nullptr;
  if (deadline) {
    // steady_clock is CLOCK_MONOTONIC, the clock named below; the timeout is absolute.
    ts = to_timespec(deadline->time_since_epoch());
    tsp = &ts;
  }
  return g_futex_waitv.load(std::memory_order_acquire)(v, static_cast<unsigned>(waiters.size()), 0, tsp,
                                                       CLOCK_MONOTONIC);
}

FutexWaitvSyscall set_futex_waitv_syscall(FutexWaitvSyscall f) noexcept {
  g_no_futex_waitv.store(false, std::memory_order_relaxed);
  return g_futex_waitv.exchange(f ? f : &real_futex_waitv, std::memory_order_acq_rel);
}

}  // namespace detail

WaitObject::WaitObject(const Process& p) : fd_(p.sentinel()) {
  if (fd_ < 0) throw UsageError("mproc: wait(): a Process that was not started has no sentinel to wait on");
}

namespace {

using Clock = std::chrono::steady_clock;

// poll(2) on `fds` for up to `wait` (0: look once); EINTR counts as "nothing yet".
void poll_fds(std::vector<pollfd>& fds, std::chrono::nanoseconds wait) {
  timespec ts = detail::to_timespec(wait);
  for (auto& p : fds) p.revents = 0;
  if (::ppoll(fds.data(), fds.size(), &ts, nullptr) < 0 && errno != EINTR) {
    throw std::system_error(errno, std::generic_category(), "mproc: wait(): ppoll");
  }
}

/// The objects of one wait() call, split into channels and descriptors.
struct Split {
  std::vector<pollfd> fds;
  std::vector<std::size_t> fd_index, ch_index;
  std::vector<const detail::ChannelEnd*> chans;  // chans[k] is objects[ch_index[k]]'s
};

/// The ready ones among `s` after a poll of the fds (whose revents are set): each
/// channel is looked at once (poll(), not waiting). Sorted.
std::vector<std::size_t> ready_now(Split& s) {
  std::vector<std::size_t> ready;
  for (std::size_t k = 0; k < s.chans.size(); ++k) {
    if (s.chans[k]->poll(detail::no_wait())) ready.push_back(s.ch_index[k]);
  }
  for (std::size_t k = 0; k < s.fds.size(); ++k) {
    if (s.fds[k].revents & POLLNVAL) {
      throw UsageError("mproc: wait(): " + std::to_string(s.fds[k].fd) + " is not an open file descriptor");
    }
    if (s.fds[k].revents & (POLLIN | POLLHUP | POLLERR)) ready.push_back(s.fd_index[k]);
  }
  std::sort(ready.begin(), ready.end());
  return ready;
}

/// Without futex_waitv, or over more channels than it takes: poll(2) on the fds
/// with a timeout that grows from 20 us to 1 ms between looks at the channels.
std::vector<std::size_t> wait_polling(Split& s, const detail::deadline_t& deadline) {
  std::chrono::nanoseconds step = std::chrono::microseconds(20);
  const std::chrono::nanoseconds max_step = std::chrono::milliseconds(1);
  bool first = true;
  for (;;) {
    // The fds: looked at once (first round), or waited on for `step` / up to the deadline.
    std::chrono::nanoseconds wait_for{0};
    if (!first) {
      auto left = deadline ? *deadline - Clock::now() : std::chrono::nanoseconds::max();
      wait_for = s.ch_index.empty() ? left : std::min(step, left);
      step = std::min(step * 2, max_step);
    }
    // Without channels there is nothing else to look at: the fds are waited on up to
    // the deadline, in slices of a second (so "never" stays a finite timespec).
    if (!s.fds.empty() || wait_for > wait_for.zero()) {
      poll_fds(s.fds, std::min<std::chrono::nanoseconds>(wait_for, std::chrono::seconds(1)));
    }
    if (auto ready = ready_now(s); !ready.empty()) return ready;
    if (deadline && Clock::now() >= *deadline) return {};
    first = false;
  }
}

/// For a wait on channels and fds at once: a thread that sleeps in ppoll(2) on the
/// fds and, once one is ready (or in error), sets `fired` and wakes it, a word the
/// caller's futex_waitv sleeps on beside the channels' words. Started at the first
/// sleep, restarted when it fired for an fd the caller then found not ready (read
/// by another thread meanwhile); stopped (an eventfd) and joined by the destructor.
class FdWatcher {
 public:
  explicit FdWatcher(const std::vector<pollfd>& fds) : fds_(fds) {}
  ~FdWatcher() {
    if (thread_.joinable()) {
      std::uint64_t one = 1;
      // Cannot fail on a non-blocking eventfd far from its limit; were it to, the
      // join below would wait for an fd, so fail loudly instead.
      if (::write(stop_, &one, sizeof one) != sizeof one) std::terminate();
      thread_.join();
    }
    if (stop_ >= 0) ::close(stop_);
  }
  FdWatcher(const FdWatcher&) = delete;
  FdWatcher& operator=(const FdWatcher&) = delete;

  /// Watching, from now on: the word to sleep on (while it holds 0).
  std::atomic<std::uint32_t>& arm() {
    if (thread_.joinable() && fired_.load(std::memory_order_seq_cst) == 0) return fired_;
    if (thread_.joinable()) thread_.join();
    fired_.store(0, std::memory_order_seq_cst);
    if (stop_ < 0) {
      stop_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      if (stop_ < 0) throw std::system_error(errno, std::generic_category(), "mproc: wait(): eventfd");
    }
    std::vector<pollfd> p = fds_;
    p.push_back(pollfd{stop_, POLLIN, 0});
    // Every signal blocked in the watcher, so that a process-directed signal (SIGINT,
    // SIGCHLD) is handled by the program's own threads, as without it.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    try {
      thread_ = std::thread([this, p = std::move(p)]() mutable {
        while (::ppoll(p.data(), p.size(), nullptr, nullptr) < 0 && errno == EINTR) {
        }
        // Ready, in error (the caller's own ppoll reports it), or stopped: wake the caller.
        fired_.store(1, std::memory_order_seq_cst);
        detail::futex_wake(&fired_);
      });
    } catch (...) {
      pthread_sigmask(SIG_SETMASK, &old, nullptr);
      throw;
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return fired_;
  }

 private:
  const std::vector<pollfd>& fds_;
  std::atomic<std::uint32_t> fired_{0};
  int stop_ = -1;
  std::thread thread_;
};

/// The channels of one round armed (arm_poll), disarmed when the round ends.
struct Armed {
  const std::vector<const detail::ChannelEnd*>& chans;
  std::size_t n = 0;
  ~Armed() {
    for (std::size_t k = 0; k < n; ++k) chans[k]->disarm_poll();
  }
};

/// With futex_waitv: sleeps on every channel's futex at once (and on an FdWatcher's
/// word when there are fds), in slices of kSlice so that a peer killed outright
/// (which wakes nobody) is noticed as poll() notices it. nullopt: the kernel has no
/// futex_waitv (ENOSYS), or no thread could be started for the fds; the caller
/// polls instead.
std::optional<std::vector<std::size_t>> wait_blocking(Split& s, const detail::deadline_t& deadline) {
  std::optional<FdWatcher> watcher;
  std::vector<detail::FutexWaiter> words;
  words.reserve(s.ch_index.size() + 1);
  for (;;) {
    if (!s.fds.empty()) poll_fds(s.fds, std::chrono::nanoseconds(0));
    if (auto ready = ready_now(s); !ready.empty()) return ready;
    if (deadline && Clock::now() >= *deadline) return std::vector<std::size_t>{};
    // Arm every channel, then look again (arm_poll re-checks each after reading its
    // futex value): a send after that changes a value we sleep on, so it wakes us
    // or makes futex_waitv return EAGAIN at once. No wake-up is lost.
    words.clear();
    Armed armed{s.chans};
    bool ready = false;
    for (const detail::ChannelEnd* ch : s.chans) {
      std::atomic<std::uint32_t>* word = nullptr;
      std::uint32_t value = 0;
      if (!ch->arm_poll(word, value)) {
        ready = true;
        break;
      }
      ++armed.n;
      words.push_back({word, value});
    }
    if (ready) continue;
    if (!s.fds.empty()) {
      if (!watcher) watcher.emplace(s.fds);
      try {
        words.push_back({&watcher->arm(), 0});
      } catch (const std::system_error&) {
        return std::nullopt;  // no thread (or eventfd) to be had now: poll instead
      }
    }
    auto slice_end = Clock::now() + detail::kSlice;
    long r = detail::futex_waitv(words, deadline ? std::min(*deadline, slice_end) : slice_end);
    if (r < 0) {
      switch (errno) {
        case EAGAIN:     // a word changed before we slept: look again
        case ETIMEDOUT:  // the slice or the deadline: look again
        case EINTR:
          break;
        case ENOSYS:
          detail::g_no_futex_waitv.store(true, std::memory_order_relaxed);
          return std::nullopt;
        default:
          throw std::system_error(errno, std::generic_category(), "mproc: wait(): futex_waitv");
      }
    }
  }
}

}  // namespace

std::vector<std::size_t> wait(const std::vector<WaitObject>& objects, detail::OptionalTimeout timeout) {
  const detail::deadline_t deadline = detail::deadline_after(timeout);
  Split s;
  for (std::size_t i = 0; i < objects.size(); ++i) {
    const WaitObject& o = objects[i];
    if (o.ch_) {
      s.ch_index.push_back(i);
      s.chans.push_back(&o.ch_);
    } else {
      if (o.fd_ < 0) throw UsageError("mproc: wait(): a negative file descriptor (" + std::to_string(o.fd_) + ")");
      s.fds.push_back(pollfd{o.fd_, POLLIN, 0});
      s.fd_index.push_back(i);
    }
  }
  // One channel and nothing else: its own wait is exact (a futex).
  if (s.fds.empty() && s.ch_index.size() == 1) {
    bool ready = objects[s.ch_index[0]].ch_.poll(deadline);
    return ready ? std::vector<std::size_t>{s.ch_index[0]} : std::vector<std::size_t>{};
  }
  // Channels (and fds): all their futexes in one futex_waitv, which takes at most
  // kFutexWaitvMax words (one of them the fd watcher's, with fds). Beyond that, or
  // on a kernel without it, poll.
  std::size_t words = s.ch_index.size() + (s.fds.empty() ? 0 : 1);
  if (!s.ch_index.empty() && words <= detail::kFutexWaitvMax &&
      !detail::g_no_futex_waitv.load(std::memory_order_relaxed)) {
    if (auto ready = wait_blocking(s, deadline)) return *std::move(ready);
  }
  return wait_polling(s, deadline);
}

}  // namespace mproc
