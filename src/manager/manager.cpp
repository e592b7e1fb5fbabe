// Manager: starting, connecting to and shutting down a server; the proxies'
// compiled members.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <system_error>

#include "internal.hpp"
#include "mproc/manager.hpp"

namespace mproc {
namespace detail::mgr {

/// The server's listening socket, handed to the server process with its task.
struct ListenFd {
  int fd = -1;
};

}  // namespace detail::mgr

template <>
struct codec<detail::mgr::ListenFd> {
  static void encode(Writer& w, const detail::mgr::ListenFd& l) {
    std::uint32_t i = w.add_fd(l.fd);
    w.write(&i, sizeof i);
  }
  static detail::mgr::ListenFd decode(Reader& r) {
    std::uint32_t i;
    r.read(&i, sizeof i);
    // The received fd is closed once the task is decoded; keep a duplicate.
    int fd = ::fcntl(r.fd(i), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "fcntl(F_DUPFD_CLOEXEC)");
    return {fd};
  }
};

namespace detail::mgr {
namespace {

void server_main(ListenFd l, std::string authkey, ServerId id) {
  // Like Python's manager server: Ctrl-C goes to the program, which shuts the
  // server down in order; the server does not die half-way on its own.
  ::signal(SIGINT, SIG_IGN);
  serve(l.fd, authkey, id);
}

Token server_token(const ServerId& id) {
  Token t;
  t.server = id;
  return t;
}

}  // namespace
}  // namespace detail::mgr

using namespace detail::mgr;

struct Manager::State {
  Endpoint ep;
  std::optional<Process> proc;
  std::shared_ptr<Session> session;
  pid_t owner_pid = ::getpid();
  bool owner = false;

  /// The session of this process: a Manager copied into a fork child (a global,
  /// a captured object) connects again from there instead of using the parent's.
  Session& sess() {
    if (!session) throw ManagerError("mproc: the manager was shut down or disconnected");
    if (session_pid(*session) != ::getpid()) {
      session = get_session(ep, session_server(*session), std::chrono::seconds(10));
    }
    return *session;
  }
};

Manager::Manager(std::unique_ptr<State> st) noexcept : st_(std::move(st)) {}
Manager::Manager(Manager&&) noexcept = default;
Manager& Manager::operator=(Manager&& o) noexcept {
  if (this != &o) {
    shutdown();
    st_ = std::move(o.st_);
  }
  return *this;
}

Manager::Manager(ManagerOptions o) : st_(std::make_unique<State>()) {
  const std::int64_t limit = call_timeout_ms(o.call_timeout, "ManagerOptions::call_timeout");
  if (o.address.is_tcp() && o.authkey.empty()) {
    throw UsageError("mproc: a manager on a network address (" + o.address.str() +
                     ") needs an explicit authkey: anyone who can reach the port could otherwise try to "
                     "connect. Pass ManagerOptions{.address = ..., .authkey = <a long random secret>}");
  }
  if (o.authkey.empty()) {
    o.authkey.resize(32);
    random_bytes(o.authkey.data(), o.authkey.size());
  }
  Address a = o.address;
  if (!a.is_unix() && !a.is_tcp()) {
    std::array<std::uint8_t, 12> r{};
    random_bytes(r.data(), r.size());
    a.path = "@mproc-manager-" + hex(r);
  }
  int lfd = listen_on(a);
  ServerId id{};
  random_bytes(id.data(), id.size());
  try {
    ProcessOptions po;
    po.name = "SyncManager";
    po.daemon = true;  // dies with this process (parent-death signal), even on kill -9
    po.start_method = o.start_method;
    Process p(std::move(po), &server_main, ListenFd{lfd}, o.authkey, id);
    p.start();
    st_->proc = std::move(p);
  } catch (...) {
    ::close(lfd);
    throw;
  }
  ::close(lfd);  // the server has its own copy now
  st_->ep = Endpoint{a, o.authkey, limit};
  st_->owner = true;
  try {
    st_->session = get_session(st_->ep, id, o.connect_timeout);
  } catch (...) {
    st_->proc->kill();
    st_->proc->join();
    throw;
  }
}

Manager Manager::connect(Address address, std::string authkey, std::chrono::milliseconds timeout,
                         std::chrono::milliseconds call_timeout) {
  if (address.is_tcp() && authkey.empty()) {
    throw UsageError("mproc: Manager::connect(" + address.str() + "): a network address needs the server's authkey");
  }
  auto st = std::make_unique<State>();
  st->ep = Endpoint{std::move(address), std::move(authkey), call_timeout_ms(call_timeout, "Manager::connect()")};
  st->session = get_session(st->ep, std::nullopt, timeout);
  return Manager(std::move(st));
}

Manager::~Manager() {
  try {
    shutdown();
  } catch (...) {
  }
}

void Manager::shutdown() {
  if (!st_ || ::getpid() != st_->owner_pid) return;  // a fork child's copy owns nothing
  if (st_->owner && st_->proc && st_->session) shutdown_server();
  st_->session.reset();
  if (st_->proc) {
    if (!st_->proc->join(std::chrono::seconds(5))) {
      st_->proc->kill();
      st_->proc->join();
    }
    st_->proc.reset();
    // A filesystem socket is ours to remove (Python's listener does the same).
    const Address& a = st_->ep.address;
    if (st_->owner && a.is_unix() && a.path[0] != '@') ::unlink(a.path.c_str());
  }
}

bool Manager::running() const {
  if (!st_ || !st_->session) return false;
  return st_->proc ? st_->proc->is_alive() : true;
}

const Address& Manager::address() const {
  if (!st_) throw UsageError("mproc: Manager used after being moved from");
  return st_->ep.address;
}
const std::string& Manager::authkey() const {
  if (!st_) throw UsageError("mproc: Manager used after being moved from");
  return st_->ep.authkey;
}
pid_t Manager::pid() const { return st_ && st_->proc ? st_->proc->pid() : 0; }

CorePtr Manager::create(Kind kind, std::uint64_t type, std::span<const std::byte> init) const {
  if (!st_ || !st_->session) throw ManagerError("mproc: the manager was shut down; start a new one");
  Writer w;
  auto k = static_cast<std::uint16_t>(kind);
  dump(w, k);
  dump(w, type);
  if (!init.empty()) w.write(init.data(), init.size());
  Token t = server_token(session_server(st_->sess()));
  Reply r = session_call(st_->sess(), t, Op::create, w.bytes(), forever, st_->ep.call_timeout_ms);
  if (r.status != Status::ok) throw_status(r, "create");
  t.id = from_reply<std::uint64_t>(r);
  t.kind = kind;
  t.type = type;
  return std::make_shared<ProxyCore>(st_->session, st_->ep, t);
}

void Manager::publish_core(const std::string& name, const CorePtr& core) const {
  if (!st_ || !st_->session) throw ManagerError("mproc: the manager was shut down; start a new one");
  if (!core) throw UsageError("mproc: Manager::publish(): the proxy refers to no object");
  if (core->token().server != session_server(*st_->session)) {
    throw UsageError("mproc: Manager::publish(): the proxy belongs to another manager");
  }
  Writer w;
  dump(w, name);
  Reply r = session_call(st_->sess(), core->token(), Op::publish, w.bytes(), forever, st_->ep.call_timeout_ms);
  if (r.status != Status::ok) throw_status(r, "publish");
}

CorePtr Manager::lookup_core(const std::string& name, Kind kind, std::uint64_t type) const {
  if (!st_ || !st_->session) throw ManagerError("mproc: the manager was shut down or disconnected");
  Writer w;
  dump(w, name);
  Token t = server_token(session_server(st_->sess()));
  Reply r = session_call(st_->sess(), t, Op::lookup, w.bytes(), forever, st_->ep.call_timeout_ms);
  if (r.status != Status::ok) throw_status(r, "lookup");
  Reader rd = r.reader();
  t.id = load<std::uint64_t>(rd);
  t.kind = static_cast<Kind>(load<std::uint16_t>(rd));
  t.type = load<std::uint64_t>(rd);
  auto core = std::make_shared<ProxyCore>(st_->session, st_->ep, t);  // gives the reference back if we throw
  if (t.kind != kind || t.type != type) {
    throw ManagerError("mproc: Manager::lookup(\"" + name +
                       "\"): the object was published as another kind or element type than asked for");
  }
  return core;
}

void Manager::serve_forever() {
  if (!st_ || !st_->owner || !st_->proc) {
    throw UsageError("mproc: serve_forever() needs the manager that started the server");
  }
  st_->proc->join();
  shutdown();
}

void Manager::shutdown_server() const {
  if (!st_ || !st_->session) throw ManagerError("mproc: the manager was shut down or disconnected");
  try {
    session_call(st_->sess(), server_token(session_server(st_->sess())), Op::shutdown, {}, forever,
                 st_->ep.call_timeout_ms);
  } catch (const ManagerError&) {
    // already gone
  }
}

NamespaceProxy Manager::Namespace() const { return NamespaceProxy(create(Kind::ns, 0, {})); }
LockProxy Manager::Lock() const { return LockProxy(create(Kind::lock, 0, {})); }
RLockProxy Manager::RLock() const { return RLockProxy(create(Kind::rlock, 0, {})); }
EventProxy Manager::Event() const { return EventProxy(create(Kind::event, 0, {})); }
SemaphoreProxy Manager::Semaphore(std::uint32_t value) const {
  Writer w;
  dump(w, value);
  dump(w, false);
  return SemaphoreProxy(create(Kind::semaphore, 0, w.bytes()));
}
SemaphoreProxy Manager::BoundedSemaphore(std::uint32_t value) const {
  Writer w;
  dump(w, value);
  dump(w, true);
  return SemaphoreProxy(create(Kind::semaphore, 0, w.bytes()));
}

ConditionProxy Manager::Condition() const { return Condition(RLock()); }
ConditionProxy Manager::Condition(const LockProxy& lock) const {
  const CorePtr& l = lock.core_ptr();
  if (!l || l->endpoint().address != st_->ep.address || l->token().server != session_server(*st_->session)) {
    throw UsageError("mproc: Manager::Condition(lock): the lock must be a Lock or RLock of this manager");
  }
  Writer w;
  dump(w, l->token().id);
  return ConditionProxy(create(Kind::condition, 0, w.bytes()), l);
}
BarrierProxy Manager::Barrier(std::uint32_t parties) const {
  Writer w;
  dump(w, parties);
  return BarrierProxy(create(Kind::barrier, 0, w.bytes()));
}

// ---- compiled proxy members -------------------------------------------------------

bool NamespaceProxy::erase(const std::string& name) const {
  Writer w;
  dump(w, name);
  return from_reply<bool>(call_ok(Op::ns_del, w, "Namespace erase"));
}
std::vector<std::string> NamespaceProxy::names() const {
  return from_reply<std::vector<std::string>>(call_ok(Op::ns_names, "Namespace names"));
}

LockStatus LockProxy::acquire_status(std::int64_t timeout) const {
  Reply r = call(Op::lk_acquire, Writer{}, timeout);
  switch (r.status) {
    case Status::ok: return LockStatus::acquired;
    case Status::owner_died: return LockStatus::owner_died;
    case Status::timeout: return LockStatus::timed_out;
    default: throw_status(r, "lock acquire");
  }
}
bool LockProxy::acquire_ns(std::int64_t timeout) const {
  LockStatus st = acquire_status(timeout);
  if (st == LockStatus::owner_died) {
    // As mproc's own locks: released again, and the caller is told.
    release();
    throw OwnerDiedError("mproc: manager lock: its previous holder's process died holding it, so the data it "
                         "protects may be half-updated (the lock is released; lock_checked() reports this "
                         "with the lock held, to repair)");
  }
  return st == LockStatus::acquired;
}
bool LockProxy::acquire(bool block) const { return acquire_ns(block ? forever : 0); }
LockStatus LockProxy::lock_checked() const { return acquire_status(forever); }
void LockProxy::release() const {
  Writer w;
  if (core().token().kind == Kind::semaphore) dump(w, std::uint32_t{1});
  call_ok(Op::lk_release, w, "lock release");
}
bool LockProxy::locked() const { return from_reply<bool>(call_ok(Op::lk_locked, "lock locked")); }

void SemaphoreProxy::release(std::uint32_t n) const {
  Writer w;
  dump(w, n);
  call_ok(Op::lk_release, w, "Semaphore release");
}
std::uint32_t SemaphoreProxy::get_value() const {
  return from_reply<std::uint32_t>(call_ok(Op::sem_value, "Semaphore get_value"));
}

void EventProxy::set() const { call_ok(Op::ev_set, "Event set"); }
void EventProxy::clear() const { call_ok(Op::ev_clear, "Event clear"); }
bool EventProxy::is_set() const { return from_reply<bool>(call_ok(Op::ev_is_set, "Event is_set")); }
bool EventProxy::wait_ns(std::int64_t timeout) const {
  Reply r = call(Op::ev_wait, Writer{}, timeout);
  if (r.status != Status::ok) throw_status(r, "Event wait");
  return from_reply<bool>(r);
}

void ConditionProxy::notify(std::uint64_t n) const {
  Writer w;
  dump(w, n);
  call_ok(Op::cond_notify, w, "Condition notify");
}
bool ConditionProxy::wait_ns(std::int64_t timeout) const {
  Reply r = call(Op::cond_wait, Writer{}, timeout);
  if (r.status == Status::owner_died) {
    throw OwnerDiedError("mproc: manager Condition.wait(): the lock's previous holder died holding it (the lock is "
                         "held again now; the protected data may be half-updated)");
  }
  if (r.status != Status::ok) throw_status(r, "Condition wait");
  return from_reply<bool>(r);
}

void codec<ConditionProxy>::encode(Writer& w, const ConditionProxy& c) {
  encode_proxy(w, c.core_ptr());
  if (!c.lock_core()) throw UsageError("mproc: cannot send a Condition proxy that refers to no object");
  dump(w, static_cast<std::uint16_t>(c.lock_core()->token().kind));
  encode_proxy(w, c.lock_core());
}
ConditionProxy codec<ConditionProxy>::decode(Reader& r) {
  CorePtr cond = decode_proxy(r, Kind::condition, 0);
  auto k = static_cast<Kind>(load<std::uint16_t>(r));
  if (k != Kind::lock && k != Kind::rlock) throw SerializationError("mproc: a Condition proxy with a bad lock kind");
  CorePtr lock = decode_proxy(r, k, 0);
  return ConditionProxy(std::move(cond), std::move(lock));
}

std::uint32_t BarrierProxy::wait_ns(std::int64_t timeout) const {
  Reply r = call(Op::bar_wait, Writer{}, timeout);
  if (r.status == Status::broken) throw BrokenBarrierError("mproc: manager Barrier is broken");
  if (r.status != Status::ok) throw_status(r, "Barrier wait");
  return from_reply<std::uint32_t>(r);
}
void BarrierProxy::abort() const { call_ok(Op::bar_abort, "Barrier abort"); }
void BarrierProxy::reset() const { call_ok(Op::bar_reset, "Barrier reset"); }
namespace {
struct BarrierState {
  std::uint32_t parties = 0, waiting = 0;
  bool broken = false;
};
BarrierState barrier_state(const Reply& r) {
  Reader rd = r.reader();
  BarrierState s;
  s.parties = load<std::uint32_t>(rd);
  s.waiting = load<std::uint32_t>(rd);
  s.broken = load<bool>(rd);
  return s;
}
}  // namespace
std::uint32_t BarrierProxy::parties() const { return barrier_state(call_ok(Op::bar_state, "Barrier parties")).parties; }
std::uint32_t BarrierProxy::n_waiting() const {
  return barrier_state(call_ok(Op::bar_state, "Barrier n_waiting")).waiting;
}
bool BarrierProxy::broken() const { return barrier_state(call_ok(Op::bar_state, "Barrier broken")).broken; }

}  // namespace mproc
