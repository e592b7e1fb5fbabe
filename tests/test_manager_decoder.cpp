// The server's frame and request decoding under garbage: valid request frames
// (every operation, built the way clients build them) mutated deterministically
// (bit flips, truncations, bad lengths, spliced frames) and fed to a socket-less
// server (detail::mgr::fuzz_frames, also the libFuzzer entry). Passing means no
// crash, no sanitizer report, no hang. Until fuzz/ (libFuzzer + a corpus) lands,
// this is the regression run.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../src/manager/internal.hpp"
#include "mproc/manager.hpp"

namespace mgr = mproc::detail::mgr;

namespace {

std::vector<std::byte> frame(mgr::Op op, std::uint64_t object, const mproc::Writer& args,
                             mgr::FrameType t = mgr::FrameType::request, std::int64_t timeout = mgr::forever) {
  mproc::Writer w;
  w.extend(mgr::kHeaderSize);
  mgr::encode_request(w, mgr::RequestHeader{op, object, 7, timeout});
  w.write(args.bytes().data(), args.size());
  std::byte hdr[mgr::kHeaderSize];
  mgr::encode_header(hdr, t, static_cast<std::uint32_t>(w.size() - mgr::kHeaderSize));
  w.overwrite(0, hdr, mgr::kHeaderSize);
  auto b = w.bytes();
  return {b.begin(), b.end()};
}

template <class... T>
mproc::Writer args(const T&... v) {
  mproc::Writer w;
  (mproc::dump(w, v), ...);
  return w;
}

/// A session's worth of valid requests: objects 1..N are created in this order.
std::vector<std::byte> corpus() {
  using K = mgr::Kind;
  using O = mgr::Op;
  std::vector<std::vector<std::byte>> fs;
  auto create = [&](K k, const mproc::Writer& init) {
    mproc::Writer w;
    mproc::dump(w, static_cast<std::uint16_t>(k));
    mproc::dump(w, std::uint64_t{42});
    w.write(init.bytes().data(), init.size());
    fs.push_back(frame(O::create, 0, w));
  };
  std::string s1 = "k", s2 = "value";
  create(K::dict, {});                                        // 1
  create(K::list, args(std::uint64_t{1}, s2));                // 2
  create(K::value, args(s2));                                 // 3
  create(K::queue, args(std::uint64_t{1}));                   // 4
  create(K::lock, {});                                        // 5
  create(K::semaphore, args(std::uint32_t{1}, true));         // 6
  create(K::event, {});                                       // 7
  create(K::barrier, args(std::uint32_t{2}));                 // 8
  create(K::condition, args(std::uint64_t{5}));               // 9
  create(K::joinable_queue, args(std::uint64_t{0}));          // 10
  create(K::ns, {});                                          // 11
  create(K::array, args(std::uint64_t{2}, s1, s2));           // 12
  fs.push_back(frame(O::d_set, 1, args(s1, s2)));
  fs.push_back(frame(O::d_get, 1, args(s1)));
  fs.push_back(frame(O::d_setdefault, 1, args(s2, s1)));
  fs.push_back(frame(O::d_update, 1, args(std::uint64_t{1}, s1, s2)));
  fs.push_back(frame(O::d_items, 1, {}));
  fs.push_back(frame(O::d_pop, 1, args(s1)));
  fs.push_back(frame(O::l_append, 2, args(s1)));
  fs.push_back(frame(O::l_insert, 2, args(std::int64_t{-1}, s2)));
  fs.push_back(frame(O::l_get, 2, args(std::int64_t{-2})));
  fs.push_back(frame(O::l_index, 2, args(s2)));
  fs.push_back(frame(O::l_reverse, 2, {}));
  fs.push_back(frame(O::l_all, 2, {}));
  fs.push_back(frame(O::v_set, 3, args(s1)));
  fs.push_back(frame(O::v_get, 3, {}));
  fs.push_back(frame(O::q_put, 4, args(s1)));
  fs.push_back(frame(O::q_put, 4, args(s2), mgr::FrameType::request, 0));
  fs.push_back(frame(O::q_get, 4, {}));
  fs.push_back(frame(O::lk_acquire, 5, {}));
  fs.push_back(frame(O::cond_notify, 9, args(std::uint64_t{1})));
  fs.push_back(frame(O::lk_release, 5, {}));
  fs.push_back(frame(O::lk_acquire, 6, {}, mgr::FrameType::request, 0));
  fs.push_back(frame(O::lk_release, 6, args(std::uint32_t{1})));
  fs.push_back(frame(O::ev_set, 7, {}));
  fs.push_back(frame(O::ev_wait, 7, {}));
  fs.push_back(frame(O::bar_state, 8, {}));
  fs.push_back(frame(O::q_put, 10, args(s1)));
  fs.push_back(frame(O::q_task_done, 10, {}));
  fs.push_back(frame(O::ns_set, 11, args(s1, std::uint64_t{9}, s2)));
  fs.push_back(frame(O::ns_get, 11, args(s1, std::uint64_t{9})));
  fs.push_back(frame(O::l_set, 12, args(std::int64_t{0}, s2)));
  fs.push_back(frame(O::apply, 3, args(std::string("not code"))));
  fs.push_back(frame(O::publish, 4, args(s1)));
  fs.push_back(frame(O::lookup, 0, args(s1)));
  fs.push_back(frame(O::decref, 2, {}, mgr::FrameType::notify));
  fs.push_back(frame(O::len, 1, {}));
  fs.push_back(frame(O::bar_wait, 8, {}));  // parks: the last frame a connection may send
  std::vector<std::byte> all;
  for (auto& f : fs) all.insert(all.end(), f.begin(), f.end());
  return all;
}

}  // namespace

TEST(ManagerDecoder, ValidSessionRuns) {
  auto c = corpus();
  mgr::fuzz_frames(c);
}

TEST(ManagerDecoder, MutatedFramesNeverCrashTheServer) {
  const auto base = corpus();
  std::mt19937_64 rng(12345);
  for (int iter = 0; iter < 20000; ++iter) {
    auto b = base;
    int kind = static_cast<int>(rng() % 5);
    std::size_t at = rng() % b.size();
    switch (kind) {
      case 0:  // flip a few bits
        for (int k = 0; k < 1 + static_cast<int>(rng() % 4); ++k) {
          b[rng() % b.size()] ^= static_cast<std::byte>(1u << (rng() % 8));
        }
        break;
      case 1:  // truncate
        b.resize(at);
        break;
      case 2: {  // overwrite 8 bytes with a random or extreme value (lengths, counts, indexes)
        std::uint64_t v = rng() % 3 == 0 ? ~std::uint64_t{0} : rng() % 3 == 0 ? (std::uint64_t{1} << 31) : rng();
        if (at + 8 <= b.size()) std::memcpy(b.data() + at, &v, 8);
        break;
      }
      case 3: {  // splice a copy of a random stretch somewhere else
        std::size_t from = rng() % b.size(), len = rng() % 64;
        if (from + len > b.size()) len = b.size() - from;
        std::vector<std::byte> piece(b.begin() + static_cast<std::ptrdiff_t>(from),
                                     b.begin() + static_cast<std::ptrdiff_t>(from + len));
        b.insert(b.begin() + static_cast<std::ptrdiff_t>(at), piece.begin(), piece.end());
        break;
      }
      default:  // random bytes
        for (std::size_t i = at; i < std::min(b.size(), at + 32); ++i) b[i] = static_cast<std::byte>(rng());
        break;
    }
    mgr::fuzz_frames(b);
  }
}
