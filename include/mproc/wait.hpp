// mproc/wait.hpp — mproc::wait(objects, timeout), Python's
// multiprocessing.connection.wait(): blocks until one or more of several
// connections, queues and process sentinels is ready.
//
//   auto [a, b] = mproc::Pipe<int>();
//   mproc::Queue<std::string> q;
//   mproc::Process p(work, b, q);
//   p.start();
//   for (std::size_t i : mproc::wait({a, q, p.sentinel()}, 5s)) ...   // indices of the ready ones
//
// (mproc::wait over Futures, concurrent.futures.wait, is in mproc/executor.hpp.)
#pragma once

#include "mproc/detail/config.hpp"

#include <cstddef>
#include <vector>

#include "mproc/detail/channel.hpp"
#include "mproc/detail/timeout.hpp"

namespace mproc {

class Process;

/// What mproc::wait() waits on: a Connection (ready when a message can be
/// received, or its other end is closed everywhere, so recv() throws EOFError at
/// once), a Queue or JoinableQueue (ready when get() would not block:
/// an item is there, or no other process can put any more, or it was shut down),
/// or a file descriptor (ready when readable: a Process's sentinel() once the
/// process has ended, a socket, an eventfd). A handle: it shares the object, and
/// the object must stay open while wait() runs.
class WaitObject {
 public:
  /// A Connection<T> or a queue: anything with a channel().
  template <class C>
    requires requires(const C& c) {
      { c.channel() } -> std::convertible_to<const detail::ChannelEnd&>;
    }
  WaitObject(const C& c) : ch_(c.channel()) {}  // NOLINT: implicit, as in a braced list of objects
  /// A readable file descriptor, e.g. Process::sentinel(). Not owned.
  WaitObject(int fd) : fd_(fd) {}  // NOLINT: implicit
  /// The process's sentinel(); UsageError if it was not started.
  WaitObject(const Process& p);  // NOLINT: implicit

 private:
  friend std::vector<std::size_t> wait(const std::vector<WaitObject>&, detail::OptionalTimeout);
  detail::ChannelEnd ch_;
  int fd_ = -1;
};

/// Blocks until at least one of `objects` is ready (see WaitObject) or `timeout`
/// passes (any std::chrono::duration; std::nullopt: no limit; zero or negative:
/// look once), and returns the indices of those ready, in order: empty on timeout.
/// Python's multiprocessing.connection.wait(), which returns the objects; here a
/// connection or queue is ready again until it is read, as there.
/// How it waits, without polling: on a single connection or queue, on its futex;
/// on fds only, in poll(2); on several channels, on all their futexes at once
/// (futex_waitv(2), Linux 5.16+), each re-checked after it is armed so that no
/// send is missed; on channels and fds, the same, with a helper thread (all
/// signals blocked) in poll(2) on the fds that wakes it. Each sleep lasts at most
/// 100 ms, after which the peers are looked at, as recv() does. More than 128
/// channels (127 with fds: futex_waitv's limit), or a kernel without futex_waitv:
/// poll(2) on the fds with a timeout that grows from 20 us to 1 ms between looks
/// at the channels, so a message is seen within about 1 ms.
/// Throws UsageError if an object is closed in this process, a send-only
/// Connection, or an fd that is negative or not open. Safe from several threads.
std::vector<std::size_t> wait(const std::vector<WaitObject>& objects,
                              detail::OptionalTimeout timeout = std::nullopt);

}  // namespace mproc
