// mproc/error.hpp — the library's exception hierarchy.
//
// Every error mproc raises on its own account derives from mproc::Error, so one
// catch clause handles them all. OS failures are std::system_error (errno plus the
// call that failed) and are not wrapped. Each message says what happened and what
// to do about it.
#pragma once

#include "mproc/detail/config.hpp"

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace mproc {

/// Root of mproc's own errors.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The API was used in a way it does not allow: starting a process twice,
/// joining one that was never started, a negative timeout, a call after close().
/// Python raises AssertionError/ValueError in the same places.
class UsageError : public Error {
 public:
  using Error::Error;
};

/// A bounded wait ran out (join with a timeout returns false instead; calls
/// that must return a value throw this).
class TimeoutError : public Error {
 public:
  using Error::Error;
};

/// Queue::get_nowait() / get(timeout) found no item (Python's queue.Empty).
class Empty : public TimeoutError {
 public:
  using TimeoutError::TimeoutError;
};

/// Queue::put_nowait() / put(timeout) found no room (Python's queue.Full).
class Full : public TimeoutError {
 public:
  using TimeoutError::TimeoutError;
};

/// The queue was shut down (Queue::shutdown(); Python 3.13's queue.ShutDown): put()
/// throws it at once, get() once the queue is empty (after shutdown(true): at once).
class ShutDown : public Error {
 public:
  using Error::Error;
};

/// Connection::recv_bytes_into(): the message is longer than the room in the
/// buffer (Python's multiprocessing.BufferTooShort). The message was received all
/// the same: message() is it, whole (Python's e.args[0]); the buffer is unchanged.
class BufferTooShort : public Error {
 public:
  BufferTooShort(const std::string& what, std::vector<std::byte> message)
      : Error(what), message_(std::make_shared<const std::vector<std::byte>>(std::move(message))) {}
  const std::vector<std::byte>& message() const noexcept { return *message_; }

 private:
  std::shared_ptr<const std::vector<std::byte>> message_;  // shared: copying an exception must not throw
};

/// Nothing is left to receive and nothing can arrive any more: the other end of
/// a Pipe is closed in every process, or every other process that held a Queue
/// is gone (Python's EOFError from Connection.recv).
class EOFError : public Error {
 public:
  using Error::Error;
};

/// No one is left to receive: the other end of a Pipe is closed in every process,
/// or a full Queue has no other process left to take from it (Python's
/// BrokenPipeError from Connection.send).
class BrokenPipeError : public Error {
 public:
  using Error::Error;
};

/// A process could not be started the way it was asked to be: for example the
/// spawn or forkserver start method in a program whose main() does not call
/// mproc::init(argc, argv).
class StartError : public Error {
 public:
  using Error::Error;
};

/// Bytes that should hold a serialized value do not (truncated or corrupt
/// message, or a child built from a different binary).
class SerializationError : public Error {
 public:
  using Error::Error;
};

/// The previous owner of a Lock/RLock (a thread or process) ended while holding
/// it, so the data it protects may be half-updated. Thrown by the acquiring
/// calls after they released the lock again; the next acquire succeeds normally.
/// Use lock_checked() to be told the same thing with the lock held, to repair.
class OwnerDiedError : public Error {
 public:
  using Error::Error;
};

/// A Barrier was aborted, reset or timed out while (or before) this party
/// waited, or its action threw: Python's threading.BrokenBarrierError.
class BrokenBarrierError : public Error {
 public:
  using Error::Error;
};

/// An exception thrown in another process, carried back with its dynamic type
/// name, its what() text and, where available, a stack trace.
class RemoteError : public Error {
 public:
  RemoteError(std::string type_name, std::string message, std::string traceback = {})
      : Error(type_name + ": " + message),
        type_name_(std::move(type_name)),
        message_(std::move(message)),
        traceback_(std::move(traceback)) {}

  /// Demangled dynamic type of the remote exception, e.g. "std::runtime_error".
  const std::string& type_name() const noexcept { return type_name_; }
  /// The remote exception's what().
  const std::string& message() const noexcept { return message_; }
  /// Stack trace text from the remote process; empty where none was captured.
  const std::string& traceback() const noexcept { return traceback_; }

 private:
  std::string type_name_;
  std::string message_;
  std::string traceback_;
};

/// A pool task raised: the remote exception (type name, what(), trace) plus the
/// index of the argument it ran on (0 for apply/submit).
class TaskError : public RemoteError {
 public:
  TaskError(std::string type_name, std::string message, std::string traceback, std::size_t index)
      : RemoteError(std::move(type_name), std::move(message), std::move(traceback)), index_(index) {}
  /// Position of the failing argument in the input (0 for apply/submit).
  std::size_t index() const noexcept { return index_; }

 private:
  std::size_t index_;
};

/// The worker process running a task died (segfault, abort, kill -9, exit() inside
/// the task): that task fails with this error; the pool replaces the worker and
/// goes on. exitcode() follows Process::exitcode(): -SIG for a signal, N for exit(N).
class WorkerLostError : public Error {
 public:
  /// `what` (the worker, its pid, how it ended) gets the argument index appended:
  /// "... while running this task (argument index 3)".
  WorkerLostError(const std::string& what, int exitcode, std::size_t index)
      : Error(what + " (argument index " + std::to_string(index) + ")"), exitcode_(exitcode), index_(index) {}
  int exitcode() const noexcept { return exitcode_; }
  std::size_t index() const noexcept { return index_; }

 private:
  int exitcode_;
  std::size_t index_;
};

/// A pool task ran past the pool's per-task timeout: its worker was killed and
/// replaced.
class TaskTimeoutError : public TimeoutError {
 public:
  /// `what` gets the argument index appended, as WorkerLostError's.
  TaskTimeoutError(const std::string& what, std::size_t index)
      : TimeoutError(what + " (argument index " + std::to_string(index) + ")"), index_(index) {}
  std::size_t index() const noexcept { return index_; }

 private:
  std::size_t index_;
};

/// The task will never run or finish: it was cancelled, or its pool/executor was
/// terminated first (concurrent.futures.CancelledError).
class CancelledError : public Error {
 public:
  using Error::Error;
};

/// Ctrl-C arrived during a blocking wait (after enable_keyboard_interrupt()):
/// Python's KeyboardInterrupt.
class KeyboardInterrupt : public Error {
 public:
  using Error::Error;
};

}  // namespace mproc
