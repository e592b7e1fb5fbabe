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
Reply session_call(Session& s, const Token& t, Op op, std::span<const std::byte> args, std::int64_t timeout);
const ServerId& session_server(const Session& s) noexcept;
pid_t session_pid(const Session& s) noexcept;

/// Serves clients on `listen_fd` (owned) until a shutdown request; returns then.
/// Every connection must prove it knows `authkey`. A bad frame closes that
/// connection with a line on stderr; the server goes on.
void serve(int listen_fd, const std::string& authkey, const ServerId& id);

/// Frames (headers and payloads, as a client sends them after authenticating) fed
/// to a throwaway server without sockets: the fuzz target's entry. Never throws.
void fuzz_frames(std::span<const std::byte> bytes) noexcept;

}  // namespace mproc::detail::mgr
