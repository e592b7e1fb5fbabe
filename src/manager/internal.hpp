// Manager internals shared by server.cpp, client.cpp and manager.cpp. Not installed.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "protocol.hpp"

namespace mproc::detail::mgr {

/// Listens at `a` (filling in a chosen port or abstract name). Close-on-exec.
/// Throws ManagerError naming the address when it cannot.
int listen_on(Address& a);
/// Connects to `a` within `timeout`. Throws ManagerError naming the address.
int connect_to(const Address& a, std::chrono::milliseconds timeout);

/// This process's session with the server at ep (instance `id` if given: then an
/// existing session is reused, and another instance answering is a ManagerError).
std::shared_ptr<Session> get_session(const Endpoint& ep, std::optional<ServerId> id, std::chrono::milliseconds timeout);
/// One request through s (see Session::call); `limit_ms`: the endpoint's call_timeout_ms.
Reply session_call(Session& s, const Token& t, Op op, std::span<const std::byte> args, std::int64_t timeout,
                   std::int64_t limit_ms);
const ServerId& session_server(const Session& s) noexcept;
pid_t session_pid(const Session& s) noexcept;

/// Serves clients on `listen_fd` (owned) until a shutdown request; returns then.
/// Every connection must prove it knows `authkey`. A bad frame closes that
/// connection with a line on stderr; the server goes on.
void serve(int listen_fd, const std::string& authkey, const ServerId& id);

/// Frames (headers and payloads, as a client sends them after authenticating) fed
/// to a throwaway server without sockets, as one connection of one session. An
/// exception escaping the server's handling (which would end a real server) aborts
/// with its text: a crash, for a fuzzer.
void fuzz_frames(std::span<const std::byte> bytes) noexcept;

/// fuzz_manager's entry (fuzz/fuzz_manager.cpp): a script of several clients
/// talking to one throwaway, socket-less server. Records, until the end:
///   u8 ctl | u16 len (little endian) | len bytes (fewer if the input ends first)
/// ctl % 4 is a connection slot (slots 0 and 2 are connections of session 1, slots
/// 1 and 3 of session 2); (ctl >> 2) % 4 the action (FuzzAction): feed the bytes to
/// that slot's connection (opening an authenticated one if the slot has none, or
/// its connection was dropped), close it (as a peer hanging up: the session dies
/// with its last connection), or let time pass beyond every deadline. Aborts like
/// fuzz_frames when the server would die.
inline constexpr std::size_t kFuzzSlots = 4;
enum class FuzzAction : std::uint8_t { feed = 0, close = 1, expire = 2, feed_too = 3 };
void fuzz_clients(std::span<const std::byte> script) noexcept;

}  // namespace mproc::detail::mgr
