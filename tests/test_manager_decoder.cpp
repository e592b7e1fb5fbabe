// The server's frame and request decoding under garbage: valid request frames
// (every operation, built the way clients build them) mutated deterministically
// (bit flips, truncations, bad lengths, spliced frames) and fed to a socket-less
// server (detail::mgr::fuzz_frames), and the multi-client scripts of the libFuzzer
// target fuzz_manager (detail::mgr::fuzz_clients, seeds from fuzz/fuzz_manager_seeds.hpp)
// run as they are and mutated. Passing means no crash, no sanitizer report, no
// exception escaping the server's handling, no hang. The libFuzzer regression run
// is fuzz.fuzz_manager (ctest -L fuzz in build/fuzz).
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../fuzz/fuzz_manager_seeds.hpp"

namespace mgr = mproc::detail::mgr;
namespace seeds = mproc::fuzz_manager;

namespace {

std::vector<std::byte> corpus() { return seeds::one_session(); }

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

TEST(ManagerDecoder, ClientScenariosRun) {
  for (auto& sc : seeds::scenarios()) {
    SCOPED_TRACE(sc.name);
    mgr::fuzz_clients(sc.bytes);
  }
}

TEST(ManagerDecoder, MutatedClientScriptsNeverCrashTheServer) {
  const auto all = seeds::scenarios();
  std::mt19937_64 rng(777);
  for (int iter = 0; iter < 5000; ++iter) {
    auto b = all[rng() % all.size()].bytes;
    for (int k = 0; k < 1 + static_cast<int>(rng() % 4); ++k) {
      std::size_t at = rng() % b.size();
      if (rng() % 2) {
        b[at] ^= static_cast<std::byte>(1u << (rng() % 8));
      } else if (at + 8 <= b.size()) {
        std::uint64_t v = rng() % 2 ? ~std::uint64_t{0} >> 1 : rng();
        std::memcpy(b.data() + at, &v, 8);
      }
    }
    mgr::fuzz_clients(b);
  }
}

// A parked request's deadline is now + its timeout: a client's timeout near
// INT64_MAX must neither overflow (UBSan: signed overflow, in the asan build) nor
// wrap to a deadline in the past. Fails before the fix under -fsanitize=undefined.
TEST(ManagerDecoder, HugeTimeoutsDoNotOverflowDeadlines) {
  using O = mgr::Op;
  using K = mgr::Kind;
  for (std::int64_t t : {std::numeric_limits<std::int64_t>::max(), std::numeric_limits<std::int64_t>::max() - 1,
                         std::int64_t{1} << 62}) {
    seeds::Bytes b;
    seeds::append(b, seeds::create(K::queue, seeds::args(std::uint64_t{1})));
    seeds::append(b, seeds::frame(O::q_get, 1, {}, mgr::FrameType::request, t));
    mgr::fuzz_clients(seeds::Script().feed(0, b).feed(1, seeds::frame(O::incref, 1, {})).bytes());
  }
}

// A Condition wait whose condition is freed meanwhile (the session gave back its
// last reference from another connection) and then times out: it is answered
// ("timed out"), not left parked past its deadline (serve()'s loop spun on it).
// Before the fix fuzz_clients aborted: "a timed wait was not answered".
TEST(ManagerDecoder, TimedWaitOnAFreedConditionIsAnswered) { mgr::fuzz_clients(seeds::freed_condition_wait()); }

// Extended slices and l *= n at the extremes: every combination of extreme bounds
// and steps (INT64_MIN included, whose negation overflows), for reads, one-for-one
// assignments of too few, as many and too many items, and deletions, on a list and
// an Array; repeats by extreme counts. Under UBSan (the asan build) an overflow in
// the slice arithmetic, or an index past the end, is a report; the server must
// answer every request (refusals included) and go on.
TEST(ManagerDecoder, ExtendedSlicesAndRepeatsAtTheExtremes) {
  using O = mgr::Op;
  using K = mgr::Kind;
  using seeds::args;
  constexpr auto lo = std::numeric_limits<std::int64_t>::min(), hi = std::numeric_limits<std::int64_t>::max();
  const std::string s = "x";
  const std::int64_t bounds[] = {lo, lo + 1, -6, -5, -1, 0, 1, 4, 5, 6, hi - 1, hi};
  const std::int64_t steps[] = {lo, lo + 1, -6, -2, -1, 0, 1, 2, 6, hi};
  for (K kind : {K::list, K::array}) {
    seeds::Bytes b;
    seeds::append(b, seeds::create(kind, args(std::uint64_t{5}, s, s, s, s, s)));  // object 1: five items
    for (auto a : bounds) {
      for (auto z : bounds) {
        for (auto k : steps) {
          seeds::append(b, seeds::frame(O::l_slice_step, 1, args(a, z, k)));
          for (std::uint64_t n : {0, 2, 5}) {
            mproc::Writer w = args(a, z, k, n);
            for (std::uint64_t i = 0; i < n; ++i) mproc::dump(w, s);
            seeds::append(b, seeds::frame(O::l_set_slice_step, 1, w));
          }
        }
      }
    }
    for (std::int64_t n : {lo, std::int64_t{-1}, std::int64_t{0}, std::int64_t{1}, std::int64_t{3}, hi}) {
      seeds::append(b, seeds::frame(O::l_repeat, 1, args(n)));
      seeds::append(b, seeds::frame(O::l_extend, 1, args(std::uint64_t{2}, s, s)));
    }
    for (auto a : bounds) {
      for (auto k : steps) seeds::append(b, seeds::frame(O::l_del_slice_step, 1, args(a, ~a, k)));  // ~a: -a - 1
    }
    mgr::fuzz_frames(b);
  }
}
