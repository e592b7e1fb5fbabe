// The manager server: one thread, one epoll loop, every object type-erased
// (values are the clients' encodings, stored as bytes), so a server serves
// clients of any program built with the same toolchain. Blocking requests (lock
// acquire, queue get/put, event wait) park their connection on the object and are
// answered when they can be, or when their deadline passes; nothing blocks the loop.
//
// Lifetimes: a client process is a session (a random id sent at authentication)
// with one or more connections; when its last connection closes the session is
// dead: its locks are released (the next acquirer is told), its semaphore units
// given back, its references dropped.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <deque>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

#include "internal.hpp"
#include "mproc/detail/exception.hpp"
#include "mproc/manager.hpp"

namespace mproc::detail::mgr {
namespace {

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Obj {
  Kind kind{};
  std::uint64_t type = 0;
  std::int64_t refs = 0;
  bool pinned = false;
  virtual ~Obj() = default;
};
struct DictObj : Obj {
  std::list<std::pair<std::string, std::string>> items;
  std::unordered_map<std::string, std::list<std::pair<std::string, std::string>>::iterator> index;
  /// d[k] = v: a new key goes last (insertion order), an existing one keeps its place.
  void put(std::string k, std::string v) {
    auto it = index.find(k);
    if (it != index.end()) {
      it->second->second = std::move(v);
    } else {
      items.emplace_back(k, std::move(v));
      index.emplace(std::move(k), std::prev(items.end()));
    }
  }
};
struct ListObj : Obj {
  std::vector<std::string> items;
};
struct ValueObj : Obj {
  std::string v;
};
struct NsObj : Obj {
  std::map<std::string, std::pair<std::uint64_t, std::string>> fields;
};
struct LockObj : Obj {  // Lock, RLock and (Bounded)Semaphore
  bool bounded = false;
  std::uint32_t value = 0, initial = 0;  // semaphore units
  std::uint64_t owner_sid = 0, owner_tid = 0;
  std::uint32_t depth = 0;
  bool died = false;  // released for a dead session; the next acquirer is told
  std::unordered_map<std::uint64_t, std::uint32_t> held;  // semaphore units per session
  std::deque<std::uint64_t> waiters;
};
struct EventObj : Obj {
  bool flag = false;
  std::vector<std::uint64_t> waiters;
};
struct QueueObj : Obj {  // Queue and JoinableQueue
  std::deque<std::string> items;
  std::uint64_t maxsize = 0;
  std::uint64_t unfinished = 0;  // JoinableQueue: items put and not yet task_done()
  std::deque<std::uint64_t> getters, putters, joiners;
};
struct UserObj : Obj {  // an object of a registered user type: real C++ on the server
  void* p = nullptr;
  void (*destroy)(void*) noexcept = nullptr;
  ~UserObj() override {
    if (p && destroy) destroy(p);
  }
};
struct CondObj : Obj {
  std::uint64_t lock = 0;  // the Lock/RLock object it waits with
  std::deque<std::uint64_t> waiters;
};
struct BarrierObj : Obj {
  std::uint32_t parties = 0;
  bool broken = false;
  std::deque<std::uint64_t> waiters;  // arrived, in order
};

struct Conn {
  std::uint64_t id = 0;
  int fd = -1;
  bool authed = false;
  bool dead = false;
  bool want_out = false;
  Challenge challenge{};
  std::int64_t auth_deadline = 0;
  std::uint64_t sid = 0;
  bool same_program = false;  // its client runs the server's program: code references resolve
  std::string in;
  std::string out;
  // the blocking request it waits on
  bool waiting = false;
  std::uint64_t wait_obj = 0;
  Op wait_op{};
  std::uint64_t wait_tid = 0;
  std::int64_t deadline = -1;
  std::string wait_item;
  std::uint32_t wait_depth = 0;  // Condition.wait: the lock depth to take back
  bool notified = false;         // Condition.wait: woken by notify (not by its timeout)
};

struct Sess {
  int conns = 0;
  std::unordered_map<std::uint64_t, std::int64_t> refs;
};

/// A request that is malformed (as opposed to one the server refuses): closes the connection.
struct Malformed : std::runtime_error {
  using std::runtime_error::runtime_error;
};
/// A request the server refuses: a reply with Status::error (or usage) and this text.
struct Refused {
  Status status;
  std::string text;
};

template <class T>
T load_exact(Reader& r) {
  T v = load<T>(r);
  return v;
}

class Server {
 public:
  Server(std::string key, const ServerId& id, bool log) : key_(std::move(key)), id_(id), log_(log) {}

  Conn& add_conn(int fd) {
    auto c = std::make_unique<Conn>();
    c->id = ++next_conn_;
    c->fd = fd;
    c->auth_deadline = now_ns() + std::int64_t{10'000'000'000};
    random_bytes(c->challenge.data(), c->challenge.size());
    Hello h{build_id(), id_, c->challenge};
    Writer w;
    dump(w, h);
    Conn& ref = *c;
    conns_.emplace(c->id, std::move(c));
    send_frame(ref, FrameType::hello, w.bytes());
    return ref;
  }

  /// Authenticated connection of session `sid` without a socket (fuzzing).
  Conn& add_test_conn(std::uint64_t sid) {
    auto c = std::make_unique<Conn>();
    c->id = ++next_conn_;
    c->authed = true;
    c->sid = sid;
    sess_[sid].conns++;
    Conn& ref = *c;
    conns_.emplace(c->id, std::move(c));
    return ref;
  }

  /// Handles every complete frame in c.in.
  void on_bytes(Conn& c) {
    std::size_t pos = 0;
    while (!c.dead && c.in.size() - pos >= kHeaderSize) {
      std::string why;
      auto h = decode_header(std::span<const std::byte, kHeaderSize>(
                                 reinterpret_cast<const std::byte*>(c.in.data() + pos), kHeaderSize),
                             c.authed ? kMaxFrame : kMaxHandshakeFrame, why);
      if (!h) return drop(c, why);
      if (c.in.size() - pos - kHeaderSize < h->length) break;
      std::span<const std::byte> payload(reinterpret_cast<const std::byte*>(c.in.data() + pos + kHeaderSize),
                                         h->length);
      pos += kHeaderSize + h->length;
      try {
        on_frame(c, h->type, payload);
      } catch (const Malformed& e) {
        return drop(c, e.what());
      } catch (const SerializationError& e) {
        return drop(c, std::string("malformed request: ") + e.what());
      } catch (const std::bad_alloc&) {
        return drop(c, "out of memory handling a request");
      }
    }
    if (!c.dead) c.in.erase(0, pos);
  }

  void drop(Conn& c, const std::string& why) {
    if (c.dead) return;
    // Before authentication the client is told why (another protocol version, a
    // wrong key…); afterwards a bad frame means a broken or hostile client.
    if (!c.authed) send_frame(c, FrameType::refuse, std::as_bytes(std::span(why)));
    if (log_) std::fprintf(stderr, "mproc manager (pid %d): closing connection %llu: %s\n", ::getpid(),
                           static_cast<unsigned long long>(c.id), why.c_str());
    close_conn(c);
  }

  /// Forgets a connection (peer gone or dropped); the fd is closed by the loop.
  void close_conn(Conn& c) {
    if (c.dead) return;
    c.dead = true;
    if (c.waiting) unpark(c);
    if (c.authed) {
      auto it = sess_.find(c.sid);
      if (it != sess_.end() && --it->second.conns == 0) session_died(c.sid);
    }
    dead_.push_back(c.id);
  }

  void expire(std::int64_t now) {
    for (auto& [id, cp] : conns_) {
      Conn& c = *cp;
      if (c.dead) continue;
      if (!c.authed && now >= c.auth_deadline) {
        drop(c, "no authentication within 10 s");
      } else if (c.waiting && c.deadline >= 0 && now >= c.deadline) {
        Op op = c.wait_op;
        if (op == Op::cond_wait) {
          cond_timed_out(c);
          continue;
        }
        unpark(c);
        switch (op) {
          case Op::bar_wait: reply(c, Status::broken); break;
          case Op::q_join: reply(c, Status::timeout); break;
          case Op::lk_acquire: reply(c, Status::timeout); break;
          case Op::q_get: reply(c, Status::empty); break;
          case Op::q_put: reply(c, Status::full); break;
          default: reply_value(c, false); break;
        }
      }
    }
  }

  /// Milliseconds until the next deadline (-1: none).
  int next_timeout_ms(std::int64_t now) const {
    std::int64_t best = -1;
    for (auto& [id, cp] : conns_) {
      const Conn& c = *cp;
      if (c.dead) continue;
      std::int64_t d = !c.authed ? c.auth_deadline : (c.waiting ? c.deadline : -1);
      if (d >= 0 && (best < 0 || d < best)) best = d;
    }
    if (best < 0) return -1;
    std::int64_t ms = (best - now + 999'999) / 1'000'000;
    return static_cast<int>(std::clamp<std::int64_t>(ms, 0, 60'000));
  }

  std::unordered_map<std::uint64_t, std::unique_ptr<Conn>> conns_;
  std::vector<std::uint64_t> dead_;
  bool stop_ = false;
  int epfd_ = -1;

  void flush(Conn& c) {
    if (c.fd < 0) {
      c.out.clear();  // fuzzing: replies go nowhere
      return;
    }
    while (!c.out.empty()) {
      ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        c.out.erase(0, static_cast<std::size_t>(n));
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        break;
      } else {
        // The peer is gone or broken: epoll reports the hang-up or error next, and
        // the read path closes the connection then (closing here could free
        // objects a caller up the stack is still working on).
        c.out.clear();
        break;
      }
    }
    bool want = !c.out.empty();
    if (want != c.want_out && epfd_ >= 0) {
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0u);
      ev.data.u64 = c.id;
      ::epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
      c.want_out = want;
    }
  }

 private:
  void send_frame(Conn& c, FrameType t, std::span<const std::byte> payload, std::uint8_t status = 0,
                  bool with_status = false) {
    if (c.dead) return;
    std::size_t len = payload.size() + (with_status ? 1 : 0);
    if (len > kMaxFrame) {
      // A reply too big for a frame (a huge snapshot): an error the client can read.
      std::string msg = "reply of " + std::to_string(len) + " bytes exceeds the frame limit";
      return send_frame(c, t, std::as_bytes(std::span(msg)), static_cast<std::uint8_t>(Status::error), true);
    }
    std::byte hdr[kHeaderSize];
    encode_header(hdr, t, static_cast<std::uint32_t>(len));
    c.out.append(reinterpret_cast<const char*>(hdr), kHeaderSize);
    if (with_status) c.out.push_back(static_cast<char>(status));
    c.out.append(reinterpret_cast<const char*>(payload.data()), payload.size());
    flush(c);
  }

  void reply(Conn& c, Status st, std::span<const std::byte> body = {}) {
    send_frame(c, FrameType::reply, body, static_cast<std::uint8_t>(st), true);
  }
  void reply_raw(Conn& c, const std::string& bytes) { reply(c, Status::ok, std::as_bytes(std::span(bytes))); }
  template <class T>
  void reply_value(Conn& c, const T& v) {
    Writer w;
    dump(w, v);
    reply(c, Status::ok, w.bytes());
  }
  void reply_text(Conn& c, Status st, const std::string& text) { reply(c, st, std::as_bytes(std::span(text))); }

  void on_frame(Conn& c, FrameType t, std::span<const std::byte> payload) {
    if (!c.authed) {
      if (t != FrameType::auth) throw Malformed("expected the authentication frame");
      Reader r(payload);
      Auth a = load<Auth>(r);
      if (!r.at_end()) throw Malformed("trailing bytes after the authentication frame");
      if (a.build != build_id()) {
        refuse(c, "client built differently (compiler, ABI or mproc version) from the server: values would "
                  "not decode; build both with the same toolchain and mproc");
        return;
      }
      if (!mac_equal(a.mac, hmac(key_, "mproc-client", c.challenge))) {
        refuse(c, "authentication failed: wrong authkey");
        return;
      }
      c.authed = true;
      c.sid = a.session;
      c.same_program = a.program == program_id();
      sess_[c.sid].conns++;
      Mac m = hmac(key_, "mproc-server", a.challenge);
      send_frame(c, FrameType::welcome, std::as_bytes(std::span(m)));
      return;
    }
    if (t != FrameType::request && t != FrameType::notify) throw Malformed("unexpected frame type after authentication");
    if (c.waiting) throw Malformed("a request arrived while the previous one is still pending");
    Reader r(payload);
    RequestHeader h = decode_request(r);
    if (t == FrameType::notify) {
      if (h.op != Op::decref) throw Malformed("unknown one-way request");
      decref(c, h.object);
      return;
    }
    try {
      handle(c, h, r);
    } catch (const Refused& e) {
      reply_text(c, e.status, e.text);
    }
  }

  void refuse(Conn& c, const std::string& why) { drop(c, why); }

  Obj& find(std::uint64_t id) {
    auto it = objs_.find(id);
    if (it == objs_.end()) {
      throw Refused{Status::error, "object " + std::to_string(id) + " does not exist on this server (released, "
                                   "or the proxy is for another server)"};
    }
    return *it->second;
  }
  template <class T>
  T& find_as(std::uint64_t id, std::initializer_list<Kind> kinds) {
    Obj& o = find(id);
    for (Kind k : kinds) {
      if (o.kind == k) return static_cast<T&>(o);
    }
    throw Refused{Status::error, "object " + std::to_string(id) + " is not of the kind this call needs"};
  }

  void decref(Conn& c, std::uint64_t id) {
    auto& s = sess_[c.sid];
    auto it = s.refs.find(id);
    if (it == s.refs.end() || it->second <= 0) return;
    if (--it->second == 0) s.refs.erase(it);
    auto o = objs_.find(id);
    if (o == objs_.end()) return;
    o->second->refs--;
    maybe_erase(id);
  }

  void maybe_erase(std::uint64_t id) {
    auto it = objs_.find(id);
    if (it == objs_.end() || it->second->refs > 0 || it->second->pinned) return;
    std::uint64_t lock = it->second->kind == Kind::condition ? static_cast<CondObj&>(*it->second).lock : 0;
    objs_.erase(it);
    if (lock) {
      auto l = objs_.find(lock);
      if (l != objs_.end()) {
        l->second->refs--;
        maybe_erase(lock);
      }
    }
  }

  void session_died(std::uint64_t sid) {
    auto sit = sess_.find(sid);
    if (sit == sess_.end()) return;
    Sess s = std::move(sit->second);
    sess_.erase(sit);
    std::vector<std::uint64_t> to_wake;
    for (auto& [id, o] : objs_) {
      if (o->kind == Kind::lock || o->kind == Kind::rlock) {
        auto& L = static_cast<LockObj&>(*o);
        if (L.depth > 0 && L.owner_sid == sid) {
          L.depth = 0;
          L.owner_sid = L.owner_tid = 0;
          L.died = true;
          to_wake.push_back(id);
        }
      } else if (o->kind == Kind::semaphore) {
        auto& L = static_cast<LockObj&>(*o);
        auto h = L.held.find(sid);
        if (h != L.held.end()) {
          // Given back only up to the initial value: a unit taken from a
          // semaphore used as a signal (released by another process) was
          // consumed, not borrowed, and must not come back as a phantom.
          std::uint32_t room = L.initial > L.value ? L.initial - L.value : 0;
          L.value += std::min(h->second, room);
          L.held.erase(h);
          to_wake.push_back(id);
        }
      }
    }
    for (auto id : to_wake) {
      auto it = objs_.find(id);
      if (it != objs_.end()) wake_lock(static_cast<LockObj&>(*it->second));
    }
    for (auto& [id, n] : s.refs) {
      auto o = objs_.find(id);
      if (o == objs_.end()) continue;
      o->second->refs -= n;
      maybe_erase(id);
    }
  }

  void park(Conn& c, const RequestHeader& h) {
    c.waiting = true;
    c.wait_obj = h.object;
    c.wait_op = h.op;
    c.wait_tid = h.tid;
    // Saturating: a client may send any timeout up to INT64_MAX nanoseconds.
    std::int64_t now = now_ns();
    c.deadline = h.timeout < 0 ? -1 : h.timeout > std::numeric_limits<std::int64_t>::max() - now
                                          ? std::numeric_limits<std::int64_t>::max()
                                          : now + h.timeout;
  }
  static void erase_id(std::deque<std::uint64_t>& q, std::uint64_t id) {
    for (auto it = q.begin(); it != q.end(); ++it) {
      if (*it == id) {
        q.erase(it);
        return;
      }
    }
  }
  void unpark(Conn& c) {
    c.waiting = false;
    auto it = objs_.find(c.wait_obj);
    if (it != objs_.end()) {
      Obj& o = *it->second;
      if (o.kind == Kind::lock || o.kind == Kind::rlock || o.kind == Kind::semaphore) {
        erase_id(static_cast<LockObj&>(o).waiters, c.id);
      } else if (o.kind == Kind::event) {
        auto& w = static_cast<EventObj&>(o).waiters;
        std::erase(w, c.id);
      } else if (o.kind == Kind::queue || o.kind == Kind::joinable_queue) {
        auto& q = static_cast<QueueObj&>(o);
        erase_id(c.wait_op == Op::q_get ? q.getters : c.wait_op == Op::q_put ? q.putters : q.joiners, c.id);
      } else if (o.kind == Kind::condition) {
        erase_id(static_cast<CondObj&>(o).waiters, c.id);
      } else if (o.kind == Kind::barrier) {
        auto& b = static_cast<BarrierObj&>(o);
        erase_id(b.waiters, c.id);
        // A party that leaves (timed out, its client died) breaks the barrier for
        // the others, as threading.Barrier does on a timeout.
        break_barrier(b);
      }
    }
    c.wait_item.clear();
  }
  Conn* live_waiter(std::uint64_t cid) {
    auto it = conns_.find(cid);
    if (it == conns_.end() || it->second->dead || !it->second->waiting) return nullptr;
    return it->second.get();
  }

  // ---- locks -----------------------------------------------------------------

  /// Tries to take L for (sid, tid); returns the status to reply, or empty when it must wait.
  std::optional<Status> try_take(LockObj& L, std::uint64_t sid, std::uint64_t tid) {
    if (L.kind == Kind::semaphore) {
      if (L.value == 0) return std::nullopt;
      L.value--;
      L.held[sid]++;
      return Status::ok;
    }
    if (L.depth == 0) {
      L.owner_sid = sid;
      L.owner_tid = tid;
      L.depth = 1;
      Status st = L.died ? Status::owner_died : Status::ok;
      L.died = false;
      return st;
    }
    if (L.owner_sid == sid && L.owner_tid == tid) {
      if (L.kind == Kind::rlock) {
        L.depth++;
        return Status::ok;
      }
      throw Refused{Status::usage, "mproc: manager Lock.acquire(): this thread already holds the lock (it "
                                   "would wait for itself forever); use an RLock"};
    }
    return std::nullopt;
  }

  void wake_lock(LockObj& L) {
    while (!L.waiters.empty()) {
      Conn* w = live_waiter(L.waiters.front());
      if (!w) {
        L.waiters.pop_front();
        continue;
      }
      std::optional<Status> st;
      try {
        st = try_take(L, w->sid, w->wait_tid);
      } catch (const Refused&) {
        st = std::nullopt;
      }
      if (!st) return;
      L.waiters.pop_front();
      w->waiting = false;
      if (w->wait_op == Op::cond_wait) {
        // A Condition.wait taking its lock back: all its levels, then its answer.
        L.depth = w->wait_depth;
        reply_bool(*w, *st, w->notified);
      } else {
        reply(*w, *st);
      }
    }
  }

  void reply_bool(Conn& c, Status st, bool v) {
    Writer w;
    dump(w, v);
    reply(c, st, w.bytes());
  }

  // ---- conditions and barriers ---------------------------------------------------

  /// Moves a Condition waiter on to take its lock back (notified, or timed out).
  void cond_to_lock(Conn& c, bool notified) {
    auto& cond = static_cast<CondObj&>(*objs_.at(c.wait_obj));
    c.wait_obj = cond.lock;
    c.deadline = -1;  // the lock is taken back however long it takes, as in Python
    c.notified = notified;
    auto& L = static_cast<LockObj&>(*objs_.at(cond.lock));
    L.waiters.push_back(c.id);
    wake_lock(L);
  }
  void cond_timed_out(Conn& c) {
    auto it = objs_.find(c.wait_obj);
    if (it == objs_.end() || it->second->kind != Kind::condition) {
      // Its condition was freed meanwhile (the client gave back every reference
      // while waiting): answer "timed out" rather than keep an expired wait.
      unpark(c);
      return reply_bool(c, Status::ok, false);
    }
    erase_id(static_cast<CondObj&>(*it->second).waiters, c.id);
    cond_to_lock(c, false);
  }

  void break_barrier(BarrierObj& b) {
    b.broken = true;
    auto ws = std::move(b.waiters);
    b.waiters.clear();
    for (auto id : ws) {
      if (Conn* w = live_waiter(id)) {
        w->waiting = false;
        reply(*w, Status::broken);
      }
    }
  }

  // ---- requests ------------------------------------------------------------------

  void handle(Conn& c, const RequestHeader& h, Reader& r) {
    switch (h.op) {
      case Op::ping: return reply(c, Status::ok);
      case Op::shutdown:
        stop_ = true;
        return reply(c, Status::ok);
      case Op::create: return create(c, r);
      case Op::incref: {
        Obj& o = find(h.object);
        o.refs++;
        sess_[c.sid].refs[h.object]++;
        return reply(c, Status::ok);
      }
      case Op::pin:
        find(h.object).pinned = true;
        return reply(c, Status::ok);
      case Op::publish: {
        std::string name = load<std::string>(r);
        find(h.object).pinned = true;
        names_[std::move(name)] = h.object;
        return reply(c, Status::ok);
      }
      case Op::lookup: {
        std::string name = load<std::string>(r);
        auto it = names_.find(name);
        if (it == names_.end() || !objs_.count(it->second)) {
          return reply_text(c, Status::error, "no object is published as '" + name + "'");
        }
        Obj& o = *objs_.at(it->second);
        o.refs++;
        sess_[c.sid].refs[it->second]++;
        Writer w;
        dump(w, it->second);
        dump(w, static_cast<std::uint16_t>(o.kind));
        dump(w, o.type);
        return reply(c, Status::ok, w.bytes());
      }
      case Op::decref:
        decref(c, h.object);
        return reply(c, Status::ok);
      case Op::len: {
        Obj& o = find(h.object);
        std::uint64_t n = 0;
        if (o.kind == Kind::dict) n = static_cast<DictObj&>(o).items.size();
        else if (o.kind == Kind::list || o.kind == Kind::array) n = static_cast<ListObj&>(o).items.size();
        else if (o.kind == Kind::queue || o.kind == Kind::joinable_queue) n = static_cast<QueueObj&>(o).items.size();
        else throw Refused{Status::error, "len() of an object that has no length"};
        return reply_value(c, n);
      }
      case Op::clear: {
        Obj& o = find(h.object);
        if (o.kind == Kind::dict) {
          static_cast<DictObj&>(o).items.clear();
          static_cast<DictObj&>(o).index.clear();
        } else if (o.kind == Kind::list) {
          static_cast<ListObj&>(o).items.clear();
        } else {
          throw Refused{Status::error, "clear() of an object that is not a container"};
        }
        return reply(c, Status::ok);
      }
      case Op::apply: return apply(c, h, r);
      default: break;
    }
    auto op = static_cast<std::uint16_t>(h.op);
    if (op >= 32 && op < 48) return dict_op(c, h, r);
    if (op >= 48 && op < 64) return list_op(c, h, r);
    if (op >= 64 && op < 72) return value_op(c, h, r);
    if (op >= 72 && op < 80) return ns_op(c, h, r);
    if (op >= 80 && op < 88) return lock_op(c, h, r);
    if (op >= 88 && op < 96) return event_op(c, h);
    if (op >= 96 && op < 104) return queue_op(c, h, r);
    if (op >= 104 && op < 112) return cond_op(c, h, r);
    if (op >= 112 && op < 120) return barrier_op(c, h);
    if (op >= 128 && op < 144) return list_op(c, h, r);
    if (h.op == Op::u_call) return user_call(c, h, r);
    throw Malformed("unknown operation " + std::to_string(op));
  }

  void create(Conn& c, Reader& r) {
    auto kind = static_cast<Kind>(load<std::uint16_t>(r));
    auto type = load<std::uint64_t>(r);
    std::unique_ptr<Obj> o;
    switch (kind) {
      case Kind::dict: {
        // Initial items (m.dict(items), dict_fromkeys): as d_update; none when absent.
        auto d = std::make_unique<DictObj>();
        if (!r.at_end()) {
          for (auto& [k, v] : load_pairs(r)) d->put(std::move(k), std::move(v));
        }
        o = std::move(d);
        break;
      }
      case Kind::list:
      case Kind::array: {
        auto l = std::make_unique<ListObj>();
        l->items = load_items(r);
        o = std::move(l);
        break;
      }
      case Kind::value: {
        auto v = std::make_unique<ValueObj>();
        v->v = load<std::string>(r);
        o = std::move(v);
        break;
      }
      case Kind::ns: o = std::make_unique<NsObj>(); break;
      case Kind::lock:
      case Kind::rlock: o = std::make_unique<LockObj>(); break;
      case Kind::semaphore: {
        auto l = std::make_unique<LockObj>();
        l->value = l->initial = load<std::uint32_t>(r);
        l->bounded = load<bool>(r);
        o = std::move(l);
        break;
      }
      case Kind::event: o = std::make_unique<EventObj>(); break;
      case Kind::queue:
      case Kind::joinable_queue: {
        auto q = std::make_unique<QueueObj>();
        q->maxsize = load<std::uint64_t>(r);
        o = std::move(q);
        break;
      }
      case Kind::condition: {
        auto cond = std::make_unique<CondObj>();
        cond->lock = load<std::uint64_t>(r);
        auto it = objs_.find(cond->lock);
        if (it == objs_.end() || (it->second->kind != Kind::lock && it->second->kind != Kind::rlock)) {
          throw Refused{Status::error, "Condition: its lock must be a Lock or RLock of the same manager"};
        }
        it->second->refs++;  // the condition keeps its lock alive
        o = std::move(cond);
        break;
      }
      case Kind::user: {
        UserCtx ctx;
        if (!run_code(c, r, &ctx, "creating an object of a registered type")) return;  // it threw: answered
        auto u = std::make_unique<UserObj>();
        u->p = ctx.obj;
        u->destroy = ctx.destroy;
        o = std::move(u);
        break;
      }
      case Kind::barrier: {
        auto b = std::make_unique<BarrierObj>();
        b->parties = load<std::uint32_t>(r);
        if (b->parties == 0) throw Refused{Status::usage, "mproc: manager Barrier needs at least one party"};
        o = std::move(b);
        break;
      }
      default: throw Malformed("create: unknown object kind");
    }
    o->kind = kind;
    o->type = type;
    o->refs = 1;
    std::uint64_t id = ++next_obj_;
    objs_.emplace(id, std::move(o));
    sess_[c.sid].refs[id]++;
    reply_value(c, id);
  }

  void apply(Conn& c, const RequestHeader& h, Reader& r) {
    Obj& o = find(h.object);
    std::string* target = nullptr;
    std::string key;
    bool present = true;
    std::string scratch;
    void* ctx = nullptr;
    ApplyCtx actx{};
    if (o.kind == Kind::dict) {
      key = load<std::string>(r);
      auto& d = static_cast<DictObj&>(o);
      auto it = d.index.find(key);
      if (it == d.index.end()) {
        present = false;
      } else {
        scratch = it->second->second;
      }
      target = &scratch;
    } else if (o.kind == Kind::value) {
      scratch = static_cast<ValueObj&>(o).v;
      target = &scratch;
    } else if (o.kind != Kind::list && o.kind != Kind::array) {
      throw Refused{Status::error, "apply() on an object that holds no value"};
    }
    std::vector<std::string> items;
    if (o.kind == Kind::list || o.kind == Kind::array) {
      items = static_cast<ListObj&>(o).items;
      ctx = &items;
    } else {
      actx = ApplyCtx{target, present};
      ctx = &actx;
    }
    if (!run_code(c, r, ctx, "apply()/sort()")) return;
    // Only a call that returned changes the object: a throwing f leaves it as it was.
    if (o.kind == Kind::list || o.kind == Kind::array) {
      static_cast<ListObj&>(o).items = std::move(items);
      return reply(c, Status::ok);
    }
    if (o.kind == Kind::value) {
      static_cast<ValueObj&>(o).v = scratch;
    } else {
      auto& d = static_cast<DictObj&>(o);
      auto it = d.index.find(key);
      if (it == d.index.end()) {
        d.items.emplace_back(key, scratch);
        d.index.emplace(key, std::prev(d.items.end()));
      } else {
        it->second->second = scratch;
      }
    }
    reply_raw(c, scratch);
  }

  /// Runs the code reference at r (apply, sort, user types) with `ctx`. Returns
  /// false when it threw (the client is answered with the exception then).
  bool run_code(Conn& c, Reader& r, void* ctx, const char* what) {
    if (!c.same_program) {
      throw Refused{Status::error, std::string(what) + " runs code of the client's program on the server; this client "
                                   "runs another program than the server (programs may share types, not code)"};
    }
    Entry e = nullptr;
    try {
      e = decode_entry(r);
    } catch (const std::exception& ex) {
      throw Refused{Status::error, std::string(what) + ": the function cannot run on the server: " + ex.what()};
    }
    try {
      e(&r, ctx);
    } catch (...) {
      ExceptionInfo info = capture_current_exception();
      Writer w;
      dump(w, info);
      reply(c, Status::remote, w.bytes());
      return false;
    }
    return true;
  }

  void user_call(Conn& c, const RequestHeader& h, Reader& r) {
    auto& u = find_as<UserObj>(h.object, {Kind::user});
    std::string result;
    UserCtx ctx;
    ctx.obj = u.p;
    ctx.result = &result;
    if (!run_code(c, r, &ctx, "a method call")) return;
    if (ctx.made) {
      // The method returned a new object (std::unique_ptr<U>): it stays here.
      auto n = std::make_unique<UserObj>();
      n->kind = Kind::user;
      n->type = ctx.type;
      n->refs = 1;
      n->p = ctx.made;
      n->destroy = ctx.destroy;
      std::uint64_t id = ++next_obj_;
      objs_.emplace(id, std::move(n));
      sess_[c.sid].refs[id]++;
      return reply_value(c, id);
    }
    reply_raw(c, result);
  }

  void dict_op(Conn& c, const RequestHeader& h, Reader& r) {
    auto& d = find_as<DictObj>(h.object, {Kind::dict});
    auto put = [&](std::string k, std::string v) { d.put(std::move(k), std::move(v)); };
    switch (h.op) {
      case Op::d_set: {
        std::string k = load<std::string>(r);
        std::string v = load<std::string>(r);
        put(std::move(k), std::move(v));
        return reply(c, Status::ok);
      }
      case Op::d_get: {
        auto it = d.index.find(load<std::string>(r));
        if (it == d.index.end()) return reply(c, Status::not_found);
        return reply_raw(c, it->second->second);
      }
      case Op::d_contains: return reply_value(c, d.index.count(load<std::string>(r)) != 0);
      case Op::d_del:
      case Op::d_pop: {
        auto it = d.index.find(load<std::string>(r));
        if (it == d.index.end()) {
          if (h.op == Op::d_del) return reply_value(c, false);
          return reply(c, Status::not_found);
        }
        std::string v = std::move(it->second->second);
        d.items.erase(it->second);
        d.index.erase(it);
        if (h.op == Op::d_del) return reply_value(c, true);
        return reply_raw(c, v);
      }
      case Op::d_setdefault: {
        std::string k = load<std::string>(r);
        std::string v = load<std::string>(r);
        auto it = d.index.find(k);
        if (it != d.index.end()) return reply_raw(c, it->second->second);
        put(std::move(k), v);
        return reply_raw(c, v);
      }
      case Op::d_update:
        for (auto& [k, v] : load_pairs(r)) put(std::move(k), std::move(v));
        return reply(c, Status::ok);
      case Op::d_ior: {
        // d |= other: other's items in its order, read before d changes (other may be d).
        auto& o = find_as<DictObj>(load<std::uint64_t>(r), {Kind::dict});
        if (o.type != d.type) {
          throw Refused{Status::error, "dict |=: the other dict holds other key or value types"};
        }
        std::vector<std::pair<std::string, std::string>> kv(o.items.begin(), o.items.end());
        for (auto& [k, v] : kv) put(std::move(k), std::move(v));
        return reply(c, Status::ok);
      }
      case Op::d_popitem: {
        if (d.items.empty()) return reply(c, Status::not_found);
        auto last = std::prev(d.items.end());
        Writer w;
        dump(w, last->first);
        dump(w, last->second);
        d.index.erase(last->first);
        d.items.erase(last);
        return reply(c, Status::ok, w.bytes());
      }
      case Op::d_keys:
      case Op::d_values:
      case Op::d_items: {
        Writer w;
        write_size(w, d.items.size());
        for (auto& [k, v] : d.items) {
          if (h.op != Op::d_values) dump(w, k);
          if (h.op != Op::d_keys) dump(w, v);
        }
        return reply(c, Status::ok, w.bytes());
      }
      default: throw Malformed("unknown dict operation");
    }
  }

  /// A batch of (key, value) byte strings: u64 count, then the pairs.
  static std::vector<std::pair<std::string, std::string>> load_pairs(Reader& r) {
    std::size_t n = read_size(r, 16);
    std::vector<std::pair<std::string, std::string>> kv;
    kv.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      std::string k = load<std::string>(r);
      std::string v = load<std::string>(r);
      kv.emplace_back(std::move(k), std::move(v));
    }
    return kv;
  }

  static std::optional<std::size_t> norm_index(std::int64_t i, std::size_t n) {
    if (i < 0) i += static_cast<std::int64_t>(n);
    if (i < 0 || static_cast<std::uint64_t>(i) >= n) return std::nullopt;
    return static_cast<std::size_t>(i);
  }

  /// The items a slice selects: start + i * step for i < count.
  struct SliceRange {
    std::int64_t start = 0;
    std::int64_t step = 1;
    std::size_t count = 0;
    std::size_t at(std::size_t i) const noexcept {
      return static_cast<std::size_t>(start + static_cast<std::int64_t>(i) * step);
    }
  };

  /// Python's slice.indices() (PySlice_AdjustIndices) for l[start:stop:step] over n
  /// items: negative bounds count from the end, both are clamped (never IndexError).
  /// The step-1 requests carry no step. A step of 0 is refused, as Python's ValueError.
  static SliceRange slice_range(Reader& r, std::size_t n, bool with_step) {
    auto start = load<std::int64_t>(r);
    auto stop = load<std::int64_t>(r);
    std::int64_t step = with_step ? load<std::int64_t>(r) : 1;
    if (step == 0) throw Refused{Status::usage, "mproc: manager slice: the step cannot be zero (Python's ValueError)"};
    // -step must be representable (Python clamps the step to -PY_SSIZE_T_MAX too).
    step = std::max(step, -std::numeric_limits<std::int64_t>::max());
    auto sn = static_cast<std::int64_t>(n);
    auto adjust = [&](std::int64_t i) {
      if (i < 0) {
        i = i < -sn ? (step < 0 ? -1 : 0) : i + sn;  // no overflow: i >= -sn first
      } else if (i >= sn) {
        i = step < 0 ? sn - 1 : sn;
      }
      return i;
    };
    std::int64_t a = adjust(start), b = adjust(stop);
    SliceRange out{a, step, 0};
    // a and b lie in [-1, n]: the differences cannot overflow.
    if (step < 0 && b < a) out.count = static_cast<std::size_t>((a - b - 1) / -step + 1);
    if (step > 0 && a < b) out.count = static_cast<std::size_t>((b - a - 1) / step + 1);
    return out;
  }

  static std::vector<std::string> load_items(Reader& r) {
    std::size_t n = read_size(r, 8);
    std::vector<std::string> items;
    items.reserve(n);
    for (std::size_t k = 0; k < n; ++k) items.push_back(load<std::string>(r));
    return items;
  }

  /// l[a:b:k] = add. A step of 1 replaces the range (a list grows or shrinks, an
  /// Array must keep its size); any other step needs as many items as it selects.
  void assign_slice(Conn& c, ListObj& l, const SliceRange& s, std::vector<std::string> add) {
    auto& v = l.items;
    const char* what = l.kind == Kind::array ? "Array" : "list";
    if (s.step == 1) {
      if (l.kind == Kind::array && add.size() != s.count) {
        return reply_text(c, Status::usage, "mproc: manager Array slice assignment: " + std::to_string(add.size()) +
                                                " items for a slice of " + std::to_string(s.count) +
                                                " (an Array cannot change its size)");
      }
      auto first = v.begin() + s.start;  // in [0, n] for a step of 1
      auto at = v.erase(first, first + static_cast<std::ptrdiff_t>(s.count));
      v.insert(at, std::make_move_iterator(add.begin()), std::make_move_iterator(add.end()));
      return reply(c, Status::ok);
    }
    if (add.size() != s.count) {
      return reply_text(c, Status::usage, std::string("mproc: manager ") + what +
                                              " extended slice assignment: a sequence of " +
                                              std::to_string(add.size()) + " items for an extended slice of " +
                                              std::to_string(s.count) + " (step " + std::to_string(s.step) +
                                              "; Python's ValueError): a step other than 1 needs as many items as "
                                              "the slice selects");
    }
    for (std::size_t i = 0; i < s.count; ++i) v[s.at(i)] = std::move(add[i]);
    reply(c, Status::ok);
  }

  /// del l[a:b:k]: removes the selected items, keeping the others' order.
  static void erase_slice(std::vector<std::string>& v, const SliceRange& s) {
    if (s.count == 0) return;
    std::vector<bool> gone(v.size());
    for (std::size_t i = 0; i < s.count; ++i) gone[s.at(i)] = true;
    std::size_t out = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (gone[i]) continue;
      if (out != i) v[out] = std::move(v[i]);  // never a self-move: it may empty the string
      ++out;
    }
    v.resize(out);
  }

  /// l *= n. The result must fit in one frame (64 MiB, counting each item's
  /// string on the server), as its snapshot must: a single request never makes the
  /// server allocate without bound.
  void repeat(Conn& c, std::vector<std::string>& v, std::int64_t n) {
    if (n <= 0 || v.empty()) {
      v.clear();
      return reply(c, Status::ok);
    }
    std::uint64_t bytes = 0;  // the list's footprint, as the server holds it
    for (auto& s : v) bytes += s.size() + sizeof(std::string);
    if (static_cast<std::uint64_t>(n) > kMaxFrame / bytes) {
      return reply_text(c, Status::usage, "mproc: manager list *= " + std::to_string(n) + ": " +
                                              std::to_string(v.size()) + " items (" + std::to_string(bytes) +
                                              " bytes on the server) repeated would exceed " +
                                              std::to_string(kMaxFrame >> 20) +
                                              " MiB, more than one reply can carry; the list is unchanged");
    }
    std::size_t k = v.size();
    v.reserve(k * static_cast<std::size_t>(n));
    for (std::int64_t i = 1; i < n; ++i) {
      for (std::size_t j = 0; j < k; ++j) v.push_back(v[j]);
    }
    reply(c, Status::ok);
  }

  void list_op(Conn& c, const RequestHeader& h, Reader& r) {
    auto& l = find_as<ListObj>(h.object, {Kind::list, Kind::array});
    auto& v = l.items;
    if (l.kind == Kind::array && h.op != Op::l_get && h.op != Op::l_set && h.op != Op::l_all && h.op != Op::l_apply &&
        h.op != Op::l_slice && h.op != Op::l_set_slice && h.op != Op::l_slice_step && h.op != Op::l_set_slice_step) {
      throw Refused{Status::error, "an Array has a fixed size: this list operation does not apply"};
    }
    switch (h.op) {
      case Op::l_reverse:
        std::reverse(v.begin(), v.end());
        return reply(c, Status::ok);
      case Op::l_append:
        v.push_back(load<std::string>(r));
        return reply(c, Status::ok);
      case Op::l_extend: {
        std::vector<std::string> add = load_items(r);
        v.insert(v.end(), std::make_move_iterator(add.begin()), std::make_move_iterator(add.end()));
        return reply(c, Status::ok);
      }
      case Op::l_insert: {
        auto i = load<std::int64_t>(r);
        std::string item = load<std::string>(r);
        // Python's insert clamps the index to [0, len].
        auto n = static_cast<std::int64_t>(v.size());
        if (i < 0) i = std::max<std::int64_t>(0, i + n);
        i = std::min(i, n);
        v.insert(v.begin() + i, std::move(item));
        return reply(c, Status::ok);
      }
      case Op::l_get: {
        auto i = norm_index(load<std::int64_t>(r), v.size());
        if (!i) return reply(c, Status::not_found);
        return reply_raw(c, v[*i]);
      }
      case Op::l_set: {
        auto i = norm_index(load<std::int64_t>(r), v.size());
        std::string item = load<std::string>(r);
        if (!i) return reply(c, Status::not_found);
        v[*i] = std::move(item);
        return reply(c, Status::ok);
      }
      case Op::l_pop: {
        auto i = norm_index(load<std::int64_t>(r), v.size());
        if (!i) return reply(c, Status::not_found);
        std::string item = std::move(v[*i]);
        v.erase(v.begin() + static_cast<std::ptrdiff_t>(*i));
        return reply_raw(c, item);
      }
      case Op::l_index:
      case Op::l_remove: {
        std::string item = load<std::string>(r);
        auto it = std::find(v.begin(), v.end(), item);
        if (it == v.end()) return reply(c, Status::not_found);
        if (h.op == Op::l_index) return reply_value(c, static_cast<std::uint64_t>(it - v.begin()));
        v.erase(it);
        return reply(c, Status::ok);
      }
      case Op::l_count: {
        std::string item = load<std::string>(r);
        return reply_value(c, static_cast<std::uint64_t>(std::count(v.begin(), v.end(), item)));
      }
      case Op::l_all: {
        Writer w;
        write_size(w, v.size());
        for (auto& s : v) dump(w, s);
        return reply(c, Status::ok, w.bytes());
      }
      case Op::l_apply: {
        auto i = norm_index(load<std::int64_t>(r), v.size());
        if (!i) return reply(c, Status::not_found);
        std::string scratch = v[*i];
        ApplyCtx actx{&scratch, true};
        if (!run_code(c, r, &actx, "apply()")) return;  // f threw: the item is unchanged
        v[*i] = scratch;
        return reply_raw(c, scratch);
      }
      case Op::l_slice:
      case Op::l_slice_step: {
        auto sl = slice_range(r, v.size(), h.op == Op::l_slice_step);
        Writer w;
        write_size(w, sl.count);
        for (std::size_t k = 0; k < sl.count; ++k) dump(w, v[sl.at(k)]);
        return reply(c, Status::ok, w.bytes());
      }
      case Op::l_set_slice:
      case Op::l_set_slice_step: {
        auto sl = slice_range(r, v.size(), h.op == Op::l_set_slice_step);
        return assign_slice(c, l, sl, load_items(r));
      }
      case Op::l_del_slice:
      case Op::l_del_slice_step:
        erase_slice(v, slice_range(r, v.size(), h.op == Op::l_del_slice_step));
        return reply(c, Status::ok);
      case Op::l_repeat: return repeat(c, v, load<std::int64_t>(r));
      default: throw Malformed("unknown list operation");
    }
  }

  void value_op(Conn& c, const RequestHeader& h, Reader& r) {
    auto& v = find_as<ValueObj>(h.object, {Kind::value});
    if (h.op == Op::v_get) return reply_raw(c, v.v);
    if (h.op == Op::v_set) {
      v.v = load<std::string>(r);
      return reply(c, Status::ok);
    }
    throw Malformed("unknown Value operation");
  }

  void ns_op(Conn& c, const RequestHeader& h, Reader& r) {
    auto& ns = find_as<NsObj>(h.object, {Kind::ns});
    switch (h.op) {
      case Op::ns_set: {
        std::string name = load<std::string>(r);
        auto type = load<std::uint64_t>(r);
        std::string b = load<std::string>(r);
        ns.fields[std::move(name)] = {type, std::move(b)};
        return reply(c, Status::ok);
      }
      case Op::ns_get: {
        std::string name = load<std::string>(r);
        auto type = load<std::uint64_t>(r);
        auto it = ns.fields.find(name);
        if (it == ns.fields.end()) return reply(c, Status::not_found);
        if (it->second.first != type) {
          return reply_text(c, Status::usage, "mproc: Namespace field '" + name +
                                                  "' was written as another type than it is read as");
        }
        return reply_raw(c, it->second.second);
      }
      case Op::ns_del: return reply_value(c, ns.fields.erase(load<std::string>(r)) != 0);
      case Op::ns_names: {
        std::vector<std::string> names;
        for (auto& [k, v] : ns.fields) names.push_back(k);
        return reply_value(c, names);
      }
      default: throw Malformed("unknown Namespace operation");
    }
  }

  void lock_op(Conn& c, const RequestHeader& h, Reader& r) {
    auto& L = find_as<LockObj>(h.object, {Kind::lock, Kind::rlock, Kind::semaphore});
    switch (h.op) {
      case Op::lk_acquire: {
        if (h.timeout == 0 && L.kind == Kind::lock && L.depth > 0) return reply(c, Status::timeout);  // try_acquire
        if (auto st = try_take(L, c.sid, h.tid)) return reply(c, *st);
        if (h.timeout == 0) return reply(c, Status::timeout);
        park(c, h);
        L.waiters.push_back(c.id);
        return;
      }
      case Op::lk_release: {
        if (L.kind == Kind::semaphore) {
          auto n = load<std::uint32_t>(r);
          if (L.bounded && static_cast<std::uint64_t>(L.value) + n > L.initial) {
            return reply_text(c, Status::usage, "mproc: manager BoundedSemaphore released too many times");
          }
          L.value += n;
          auto it = L.held.find(c.sid);
          if (it != L.held.end()) {
            it->second -= std::min(it->second, n);
            if (it->second == 0) L.held.erase(it);
          }
        } else {
          if (L.depth == 0) return reply_text(c, Status::usage, "mproc: manager lock released while not held");
          if (L.kind == Kind::rlock && (L.owner_sid != c.sid || L.owner_tid != h.tid)) {
            return reply_text(c, Status::usage, "mproc: manager RLock released by a thread that does not hold it");
          }
          if (--L.depth == 0) L.owner_sid = L.owner_tid = 0;
        }
        reply(c, Status::ok);
        return wake_lock(L);
      }
      case Op::lk_locked: return reply_value(c, L.kind == Kind::semaphore ? L.value == 0 : L.depth > 0);
      case Op::sem_value: return reply_value(c, L.value);
      default: throw Malformed("unknown lock operation");
    }
  }

  void event_op(Conn& c, const RequestHeader& h) {
    auto& e = find_as<EventObj>(h.object, {Kind::event});
    switch (h.op) {
      case Op::ev_set: {
        e.flag = true;
        auto waiters = std::move(e.waiters);
        e.waiters.clear();
        for (auto id : waiters) {
          if (Conn* w = live_waiter(id)) {
            w->waiting = false;
            reply_value(*w, true);
          }
        }
        return reply(c, Status::ok);
      }
      case Op::ev_clear: e.flag = false; return reply(c, Status::ok);
      case Op::ev_is_set: return reply_value(c, e.flag);
      case Op::ev_wait:
        if (e.flag) return reply_value(c, true);
        if (h.timeout == 0) return reply_value(c, false);
        park(c, h);
        e.waiters.push_back(c.id);
        return;
      default: throw Malformed("unknown Event operation");
    }
  }

  void queue_op(Conn& c, const RequestHeader& h, Reader& r) {
    auto& q = find_as<QueueObj>(h.object, {Kind::queue, Kind::joinable_queue});
    bool joinable = q.kind == Kind::joinable_queue;
    switch (h.op) {
      case Op::q_put: {
        std::string item = load<std::string>(r);
        if (joinable && (!q.getters.empty() || q.maxsize == 0 || q.items.size() < q.maxsize)) q.unfinished++;
        while (!q.getters.empty()) {
          Conn* g = live_waiter(q.getters.front());
          q.getters.pop_front();
          if (!g) continue;
          g->waiting = false;
          reply_raw(*g, item);
          return reply(c, Status::ok);
        }
        if (q.maxsize == 0 || q.items.size() < q.maxsize) {
          q.items.push_back(std::move(item));
          return reply(c, Status::ok);
        }
        if (h.timeout == 0) return reply(c, Status::full);
        park(c, h);
        c.wait_item = std::move(item);
        q.putters.push_back(c.id);
        return;
      }
      case Op::q_get: {
        if (!q.items.empty()) {
          std::string item = std::move(q.items.front());
          q.items.pop_front();
          reply_raw(c, item);
          while (!q.putters.empty()) {
            Conn* p = live_waiter(q.putters.front());
            q.putters.pop_front();
            if (!p) continue;
            q.items.push_back(std::move(p->wait_item));
            p->wait_item.clear();
            if (joinable) q.unfinished++;
            p->waiting = false;
            reply(*p, Status::ok);
            break;
          }
          return;
        }
        if (h.timeout == 0) return reply(c, Status::empty);
        park(c, h);
        q.getters.push_back(c.id);
        return;
      }
      case Op::q_size: return reply_value(c, static_cast<std::uint64_t>(q.items.size()));
      case Op::q_task_done: {
        if (!joinable) throw Refused{Status::error, "task_done() on a Queue that is not a JoinableQueue"};
        if (q.unfinished == 0) {
          return reply_text(c, Status::usage, "mproc: manager JoinableQueue.task_done() called more times than "
                                               "there were items");
        }
        if (--q.unfinished == 0) {
          auto js = std::move(q.joiners);
          q.joiners.clear();
          for (auto id : js) {
            if (Conn* w = live_waiter(id)) {
              w->waiting = false;
              reply(*w, Status::ok);
            }
          }
        }
        return reply(c, Status::ok);
      }
      case Op::q_join:
        if (!joinable) throw Refused{Status::error, "join() on a Queue that is not a JoinableQueue"};
        if (q.unfinished == 0) return reply(c, Status::ok);
        if (h.timeout == 0) return reply(c, Status::timeout);
        park(c, h);
        q.joiners.push_back(c.id);
        return;
      default: throw Malformed("unknown Queue operation");
    }
  }

  void cond_op(Conn& c, const RequestHeader& h, Reader& r) {
    auto& cond = find_as<CondObj>(h.object, {Kind::condition});
    auto& L = static_cast<LockObj&>(find(cond.lock));
    switch (h.op) {
      case Op::cond_wait: {
        if (L.depth == 0 || L.owner_sid != c.sid || L.owner_tid != h.tid) {
          return reply_text(c, Status::usage, "mproc: manager Condition.wait() without holding its lock");
        }
        c.wait_depth = L.depth;
        L.depth = 0;
        L.owner_sid = L.owner_tid = 0;
        park(c, h);
        cond.waiters.push_back(c.id);
        wake_lock(L);
        return;
      }
      case Op::cond_notify: {
        if (L.depth == 0 || L.owner_sid != c.sid || L.owner_tid != h.tid) {
          return reply_text(c, Status::usage, "mproc: manager Condition.notify() without holding its lock");
        }
        auto n = load<std::uint64_t>(r);
        reply(c, Status::ok);
        while (n > 0 && !cond.waiters.empty()) {
          Conn* w = live_waiter(cond.waiters.front());
          cond.waiters.pop_front();
          if (!w) continue;
          --n;
          cond_to_lock(*w, true);
        }
        return;
      }
      default: throw Malformed("unknown Condition operation");
    }
  }

  void barrier_op(Conn& c, const RequestHeader& h) {
    auto& b = find_as<BarrierObj>(h.object, {Kind::barrier});
    switch (h.op) {
      case Op::bar_wait: {
        if (b.broken) return reply(c, Status::broken);
        if (b.waiters.size() + 1 == b.parties) {
          auto ws = std::move(b.waiters);
          b.waiters.clear();
          std::uint32_t index = 0;
          for (auto id : ws) {
            Conn* w = live_waiter(id);
            if (!w) continue;
            w->waiting = false;
            reply_value(*w, index++);
          }
          return reply_value(c, index);
        }
        park(c, h);
        b.waiters.push_back(c.id);
        return;
      }
      case Op::bar_abort:
        break_barrier(b);
        return reply(c, Status::ok);
      case Op::bar_reset:
        break_barrier(b);
        b.broken = false;
        return reply(c, Status::ok);
      case Op::bar_state: {
        Writer w;
        dump(w, b.parties);
        dump(w, static_cast<std::uint32_t>(b.waiters.size()));
        dump(w, b.broken);
        return reply(c, Status::ok, w.bytes());
      }
      default: throw Malformed("unknown Barrier operation");
    }
  }

  std::string key_;
  ServerId id_;
  bool log_;
  std::uint64_t next_conn_ = 0;
  std::uint64_t next_obj_ = 0;
  std::unordered_map<std::uint64_t, std::unique_ptr<Obj>> objs_;
  std::unordered_map<std::uint64_t, Sess> sess_;
  std::map<std::string, std::uint64_t> names_;  // published objects
};

}  // namespace

void serve(int listen_fd, const std::string& authkey, const ServerId& server_id) {
  Server s(authkey, server_id, true);
  // Non-blocking: the accept loop below takes every pending connection, then stops.
  ::fcntl(listen_fd, F_SETFL, ::fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) throw std::system_error(errno, std::generic_category(), "epoll_create1");
  s.epfd_ = ep;
  epoll_event lev{};
  lev.events = EPOLLIN;
  lev.data.u64 = 0;
  ::epoll_ctl(ep, EPOLL_CTL_ADD, listen_fd, &lev);
  std::vector<epoll_event> evs(64);
  char buf[64 * 1024];
  while (!s.stop_) {
    int n = ::epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), s.next_timeout_ms(now_ns()));
    if (n < 0 && errno != EINTR) throw std::system_error(errno, std::generic_category(), "epoll_wait");
    for (int i = 0; i < n; ++i) {
      std::uint64_t id = evs[i].data.u64;
      if (id == 0) {
        for (;;) {
          int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) break;
          Conn& c = s.add_conn(fd);
          epoll_event ev{};
          ev.events = EPOLLIN | EPOLLRDHUP;
          ev.data.u64 = c.id;
          ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
          s.flush(c);
        }
        continue;
      }
      auto it = s.conns_.find(id);
      if (it == s.conns_.end() || it->second->dead) continue;
      Conn& c = *it->second;
      if (evs[i].events & EPOLLOUT) s.flush(c);
      if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP | EPOLLERR)) {
        for (;;) {
          ssize_t k = ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
          if (k > 0) {
            c.in.append(buf, static_cast<std::size_t>(k));
            if (c.in.size() > std::size_t{kMaxFrame} + 2 * kHeaderSize) {
              // on_bytes below consumes whole frames; a buffer this size holds one.
              break;
            }
            continue;
          }
          if (k < 0 && errno == EINTR) continue;
          if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
          s.on_bytes(c);  // whatever came before the end
          if (!c.dead && !c.in.empty()) {
            s.drop(c, "connection closed in the middle of a frame (truncated: " + std::to_string(c.in.size()) +
                          " bytes of it came)");
          }
          s.close_conn(c);
          break;
        }
        if (!c.dead) s.on_bytes(c);
      }
    }
    s.expire(now_ns());
    for (auto id : s.dead_) {
      auto it = s.conns_.find(id);
      if (it == s.conns_.end()) continue;
      if (it->second->fd >= 0) {
        ::epoll_ctl(ep, EPOLL_CTL_DEL, it->second->fd, nullptr);
        ::close(it->second->fd);
      }
      s.conns_.erase(it);
    }
    s.dead_.clear();
  }
  for (auto& [id, c] : s.conns_) {
    if (c->fd >= 0) ::close(c->fd);
  }
  ::close(ep);
  ::close(listen_fd);
}

namespace {

/// What serve()'s loop does after each round of events: forget closed connections.
void reap(Server& s) {
  for (auto id : s.dead_) s.conns_.erase(id);
  s.dead_.clear();
}

/// What would end or wedge a real server (an exception escaping on_bytes,
/// close_conn or expire ends serve()): for a fuzz target a crash, said as one.
[[noreturn]] void fuzz_failure(const std::string& what) noexcept {
  std::fprintf(stderr, "mproc manager fuzz: %s\n", what.c_str());
  std::abort();
}
[[noreturn]] void escaped(const char* what) noexcept {
  fuzz_failure(std::string("an exception escaped the server loop (the server would die): ") + what);
}

}  // namespace

void fuzz_frames(std::span<const std::byte> bytes) noexcept {
  try {
    ServerId zero{};
    Server s("fuzz", zero, false);
    Conn& c = s.add_test_conn(1);
    c.same_program = false;  // fuzzed code references must never be called
    c.in.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    s.on_bytes(c);
    s.close_conn(c);
    reap(s);
  } catch (const std::exception& e) {
    escaped(e.what());
  } catch (...) {
    escaped("(not a std::exception)");
  }
}

void fuzz_clients(std::span<const std::byte> script) noexcept {
  try {
    ServerId zero{};
    Server s("fuzz", zero, false);
    std::uint64_t slot_conn[kFuzzSlots] = {};  // 0: no connection in that slot
    auto conn = [&](std::size_t slot) -> Conn& {
      auto it = slot_conn[slot] ? s.conns_.find(slot_conn[slot]) : s.conns_.end();
      if (it != s.conns_.end() && !it->second->dead) return *it->second;
      Conn& c = s.add_test_conn(1 + slot % 2);  // slots 0, 2: session 1; slots 1, 3: session 2
      c.same_program = false;                   // fuzzed code references must never be called
      slot_conn[slot] = c.id;
      return c;
    };
    std::size_t pos = 0;
    while (pos < script.size()) {
      auto ctl = static_cast<std::uint8_t>(script[pos]);
      std::size_t len = 0;
      if (pos + 3 <= script.size()) {
        len = static_cast<std::size_t>(script[pos + 1]) | static_cast<std::size_t>(script[pos + 2]) << 8;
      }
      pos = std::min(pos + 3, script.size());
      len = std::min(len, script.size() - pos);
      std::size_t slot = ctl % kFuzzSlots;
      switch (static_cast<FuzzAction>((ctl >> 2) & 3)) {
        case FuzzAction::close:
          if (slot_conn[slot] && s.conns_.count(slot_conn[slot])) s.close_conn(*s.conns_.at(slot_conn[slot]));
          slot_conn[slot] = 0;
          break;
        case FuzzAction::expire:
          s.expire(std::numeric_limits<std::int64_t>::max());
          // Every timed wait is answered once its deadline passed (a Condition
          // wait then waits for its lock, without a deadline): a wait left parked
          // past it would make serve()'s loop spin, and its client wait forever.
          for (auto& [id, c] : s.conns_) {
            if (!c->dead && c->waiting && c->deadline >= 0) fuzz_failure("a timed wait was not answered at its deadline");
          }
          break;
        default: {
          Conn& c = conn(slot);
          c.in.append(reinterpret_cast<const char*>(script.data() + pos), len);
          s.on_bytes(c);
          break;
        }
      }
      pos += len;
      s.expire(now_ns());
      reap(s);
    }
    for (auto& [id, c] : s.conns_) s.close_conn(*c);
    reap(s);
  } catch (const std::exception& e) {
    escaped(e.what());
  } catch (...) {
    escaped("(not a std::exception)");
  }
}

}  // namespace mproc::detail::mgr
