// mproc::wait over connections, queues and fds (mproc/wait.hpp).
#include "mproc/wait.hpp"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <string>
#include <system_error>

#include "mproc/error.hpp"
#include "mproc/process.hpp"

namespace mproc {

WaitObject::WaitObject(const Process& p) : fd_(p.sentinel()) {
  if (fd_ < 0) throw UsageError("mproc: wait(): a Process that was not started has no sentinel to wait on");
}

namespace {

using Clock = std::chrono::steady_clock;

// poll(2) on `fds` for up to `wait` (0: look once); EINTR counts as "nothing yet".
void poll_fds(std::vector<pollfd>& fds, std::chrono::nanoseconds wait) {
  timespec ts{};
  auto ns = std::max<std::int64_t>(0, wait.count());
  ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  for (auto& p : fds) p.revents = 0;
  if (::ppoll(fds.data(), fds.size(), &ts, nullptr) < 0 && errno != EINTR) {
    throw std::system_error(errno, std::generic_category(), "mproc: wait(): ppoll");
  }
}

}  // namespace

std::vector<std::size_t> wait(const std::vector<WaitObject>& objects, detail::OptionalTimeout timeout) {
  const detail::deadline_t deadline = detail::deadline_after(timeout);
  std::vector<pollfd> fds;
  std::vector<std::size_t> fd_index, ch_index;
  for (std::size_t i = 0; i < objects.size(); ++i) {
    const WaitObject& o = objects[i];
    if (o.ch_) {
      ch_index.push_back(i);
    } else {
      if (o.fd_ < 0) throw UsageError("mproc: wait(): a negative file descriptor (" + std::to_string(o.fd_) + ")");
      fds.push_back(pollfd{o.fd_, POLLIN, 0});
      fd_index.push_back(i);
    }
  }
  // One channel and nothing else: its own wait is exact (a futex).
  if (fds.empty() && ch_index.size() == 1) {
    bool ready = objects[ch_index[0]].ch_.poll(deadline);
    return ready ? std::vector<std::size_t>{ch_index[0]} : std::vector<std::size_t>{};
  }
  std::chrono::nanoseconds step = std::chrono::microseconds(20);
  const std::chrono::nanoseconds max_step = std::chrono::milliseconds(1);
  bool first = true;
  for (;;) {
    std::vector<std::size_t> ready;
    // The fds: looked at once (first round), or waited on for `step` / up to the deadline.
    std::chrono::nanoseconds wait_for{0};
    if (!first) {
      auto left = deadline ? *deadline - Clock::now() : std::chrono::nanoseconds::max();
      wait_for = ch_index.empty() ? left : std::min(step, left);
      step = std::min(step * 2, max_step);
    }
    // Without channels there is nothing else to look at: the fds are waited on up to
    // the deadline, in slices of a second (so "never" stays a finite timespec).
    if (!fds.empty() || wait_for > wait_for.zero()) {
      poll_fds(fds, std::min<std::chrono::nanoseconds>(wait_for, std::chrono::seconds(1)));
    }
    for (std::size_t k = 0; k < ch_index.size(); ++k) {
      std::size_t i = ch_index[k];
      if (objects[i].ch_.poll(detail::no_wait())) ready.push_back(i);
    }
    for (std::size_t k = 0; k < fds.size(); ++k) {
      if (fds[k].revents & POLLNVAL) {
        throw UsageError("mproc: wait(): " + std::to_string(fds[k].fd) + " is not an open file descriptor");
      }
      if (fds[k].revents & (POLLIN | POLLHUP | POLLERR)) ready.push_back(fd_index[k]);
    }
    if (!ready.empty()) {
      std::sort(ready.begin(), ready.end());
      return ready;
    }
    if (deadline && Clock::now() >= *deadline) return {};
    first = false;
  }
}

}  // namespace mproc
