// fuzz_forkserver: what the forkserver and its children decode from bytes their client
// sent (src/os/forkserver.cpp, start.cpp): the request header the server checks before
// it hands a request to a spare (detail::decode_fork_request), and the start of the task
// payload every child decodes (ChildMeta, then the entry point's CodeRef, which
// resolve_code checks against this process's loaded modules; the entry is not called).
//
// Input: byte 0 bit 0 picks the decoder; byte 1 is the number of fds that came with the
// request (header mode); the rest is the message.
//
// Oracle: the header decoder never accepts a request a spare could not run (fewer than 2
// fds, an fd count that differs from the header's, a bad magic); the payload decoders
// succeed or throw mproc::SerializationError, and a resolved entry lies in a loaded
// module's executable code.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

#include "../src/os/internal.hpp"
#include "mproc/detail/code_ref.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace mproc::detail;
  if (size < 2) return 0;
  std::span<const std::byte> msg(reinterpret_cast<const std::byte*>(data) + 2, size - 2);
  if ((data[0] & 1) == 0) {
    const std::size_t nfds = data[1];
    auto req = decode_fork_request(msg, nfds);
    if (req && (msg.size() != sizeof(ForkRequest) || nfds < 2 || req->nfds != nfds || req->daemon > 1 || req->magic != kForkRequestMagic ||
                std::memcmp(&*req, msg.data(), sizeof *req) != 0)) {
      std::abort();
    }
    return 0;
  }
  try {
    mproc::Reader r(msg);
    auto meta = mproc::load<ChildMeta>(r);
    auto ref = mproc::load<CodeRef>(r);
    (void)mproc::load<std::uint64_t>(r);  // the entry's identity
    const void* entry = resolve_code(ref);
    if (entry == nullptr) std::abort();
    (void)meta;
  } catch (const mproc::SerializationError&) {
  }
  return 0;
}
