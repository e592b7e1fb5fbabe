// Frames, the build fingerprint and the handshake's cryptography (libcrypto).
#include "protocol.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <elf.h>
#include <link.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "mproc/detail/type_name.hpp"

namespace mproc::detail::mgr {

namespace {
template <class T>
void put_raw(std::byte*& p, T v) noexcept {
  std::memcpy(p, &v, sizeof v);
  p += sizeof v;
}
template <class T>
T get_raw(const std::byte*& p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);
  p += sizeof v;
  return v;
}
}  // namespace

void encode_header(std::byte* out, FrameType type, std::uint32_t length) noexcept {
  put_raw(out, kMagic);
  put_raw(out, kVersion);
  put_raw(out, static_cast<std::uint16_t>(type));
  put_raw(out, length);
  put_raw(out, std::uint32_t{0});
}

std::optional<FrameHeader> decode_header(std::span<const std::byte, kHeaderSize> in, std::uint32_t limit,
                                         std::string& why) {
  const std::byte* p = in.data();
  auto magic = get_raw<std::uint32_t>(p);
  FrameHeader h;
  h.version = get_raw<std::uint16_t>(p);
  auto type = get_raw<std::uint16_t>(p);
  h.length = get_raw<std::uint32_t>(p);
  auto reserved = get_raw<std::uint32_t>(p);
  if (magic != kMagic) {
    why = "not an mproc manager frame (bad magic): the peer is not an mproc manager client/server";
    return std::nullopt;
  }
  if (h.version != kVersion) {
    why = "protocol version " + std::to_string(h.version) + " (this side speaks version " +
          std::to_string(kVersion) + "): use the same mproc release on both ends";
    return std::nullopt;
  }
  if (type < static_cast<std::uint16_t>(FrameType::hello) || type > static_cast<std::uint16_t>(FrameType::notify) ||
      reserved != 0) {
    why = "unknown frame type " + std::to_string(type);
    return std::nullopt;
  }
  if (h.length > limit) {
    why = "frame of " + std::to_string(h.length) + " bytes exceeds the limit of " + std::to_string(limit);
    return std::nullopt;
  }
  h.type = static_cast<FrameType>(type);
  return h;
}

std::uint64_t build_id() noexcept {
  // The compiler, its version, the standard library's ABI and the sizes that
  // native-layout encoding depends on. Same binary or same toolchain: same id.
  static const std::uint64_t id = [] {
    std::string s = "mproc-0.1;";
#ifdef __VERSION__
    s += __VERSION__;
#endif
#ifdef _GLIBCXX_USE_CXX11_ABI
    s += ";cxx11abi=" + std::to_string(_GLIBCXX_USE_CXX11_ABI);
#endif
    s += ";ptr=" + std::to_string(sizeof(void*)) + ";long=" + std::to_string(sizeof(long)) +
         ";ld=" + std::to_string(sizeof(long double));
    std::uint16_t one = 1;
    unsigned char first;
    std::memcpy(&first, &one, 1);
    s += first ? ";le" : ";be";
    return fnv1a(s);
  }();
  return id;
}

std::uint64_t program_id() noexcept {
  static const std::uint64_t id = [] {
    std::string note;
    // The first object dl_iterate_phdr reports is the main program.
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* out) -> int {
          auto& n = *static_cast<std::string*>(out);
          for (int i = 0; i < info->dlpi_phnum; ++i) {
            const auto& ph = info->dlpi_phdr[i];
            if (ph.p_type != PT_NOTE) continue;
            const char* p = reinterpret_cast<const char*>(info->dlpi_addr + ph.p_vaddr);
            const char* end = p + ph.p_memsz;
            while (p + sizeof(ElfW(Nhdr)) <= end) {
              ElfW(Nhdr) nh;
              std::memcpy(&nh, p, sizeof nh);
              const char* name = p + sizeof nh;
              const char* desc = name + ((nh.n_namesz + 3) & ~3u);
              if (nh.n_type == NT_GNU_BUILD_ID && desc + nh.n_descsz <= end) {
                n.assign(desc, nh.n_descsz);
                return 1;
              }
              p = desc + ((nh.n_descsz + 3) & ~3u);
            }
          }
          return 1;  // only the first object
        },
        &note);
    if (note.empty()) {
      char path[4096];
      ssize_t k = ::readlink("/proc/self/exe", path, sizeof path - 1);
      if (k > 0) note.assign(path, static_cast<std::size_t>(k));
      struct stat st {};
      if (::stat("/proc/self/exe", &st) == 0) {
        note += ';';
        note += std::to_string(st.st_size);
        note += ';';
        note += std::to_string(st.st_mtime);
      }
    }
    return fnv1a(note) | 1;  // never 0, which means "unknown"
  }();
  return id;
}

Mac hmac(const std::string& key, std::string_view label, const Challenge& challenge) {
  std::string msg(label);
  msg.append(reinterpret_cast<const char*>(challenge.data()), challenge.size());
  Mac out{};
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(msg.data()),
            msg.size(), out.data(), &len) ||
      len != out.size()) {
    throw ManagerError("mproc: HMAC-SHA256 failed in libcrypto");
  }
  return out;
}

bool mac_equal(const Mac& a, const Mac& b) noexcept { return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0; }

void random_bytes(void* out, std::size_t n) {
  if (RAND_bytes(static_cast<unsigned char*>(out), static_cast<int>(n)) != 1) {
    throw ManagerError("mproc: libcrypto's RAND_bytes could not produce random bytes");
  }
}

void encode_request(Writer& w, const RequestHeader& h) {
  auto op = static_cast<std::uint16_t>(h.op);
  w.write(&op, sizeof op);
  w.write(&h.object, sizeof h.object);
  w.write(&h.tid, sizeof h.tid);
  w.write(&h.timeout, sizeof h.timeout);
}

RequestHeader decode_request(Reader& r) {
  RequestHeader h;
  std::uint16_t op;
  r.read(&op, sizeof op);
  h.op = static_cast<Op>(op);
  r.read(&h.object, sizeof h.object);
  r.read(&h.tid, sizeof h.tid);
  r.read(&h.timeout, sizeof h.timeout);
  return h;
}

std::string hex(std::span<const std::uint8_t> b) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (auto c : b) {
    s += d[c >> 4];
    s += d[c & 15];
  }
  return s;
}

}  // namespace mproc::detail::mgr
