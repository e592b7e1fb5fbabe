// fuzz_channel: the channel's record framing (src/channel/ring.cpp), as a consumer reads
// it from a ring another process wrote. A real queue channel (4 KiB ring) is made once;
// each input is written into its ring through a second mapping of the shared memory
// (as tests/test_channel.cpp's RingView does), then received until the ring is empty.
//
// Input: bytes 0-1: the published tail's record count (little-endian); bytes 2-3: its
// byte position (modulo 2^16; the ring masks it); byte 4: flags (bit 0: receive with a
// claim step; bits 1-2: the header's shutdown word, 0 open, 1 shut, 2 drained, 3 a
// value no shutdown() writes); then up to 4 KiB of ring bytes (the rest zero). The head
// starts at 0.
//
// Oracle: every receive returns a message, or throws mproc::Error (a corrupt ring, a
// side-band message missing, ShutDown once a shut ring is empty or at once when
// drained), and never reads outside the ring. The consumer is alone,
// so a missing side-band message is reported, not waited for.
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <span>

#include "../src/channel/internal.hpp"
#include "mproc/error.hpp"

namespace {

using namespace mproc::detail;

struct Fixture {
  ChannelEnd ch;
  Segment view;  // a second mapping of ch's shared memory
  ChannelHeader* h = nullptr;
  RingState* ring = nullptr;
  std::byte* bytes = nullptr;

  Fixture() {
    ChannelOptions o;
    o.capacity = kMinCapacity;
    ch = ChannelEnd::create_queue(o);
    ch.set_spin(std::chrono::nanoseconds(0));
    mproc::Writer w;
    ch.encode(w);
    view = Segment::adopt(w.fds()[0], kHeaderBytes + ch.capacity());
    mproc::Reader balance(w.bytes(), w.fds());
    (void)ChannelEnd::decode(balance);  // the encode above counted a handle in flight
    h = reinterpret_cast<ChannelHeader*>(view.data());
    ring = &h->rings[0];
    bytes = view.data() + ring->offset;
  }
};

volatile std::size_t sink;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Fixture f;
  if (size < 5) return 0;
  const std::uint64_t count = data[0] | (data[1] << 8);
  const std::uint64_t pos = data[2] | (data[3] << 8);
  const bool with_claim = data[4] & 1;
  const std::uint32_t shutdown = (data[4] >> 1) & 3;
  const std::size_t cap = f.ring->capacity;
  std::span<const std::uint8_t> body(data + 5, std::min(size - 5, cap));

  // A consistent empty ring first (head == tail, nothing in flight), then the input.
  f.ring->head.store(0);
  f.ring->tail.store(0);
  f.ring->cached_head.store(0);
  f.ring->sb_sent.store(0);
  f.ring->sb_received.store(0);
  std::memset(f.bytes, 0, cap);
  std::memcpy(f.bytes, body.data(), body.size());
  f.ring->tail.store(pack(pos, count));
  f.h->shutdown.store(shutdown);

  auto take = [](mproc::Reader& r) { sink = r.remaining() ? static_cast<std::size_t>(*r.take(r.remaining())) : 0; };
  auto claim = [](mproc::Reader& prefix) { sink = prefix.remaining(); };
  const auto deadline = std::chrono::steady_clock::now();
  try {
    // Bounded: each receive consumes a record or throws.
    for (std::uint64_t i = 0; i <= count; ++i) {
      bool got = with_claim ? f.ch.recv(deadline, claim, take) : f.ch.recv(deadline, take);
      if (!got) break;
    }
  } catch (const mproc::Error& e) {
    if (std::getenv("FUZZ_DEBUG")) std::fprintf(stderr, "fuzz_channel: %s\n", e.what());
  }
  return 0;
}
