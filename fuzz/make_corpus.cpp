// make_corpus: writes the fuzz targets' seed inputs, real encodings made by mproc itself,
// into DIR/<target>/ (`cmake --build build/fuzz --target fuzz_corpus` regenerates the
// checked-in fuzz/corpus/). Deterministic: the same build writes the same files, except
// the code offsets in the forkserver seeds, which depend on the build.
//
//   make_corpus DIR
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "../src/channel/internal.hpp"
#include "../src/os/internal.hpp"
#include "fuzz_manager_seeds.hpp"
#include "mproc/shared_memory.hpp"
#include "serial_types.hpp"

namespace {

namespace fs = std::filesystem;
using mproc::detail::Kind;
using mproc::detail::kind_of;

fs::path out_dir;

void write_seed(const std::string& target, const std::string& name, const std::vector<std::byte>& bytes) {
  fs::create_directories(out_dir / target);
  std::ofstream f(out_dir / target / name, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("make_corpus: cannot write " + (out_dir / target / name).string());
}

std::vector<std::byte> cat(std::initializer_list<std::byte> head, std::span<const std::byte> rest) {
  std::vector<std::byte> v(head);
  v.insert(v.end(), rest.begin(), rest.end());
  return v;
}

// ---- serial: a sample value of each type, built by kind ----------------------------------

template <class T>
T sample(int seed);

template <class T>
T sample_by_kind(int seed) {
  constexpr Kind k = kind_of<T>();
  if constexpr (std::is_same_v<T, bool>) {
    return seed % 2 == 1;
  } else if constexpr (k == Kind::bytes) {
    T v{};
    auto* p = reinterpret_cast<unsigned char*>(&v);
    for (std::size_t i = 0; i < sizeof v; ++i) p[i] = static_cast<unsigned char>(seed + 3 * i + 1);
    if constexpr (std::is_floating_point_v<T>) v = static_cast<T>(seed) + T(0.5);
    if constexpr (std::is_enum_v<T>) v = static_cast<T>(seed % 3);
    return v;
  } else if constexpr (k == Kind::empty) {
    return T{};
  } else if constexpr (k == Kind::string) {
    T s;
    for (int i = 0; i < 3 + seed; ++i) s.push_back(static_cast<typename T::value_type>('a' + (seed + i) % 26));
    return s;
  } else if constexpr (k == Kind::array) {
    T a{};
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = sample<typename T::value_type>(seed + static_cast<int>(i));
    return a;
  } else if constexpr (k == Kind::contiguous || k == Kind::sequence || k == Kind::set) {
    T c;
    for (int i = 0; i < 3; ++i) c.insert(c.end(), sample<typename T::value_type>(seed + i));
    return c;
  } else if constexpr (k == Kind::map) {
    T m;
    for (int i = 0; i < 3; ++i) m.emplace(sample<typename T::key_type>(seed + i), sample<typename T::mapped_type>(seed + i));
    return m;
  } else if constexpr (k == Kind::optional) {
    return T{sample<typename T::value_type>(seed)};
  } else if constexpr (k == Kind::variant) {
    return []<class... A>(std::type_identity<std::variant<A...>>, int s) {
      T v;
      std::size_t want = static_cast<std::size_t>(s) % sizeof...(A), i = 0;
      (void)((i++ == want ? (v = sample<A>(s), true) : false) || ...);
      return v;
    }(std::type_identity<T>{}, seed);
  } else if constexpr (k == Kind::tuple) {
    return []<template <class...> class Tmpl, class... A>(std::type_identity<Tmpl<A...>>, int s) {
      return Tmpl<A...>{sample<A>(s)...};
    }(std::type_identity<T>{}, seed);
  } else {
    static_assert(mproc::detail::dependent_false<T>, "make_corpus: give this type a sample()");
  }
}

template <class T>
T sample(int seed) {
  if constexpr (std::is_same_v<T, fuzz::Record>) {
    return fuzz::Record{"rec" + std::to_string(seed), {seed, -seed, 7}, {{"w", 1.5}, {"none", std::nullopt}},
                        fuzz::Color::blue};
  } else if constexpr (std::is_same_v<T, fuzz::Versioned>) {
    fuzz::Versioned v;
    v.tag = static_cast<std::uint16_t>(seed);
    if (seed % 2) v.body = std::string("body"); else v.body = std::int64_t{-42};
    return v;
  } else if constexpr (std::is_same_v<T, fuzz::Nested>) {
    return fuzz::Nested{{sample<fuzz::Record>(seed), sample<fuzz::Record>(seed + 1)}, sample<fuzz::Versioned>(seed)};
  } else if constexpr (std::is_same_v<T, mproc::detail::ExceptionInfo>) {
    return {"std::runtime_error", "task failed: " + std::to_string(seed), "#0 main\n#1 work\n"};
  } else if constexpr (std::is_same_v<T, mproc::detail::CodeRef>) {
    return {seed % 2 ? "libmproc.so.0" : "", 0x1234u + static_cast<unsigned>(seed)};
  } else {
    return sample_by_kind<T>(seed);
  }
}

template <class... T>
void serial_seeds(fuzz::TypeList<T...>) {
  std::size_t i = 0;
  (
      [&] {
        for (int seed : {0, 1}) {
          auto bytes = mproc::to_bytes(sample<T>(seed));
          char name[32];
          std::snprintf(name, sizeof name, "type%02zu-%d", i, seed);
          write_seed("fuzz_serial", name, cat({static_cast<std::byte>(i)}, bytes));
        }
        ++i;
      }(),
      ...);
}

// ---- shm: handles as a sender encodes them, with the memfd's real size -----------------

std::vector<std::byte> shm_seed(std::uint8_t which, std::size_t real, const mproc::Writer& w) {
  return cat({std::byte{which}, static_cast<std::byte>(real & 0xff), static_cast<std::byte>(real >> 8)}, w.bytes());
}

void shm_seeds() {
  struct Triple { std::uint8_t b[3]; };
  struct Wide { double d[5]; };
  auto array = [](std::uint8_t which, auto tag, std::size_t n) {
    using T = typename decltype(tag)::type;
    mproc::SharedArray<T> a(n);
    mproc::Writer w;
    mproc::dump(w, a);
    write_seed("fuzz_shm", "array" + std::to_string(which) + "-" + std::to_string(n),
               shm_seed(which, std::max<std::size_t>(n * sizeof(T), 1), w));
  };
  array(0, std::type_identity<std::uint8_t>{}, 100);
  array(1, std::type_identity<std::int32_t>{}, 1000);
  array(2, std::type_identity<Triple>{}, 7);
  array(3, std::type_identity<Wide>{}, 16);
  array(1, std::type_identity<std::int32_t>{}, 0);
  // A SharedMemory travels as its segment and its name (shared_memory.cpp's codec).
  auto seg = mproc::detail::Segment::create(4096, "fuzz");
  mproc::Writer w;
  mproc::codec<mproc::detail::Segment>::encode(w, seg);
  write_seed("fuzz_shm", "segment-4096", shm_seed(5, 4096, w));
  mproc::dump(w, std::string("mproc-0123456789abcdef"));
  write_seed("fuzz_shm", "shared_memory-4096", shm_seed(4, 4096, w));
}

// ---- channel: rings as real senders left them ----------------------------------------

using namespace mproc::detail;

// The fuzz_channel input for a ring whose head is at 0: tail count, tail position, flags,
// the ring's bytes up to the tail.
std::vector<std::byte> ring_seed(const ChannelEnd& ch, std::uint8_t flags) {
  mproc::Writer w;
  ch.encode(w);
  auto view = Segment::adopt(w.fds()[0], kHeaderBytes + ch.capacity());
  mproc::Reader balance(w.bytes(), w.fds());
  (void)ChannelEnd::decode(balance);
  auto* ring = &reinterpret_cast<ChannelHeader*>(view.data())->rings[0];
  std::uint64_t tail = ring->tail.load();
  std::uint64_t count = count_of(tail), pos = pos_of(tail);
  std::vector<std::byte> v{static_cast<std::byte>(count & 0xff), static_cast<std::byte>(count >> 8),
                           static_cast<std::byte>(pos & 0xff), static_cast<std::byte>(pos >> 8),
                           std::byte{flags}};
  const std::byte* bytes = view.data() + ring->offset;
  v.insert(v.end(), bytes, bytes + pos);
  return v;
}

ChannelEnd small_queue() {
  ChannelOptions o;
  o.capacity = kMinCapacity;
  return ChannelEnd::create_queue(o);
}

void send_text(const ChannelEnd& ch, const std::string& s, std::span<const int> fds = {}) {
  ch.send(std::as_bytes(std::span(s)), fds, std::nullopt);
}

void channel_seeds() {
  {  // inline records
    auto q = small_queue();
    send_text(q, "hello");
    send_text(q, std::string(200, 'x'));
    send_text(q, "");
    write_seed("fuzz_channel", "inline-3", ring_seed(q, 0));
    write_seed("fuzz_channel", "inline-3-claim", ring_seed(q, 1));
    write_seed("fuzz_channel", "inline-3-shutdown", ring_seed(q, 2));  // shut: drains, then ShutDown
  }
  {  // a side-band record: a message carrying an fd
    auto q = small_queue();
    int fd = ::memfd_create("fuzz", MFD_CLOEXEC);
    send_text(q, "with an fd", std::span(&fd, 1));
    ::close(fd);
    write_seed("fuzz_channel", "sideband-fd", ring_seed(q, 0));
  }
  {  // out of band: longer than a quarter of the ring
    auto q = small_queue();
    send_text(q, std::string(3000, 'o'));
    send_text(q, "after");
    write_seed("fuzz_channel", "oob", ring_seed(q, 1));
  }
  {  // a pad to the ring's end, then a record at offset 0 (hand-made: a sender wrapping)
    const std::size_t cap = kMinCapacity;
    std::vector<std::byte> ring(cap);
    // The head is at 0 here, so the pad is at 0 and skips to the last record_span(5) bytes.
    RecordHeader pad{static_cast<std::uint32_t>(cap - sizeof(RecordHeader) - record_span(5)), RecordKind::pad};
    RecordHeader rec{5, RecordKind::inline_};
    std::memcpy(ring.data(), &pad, sizeof pad);
    std::memcpy(ring.data() + cap - record_span(5), &rec, sizeof rec);
    std::memcpy(ring.data() + cap - record_span(5) + sizeof rec, "wrap!", 5);
    std::uint64_t pos = cap;  // tail position after the record
    std::vector<std::byte> v{std::byte{1}, std::byte{0}, static_cast<std::byte>(pos & 0xff),
                             static_cast<std::byte>(pos >> 8), std::byte{0}};
    v.insert(v.end(), ring.begin(), ring.end());
    write_seed("fuzz_channel", "pad-then-record", v);
  }
}

// ---- forkserver: request headers and payload starts as the client sends them ---------------

std::uint64_t some_function(void*, void*) { return 42; }

void forkserver_seeds() {
  for (auto [daemon, nfds] : {std::pair{0u, 2u}, std::pair{1u, 5u}}) {
    ForkRequest req{kForkRequestMagic, daemon, nfds};
    std::vector<std::byte> v{std::byte{0}, static_cast<std::byte>(nfds)};
    auto p = reinterpret_cast<const std::byte*>(&req);
    v.insert(v.end(), p, p + sizeof req);
    write_seed("fuzz_forkserver", "request-" + std::to_string(nfds), v);
  }
  mproc::Writer w;
  mproc::dump(w, ChildMeta{"Process-1", true, 1234, 2});
  mproc::dump(w, locate_code(reinterpret_cast<const void*>(&some_function)));
  mproc::dump(w, std::uint64_t{42});
  write_seed("fuzz_forkserver", "payload", cat({std::byte{1}, std::byte{0}}, w.bytes()));
}

// ---- manager: client scripts (fuzz_manager_seeds.hpp) -----------------------------------

void manager_seeds() {
  for (auto& s : mproc::fuzz_manager::scenarios()) write_seed("fuzz_manager", s.name, s.bytes);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_corpus DIR\n");
    return 2;
  }
  out_dir = argv[1];
  serial_seeds(fuzz::SerialTypes{});
  shm_seeds();
  channel_seeds();
  forkserver_seeds();
  manager_seeds();
  return 0;
}
