// mproc/detail/manager_client.hpp — what a manager proxy is made of: the token that
// names a server object, the operation codes, and the per-process client session
// that carries calls to the server. The typed proxies (manager.hpp) are thin
// encoders over call(); everything that touches a socket is compiled (src/manager/).
#pragma once

#include "mproc/detail/config.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "mproc/error.hpp"
#include "mproc/serial.hpp"

namespace mproc {

/// A manager server is gone, restarted, refused this client (authkey, protocol or
/// build mismatch) or refused a request: the manager's own failures. Raised by the
/// next or pending proxy call, never a hang.
class ManagerError : public Error {
 public:
  using Error::Error;
};

/// A manager dict has no such key, a list no such value, or a Namespace no such
/// field (Python's KeyError, ValueError and AttributeError).
class KeyError : public Error {
 public:
  using Error::Error;
};

/// A manager list index out of range (Python's IndexError).
class IndexError : public Error {
 public:
  using Error::Error;
};

/// Where a manager server listens. Exactly one form:
///   * `path` non-empty: a Unix socket; a leading '@' names an abstract socket
///     (Linux; no file, gone with the server), else a filesystem path;
///   * else `host` and `port`: TCP (IPv4 or IPv6 literal, or a host name).
/// The default (all empty) asks the manager to choose: an abstract Unix socket
/// with a random name. Nothing listens on a network address unless asked.
struct Address {
  std::string host;
  std::uint16_t port = 0;
  std::string path;

  bool is_unix() const noexcept { return !path.empty(); }
  bool is_tcp() const noexcept { return path.empty() && !host.empty(); }
  /// "unix:@name", "unix:/path" or "tcp:host:port" (for logs and error messages).
  std::string str() const;

  template <class A>
  void serialize(A& ar) {
    ar(host, port, path);
  }
  friend bool operator==(const Address&, const Address&) = default;
};

namespace detail::mgr {

/// The kinds of object a server holds (a token's kind is checked on every call).
enum class Kind : std::uint16_t {
  dict = 1,
  list,
  value,
  ns,
  lock,
  rlock,
  event,
  queue,
  semaphore,
  array,
  joinable_queue,
  condition,
  barrier,
  user,  // an object of a registered user type (see mproc::exposed)
};

/// Operation codes of requests. Values are part of the protocol: append only.
enum class Op : std::uint16_t {
  // session and lifetime
  ping = 1,
  create,    // kind, type hash, initial bytes -> object id
  pin,       // a proxy was serialized: the object lives until shutdown
  decref,    // one-way: a proxy state of this session went away
  shutdown,  // stop the server
  incref,    // a proxy was decoded in this session
  publish,   // name -> object (pins it): Python's register(name, callable=...)
  lookup,    // name -> token (takes a reference)
  // any container
  len = 16,
  clear,
  apply,     // code reference + args, run on the server under the object's mutex
  // dict
  d_set = 32,
  d_get,
  d_del,
  d_pop,
  d_setdefault,
  d_contains,
  d_keys,
  d_values,
  d_items,
  d_update,
  d_popitem,  // the last inserted item, removed (Python >= 3.7's LIFO order)
  d_ior,      // other dict's id: d |= other, both on this server (Python 3.9), atomically
  // list
  l_append = 48,
  l_extend,
  l_insert,
  l_get,
  l_set,
  l_pop,
  l_index,
  l_count,
  l_remove,
  l_all,
  l_reverse,
  l_apply,      // index + code reference: f(item&, args...) on one item
  l_slice,      // start, stop (Python's clamping) -> the items
  l_set_slice,  // start, stop, items: l[a:b] = items (an Array: as many as it replaces)
  l_del_slice,  // start, stop: del l[a:b]
  // value
  v_get = 64,
  v_set,
  // namespace
  ns_set = 72,
  ns_get,
  ns_del,
  ns_names,
  // lock / rlock / semaphore
  lk_acquire = 80,
  lk_release,
  lk_locked,
  sem_value,
  // event
  ev_set = 88,
  ev_clear,
  ev_is_set,
  ev_wait,
  // queue
  q_put = 96,
  q_get,
  q_size,
  q_task_done,
  q_join,
  // condition
  cond_wait = 104,
  cond_notify,
  // barrier
  bar_wait = 112,
  bar_abort,
  bar_reset,
  bar_state,
  // user types
  u_call = 120,
  // list, continued (48..63 is full); served by the list handler like those
  l_slice_step = 128,  // start, stop, step (Python's slice.indices) -> the items
  l_set_slice_step,    // start, stop, step, items: l[a:b:k] = items (k != 1: as many as it selects)
  l_del_slice_step,    // start, stop, step: del l[a:b:k]
  l_repeat,            // n: l *= n (n <= 0 empties)
};

/// How a request ended (the first byte of a reply).
enum class Status : std::uint8_t {
  ok = 0,
  timeout,       // a bounded wait ran out
  not_found,     // dict key / namespace field missing, list index out of range
  owner_died,    // lock granted; its previous holder's client died holding it
  empty,         // Queue get found nothing (non-blocking or timed out)
  full,          // Queue put found no room
  usage,         // the call is not allowed (message follows)
  remote,        // user code run on the server threw (ExceptionInfo follows)
  error,         // the server refused the request (message follows)
  broken,        // a Barrier is broken (aborted, reset, timed out, or a party's client died)
};

/// Names one object of one server instance.
struct Token {
  std::array<std::uint8_t, 16> server{};  // the server instance's random id
  std::uint64_t id = 0;
  Kind kind{};
  std::uint64_t type = 0;  // hash of the element types (a Queue<int> is not a Queue<string>)

  template <class A>
  void serialize(A& ar) {
    ar(server, id, kind, type);
  }
};

/// How long a call waits for a silent server by default (ManagerOptions::call_timeout).
inline constexpr std::chrono::milliseconds default_call_timeout{30'000};

/// Where a server is, the key to talk to it, and how long its silence is borne.
struct Endpoint {
  Address address;
  std::string authkey;
  /// ManagerOptions::call_timeout in milliseconds; -1: no limit. Travels with the
  /// proxies, so a child calls with its parent's limit.
  std::int64_t call_timeout_ms = default_call_timeout.count();

  template <class A>
  void serialize(A& ar) {
    ar(address, authkey, call_timeout_ms);
  }
};

/// A call_timeout as Endpoint::call_timeout_ms (milliseconds::max(): no limit);
/// zero or negative is a UsageError naming `where`.
std::int64_t call_timeout_ms(std::chrono::milliseconds t, const char* where);

class Session;

struct Reply {
  Status status = Status::ok;
  std::vector<std::byte> bytes;  // the payload after the status byte
  Reader reader() const noexcept { return Reader(bytes); }
};

/// No timeout: wait as long as it takes (the call still fails at once when the
/// server goes away).
inline constexpr std::int64_t forever = -1;

/// A duration as the protocol's timeout (nanoseconds, clamped to >= 0); negative
/// durations are a UsageError naming `call`.
template <class Rep, class Period>
std::int64_t timeout_ns(std::chrono::duration<Rep, Period> d, const char* call) {
  using namespace std::chrono;
  if (d < d.zero()) throw UsageError(std::string("mproc: ") + call + ": negative timeout");
  if (duration<double>(d) >= duration<double>(hours(24 * 365))) return forever;
  return duration_cast<nanoseconds>(d).count();
}

/// The state behind every copy of one proxy in one process: the token and the
/// session it is called through. Creation (or decoding) took a reference on the
/// server; destruction gives it back. Safe from several threads.
class ProxyCore {
 public:
  ProxyCore(std::shared_ptr<Session> s, Endpoint ep, Token t) noexcept;
  ProxyCore(const ProxyCore&) = delete;
  ProxyCore& operator=(const ProxyCore&) = delete;
  ~ProxyCore();

  /// Sends one request and waits for its reply. `args` are the bytes after the
  /// request header. Throws ManagerError when the server is gone, restarted, or
  /// refused the request; the statuses the caller handles come back in the Reply.
  Reply call(Op op, std::span<const std::byte> args, std::int64_t timeout = forever) const;
  Reply call(Op op, const Writer& args, std::int64_t timeout = forever) const { return call(op, args.bytes(), timeout); }
  Reply call(Op op) const { return call(op, std::span<const std::byte>{}); }

  const Token& token() const noexcept { return token_; }
  const Endpoint& endpoint() const noexcept { return ep_; }

 private:
  std::shared_ptr<Session> session() const;
  friend void encode_proxy(Writer& w, const std::shared_ptr<ProxyCore>& core);
  friend std::shared_ptr<ProxyCore> adopt_result(const ProxyCore& from, std::uint64_t id, std::uint64_t type);
  mutable std::mutex mu_;  // guards session_ while a forked child rebinds it
  mutable std::shared_ptr<Session> session_;
  Endpoint ep_;
  Token token_;
  mutable std::atomic<int> owner_pid_;  // the process whose reference session_ holds
  mutable std::atomic<bool> pinned_{false};
};
using CorePtr = std::shared_ptr<ProxyCore>;

/// Encodes a proxy (endpoint and token) and pins its object on the server, so
/// that it outlives this process's handles until the receiver takes its own.
void encode_proxy(Writer& w, const CorePtr& core);
/// Decodes a proxy, checking kind and type; takes a reference for this process.
CorePtr decode_proxy(Reader& r, Kind kind, std::uint64_t type);

/// The proxy state for object `id` that a call on `from` just made on the server
/// (a method returning std::unique_ptr<U>): same session, a reference already taken.
CorePtr adopt_result(const ProxyCore& from, std::uint64_t id, std::uint64_t type);

/// Throws the error a non-ok status stands for (ManagerError, UsageError,
/// RemoteError …), saying which call got it; for statuses the caller did not expect.
[[noreturn]] void throw_status(const Reply& r, const char* call);

}  // namespace detail::mgr
}  // namespace mproc
