// fuzz_manager: what the manager server decodes from its authenticated clients
// (src/manager/server.cpp): frame headers (magic, version, type, bounded length),
// request headers, every operation's arguments, and the server state they drive
// across several clients: objects created and freed, requests parked on locks,
// queues, conditions, barriers and events, woken by other clients, timed out, or
// dropped when their session dies (detail::mgr::fuzz_clients).
//
// Input: a fuzz_clients script (src/manager/internal.hpp): records of
// u8 ctl (slot, action) | u16 length | bytes, for 4 connection slots of 2 sessions.
// The seeds (fuzz/corpus/fuzz_manager/) are real client frames, written by
// make_corpus from fuzz/fuzz_manager_seeds.hpp.
//
// Oracle: no crash, no sanitizer report, no exception escaping the server's handling
// (it would end a real server; fuzz_clients aborts with its text), no hang. Code
// references in apply(), sort() and user-type requests are decoded but never called
// (the fuzzed client counts as another program).
#include <cstddef>
#include <cstdint>
#include <span>

#include "../src/manager/internal.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  mproc::detail::mgr::fuzz_clients(std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size));
  return 0;
}
