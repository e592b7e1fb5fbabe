// The manager's wire protocol, shared by the server and the client. Not installed.
//
// Every message is a frame: a 16-byte header, then `length` payload bytes.
//   u32 magic 'MPRM' | u16 version | u16 type | u32 length | u32 reserved (0)
// Frames are bounded (kMaxFrame; kMaxHandshakeFrame before authentication), so a
// corrupt or hostile length never makes anyone allocate much. A frame of another
// protocol version is refused with a message naming both versions.
//
// Handshake (mutual HMAC-SHA256 challenge-response, as CPython >= 3.12):
//   server -> hello   {u64 build, u8[16] server id, u8[32] server challenge}
//   client -> auth    {u64 build, u8[32] client challenge,
//                      u8[32] HMAC(key, "mproc-client" | server challenge), u64 session, i32 pid,
//                      u64 program}
//   server -> welcome {u8[32] HMAC(key, "mproc-server" | client challenge)}
//          or refuse  {text}, then closes.
// Then the client sends requests and the server replies, one at a time per connection:
//   request {u16 op, u64 object id, u64 thread id, i64 timeout ns (-1: none), args…}
//   reply   {u8 status, payload…}
//   notify  (a request that gets no reply: decref)
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "mproc/detail/manager_client.hpp"
#include "mproc/serial.hpp"

namespace mproc::detail::mgr {

inline constexpr std::uint32_t kMagic = 0x4d50524d;  // "MRPM" in memory, 'MPRM' as a number
// 2: extended slices, l *= n, d |= other, dict created with items (a version-1 peer
// would not know these requests: it is refused at the handshake instead).
inline constexpr std::uint16_t kVersion = 2;
inline constexpr std::size_t kHeaderSize = 16;
inline constexpr std::uint32_t kMaxFrame = 64u << 20;
inline constexpr std::uint32_t kMaxHandshakeFrame = 512;

enum class FrameType : std::uint16_t { hello = 1, auth, welcome, refuse, request, reply, notify };

struct FrameHeader {
  std::uint16_t version = kVersion;
  FrameType type{};
  std::uint32_t length = 0;
};

/// Writes a header for a payload of `length` bytes.
void encode_header(std::byte* out, FrameType type, std::uint32_t length) noexcept;
/// Checks a received header. Returns the header, or empty with `why` saying what
/// is wrong (bad magic, other protocol version, unknown type, over `limit`).
std::optional<FrameHeader> decode_header(std::span<const std::byte, kHeaderSize> in, std::uint32_t limit,
                                         std::string& why);

/// The build fingerprint: values cross as native-layout bytes, so both ends must
/// agree on the compiler, the ABI and mproc's version.
std::uint64_t build_id() noexcept;

using Mac = std::array<std::uint8_t, 32>;
using Challenge = std::array<std::uint8_t, 32>;
using ServerId = std::array<std::uint8_t, 16>;

/// HMAC-SHA256(key, label | challenge) through libcrypto.
Mac hmac(const std::string& key, std::string_view label, const Challenge& challenge);
/// Constant-time comparison (CRYPTO_memcmp).
bool mac_equal(const Mac& a, const Mac& b) noexcept;
/// Cryptographically random bytes (RAND_bytes); throws ManagerError if none can be had.
void random_bytes(void* out, std::size_t n);

struct Hello {
  std::uint64_t build = 0;
  ServerId server{};
  Challenge challenge{};
  template <class A>
  void serialize(A& ar) {
    ar(build, server, challenge);
  }
};
struct Auth {
  std::uint64_t build = 0;
  Challenge challenge{};
  Mac mac{};
  std::uint64_t session = 0;
  std::int32_t pid = 0;
  std::uint64_t program = 0;  // program_id(): apply() runs only for clients of the server's program
  template <class A>
  void serialize(A& ar) {
    ar(build, challenge, mac, session, pid, program);
  }
};

/// Identity of the running program: a hash of the main executable's GNU build-id
/// note (its path and size when it has none). Code references (apply, sort) are
/// (module, offset) pairs: meaningful only between processes of the same program.
std::uint64_t program_id() noexcept;

struct RequestHeader {
  Op op{};
  std::uint64_t object = 0;
  std::uint64_t tid = 0;
  std::int64_t timeout = forever;
};
inline constexpr std::size_t kRequestHeaderSize = 2 + 8 + 8 + 8;
void encode_request(Writer& w, const RequestHeader& h);
/// Throws SerializationError when fewer bytes than a request header remain.
RequestHeader decode_request(Reader& r);

/// A label for logs.
std::string hex(std::span<const std::uint8_t> b);

}  // namespace mproc::detail::mgr
