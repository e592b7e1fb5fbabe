// A task encoded once to be run many times in other processes: a pool's
// initializer, run by every worker it starts (replacements included). It keeps
// the descriptors the task's arguments carry (a Value's, Queue's, Lock's or
// SharedArray's memory and sockets), so that each worker's start sends them
// along; bytes alone left every worker with a message that "refers to a
// missing file descriptor" (issue 11, bug 9).
#pragma once

#include "mproc/detail/config.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "mproc/serial.hpp"

namespace mproc::detail {

/// An encoded task: its bytes and owned duplicates (close-on-exec) of the
/// descriptors it carries (Writer::add_fd), closed with its last copy. Copies
/// share both (a copy made only to be encoded, such as a Process argument's,
/// keeps the very fds the message names open). Immutable.
class EncodedTask {
 public:
  EncodedTask() = default;
  /// w's bytes, and duplicates of its fds (the objects they came from may go).
  /// Throws std::system_error when the system refuses a duplicate.
  explicit EncodedTask(const Writer& w);

  bool empty() const noexcept { return !p_ || p_->bytes.empty(); }
  std::span<const std::byte> bytes() const noexcept { return p_ ? std::span<const std::byte>(p_->bytes) : std::span<const std::byte>(); }
  /// Index i is the fd the task's Writer::add_fd returned i for.
  std::span<const int> fds() const noexcept { return p_ ? std::span<const int>(p_->fds) : std::span<const int>(); }

  /// Decoding (codec below): the bytes, and duplicates of the fds received.
  static EncodedTask received(std::span<const std::byte> bytes, std::span<const int> fds);

 private:
  struct Owned {
    std::vector<std::byte> bytes;
    std::vector<int> fds;
    Owned(std::span<const std::byte> b, std::span<const int> f);
    Owned(const Owned&) = delete;
    Owned& operator=(const Owned&) = delete;
    ~Owned();
  };
  std::shared_ptr<const Owned> p_;
};

}  // namespace mproc::detail

namespace mproc {

/// Sent as its bytes and its fds (a pool's worker receives its initializer so).
template <>
struct codec<detail::EncodedTask> {
  static void encode(Writer& w, const detail::EncodedTask& t) {
    const std::uint64_t n = t.bytes().size();
    const auto k = static_cast<std::uint32_t>(t.fds().size());
    w.write(&n, sizeof n);
    w.write(t.bytes().data(), t.bytes().size());
    w.write(&k, sizeof k);
    for (int fd : t.fds()) {
      std::uint32_t idx = w.add_fd(fd);
      w.write(&idx, sizeof idx);
    }
  }
  static detail::EncodedTask decode(Reader& r) {
    std::uint64_t n;
    r.read(&n, sizeof n);
    if (n > r.remaining()) throw SerializationError("mproc: an encoded task is longer than its message");
    const std::byte* p = r.take(static_cast<std::size_t>(n));
    std::uint32_t k;
    r.read(&k, sizeof k);
    if (k > r.fd_count()) throw SerializationError("mproc: an encoded task carries more fds than its message");
    std::vector<int> fds(k);
    for (auto& fd : fds) {
      std::uint32_t idx;
      r.read(&idx, sizeof idx);
      fd = r.fd(idx);  // borrowed: received() duplicates them
    }
    return detail::EncodedTask::received(std::span<const std::byte>(p, static_cast<std::size_t>(n)), fds);
  }
};

}  // namespace mproc
