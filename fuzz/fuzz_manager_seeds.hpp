// Manager request frames built the way clients build them, and fuzz_clients scripts
// made of them (src/manager/internal.hpp describes the script format). Used by
// make_corpus.cpp (fuzz/corpus/fuzz_manager/) and tests/test_manager_decoder.cpp.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "../src/manager/internal.hpp"
#include "mproc/manager.hpp"

namespace mproc::fuzz_manager {

namespace mgr = mproc::detail::mgr;
using Bytes = std::vector<std::byte>;

/// One frame: header, request header (thread 7), args.
inline Bytes frame(mgr::Op op, std::uint64_t object, const Writer& args, mgr::FrameType t = mgr::FrameType::request,
                   std::int64_t timeout = mgr::forever, std::uint64_t tid = 7) {
  Writer w;
  w.extend(mgr::kHeaderSize);
  mgr::encode_request(w, mgr::RequestHeader{op, object, tid, timeout});
  w.write(args.bytes().data(), args.size());
  std::byte hdr[mgr::kHeaderSize];
  mgr::encode_header(hdr, t, static_cast<std::uint32_t>(w.size() - mgr::kHeaderSize));
  w.overwrite(0, hdr, mgr::kHeaderSize);
  auto b = w.bytes();
  return {b.begin(), b.end()};
}

template <class... T>
Writer args(const T&... v) {
  Writer w;
  (dump(w, v), ...);
  return w;
}

/// A create request for an object of kind k (type hash 42) with its initial bytes.
inline Bytes create(mgr::Kind k, const Writer& init = {}) {
  Writer w;
  dump(w, static_cast<std::uint16_t>(k));
  dump(w, std::uint64_t{42});
  w.write(init.bytes().data(), init.size());
  return frame(mgr::Op::create, 0, w);
}

inline void append(Bytes& to, const Bytes& b) { to.insert(to.end(), b.begin(), b.end()); }

/// A session's worth of valid requests on one connection: objects 1..13 are created
/// in this order, then every kind of request, ending with one that parks.
inline Bytes one_session() {
  using K = mgr::Kind;
  using O = mgr::Op;
  const std::string s1 = "k", s2 = "value";
  constexpr auto lo = std::numeric_limits<std::int64_t>::min(), hi = std::numeric_limits<std::int64_t>::max();
  Bytes all;
  for (const Bytes& f : {
           create(K::dict),                                      // 1
           create(K::list, args(std::uint64_t{1}, s2)),          // 2
           create(K::value, args(s2)),                           // 3
           create(K::queue, args(std::uint64_t{1})),             // 4
           create(K::lock),                                      // 5
           create(K::semaphore, args(std::uint32_t{1}, true)),   // 6
           create(K::event),                                     // 7
           create(K::barrier, args(std::uint32_t{2})),           // 8
           create(K::condition, args(std::uint64_t{5})),         // 9
           create(K::joinable_queue, args(std::uint64_t{0})),    // 10
           create(K::ns),                                        // 11
           create(K::array, args(std::uint64_t{2}, s1, s2)),     // 12
           create(K::dict, args(std::uint64_t{2}, s1, s2, s2, s1)),  // 13: a dict with items
           frame(O::d_set, 1, args(s1, s2)),
           frame(O::d_get, 1, args(s1)),
           frame(O::d_setdefault, 1, args(s2, s1)),
           frame(O::d_update, 1, args(std::uint64_t{1}, s1, s2)),
           frame(O::d_items, 1, {}),
           frame(O::d_pop, 1, args(s1)),
           frame(O::l_append, 2, args(s1)),
           frame(O::l_insert, 2, args(std::int64_t{-1}, s2)),
           frame(O::l_get, 2, args(std::int64_t{-2})),
           frame(O::l_index, 2, args(s2)),
           frame(O::l_reverse, 2, {}),
           frame(O::l_all, 2, {}),
           frame(O::v_set, 3, args(s1)),
           frame(O::v_get, 3, {}),
           frame(O::q_put, 4, args(s1)),
           frame(O::q_put, 4, args(s2), mgr::FrameType::request, 0),
           frame(O::q_get, 4, {}),
           frame(O::lk_acquire, 5, {}),
           frame(O::cond_notify, 9, args(std::uint64_t{1})),
           frame(O::lk_release, 5, {}),
           frame(O::lk_acquire, 6, {}, mgr::FrameType::request, 0),
           frame(O::lk_release, 6, args(std::uint32_t{1})),
           frame(O::ev_set, 7, {}),
           frame(O::ev_wait, 7, {}),
           frame(O::bar_state, 8, {}),
           frame(O::q_put, 10, args(s1)),
           frame(O::q_task_done, 10, {}),
           frame(O::ns_set, 11, args(s1, std::uint64_t{9}, s2)),
           frame(O::ns_get, 11, args(s1, std::uint64_t{9})),
           frame(O::l_set, 12, args(std::int64_t{0}, s2)),
           frame(O::l_slice, 2, args(std::int64_t{-2}, std::int64_t{9})),
           frame(O::l_set_slice, 2, args(std::int64_t{0}, std::int64_t{1}, std::uint64_t{2}, s1, s2)),
           frame(O::l_set_slice, 12, args(std::int64_t{0}, std::int64_t{1}, std::uint64_t{1}, s1)),
           frame(O::l_del_slice, 2, args(std::int64_t{1}, std::int64_t{-1})),
           frame(O::l_apply, 12, args(std::int64_t{1}, std::string("not code"))),
           frame(O::d_popitem, 1, {}),
           frame(O::l_slice_step, 2, args(std::int64_t{-1}, lo, std::int64_t{-2})),
           frame(O::l_slice_step, 12, args(hi, std::int64_t{0}, lo)),
           frame(O::l_slice_step, 2, args(std::int64_t{0}, std::int64_t{1}, std::int64_t{0})),
           frame(O::l_set_slice_step, 2, args(std::int64_t{0}, hi, std::int64_t{2}, std::uint64_t{1}, s1)),
           frame(O::l_set_slice_step, 12, args(hi, lo, std::int64_t{-1}, std::uint64_t{2}, s2, s1)),
           frame(O::l_set_slice_step, 2,
                 args(std::int64_t{1}, std::int64_t{1}, std::int64_t{1}, std::uint64_t{1}, s2)),
           frame(O::l_repeat, 2, args(std::int64_t{3})),
           frame(O::l_del_slice_step, 2, args(std::int64_t{0}, hi, std::int64_t{2})),
           frame(O::l_repeat, 2, args(hi)),
           frame(O::l_repeat, 12, args(std::int64_t{2})),
           frame(O::d_ior, 1, args(std::uint64_t{13})),
           frame(O::d_ior, 1, args(std::uint64_t{1})),
           frame(O::d_ior, 1, args(std::uint64_t{2})),
           frame(O::apply, 3, args(std::string("not code"))),
           frame(O::publish, 4, args(s1)),
           frame(O::lookup, 0, args(s1)),
           frame(O::decref, 2, {}, mgr::FrameType::notify),
           frame(O::len, 1, {}),
           frame(O::bar_wait, 8, {}),  // parks: the last frame a connection may send
       }) {
    append(all, f);
  }
  return all;
}

/// fuzz_clients scripts: records of (slot, action, bytes).
class Script {
 public:
  Script& feed(std::size_t slot, const Bytes& b) { return record(slot, mgr::FuzzAction::feed, b); }
  Script& close(std::size_t slot) { return record(slot, mgr::FuzzAction::close, {}); }
  Script& expire() { return record(0, mgr::FuzzAction::expire, {}); }
  const Bytes& bytes() const noexcept { return b_; }

 private:
  Script& record(std::size_t slot, mgr::FuzzAction a, const Bytes& body) {
    b_.push_back(static_cast<std::byte>(slot | static_cast<std::size_t>(a) << 2));
    b_.push_back(static_cast<std::byte>(body.size() & 0xff));
    b_.push_back(static_cast<std::byte>(body.size() >> 8));
    append(b_, body);
    return *this;
  }
  Bytes b_;
};

/// A timed Condition wait whose condition is freed meanwhile (its session gives back
/// the last reference from another connection), then its deadline passes.
inline Bytes freed_condition_wait() {
  using O = mgr::Op;
  Bytes b;
  append(b, create(mgr::Kind::lock));                                 // 1
  append(b, create(mgr::Kind::condition, args(std::uint64_t{1})));    // 2
  append(b, frame(O::lk_acquire, 1, {}));
  append(b, frame(O::cond_wait, 2, {}, mgr::FrameType::request, 1'000'000));
  return Script().feed(0, b).feed(2, frame(O::decref, 2, {}, mgr::FrameType::notify)).expire().bytes();
}

struct Seed {
  const char* name;
  Bytes bytes;
};

/// Scenarios of two sessions (slots 0/2: session 1, slots 1/3: session 2) that reach
/// the server's cross-client paths: a lock released for a dead holder, parked
/// requests woken by another client or timed out, a barrier broken by a death.
inline std::vector<Seed> scenarios() {
  using K = mgr::Kind;
  using O = mgr::Op;
  using T = mgr::FrameType;
  const std::string s1 = "k";
  std::vector<Seed> out;
  // Objects 1..7, created by session 1 on slot 0; session 2 takes references.
  Bytes objs;
  for (const Bytes& f : {create(K::lock), create(K::queue, args(std::uint64_t{1})), create(K::rlock),
                         create(K::condition, args(std::uint64_t{3})), create(K::barrier, args(std::uint32_t{2})),
                         create(K::semaphore, args(std::uint32_t{1}, false)), create(K::event)}) {
    append(objs, f);
  }
  Bytes refs;
  for (std::uint64_t id = 1; id <= 7; ++id) append(refs, frame(O::incref, id, {}));
  out.push_back({"session-stream", Script().feed(0, one_session()).bytes()});
  out.push_back({"freed-condition-wait", freed_condition_wait()});
  out.push_back({"lock-owner-died", Script()
                                        .feed(0, objs)
                                        .feed(1, refs)
                                        .feed(0, frame(O::lk_acquire, 1, {}))
                                        .feed(1, frame(O::lk_acquire, 1, {}))
                                        .close(0)
                                        .feed(1, frame(O::lk_release, 1, {}))
                                        .bytes()});
  out.push_back({"queue-wakeups", Script()
                                      .feed(0, objs)
                                      .feed(1, refs)
                                      .feed(1, frame(O::q_get, 2, {}))
                                      .feed(0, frame(O::q_put, 2, args(s1)))
                                      .feed(0, frame(O::q_put, 2, args(s1)))
                                      .feed(2, frame(O::q_put, 2, args(s1), T::request, 1'000'000))
                                      .expire()
                                      .feed(1, frame(O::q_get, 2, {}))
                                      .bytes()});
  out.push_back({"condition-timeout", Script()
                                          .feed(0, objs)
                                          .feed(1, refs)
                                          .feed(0, frame(O::lk_acquire, 3, {}))
                                          .feed(0, frame(O::cond_wait, 4, {}, T::request, 1'000'000))
                                          .feed(1, frame(O::lk_acquire, 3, {}, T::request, mgr::forever, 9))
                                          .feed(1, frame(O::cond_notify, 4, args(std::uint64_t{1}), T::request,
                                                         mgr::forever, 9))
                                          .expire()
                                          .feed(1, frame(O::lk_release, 3, {}, T::request, mgr::forever, 9))
                                          .bytes()});
  out.push_back({"barrier-party-died", Script()
                                           .feed(0, objs)
                                           .feed(1, refs)
                                           .feed(0, frame(O::bar_wait, 5, {}))
                                           .close(0)
                                           .feed(1, frame(O::bar_wait, 5, {}, T::request, 1'000'000))
                                           .feed(3, frame(O::bar_reset, 5, {}))
                                           .feed(3, frame(O::sem_value, 6, {}))
                                           .bytes()});
  out.push_back({"semaphore-event-waits", Script()
                                              .feed(0, objs)
                                              .feed(1, refs)
                                              .feed(0, frame(O::lk_acquire, 6, {}))
                                              .feed(1, frame(O::lk_acquire, 6, {}, T::request, 5'000'000))
                                              .feed(3, frame(O::ev_wait, 7, {}, T::request, 5'000'000))
                                              .feed(2, frame(O::ev_set, 7, {}))
                                              .expire()
                                              .close(2)
                                              .close(0)
                                              .feed(1, frame(O::decref, 6, {}, T::notify))
                                              .bytes()});
  return out;
}

}  // namespace mproc::fuzz_manager
