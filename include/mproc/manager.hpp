// mproc/manager.hpp — Manager and its proxies, mirroring multiprocessing.Manager()
// (Python's SyncManager): a server process holds the objects, every process talks
// to it through typed proxies.
//
//   mproc::Manager m;                          // starts the server (abstract Unix socket)
//   auto d = m.dict<std::string, int>();
//   auto lock = m.Lock();
//   mproc::Process p(work, d, lock);           // a proxy is a serializable handle
//   p.start();
//   d.apply("hits", add, 1);                   // f(value&, 1) runs on the server: no lost update
//   p.join();
//   int n = d["hits"];                         // reads through the proxy
//
// A proxy carries the server's address, its authkey and the object's token;
// copies in one process share one reference; a proxy sent to another process
// (Process argument, pool task, initializer, another machine) connects from there.
// Every call is a round trip to the server; blocking calls have timeout forms and
// fail with ManagerError, never hang, when the server goes away.
// Details, the Python mapping and the security notes: docs/manager.md.
#pragma once

#include "mproc/detail/config.hpp"

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "mproc/detail/manager_client.hpp"
#include "mproc/detail/type_name.hpp"
#include "mproc/error.hpp"
#include "mproc/process.hpp"
#include "mproc/serial.hpp"
#include "mproc/sync.hpp"
#include "mproc/task.hpp"

namespace mproc {

struct ManagerOptions {
  /// Where to listen; empty: an abstract Unix socket with a random name.
  Address address;
  /// The shared secret clients prove they know (and the server proves back).
  /// Empty: 32 random bytes (a TCP address needs one given explicitly).
  std::string authkey;
  /// The start method of the server process; empty: the default one.
  std::optional<StartMethod> start_method;
  /// How long connecting and authenticating may take before ManagerError.
  std::chrono::milliseconds connect_timeout{10'000};
  /// How long a call bears a silent server (stopped by SIGSTOP or a debugger,
  /// hung, or overloaded) before it fails with ManagerError. A request that only
  /// reads or writes must be answered within it; a blocking one (Queue.get(),
  /// Lock.acquire(), Event/Condition/Barrier wait, JoinableQueue.join()) may wait
  /// as long as it asks for, but every call_timeout of silence the client pings
  /// the server on another connection, and fails when that ping is not answered
  /// within call_timeout either. Proxies carry it into other processes.
  /// std::chrono::milliseconds::max(): no limit (Python's behaviour: a hang).
  std::chrono::milliseconds call_timeout = detail::mgr::default_call_timeout;
};

template <class K, class V>
class DictProxy;
template <class T>
class ListProxy;
template <class T>
class ValueProxy;
template <class T>
class QueueProxy;
class NamespaceProxy;
class LockProxy;
class RLockProxy;
class SemaphoreProxy;
class EventProxy;

namespace detail::mgr {

template <class... T>
constexpr std::uint64_t types_hash() noexcept {
  return type_hash<std::tuple<T...>>();
}

template <class T>
void to_string_bytes(const T& v, std::string& out) {
  Writer w;
  dump(w, v);
  if (!w.fds().empty()) {
    throw UsageError("mproc: a value that carries file descriptors (a Queue, Pipe, Lock … handle) cannot "
                     "be stored in a manager object; use the manager's own Queue/Lock proxies instead");
  }
  out.assign(reinterpret_cast<const char*>(w.bytes().data()), w.size());
}

/// Writes v as a length-prefixed byte string: the server stores values it cannot decode.
template <class T>
void put(Writer& w, const T& v) {
  std::string b;
  to_string_bytes(v, b);
  dump(w, b);
}

template <class T>
T from_reply(const Reply& r) {
  Reader rd = r.reader();
  return load<T>(rd);
}

/// What an apply trampoline works on (a server object's value, as bytes).
struct ApplyCtx {
  std::string* value;  // in: the current value's encoding (if present); out: the new one
  bool present;        // false: start from V{} (a dict key not there yet)
};

/// The server runs this for d.apply / v.apply: decodes the callable and its
/// arguments, the current value, calls f(value&, args...), encodes the value back.
/// Called with nullptr it returns its identity hash (see task.hpp's Entry).
template <class F, class V, class Stored>
std::uint64_t apply_entry(Reader* in, void* ctx) {
  constexpr std::uint64_t id = fnv1a(pretty_name<Bound<F, std::tuple<V, Stored>>>());
  if (!in) return id;
  auto& c = *static_cast<ApplyCtx*>(ctx);
  F f = decode_callable<F>(*in);
  Stored args = load<Stored>(*in);
  V v{};
  if (c.present) {
    Reader vr(std::as_bytes(std::span<const char>(c.value->data(), c.value->size())));
    v = load<V>(vr);
  }
  std::apply([&](auto&... a) { std::invoke(f, v, std::move(a)...); }, args);
  to_string_bytes(v, *c.value);
  return id;
}

/// The server runs this for ListProxy::sort: decodes every item, sorts, encodes back.
template <class T>
std::uint64_t sort_entry(Reader* in, void* ctx) {
  constexpr std::uint64_t id = fnv1a(pretty_name<std::tuple<T, std::less<>>>());
  if (!in) return id;
  bool reverse = load<bool>(*in);
  auto& items = *static_cast<std::vector<std::string>*>(ctx);
  std::vector<T> vals;
  vals.reserve(items.size());
  for (auto& s : items) {
    Reader vr(std::as_bytes(std::span<const char>(s.data(), s.size())));
    vals.push_back(load<T>(vr));
  }
  if (reverse) std::stable_sort(vals.begin(), vals.end(), std::greater<>{});
  else std::stable_sort(vals.begin(), vals.end(), std::less<>{});
  for (std::size_t i = 0; i < vals.size(); ++i) to_string_bytes(vals[i], items[i]);
  return id;
}

/// The server runs this for sort(key, reverse): decodes the key function and every
/// item, computes each item's key once (as Python does), sorts the items stably by
/// key (reverse keeps equal keys in their order, as Python's reverse=True), and
/// leaves the items' bytes permuted, never re-encoded.
template <class T, class F>
std::uint64_t sort_key_entry(Reader* in, void* ctx) {
  constexpr std::uint64_t id = fnv1a(pretty_name<std::tuple<T, F, std::less<>>>());
  if (!in) return id;
  F key = decode_callable<F>(*in);
  bool reverse = load<bool>(*in);
  auto& items = *static_cast<std::vector<std::string>*>(ctx);
  using R = std::decay_t<std::invoke_result_t<F&, const T&>>;
  std::vector<R> keys;
  keys.reserve(items.size());
  for (auto& s : items) {
    Reader vr(std::as_bytes(std::span<const char>(s.data(), s.size())));
    const T item = load<T>(vr);
    keys.push_back(std::invoke(key, item));
  }
  std::vector<std::size_t> order(items.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  if (reverse) std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return keys[b] < keys[a]; });
  else std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return keys[a] < keys[b]; });
  std::vector<std::string> sorted;
  sorted.reserve(items.size());
  for (auto i : order) sorted.push_back(std::move(items[i]));
  items = std::move(sorted);
  return id;
}

/// Encodes f(value&, args...) for the server: entry, callable, arguments.
template <class V, class F, class... Args>
void encode_apply(Writer& w, F&& f, Args&&... args) {
  using Fn = std::decay_t<F>;
  if constexpr (!SendableCallable<Fn>) {
    diagnose_callable<Fn>();
  } else {
    using Stored = std::tuple<std::decay_t<Args>...>;
    static_assert(std::is_invocable_v<Fn&, V&, std::decay_t<Args>&&...>,
                  "mproc: apply(f, args...) calls f(value&, args...) on the server: f must take the "
                  "value by reference first, then the arguments");
    if constexpr (!Serializable<Stored>) {
      diagnose<Stored>();
    } else {
      encode_entry<&apply_entry<Fn, V, Stored>>(w);
      const Fn& callable = f;
      encode_callable<Fn>(w, callable);
      dump(w, Stored(std::forward<Args>(args)...));
    }
  }
}

/// Whether sort(key) can order by what key(item) returns.
template <class Fn, class T>
constexpr bool orderable_key() {
  if constexpr (!std::is_invocable_v<Fn&, const T&>) {
    return false;
  } else {
    using R = std::decay_t<std::invoke_result_t<Fn&, const T&>>;
    return requires(const R& a, const R& b) {
      { a < b } -> std::convertible_to<bool>;
    };
  }
}

/// Encodes sort(key, reverse) for the server: entry, key function, reverse.
template <class T, class F>
void encode_sort_key(Writer& w, F&& key, bool reverse) {
  using Fn = std::decay_t<F>;
  if constexpr (!SendableCallable<Fn>) {
    diagnose_callable<Fn>();
  } else if constexpr (!std::is_invocable_v<Fn&, const T&>) {
    static_assert(dependent_false<Fn>,
                  "mproc: sort(key) calls key(const item&) on the server: key must take one item");
  } else if constexpr (!orderable_key<Fn, T>()) {
    static_assert(dependent_false<Fn>, "mproc: sort(key): the keys key(item) returns must be comparable with operator<");
  } else {
    encode_entry<&sort_key_entry<T, Fn>>(w);
    const Fn& callable = key;
    encode_callable<Fn>(w, callable);
    dump(w, reverse);
  }
}

/// A batch of (key, value) pairs as the server's dict requests take them.
template <class Pairs>
void put_pairs(Writer& w, const Pairs& items) {
  write_size(w, static_cast<std::size_t>(std::size(items)));
  for (auto& [k, v] : items) {
    put(w, k);
    put(w, v);
  }
}

/// Shared by every proxy: the core, its encoding, the checks on decoding.
template <Kind K, std::uint64_t Type>
class ProxyBase {
 public:
  static constexpr Kind kind = K;
  static constexpr std::uint64_t type = Type;
  /// A proxy that refers to nothing (every call throws UsageError); assign one.
  ProxyBase() = default;
  explicit ProxyBase(CorePtr c) noexcept : core_(std::move(c)) {}
  /// The object's id on its server (for logs and tests).
  std::uint64_t id() const noexcept { return core_ ? core_->token().id : 0; }
  const Address& address() const { return core().endpoint().address; }
  const CorePtr& core_ptr() const noexcept { return core_; }

 protected:
  const ProxyCore& core() const {
    if (!core_) throw UsageError("mproc: this manager proxy refers to no object (default-constructed)");
    return *core_;
  }
  Reply call(Op op, const Writer& w, std::int64_t timeout = forever) const { return core().call(op, w, timeout); }
  Reply call(Op op) const { return core().call(op); }
  Reply call_ok(Op op, const Writer& w, const char* what) const {
    Reply r = call(op, w);
    if (r.status != Status::ok) throw_status(r, what);
    return r;
  }
  Reply call_ok(Op op, const char* what) const { return call_ok(op, Writer{}, what); }
  CorePtr core_;
};

template <class P>
struct proxy_codec {
  static void encode(Writer& w, const P& p) { encode_proxy(w, p.core_ptr()); }
  static P decode(Reader& r) { return P(decode_proxy(r, P::kind, P::type)); }
};

}  // namespace detail::mgr

/// A dict on the server (Python's DictProxy). Keys are compared by their
/// encoding; iteration order is insertion order, as in Python. Every member is
/// one round trip, atomic on the server, safe from any thread or process. Throws
/// ManagerError when the server is gone.
template <class K, class V>
class DictProxy : public detail::mgr::ProxyBase<detail::mgr::Kind::dict, detail::mgr::types_hash<K, V>()> {
  using Base = detail::mgr::ProxyBase<detail::mgr::Kind::dict, detail::mgr::types_hash<K, V>()>;
  using Op = detail::mgr::Op;
  using Status = detail::mgr::Status;

 public:
  using key_type = K;
  using mapped_type = V;
  using Base::Base;

  /// `d[k] = v` and `V v = d[k]` (KeyError when missing). A handle, not a reference:
  /// `d[k] += 1` is a read then a write; use apply() for an atomic update.
  class Item {
   public:
    Item& operator=(const V& v) {
      d_.set(k_, v);
      return *this;
    }
    operator V() const { return d_.at(k_); }
    V get() const { return d_.at(k_); }

   private:
    friend class DictProxy;
    Item(const DictProxy& d, K k) : d_(d), k_(std::move(k)) {}
    const DictProxy& d_;
    K k_;
  };
  Item operator[](K k) const { return Item(*this, std::move(k)); }

  void set(const K& k, const V& v) const {
    Writer w;
    detail::mgr::put(w, k);
    detail::mgr::put(w, v);
    this->call_ok(Op::d_set, w, "dict set");
  }
  /// The value for k; throws KeyError if there is none.
  V at(const K& k) const {
    auto r = get(k);
    if (!r) throw KeyError("mproc: manager dict has no such key");
    return std::move(*r);
  }
  /// Python's d.get(k): empty if missing.
  std::optional<V> get(const K& k) const {
    Writer w;
    detail::mgr::put(w, k);
    auto r = this->call(Op::d_get, w);
    if (r.status == Status::not_found) return std::nullopt;
    if (r.status != Status::ok) detail::mgr::throw_status(r, "dict get");
    return detail::mgr::from_reply<V>(r);
  }
  V get(const K& k, const V& fallback) const { return get(k).value_or(fallback); }
  bool contains(const K& k) const {
    Writer w;
    detail::mgr::put(w, k);
    return detail::mgr::from_reply<bool>(this->call_ok(Op::d_contains, w, "dict contains"));
  }
  /// `del d[k]`; returns whether k was there.
  bool erase(const K& k) const {
    Writer w;
    detail::mgr::put(w, k);
    return detail::mgr::from_reply<bool>(this->call_ok(Op::d_del, w, "dict erase"));
  }
  /// Python's d.pop(k): the value, removed; KeyError if missing.
  V pop(const K& k) const {
    Writer w;
    detail::mgr::put(w, k);
    auto r = this->call(Op::d_pop, w);
    if (r.status == Status::not_found) throw KeyError("mproc: manager dict pop(): no such key");
    if (r.status != Status::ok) detail::mgr::throw_status(r, "dict pop");
    return detail::mgr::from_reply<V>(r);
  }
  V pop(const K& k, const V& fallback) const {
    try {
      return pop(k);
    } catch (const KeyError&) {
      return fallback;
    }
  }
  /// Python's d.setdefault(k, v): the value for k, inserting v first if missing.
  V setdefault(const K& k, const V& v = V{}) const {
    Writer w;
    detail::mgr::put(w, k);
    detail::mgr::put(w, v);
    return detail::mgr::from_reply<V>(this->call_ok(Op::d_setdefault, w, "dict setdefault"));
  }
  /// Python's d.update(items): one atomic batch.
  void update(const std::vector<std::pair<K, V>>& items) const {
    Writer w;
    detail::mgr::put_pairs(w, items);
    this->call_ok(Op::d_update, w, "dict update");
  }
  /// Python 3.9's `d |= other`: other's items set in d (in other's order; an existing
  /// key keeps its place), one atomic request. Returns *this, as Python's __ior__.
  const DictProxy& operator|=(const std::vector<std::pair<K, V>>& items) const {
    update(items);
    return *this;
  }
  /// `d |= m` with a local map (std::map<K, V>, std::unordered_map<K, V> …).
  template <class Map>
    requires requires(const Map& m) {
      typename Map::key_type;
      typename Map::mapped_type;
      m.begin();
    } && (!std::is_same_v<Map, DictProxy>)
  const DictProxy& operator|=(const Map& m) const {
    Writer w;
    detail::mgr::put_pairs(w, m);
    this->call_ok(Op::d_update, w, "dict |=");
    return *this;
  }
  /// `d |= other` with another manager dict: merged on the server in one request
  /// (other read and d written atomically; `d |= d` changes nothing) when both live
  /// on the same server; otherwise other.items(), then update() (each atomic).
  const DictProxy& operator|=(const DictProxy& other) const {
    if (other.core().token().server != this->core().token().server) return *this |= other.items();
    Writer w;
    dump(w, other.id());
    this->call_ok(Op::d_ior, w, "dict |=");
    return *this;
  }
  /// Snapshots, in insertion order.
  std::vector<K> keys() const { return decode_list<K>(this->call_ok(Op::d_keys, "dict keys")); }
  std::vector<V> values() const { return decode_list<V>(this->call_ok(Op::d_values, "dict values")); }
  std::vector<std::pair<K, V>> items() const {
    auto r = this->call_ok(Op::d_items, "dict items");
    Reader rd = r.reader();
    std::size_t n = detail::read_size(rd, 2);
    std::vector<std::pair<K, V>> out;
    out.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      K k = load_item<K>(rd);
      V v = load_item<V>(rd);
      out.emplace_back(std::move(k), std::move(v));
    }
    return out;
  }
  std::size_t size() const { return detail::mgr::from_reply<std::uint64_t>(this->call_ok(Op::len, "dict len")); }
  bool empty() const { return size() == 0; }
  void clear() const { this->call_ok(Op::clear, "dict clear"); }
  /// Python's d.popitem(): the last inserted item, removed; KeyError when empty.
  std::pair<K, V> popitem() const {
    auto r = this->call(Op::d_popitem, Writer{});
    if (r.status == Status::not_found) throw KeyError("mproc: manager dict popitem(): the dict is empty");
    if (r.status != Status::ok) detail::mgr::throw_status(r, "dict popitem");
    Reader rd = r.reader();
    K k = load_item<K>(rd);
    V v = load_item<V>(rd);
    return {std::move(k), std::move(v)};
  }
  /// Python's d.copy() (a plain dict, not a proxy): a snapshot as a local map,
  /// std::map<K, V> unless another is asked for (std::unordered_map<K, V>…).
  template <class Map = std::map<K, V>>
  Map copy() const {
    Map out;
    for (auto& [k, v] : items()) out.insert_or_assign(std::move(k), std::move(v));
    return out;
  }

  /// Atomic read-modify-write on the server: f(value&, args...) with the value for
  /// k (V{} inserted first if missing); returns the new value. f follows the task
  /// rule (task.hpp): function pointer, captureless lambda, functor, mproc::bind.
  /// An exception from f comes back as RemoteError and leaves the value unchanged.
  template <class F, class... Args>
  V apply(const K& k, F&& f, Args&&... args) const {
    Writer w;
    detail::mgr::put(w, k);
    detail::mgr::encode_apply<V>(w, std::forward<F>(f), std::forward<Args>(args)...);
    return detail::mgr::from_reply<V>(this->call_ok(detail::mgr::Op::apply, w, "dict apply"));
  }

 private:
  template <class T>
  static T load_item(Reader& rd) {
    std::string b = load<std::string>(rd);
    Reader ir(std::as_bytes(std::span<const char>(b.data(), b.size())));
    return load<T>(ir);
  }
  template <class T>
  static std::vector<T> decode_list(const detail::mgr::Reply& r) {
    Reader rd = r.reader();
    std::size_t n = detail::read_size(rd, 1);
    std::vector<T> out;
    out.reserve(n);
    for (std::size_t i = 0; i < n; ++i) out.push_back(load_item<T>(rd));
    return out;
  }
};

namespace detail::mgr {

template <class T>
void put_all(Writer& w, const std::vector<T>& vs) {
  write_size(w, vs.size());
  for (auto& v : vs) put(w, v);
}

/// What ListProxy and ArrayProxy share: indexed reads and writes, snapshots.
template <Kind K, class T>
class SeqProxy : public ProxyBase<K, types_hash<T>()> {
  using Base = ProxyBase<K, types_hash<T>()>;

 public:
  using value_type = T;
  using Base::Base;

  /// s[i]; IndexError when out of range (negative i counts from the end).
  T operator[](std::int64_t i) const { return at(i); }
  T at(std::int64_t i) const { return indexed(Op::l_get, i, "index"); }
  void set(std::int64_t i, const T& v) const {
    Writer w;
    dump(w, i);
    put(w, v);
    auto r = this->call(Op::l_set, w);
    if (r.status == Status::not_found) throw IndexError("mproc: manager assignment index out of range");
    if (r.status != Status::ok) throw_status(r, "set");
  }
  /// A snapshot of every item (Python's s[:]).
  std::vector<T> snapshot() const { return load_items(this->call_ok(Op::l_all, "snapshot")); }
  std::size_t size() const { return from_reply<std::uint64_t>(this->call_ok(Op::len, "len")); }
  bool empty() const { return size() == 0; }
  /// Python's s[start:stop] (step 1): negative indexes count from the end, both are
  /// clamped to the size, as in Python (never IndexError). slice(start): s[start:].
  std::vector<T> slice(std::int64_t start, std::int64_t stop = std::numeric_limits<std::int64_t>::max()) const {
    Writer w;
    dump(w, start);
    dump(w, stop);
    return load_items(this->call_ok(Op::l_slice, w, "slice"));
  }
  /// Python's s[start:stop:step] (an extended slice): start, start + step, … up to
  /// stop, excluded; a negative step walks backwards. Empty bounds are Python's None
  /// (std::nullopt): s[::-1] is slice(std::nullopt, std::nullopt, -1), s[::2] is
  /// slice(std::nullopt, std::nullopt, 2). Bounds clamp as Python's slice.indices();
  /// a step of 0 is a UsageError (Python's ValueError).
  std::vector<T> slice(std::optional<std::int64_t> start, std::optional<std::int64_t> stop, std::int64_t step) const {
    Writer w;
    put_slice(w, start, stop, step);
    return load_items(this->call_ok(Op::l_slice_step, w, "slice"));
  }
  /// Python's s[start:stop] = values, atomically. A list grows or shrinks; an
  /// Array takes exactly as many values as the slice holds (UsageError otherwise).
  void set_slice(std::int64_t start, std::int64_t stop, const std::vector<T>& values) const {
    Writer w;
    dump(w, start);
    dump(w, stop);
    put_all(w, values);
    this->call_ok(Op::l_set_slice, w, "slice assignment");
  }
  /// Python's s[start:stop:step] = values, atomically (bounds as slice(start, stop,
  /// step)). A step other than 1 replaces the selected items one for one: values must
  /// hold as many, else UsageError naming both sizes (Python's ValueError); a step
  /// of 1 is set_slice(start, stop, values).
  void set_slice(std::optional<std::int64_t> start, std::optional<std::int64_t> stop, std::int64_t step,
                 const std::vector<T>& values) const {
    Writer w;
    put_slice(w, start, stop, step);
    put_all(w, values);
    this->call_ok(Op::l_set_slice_step, w, "extended slice assignment");
  }
  /// Atomic read-modify-write of item i on the server: f(item&, args...) (the
  /// task rule, as DictProxy::apply); returns the new item. IndexError when out of
  /// range; an exception from f comes back as RemoteError, the item unchanged.
  template <class F, class... Args>
  T apply(std::int64_t i, F&& f, Args&&... args) const {
    Writer w;
    dump(w, i);
    encode_apply<T>(w, std::forward<F>(f), std::forward<Args>(args)...);
    auto r = this->call(Op::l_apply, w);
    if (r.status == Status::not_found) throw IndexError("mproc: manager apply(): index out of range");
    if (r.status != Status::ok) throw_status(r, "apply");
    return from_reply<T>(r);
  }
  /// Sorts on the server with T's operator< (needs the same program as the server).
  void sort(bool reverse = false) const {
    Writer w;
    encode_entry<&sort_entry<T>>(w);
    dump(w, reverse);
    this->call_ok(Op::apply, w, "sort");
  }
  /// Python's s.sort(key=key, reverse=reverse): sorted on the server by key(item),
  /// computed once per item, stably (reverse too: equal keys keep their order). key
  /// follows the task rule (function pointer, captureless lambda, functor, mproc::bind)
  /// and runs in the server's program; it returns anything with operator<. An
  /// exception from key comes back as RemoteError and leaves the list as it was.
  template <class F>
    requires(!std::is_arithmetic_v<std::remove_cvref_t<F>>)
  void sort(F&& key, bool reverse = false) const {
    Writer w;
    encode_sort_key<T>(w, std::forward<F>(key), reverse);
    this->call_ok(Op::apply, w, "sort(key)");
  }

 protected:
  /// start, stop, step as the server's extended-slice requests take them: None bounds
  /// as the values Python's slice.indices() clamps to the same ends.
  static void put_slice(Writer& w, std::optional<std::int64_t> start, std::optional<std::int64_t> stop,
                        std::int64_t step) {
    constexpr auto lo = std::numeric_limits<std::int64_t>::min(), hi = std::numeric_limits<std::int64_t>::max();
    dump(w, start.value_or(step < 0 ? hi : 0));
    dump(w, stop.value_or(step < 0 ? lo : hi));
    dump(w, step);
  }
  static T load_item(Reader& rd) {
    std::string b = load<std::string>(rd);
    Reader ir(std::as_bytes(std::span<const char>(b.data(), b.size())));
    return load<T>(ir);
  }
  static std::vector<T> load_items(const Reply& r) {
    Reader rd = r.reader();
    std::size_t n = read_size(rd, 1);
    std::vector<T> out;
    out.reserve(n);
    for (std::size_t i = 0; i < n; ++i) out.push_back(load_item(rd));
    return out;
  }
  T indexed(Op op, std::int64_t i, const char* what) const {
    Writer w;
    dump(w, i);
    auto r = this->call(op, w);
    if (r.status == Status::not_found) throw IndexError(std::string("mproc: manager list ") + what + " out of range");
    if (r.status != Status::ok) throw_status(r, what);
    return from_reply<T>(r);
  }
};

}  // namespace detail::mgr

/// A list on the server (Python's ListProxy). Indexes may be negative (from the
/// end), as in Python; out of range is IndexError. Each member is one atomic round
/// trip; ManagerError when the server is gone.
template <class T>
class ListProxy : public detail::mgr::SeqProxy<detail::mgr::Kind::list, T> {
  using Base = detail::mgr::SeqProxy<detail::mgr::Kind::list, T>;
  using Op = detail::mgr::Op;
  using Status = detail::mgr::Status;

 public:
  using Base::Base;

  void append(const T& v) const {
    Writer w;
    detail::mgr::put(w, v);
    this->call_ok(Op::l_append, w, "list append");
  }
  void extend(const std::vector<T>& vs) const {
    Writer w;
    detail::mgr::put_all(w, vs);
    this->call_ok(Op::l_extend, w, "list extend");
  }
  /// Python's l.insert(i, v) (i clamped to [0, len]).
  void insert(std::int64_t i, const T& v) const {
    Writer w;
    dump(w, i);
    detail::mgr::put(w, v);
    this->call_ok(Op::l_insert, w, "list insert");
  }
  /// Python's l.pop(i = -1).
  T pop(std::int64_t i = -1) const { return this->indexed(Op::l_pop, i, "pop"); }
  /// Position of the first item equal (same encoding) to v; KeyError (Python's
  /// ValueError) if absent.
  std::size_t index(const T& v) const {
    auto r = by_value(Op::l_index, v, "index");
    return detail::mgr::from_reply<std::uint64_t>(r);
  }
  std::size_t count(const T& v) const {
    Writer w;
    detail::mgr::put(w, v);
    return detail::mgr::from_reply<std::uint64_t>(this->call_ok(Op::l_count, w, "list count"));
  }
  /// Removes the first item equal to v; KeyError if absent.
  void remove(const T& v) const { by_value(Op::l_remove, v, "remove"); }
  void reverse() const { this->call_ok(Op::l_reverse, "list reverse"); }
  void clear() const { this->call_ok(Op::clear, "list clear"); }
  /// Python's `l += values` (extend).
  const ListProxy& operator+=(const std::vector<T>& vs) const {
    extend(vs);
    return *this;
  }
  /// Python's `del l[i]`; IndexError when out of range.
  void erase(std::int64_t i) const { (void)pop(i); }
  /// Python's `del l[start:stop]` (clamped as slice()).
  void erase(std::int64_t start, std::int64_t stop) const {
    Writer w;
    dump(w, start);
    dump(w, stop);
    this->call_ok(Op::l_del_slice, w, "list slice deletion");
  }
  /// Python's `del l[start:stop:step]` (bounds as slice(start, stop, step); std::nullopt
  /// is None): `del l[::2]` is erase(std::nullopt, std::nullopt, 2). Atomic.
  void erase(std::optional<std::int64_t> start, std::optional<std::int64_t> stop, std::int64_t step) const {
    Writer w;
    this->put_slice(w, start, stop, step);
    this->call_ok(Op::l_del_slice_step, w, "list extended slice deletion");
  }
  /// Python's `l *= n`: the items repeated n times in place, atomically; n <= 0
  /// empties the list. The result must fit in 64 MiB on the server, as a snapshot
  /// of it must (UsageError otherwise, the list unchanged).
  const ListProxy& operator*=(std::int64_t n) const {
    Writer w;
    dump(w, n);
    this->call_ok(Op::l_repeat, w, "list *=");
    return *this;
  }

 private:
  detail::mgr::Reply by_value(Op op, const T& v, const char* what) const {
    Writer w;
    detail::mgr::put(w, v);
    auto r = this->call(op, w);
    if (r.status == Status::not_found) {
      throw KeyError(std::string("mproc: manager list ") + what + "(): value is not in the list");
    }
    if (r.status != Status::ok) detail::mgr::throw_status(r, what);
    return r;
  }
};

/// A fixed-size array on the server (Python's Manager().Array()): a[i], set(i, v),
/// size(), snapshot(), sort().
template <class T>
class ArrayProxy : public detail::mgr::SeqProxy<detail::mgr::Kind::array, T> {
  using Base = detail::mgr::SeqProxy<detail::mgr::Kind::array, T>;

 public:
  using Base::Base;
};

/// One value on the server (Python's Manager().Value): get/set, and apply() for
/// an atomic update.
template <class T>
class ValueProxy : public detail::mgr::ProxyBase<detail::mgr::Kind::value, detail::mgr::types_hash<T>()> {
  using Base = detail::mgr::ProxyBase<detail::mgr::Kind::value, detail::mgr::types_hash<T>()>;

 public:
  using value_type = T;
  using Base::Base;

  T get() const { return detail::mgr::from_reply<T>(this->call_ok(detail::mgr::Op::v_get, "Value get")); }
  void set(const T& v) const {
    Writer w;
    detail::mgr::put(w, v);
    this->call_ok(detail::mgr::Op::v_set, w, "Value set");
  }
  /// Python's v.value (read) / v.value = x (write through set()).
  T value() const { return get(); }
  /// f(value&, args...) on the server, atomically; returns the new value.
  template <class F, class... Args>
  T apply(F&& f, Args&&... args) const {
    Writer w;
    detail::mgr::encode_apply<T>(w, std::forward<F>(f), std::forward<Args>(args)...);
    return detail::mgr::from_reply<T>(this->call_ok(detail::mgr::Op::apply, w, "Value apply"));
  }
};

/// Named fields of any serializable type (Python's Namespace): ns.set("x", 1),
/// ns.get<int>("x"). A field read as another type than it was written is a UsageError.
class NamespaceProxy : public detail::mgr::ProxyBase<detail::mgr::Kind::ns, 0> {
  using Base = detail::mgr::ProxyBase<detail::mgr::Kind::ns, 0>;

 public:
  using Base::Base;
  template <class T>
  void set(const std::string& name, const T& v) const {
    Writer w;
    dump(w, name);
    dump(w, detail::type_hash<T>());
    std::string b;
    detail::mgr::to_string_bytes(v, b);
    dump(w, b);
    call_ok(detail::mgr::Op::ns_set, w, "Namespace set");
  }
  /// The field's value; KeyError (Python: AttributeError) if there is none.
  template <class T>
  T get(const std::string& name) const {
    Writer w;
    dump(w, name);
    dump(w, detail::type_hash<T>());
    auto r = call(detail::mgr::Op::ns_get, w);
    if (r.status == detail::mgr::Status::not_found) throw KeyError("mproc: Namespace has no field '" + name + "'");
    if (r.status != detail::mgr::Status::ok) detail::mgr::throw_status(r, "Namespace get");
    return detail::mgr::from_reply<T>(r);
  }
  bool erase(const std::string& name) const;
  std::vector<std::string> names() const;
};

/// A lock on the server (Python's Manager().Lock() / RLock()). Held by the client
/// process and thread that acquired it; released for it when that process dies (the
/// next acquirer is told: OwnerDiedError, or lock_checked()'s owner_died).
class LockProxy : public detail::mgr::ProxyBase<detail::mgr::Kind::lock, 0> {
  using Base = detail::mgr::ProxyBase<detail::mgr::Kind::lock, 0>;

 public:
  using Base::Base;
  /// Blocks until acquired (true), or with block=false tries once. Throws
  /// OwnerDiedError (lock released again) when its previous holder's process died
  /// holding it; ManagerError when the server goes away meanwhile.
  bool acquire(bool block = true) const;
  /// Waits at most `timeout`; false when it ran out.
  template <class Rep, class Period>
  bool acquire(bool block, std::chrono::duration<Rep, Period> timeout) const {
    return acquire_ns(block ? detail::mgr::timeout_ns(timeout, "acquire") : 0);
  }
  template <class Rep, class Period>
  bool acquire_for(std::chrono::duration<Rep, Period> timeout) const {
    return acquire(true, timeout);
  }
  bool try_acquire() const { return acquire(false); }
  /// Acquires and reports a dead previous holder instead of throwing (lock held in
  /// both cases). Blocks.
  LockStatus lock_checked() const;
  /// Throws UsageError if the lock is not held (RLock: not by this thread).
  void release() const;
  /// Whether anyone holds it now.
  bool locked() const;

  void lock() const { acquire(); }
  void unlock() const { release(); }
  bool try_lock() const { return try_acquire(); }

 protected:
  bool acquire_ns(std::int64_t timeout) const;
  LockStatus acquire_status(std::int64_t timeout) const;
};

/// Recursive lock on the server: the holding thread may acquire it again.
class RLockProxy : public LockProxy {
 public:
  static constexpr detail::mgr::Kind kind = detail::mgr::Kind::rlock;
  using LockProxy::LockProxy;
};

/// A counting semaphore on the server (Python's Manager().Semaphore() and
/// BoundedSemaphore()); units held by a process that dies are given back.
class SemaphoreProxy : public LockProxy {
 public:
  static constexpr detail::mgr::Kind kind = detail::mgr::Kind::semaphore;
  using LockProxy::LockProxy;
  /// release(n) gives back n units; a BoundedSemaphore refuses to go above its
  /// initial value (UsageError, Python's ValueError).
  void release(std::uint32_t n = 1) const;
  /// The number of units available now.
  std::uint32_t get_value() const;
};

/// An event on the server (Python's Manager().Event()).
class EventProxy : public detail::mgr::ProxyBase<detail::mgr::Kind::event, 0> {
  using Base = detail::mgr::ProxyBase<detail::mgr::Kind::event, 0>;

 public:
  using Base::Base;
  void set() const;
  void clear() const;
  bool is_set() const;
  /// Blocks until set; ManagerError if the server goes away meanwhile.
  void wait() const { wait_ns(detail::mgr::forever); }
  /// Waits at most `timeout`; returns whether the event is set.
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) const {
    return wait_ns(detail::mgr::timeout_ns(timeout, "Event.wait"));
  }

 private:
  bool wait_ns(std::int64_t timeout) const;
};

/// A FIFO queue on the server (Python's Manager().Queue()). maxsize 0: unbounded.
template <class T>
class QueueProxy : public detail::mgr::ProxyBase<detail::mgr::Kind::queue, detail::mgr::types_hash<T>()> {
  using Base = detail::mgr::ProxyBase<detail::mgr::Kind::queue, detail::mgr::types_hash<T>()>;
  using Op = detail::mgr::Op;
  using Status = detail::mgr::Status;

 public:
  using value_type = T;
  using Base::Base;

  /// Blocks while the queue is full (bounded queues).
  void put(const T& v) const { put_ns(v, detail::mgr::forever); }
  /// Throws Full when there is still no room after `timeout`.
  template <class Rep, class Period>
  void put(const T& v, std::chrono::duration<Rep, Period> timeout) const {
    put_ns(v, detail::mgr::timeout_ns(timeout, "Queue.put"));
  }
  void put_nowait(const T& v) const { put_ns(v, 0); }
  /// Blocks until an item comes; ManagerError if the server goes away meanwhile.
  T get() const { return get_ns(detail::mgr::forever); }
  /// Throws Empty when nothing came within `timeout`.
  template <class Rep, class Period>
  T get(std::chrono::duration<Rep, Period> timeout) const {
    return get_ns(detail::mgr::timeout_ns(timeout, "Queue.get"));
  }
  T get_nowait() const { return get_ns(0); }
  std::size_t qsize() const { return detail::mgr::from_reply<std::uint64_t>(this->call_ok(Op::q_size, "Queue qsize")); }
  bool empty() const { return qsize() == 0; }

 private:
  void put_ns(const T& v, std::int64_t timeout) const {
    Writer w;
    detail::mgr::put(w, v);
    auto r = this->call(Op::q_put, w, timeout);
    if (r.status == Status::full) throw Full("mproc: manager Queue.put(): the queue is full");
    if (r.status != Status::ok) detail::mgr::throw_status(r, "Queue put");
  }
  T get_ns(std::int64_t timeout) const {
    auto r = this->call(Op::q_get, Writer{}, timeout);
    if (r.status == Status::empty) throw Empty("mproc: manager Queue.get(): the queue is empty");
    if (r.status != Status::ok) detail::mgr::throw_status(r, "Queue get");
    return detail::mgr::from_reply<T>(r);
  }
};

/// Python's Manager().JoinableQueue(): a Queue whose consumers call task_done()
/// per item and whose producers can join() until every item was done.
template <class T>
class JoinableQueueProxy : public QueueProxy<T> {
 public:
  static constexpr detail::mgr::Kind kind = detail::mgr::Kind::joinable_queue;
  using QueueProxy<T>::QueueProxy;
  /// One item taken by get() is done. UsageError when called more often than items were put.
  void task_done() const { this->call_ok(detail::mgr::Op::q_task_done, "JoinableQueue task_done"); }
  /// Blocks until every item put was task_done(); ManagerError if the server goes away.
  void join() const { join_ns(detail::mgr::forever); }
  /// Waits at most `timeout`; returns whether every item was done.
  template <class Rep, class Period>
  bool join(std::chrono::duration<Rep, Period> timeout) const {
    return join_ns(detail::mgr::timeout_ns(timeout, "JoinableQueue.join"));
  }

 private:
  bool join_ns(std::int64_t timeout) const {
    auto r = this->call(detail::mgr::Op::q_join, Writer{}, timeout);
    if (r.status == detail::mgr::Status::timeout) return false;
    if (r.status != detail::mgr::Status::ok) detail::mgr::throw_status(r, "JoinableQueue join");
    return true;
  }
};

/// A condition variable on the server (Python's Manager().Condition([lock])),
/// over a manager Lock or RLock (its own RLock by default). wait() releases the
/// lock, waits for notify(), and takes the lock back before returning.
class ConditionProxy : public detail::mgr::ProxyBase<detail::mgr::Kind::condition, 0> {
  using Base = detail::mgr::ProxyBase<detail::mgr::Kind::condition, 0>;

 public:
  ConditionProxy() = default;
  ConditionProxy(detail::mgr::CorePtr cond, detail::mgr::CorePtr lock) noexcept
      : Base(std::move(cond)), lock_(std::move(lock)) {}

  bool acquire(bool block = true) const { return lk().acquire(block); }
  template <class Rep, class Period>
  bool acquire(bool block, std::chrono::duration<Rep, Period> timeout) const {
    return lk().acquire(block, timeout);
  }
  void release() const { lk().release(); }
  // std Lockable, for std::unique_lock.
  void lock() const { acquire(); }
  void unlock() const { release(); }
  /// Blocks until notified (lock held again on return). UsageError without the lock.
  void wait() const { wait_ns(detail::mgr::forever); }
  /// Returns false when `timeout` ran out first (lock held again in both cases).
  template <class Rep, class Period>
  bool wait(std::chrono::duration<Rep, Period> timeout) const {
    return wait_ns(detail::mgr::timeout_ns(timeout, "Condition.wait"));
  }
  /// Python's wait_for(predicate): waits until pred() holds; returns it.
  template <class Pred>
  bool wait_for(Pred pred) const {
    while (!pred()) wait();
    return true;
  }
  template <class Pred, class Rep, class Period>
  bool wait_for(Pred pred, std::chrono::duration<Rep, Period> timeout) const {
    auto end = std::chrono::steady_clock::now() + timeout;
    while (!pred()) {
      auto left = end - std::chrono::steady_clock::now();
      if (left <= left.zero() || !wait(left)) return pred();
    }
    return true;
  }
  /// Wakes up to n waiters (UsageError without the lock).
  void notify(std::uint64_t n = 1) const;
  void notify_all() const { notify(~std::uint64_t{0}); }
  const detail::mgr::CorePtr& lock_core() const noexcept { return lock_; }

 private:
  LockProxy lk() const { return LockProxy(lock_); }
  bool wait_ns(std::int64_t timeout) const;
  detail::mgr::CorePtr lock_;
};

/// A barrier on the server (Python's Manager().Barrier(parties)). A wait that
/// times out, an abort(), a reset() while parties wait, or the death of a waiting
/// party's process breaks it: BrokenBarrierError for every waiter.
class BarrierProxy : public detail::mgr::ProxyBase<detail::mgr::Kind::barrier, 0> {
  using Base = detail::mgr::ProxyBase<detail::mgr::Kind::barrier, 0>;

 public:
  using Base::Base;
  /// Blocks until `parties` have called wait(); returns this party's arrival
  /// index (0 … parties-1). BrokenBarrierError when broken.
  std::uint32_t wait() const { return wait_ns(detail::mgr::forever); }
  template <class Rep, class Period>
  std::uint32_t wait(std::chrono::duration<Rep, Period> timeout) const {
    return wait_ns(detail::mgr::timeout_ns(timeout, "Barrier.wait"));
  }
  void abort() const;
  void reset() const;
  std::uint32_t parties() const;
  std::uint32_t n_waiting() const;
  bool broken() const;

 private:
  std::uint32_t wait_ns(std::int64_t timeout) const;
};

// ---- user types (Python's BaseManager.register) ---------------------------------

/// The methods of T that manager proxies may call, and the type's name (Python's
/// register(typeid, callable, exposed=...)). Made by register_type; declare it
/// once per type, at namespace scope, with
///   template <> constexpr auto mproc::exposed<Counter> =
///       mproc::register_type<Counter>("Counter", &Counter::add, &Counter::get);
template <class T, class... M>
struct Registration {
  const char* name;
  std::tuple<M...> methods;
};
template <class T, class... M>
consteval Registration<T, M...> register_type(const char* name, M... methods) {
  static_assert((std::is_member_function_pointer_v<M> && ...),
                "mproc::register_type<T>(name, &T::method...): list member functions of T");
  return Registration<T, M...>{name, std::tuple<M...>(methods...)};
}
/// Not exposed unless specialized (see register_type).
template <class T>
constexpr int exposed = 0;

template <class T>
class ObjectProxy;

namespace detail::mgr {

template <class T>
consteval bool is_registered() {
  return !std::is_same_v<std::remove_cv_t<decltype(exposed<T>)>, int>;
}
template <class T, auto M>
consteval bool is_exposed() {
  if constexpr (!is_registered<T>()) {
    return false;
  } else {
    return std::apply(
        [](auto... ms) {
          auto same = [](auto a) {
            if constexpr (std::is_same_v<decltype(a), decltype(M)>) return a == M;
            else return false;
          };
          return (same(ms) || ...);
        },
        exposed<T>.methods);
  }
}

template <class M>
struct method_traits;
#define MPROC_MGR_METHOD(QUAL)                     \
  template <class C, class R, class... P>          \
  struct method_traits<R (C::*)(P...) QUAL> {      \
    using object = C;                              \
    using result = R;                              \
    using params = std::tuple<std::decay_t<P>...>; \
  };                                               \
  template <class C, class R, class... P>          \
  struct method_traits<R (C::*)(P...) QUAL noexcept> : method_traits<R (C::*)(P...) QUAL> {};
MPROC_MGR_METHOD()
MPROC_MGR_METHOD(const)
#undef MPROC_MGR_METHOD

template <class R>
struct owned_object {
  static constexpr bool value = false;
};
template <class U>
struct owned_object<std::unique_ptr<U>> {
  static constexpr bool value = true;
  using type = U;
};

/// What the server hands a user-type trampoline.
struct UserCtx {
  void* obj = nullptr;                    // create: out; call: the object
  void (*destroy)(void*) noexcept = nullptr;  // create, or a call returning unique_ptr<U>: out
  std::uint64_t type = 0;                 // a call returning unique_ptr<U>: U's type hash (out)
  void* made = nullptr;                   // a call returning unique_ptr<U>: the new object (out)
  std::string* result = nullptr;          // call: the encoded return value (out)
};

template <class T>
void destroy_object(void* p) noexcept {
  delete static_cast<T*>(p);
}

/// Runs on the server for m.create<T>(args...): a T built from the arguments.
template <class T, class Stored>
std::uint64_t make_entry(Reader* in, void* ctx) {
  constexpr std::uint64_t id = fnv1a(pretty_name<std::tuple<T, Stored, std::true_type>>());
  if (!in) return id;
  Stored args = load<Stored>(*in);
  auto& c = *static_cast<UserCtx*>(ctx);
  c.obj = std::apply([](auto&... a) { return new T(std::move(a)...); }, args);
  c.destroy = &destroy_object<T>;
  return id;
}

/// Runs on the server for proxy.call<M>(args...): (obj->*M)(args...), the result encoded.
template <auto M>
std::uint64_t call_entry(Reader* in, void* ctx) {
  using Tr = method_traits<decltype(M)>;
  constexpr std::uint64_t id = fnv1a(pretty_name<std::tuple<typename Tr::object, decltype(M), typename Tr::params>>());
  if (!in) return id;
  auto args = load<typename Tr::params>(*in);
  auto& c = *static_cast<UserCtx*>(ctx);
  auto* obj = static_cast<typename Tr::object*>(c.obj);
  using R = typename Tr::result;
  if constexpr (std::is_void_v<R>) {
    std::apply([&](auto&... a) { (obj->*M)(std::move(a)...); }, args);
  } else if constexpr (owned_object<R>::value) {
    using U = typename owned_object<R>::type;
    R made = std::apply([&](auto&... a) { return (obj->*M)(std::move(a)...); }, args);
    if (!made) throw UsageError("mproc: a manager method returned an empty unique_ptr");
    c.made = made.release();
    c.destroy = &destroy_object<U>;
    c.type = type_hash<U>();
  } else {
    R r = std::apply([&](auto&... a) -> R { return (obj->*M)(std::move(a)...); }, args);
    to_string_bytes(r, *c.result);
  }
  return id;
}

}  // namespace detail::mgr

/// A proxy to an object of a registered user type T living on the server
/// (Python's AutoProxy / BaseProxy subclasses). call<&T::method>(args...) runs
/// the method there, atomically with every other request; the method must be
/// among those register_type listed, and the arguments must convert to its
/// parameters (both checked at compile time). A method that returns
/// std::unique_ptr<U> (U registered too) leaves the new U on the server and
/// returns an ObjectProxy<U> (Python's method_to_typeid). Needs the server's
/// program (the methods are its code); an exception from a method comes back as
/// RemoteError.
template <class T>
class ObjectProxy : public detail::mgr::ProxyBase<detail::mgr::Kind::user, detail::type_hash<T>()> {
  using Base = detail::mgr::ProxyBase<detail::mgr::Kind::user, detail::type_hash<T>()>;

 public:
  using object_type = T;
  using Base::Base;

  template <auto M, class... Args>
  auto call(Args&&... args) const {
    // One clear message per mistake: each check stops the instantiation (if-constexpr chain).
    if constexpr (!detail::mgr::is_registered<T>()) {
      static_assert(detail::mgr::is_registered<T>(),
                    "mproc: this type is not registered for manager proxies: declare `template <> constexpr auto "
                    "mproc::exposed<T> = mproc::register_type<T>(\"T\", &T::method, ...);`");
    } else if constexpr (!std::is_member_function_pointer_v<decltype(M)>) {
      static_assert(std::is_member_function_pointer_v<decltype(M)>, "mproc: call<&T::method>: name a member function");
    } else if constexpr (!std::is_same_v<typename detail::mgr::method_traits<decltype(M)>::object, T>) {
      static_assert(detail::dependent_false<decltype(M)>,
                    "mproc: call<&T::method>: a member function of this proxy's type");
    } else if constexpr (!detail::mgr::is_exposed<T, M>()) {
      static_assert(detail::mgr::is_exposed<T, M>(),
                    "mproc: this method is not among those register_type<T>(...) exposes; add it there");
    } else if constexpr (!std::is_constructible_v<typename detail::mgr::method_traits<decltype(M)>::params, Args&&...>) {
      static_assert(detail::dependent_false<decltype(M)>,
                    "mproc: these arguments do not convert to the method's parameters");
    } else {
      return invoke<M>(std::forward<Args>(args)...);
    }
  }

 private:
  template <auto M, class... Args>
  auto invoke(Args&&... args) const {
    using Tr = detail::mgr::method_traits<decltype(M)>;
    using Params = typename Tr::params;
    using R = typename Tr::result;
    Writer w;
    detail::encode_entry<&detail::mgr::call_entry<M>>(w);
    dump(w, Params(std::forward<Args>(args)...));
    auto r = this->call_ok(detail::mgr::Op::u_call, w, "method call");
    if constexpr (std::is_void_v<R>) {
      return;
    } else if constexpr (detail::mgr::owned_object<R>::value) {
      using U = typename detail::mgr::owned_object<R>::type;
      static_assert(detail::mgr::is_registered<U>(),
                    "mproc: a method returning std::unique_ptr<U> to a proxy needs U registered too");
      return ObjectProxy<U>(detail::mgr::adopt_result(this->core(), detail::mgr::from_reply<std::uint64_t>(r),
                                                      detail::type_hash<U>()));
    } else {
      return detail::mgr::from_reply<std::decay_t<R>>(r);
    }
  }
};

template <class K, class V>
struct codec<DictProxy<K, V>> : detail::mgr::proxy_codec<DictProxy<K, V>> {};
template <class T>
struct codec<ListProxy<T>> : detail::mgr::proxy_codec<ListProxy<T>> {};
template <class T>
struct codec<ValueProxy<T>> : detail::mgr::proxy_codec<ValueProxy<T>> {};
template <class T>
struct codec<QueueProxy<T>> : detail::mgr::proxy_codec<QueueProxy<T>> {};
template <>
struct codec<NamespaceProxy> : detail::mgr::proxy_codec<NamespaceProxy> {};
template <>
struct codec<LockProxy> : detail::mgr::proxy_codec<LockProxy> {};
template <>
struct codec<RLockProxy> : detail::mgr::proxy_codec<RLockProxy> {};
template <>
struct codec<SemaphoreProxy> : detail::mgr::proxy_codec<SemaphoreProxy> {};
template <>
struct codec<EventProxy> : detail::mgr::proxy_codec<EventProxy> {};
template <class T>
struct codec<ArrayProxy<T>> : detail::mgr::proxy_codec<ArrayProxy<T>> {};
template <class T>
struct codec<JoinableQueueProxy<T>> : detail::mgr::proxy_codec<JoinableQueueProxy<T>> {};
template <>
struct codec<BarrierProxy> : detail::mgr::proxy_codec<BarrierProxy> {};
template <class T>
struct codec<ObjectProxy<T>> : detail::mgr::proxy_codec<ObjectProxy<T>> {};
template <>
struct codec<ConditionProxy> {
  static void encode(Writer& w, const ConditionProxy& c);
  static ConditionProxy decode(Reader& r);
};

/// Python's SyncManager. Constructing one starts its server process (under
/// options.start_method); the destructor shuts it down (Python's `with Manager() as m:`).
/// The server also dies with this process, even on kill -9. Object factories are
/// safe from several threads. Throws ManagerError / std::system_error when the
/// server cannot be started or reached.
class Manager {
 public:
  explicit Manager(ManagerOptions options = {});
  /// A manager connected to a server started elsewhere (Python's
  /// BaseManager(address, authkey).connect()). It does not own the server:
  /// its destructor and shutdown() only disconnect.
  /// `timeout` bounds connecting and authenticating; `call_timeout` is
  /// ManagerOptions::call_timeout for this manager's proxies.
  static Manager connect(Address address, std::string authkey,
                         std::chrono::milliseconds timeout = std::chrono::seconds(10),
                         std::chrono::milliseconds call_timeout = detail::mgr::default_call_timeout);

  Manager(Manager&&) noexcept;
  Manager& operator=(Manager&&) noexcept;
  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;
  ~Manager();

  /// Stops the server (if this manager started it) and waits for it to exit;
  /// proxies fail with ManagerError afterwards. Idempotent.
  void shutdown();
  /// Whether the server this manager started is still running (a connected
  /// manager: whether it is still connected).
  bool running() const;
  /// Where the server listens (give it to connect() elsewhere with the authkey).
  const Address& address() const;
  const std::string& authkey() const;
  /// The server process's pid (0 for a connected manager).
  pid_t pid() const;

  /// Publishes `proxy`'s object under `name` (Python's register(name,
  /// callable=lambda: obj)): any client, of any program built with the same
  /// toolchain, gets it with lookup<P>(name). The object lives until shutdown.
  template <class P>
  void publish(const std::string& name, const P& proxy) const {
    publish_core(name, proxy.core_ptr());
  }
  /// The object published as `name`, as a proxy of type P (Python's m.get_queue()).
  /// Throws ManagerError if nothing is published under that name, or it was
  /// published as another kind or element type.
  template <class P>
  [[nodiscard]] P lookup(const std::string& name) const {
    if constexpr (std::is_same_v<P, ConditionProxy>) {
      static_assert(!std::is_same_v<P, ConditionProxy>, "mproc: publish the Condition's lock and use it instead");
    } else {
      return P(lookup_core(name, P::kind, P::type));
    }
  }
  /// Blocks until the server stops (a client's shutdown_server(), or a signal to
  /// this process): Python's get_server().serve_forever(). UsageError on a
  /// connected manager (it has no server to wait for).
  void serve_forever();
  /// Stops the server this manager is connected to, from any client that knows
  /// the authkey (the server's owner then returns from serve_forever()).
  void shutdown_server() const;

  /// Python's m.dict() / m.dict(items): a dict holding `init` (a repeated key once, at
  /// its first place, with its last value).
  template <class K, class V>
  [[nodiscard]] DictProxy<K, V> dict(const std::vector<std::pair<K, V>>& init = {}) const {
    check_types<K, V>();
    Writer w;
    detail::mgr::put_pairs(w, init);
    return DictProxy<K, V>(create(detail::mgr::Kind::dict, DictProxy<K, V>::type, w.bytes()));
  }
  /// Python's m.dict(dict.fromkeys(keys, value)) (dict.fromkeys is a class method that
  /// makes a new dict, so it is a factory here, not a proxy method): a new dict
  /// mapping each of `keys` (a repeated key once, at its first place) to `value`,
  /// created in one request.
  template <class K, class V>
  [[nodiscard]] DictProxy<K, V> dict_fromkeys(const std::vector<K>& keys, const V& value = V{}) const {
    check_types<K, V>();
    std::string vb;
    detail::mgr::to_string_bytes(value, vb);
    Writer w;
    detail::write_size(w, keys.size());
    for (auto& k : keys) {
      detail::mgr::put(w, k);
      dump(w, vb);
    }
    return DictProxy<K, V>(create(detail::mgr::Kind::dict, DictProxy<K, V>::type, w.bytes()));
  }
  template <class T>
  [[nodiscard]] ListProxy<T> list(const std::vector<T>& init = {}) const {
    check_types<T>();
    Writer w;
    detail::mgr::put_all(w, init);
    return ListProxy<T>(create(detail::mgr::Kind::list, ListProxy<T>::type, w.bytes()));
  }
  /// Python's Manager().Array(typecode, sequence): fixed size.
  template <class T>
  [[nodiscard]] ArrayProxy<T> Array(const std::vector<T>& init) const {
    check_types<T>();
    Writer w;
    detail::mgr::put_all(w, init);
    return ArrayProxy<T>(create(detail::mgr::Kind::array, ArrayProxy<T>::type, w.bytes()));
  }
  /// n items of T{}.
  template <class T>
  [[nodiscard]] ArrayProxy<T> Array(std::size_t n) const {
    return Array<T>(std::vector<T>(n));
  }
  template <class T>
  [[nodiscard]] JoinableQueueProxy<T> JoinableQueue(std::size_t maxsize = 0) const {
    check_types<T>();
    Writer w;
    dump(w, static_cast<std::uint64_t>(maxsize));
    return JoinableQueueProxy<T>(create(detail::mgr::Kind::joinable_queue, JoinableQueueProxy<T>::type, w.bytes()));
  }
  template <class T>
  [[nodiscard]] ValueProxy<T> Value(const T& init = T{}) const {
    check_types<T>();
    std::string b;
    detail::mgr::to_string_bytes(init, b);
    Writer w;
    dump(w, b);
    return ValueProxy<T>(create(detail::mgr::Kind::value, ValueProxy<T>::type, w.bytes()));
  }
  template <class T>
  [[nodiscard]] QueueProxy<T> Queue(std::size_t maxsize = 0) const {
    check_types<T>();
    Writer w;
    dump(w, static_cast<std::uint64_t>(maxsize));
    return QueueProxy<T>(create(detail::mgr::Kind::queue, QueueProxy<T>::type, w.bytes()));
  }
  /// A T built on the server from `args` (T registered with register_type):
  /// Python's registered typeid callable.
  template <class T, class... Args>
  [[nodiscard]] ObjectProxy<T> create(Args&&... args) const {
    using Stored = std::tuple<std::decay_t<Args>...>;
    if constexpr (!detail::mgr::is_registered<T>()) {
      static_assert(detail::mgr::is_registered<T>(),
                    "mproc: Manager::create<T>: T is not registered: declare `template <> constexpr auto "
                    "mproc::exposed<T> = mproc::register_type<T>(\"T\", &T::method, ...);`");
      return {};
    } else if constexpr (!std::is_constructible_v<T, std::decay_t<Args>&&...>) {
      static_assert(detail::dependent_false<T>, "mproc: Manager::create<T>: T cannot be built from these arguments");
      return {};
    } else if constexpr (!Serializable<Stored>) {
      detail::diagnose<Stored>();
      return {};
    } else {
      Writer w;
      detail::encode_entry<&detail::mgr::make_entry<T, Stored>>(w);
      dump(w, Stored(std::forward<Args>(args)...));
      return ObjectProxy<T>(create(detail::mgr::Kind::user, detail::type_hash<T>(), w.bytes()));
    }
  }
  [[nodiscard]] NamespaceProxy Namespace() const;
  [[nodiscard]] LockProxy Lock() const;
  [[nodiscard]] RLockProxy RLock() const;
  [[nodiscard]] SemaphoreProxy Semaphore(std::uint32_t value = 1) const;
  [[nodiscard]] SemaphoreProxy BoundedSemaphore(std::uint32_t value = 1) const;
  [[nodiscard]] EventProxy Event() const;
  /// A Condition over a new RLock, or over `lock` (a Lock or RLock of this manager).
  [[nodiscard]] ConditionProxy Condition() const;
  [[nodiscard]] ConditionProxy Condition(const LockProxy& lock) const;
  [[nodiscard]] BarrierProxy Barrier(std::uint32_t parties) const;

  struct State;

 private:
  explicit Manager(std::unique_ptr<State> st) noexcept;
  template <class... T>
  static constexpr void check_types() {
    ((Serializable<T> ? void() : detail::diagnose<T>()), ...);
  }
  detail::mgr::CorePtr create(detail::mgr::Kind kind, std::uint64_t type, std::span<const std::byte> init) const;
  void publish_core(const std::string& name, const detail::mgr::CorePtr& core) const;
  detail::mgr::CorePtr lookup_core(const std::string& name, detail::mgr::Kind kind, std::uint64_t type) const;
  std::unique_ptr<State> st_;
};

}  // namespace mproc
