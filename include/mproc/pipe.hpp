// mproc/pipe.hpp — Pipe and Connection, mirroring multiprocessing.Pipe and
// multiprocessing.connection.Connection.
//
//   auto [parent, child] = mproc::Pipe<std::string>();
//   mproc::Process p(worker, child);        // worker(Connection<std::string> c): c.send(c.recv())
//   p.start();
//   child.close();                          // so that parent sees EOF once the worker is gone
//   parent.send("ping");
//   std::string s = parent.recv();          // throws mproc::EOFError if the worker ended first
//
// Pipe<T>(duplex = true) returns two connected ends. Duplex: each end sends to and
// receives from the other (one shared-memory ring per direction). One-way
// (duplex = false): the first end only receives, the second only sends.
// Connections are handles like Queue: copies, copies sent to a Process and copies
// inherited through fork are the same end. Each end is safe to use from several
// threads and processes at once (Python's are not), though a pipe is meant for two.
//
// End of file, exactly as Python: recv() on an end with nothing left to receive
// throws EOFError once the other end is closed in every process that had it —
// closed explicitly, dropped, or its processes exited or were killed. (The kernel
// tells us: each end owns one socket of a socketpair, which reports a hang-up when
// its peer socket is closed everywhere.) As in Python, the creating process must
// close() the end it handed to a child, or that copy keeps the pipe open.
// send() to such an end throws BrokenPipeError (checked at least every
// millisecond of sending, and before any wait). Details: docs/queue.md.
#pragma once

#include "mproc/detail/config.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "mproc/detail/channel.hpp"
#include "mproc/detail/type_name.hpp"
#include "mproc/error.hpp"
#include "mproc/serial.hpp"

namespace mproc {

template <class T>
class Connection;

template <class T>
std::pair<Connection<T>, Connection<T>> Pipe(bool duplex = true);

namespace detail {
/// A buffer recv_bytes_into() fills, other than a std::span<std::byte>: a sized,
/// contiguous, writable range of trivially copyable elements.
template <class B>
concept IntoBuffer = std::ranges::contiguous_range<B> && std::ranges::sized_range<B> &&
                     std::is_trivially_copyable_v<std::ranges::range_value_t<B>> &&
                     (!std::is_const_v<std::remove_reference_t<std::ranges::range_reference_t<B>>>) &&
                     (!std::is_same_v<std::remove_cvref_t<B>, std::span<std::byte>>);
template <class B>
std::span<std::byte> into_bytes(B& buf) {
  return std::as_writable_bytes(std::span(std::ranges::data(buf), std::ranges::size(buf)));
}
}  // namespace detail

/// One end of a Pipe: sends and receives values of type T (which must be
/// mproc::Serializable), or raw bytes.
template <class T>
class Connection {
 public:
  using value_type = T;

  /// An unconnected end (every call throws UsageError); assign one from Pipe().
  /// Exists so that Connections can be decoded into containers and tuples.
  Connection() = default;

  /// Sends a value; blocks while the peer's ring is full. Throws BrokenPipeError if
  /// the other end is closed everywhere, UsageError on a receive-only end or after
  /// close().
  void send(const T& obj) {
    detail::with_encoded(obj, [&](const Writer& w) { ch_.send(w, std::nullopt); });
  }
  /// Receives the next value, blocking until one comes. Throws EOFError when
  /// nothing is left and the other end is closed everywhere; UsageError on a
  /// send-only end or after close(); SerializationError for undecodable bytes
  /// (e.g. raw bytes sent with send_bytes()).
  T recv() { return recv_until(std::nullopt); }
  /// Blocks at most `timeout` (beyond Python); throws TimeoutError if nothing came.
  template <class Rep, class Period>
  T recv(std::chrono::duration<Rep, Period> timeout) {
    return recv_until(detail::timeout_deadline(timeout, "Connection.recv()"));
  }

  /// Whether a message can be received now without blocking. Like Python, also
  /// true when the other end is closed (so that recv() throws EOFError at once).
  bool poll() { return ch_.poll(detail::no_wait()); }
  /// Waits at most `timeout` for poll() to become true.
  template <class Rep, class Period>
  bool poll(std::chrono::duration<Rep, Period> timeout) {
    return ch_.poll(detail::timeout_deadline(timeout, "Connection.poll()"));
  }

  /// Sends raw bytes as one message (recv_bytes() on the other end returns them).
  void send_bytes(std::span<const std::byte> buf) { ch_.send(buf, {}, std::nullopt); }
  void send_bytes(const void* data, std::size_t n) { send_bytes({static_cast<const std::byte*>(data), n}); }
  /// Receives one message's bytes, whatever was sent (the encoding, for send()).
  std::vector<std::byte> recv_bytes() { return recv_bytes_until(std::nullopt); }
  template <class Rep, class Period>
  std::vector<std::byte> recv_bytes(std::chrono::duration<Rep, Period> timeout) {
    return recv_bytes_until(detail::timeout_deadline(timeout, "Connection.recv_bytes()"));
  }
  /// Receives one message into `buf` from byte `offset` on (Python's
  /// recv_bytes_into) and returns its length. Blocks and throws like recv_bytes().
  /// A message longer than buf.size() - offset is consumed all the same and thrown
  /// as BufferTooShort, which carries it whole (buf is not written). UsageError if
  /// `offset` is past the end of `buf` (nothing is received then).
  std::size_t recv_bytes_into(std::span<std::byte> buf, std::size_t offset = 0) {
    return recv_bytes_into_until(buf, offset, std::nullopt);
  }
  /// The same, waiting at most `timeout` (any std::chrono::duration) for a message:
  /// TimeoutError if none came (nothing received, buf untouched), as recv_bytes(timeout).
  template <class Rep, class Period>
  std::size_t recv_bytes_into(std::span<std::byte> buf, std::size_t offset,
                              std::chrono::duration<Rep, Period> timeout) {
    check_into_offset(buf, offset);
    return recv_bytes_into_until(buf, offset, detail::timeout_deadline(timeout, "Connection.recv_bytes_into()"));
  }
  template <class Rep, class Period>
  std::size_t recv_bytes_into(std::span<std::byte> buf, std::chrono::duration<Rep, Period> timeout) {
    return recv_bytes_into(buf, 0, timeout);
  }
  /// The same into any contiguous range of trivially copyable elements
  /// (std::vector<char>, std::string, std::array<std::uint32_t, N>, ...); `offset`
  /// is in bytes.
  template <detail::IntoBuffer B>
  std::size_t recv_bytes_into(B&& buf, std::size_t offset = 0) {
    return recv_bytes_into(detail::into_bytes(buf), offset);
  }
  template <detail::IntoBuffer B, class Rep, class Period>
  std::size_t recv_bytes_into(B&& buf, std::size_t offset, std::chrono::duration<Rep, Period> timeout) {
    return recv_bytes_into(detail::into_bytes(buf), offset, timeout);
  }
  template <detail::IntoBuffer B, class Rep, class Period>
  std::size_t recv_bytes_into(B&& buf, std::chrono::duration<Rep, Period> timeout) {
    return recv_bytes_into(detail::into_bytes(buf), 0, timeout);
  }

  /// Closes this end in this process (every copy here). The other end sees EOF once
  /// no process holds this end. Idempotent.
  void close() { ch_.close(); }
  bool closed() const { return ch_.closed(); }
  bool readable() const { return ch_.readable(); }
  bool writable() const { return ch_.writable(); }

  /// The channel underneath (statistics, tests).
  const detail::ChannelEnd& channel() const noexcept { return ch_; }

 private:
  friend std::pair<Connection<T>, Connection<T>> Pipe<T>(bool);
  friend struct codec<Connection<T>>;
  explicit Connection(detail::ChannelEnd ch) : ch_(std::move(ch)) { detail::diagnose<T>(); }

  T recv_until(detail::deadline_t deadline) {
    std::optional<T> out;
    if (!ch_.recv(deadline, [&](Reader& r) {
          out.emplace(detail::load_message<T>(r));
        })) {
      throw TimeoutError("mproc: Connection.recv(): nothing received before the timeout");
    }
    return std::move(*out);
  }
  static void check_into_offset(std::span<std::byte> buf, std::size_t offset) {
    if (offset > buf.size()) {
      throw UsageError("mproc: Connection.recv_bytes_into(): offset " + std::to_string(offset) +
                       " is past the end of a " + std::to_string(buf.size()) + "-byte buffer");
    }
  }
  std::size_t recv_bytes_into_until(std::span<std::byte> buf, std::size_t offset, detail::deadline_t deadline) {
    check_into_offset(buf, offset);
    const std::size_t room = buf.size() - offset;
    std::size_t n = 0;
    std::vector<std::byte> whole;  // only when it does not fit
    if (!ch_.recv(deadline, [&](Reader& r) {
          n = r.remaining();
          const std::byte* p = r.take(n);
          if (n > room) {
            whole.assign(p, p + n);
          } else if (n) {
            std::memcpy(buf.data() + offset, p, n);
          }
        })) {
      throw TimeoutError("mproc: Connection.recv_bytes_into(): nothing received before the timeout");
    }
    if (n > room) {
      throw BufferTooShort("mproc: Connection.recv_bytes_into(): a " + std::to_string(n) +
                               "-byte message does not fit in the " + std::to_string(room) +
                               " bytes left in the buffer; it is in BufferTooShort::message()",
                           std::move(whole));
    }
    return n;
  }
  std::vector<std::byte> recv_bytes_until(detail::deadline_t deadline) {
    std::vector<std::byte> out;
    if (!ch_.recv(deadline, [&](Reader& r) {
          std::size_t n = r.remaining();
          const std::byte* p = r.take(n);
          out.assign(p, p + n);
        })) {
      throw TimeoutError("mproc: Connection.recv_bytes(): nothing received before the timeout");
    }
    return out;
  }

  detail::ChannelEnd ch_;
};

/// Returns two connected ends. duplex: both send and receive. One-way: the first
/// end receives, the second sends. Throws std::system_error if shared memory or
/// sockets are refused.
template <class T>
std::pair<Connection<T>, Connection<T>> Pipe(bool duplex) {
  auto [a, b] = detail::ChannelEnd::create_pipe(detail::ChannelOptions{}, duplex);
  return {Connection<T>(std::move(a)), Connection<T>(std::move(b))};
}

/// A Connection travels as a handle to the same end.
template <class T>
struct codec<Connection<T>> {
  static void encode(Writer& w, const Connection<T>& c) {
    std::uint64_t tag = detail::type_hash<T>();
    w.write(&tag, sizeof tag);
    c.ch_.encode(w);
  }
  static Connection<T> decode(Reader& r) {
    std::uint64_t tag;
    r.read(&tag, sizeof tag);
    if (tag != detail::type_hash<T>()) {
      throw SerializationError("mproc: a Connection handle was received with a different item type");
    }
    return Connection<T>(detail::ChannelEnd::decode(r));
  }
};

}  // namespace mproc
