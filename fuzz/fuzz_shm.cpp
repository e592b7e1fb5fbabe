// fuzz_shm: shared-memory handles decoded from a message another process wrote, over a
// real memfd (include/mproc/shared_memory.hpp, detail/segment.hpp): SharedArray<T> of
// several element sizes, SharedMemory and a bare Segment.
//
// Input: byte 0 picks the handle type; bytes 1-2 (little-endian, modulo 64 KiB) are the
// real size of the memfd the message's fd 0 refers to; the rest is the message.
//
// Oracle: decoding succeeds or throws mproc::SerializationError. A decoded handle must be
// usable: every byte it claims is read (first, last, one per page), so a handle larger
// than its memfd (SIGBUS) or an element count that overflows (n * sizeof(T)) shows up as a
// crash. std::system_error (mmap refused an absurd size) is accepted as a clear error too.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <span>
#include <system_error>

#include "mproc/shared_memory.hpp"

namespace {

struct Triple {
  std::uint8_t b[3];
};
struct Wide {
  double d[5];
};

volatile std::uint8_t sink;

void touch(const std::byte* p, std::size_t n) {
  if (n == 0) return;
  std::uint8_t acc = 0;
  for (std::size_t off = 0; off < n; off += 4096) acc ^= static_cast<std::uint8_t>(p[off]);
  acc ^= static_cast<std::uint8_t>(p[n - 1]);
  sink = acc;
}

template <class T>
void decode_array(mproc::Reader& r) {
  auto a = mproc::load<mproc::SharedArray<T>>(r);
  // What the handle promises: size() elements at data().
  touch(reinterpret_cast<const std::byte*>(a.data()), a.size() * sizeof(T));
  if (!a.empty()) a[a.size() - 1] = a[0];  // and they are writable
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const std::size_t real = static_cast<std::size_t>(data[1] | (data[2] << 8));
  std::span<const std::byte> msg(reinterpret_cast<const std::byte*>(data) + 3, size - 3);

  int fd = ::memfd_create("fuzz-shm", MFD_CLOEXEC);
  if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(real)) < 0) std::abort();
  const int fds[] = {fd};
  mproc::Reader r(msg, fds);
  try {
    switch (data[0] % 6) {
      case 0: decode_array<std::uint8_t>(r); break;
      case 1: decode_array<std::int32_t>(r); break;
      case 2: decode_array<Triple>(r); break;
      case 3: decode_array<Wide>(r); break;
      case 4: {
        auto m = mproc::load<mproc::SharedMemory>(r);
        touch(m.buf().data(), m.buf().size());
        break;
      }
      case 5: {
        auto s = mproc::load<mproc::detail::Segment>(r);
        touch(s.data(), s.size());
        break;
      }
    }
  } catch (const mproc::SerializationError&) {
  } catch (const std::system_error&) {
  }
  ::close(fd);
  return 0;
}
