// detail::EncodedTask (mproc/detail/encoded_task.hpp): bytes plus owned fds.
#include "mproc/detail/encoded_task.hpp"

#include <unistd.h>

namespace mproc::detail {

std::vector<int> dup_fds(std::span<const int> fds);  // src/pool/pool_front.cpp

EncodedTask::Owned::Owned(std::span<const std::byte> b, std::span<const int> f)
    : bytes(b.begin(), b.end()), fds(dup_fds(f)) {}

EncodedTask::Owned::~Owned() {
  for (int fd : fds) ::close(fd);
}

EncodedTask::EncodedTask(const Writer& w) : p_(std::make_shared<const Owned>(w.bytes(), w.fds())) {}

EncodedTask EncodedTask::received(std::span<const std::byte> bytes, std::span<const int> fds) {
  EncodedTask t;
  t.p_ = std::make_shared<const Owned>(bytes, fds);
  return t;
}

}  // namespace mproc::detail
