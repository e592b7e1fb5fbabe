// mproc/detail/exception.hpp — an exception, flattened so it can cross a process boundary.
#pragma once

#include "mproc/detail/config.hpp"

#include <string>

#include "mproc/error.hpp"

namespace mproc::detail {

struct ExceptionInfo {
  std::string type_name;  // demangled dynamic type, e.g. "std::runtime_error"
  std::string message;    // what(), or a description for non-std exceptions
  std::string traceback;  // empty where none was captured

  template <class A>
  void serialize(A& ar) {
    ar(type_name, message, traceback);
  }

  RemoteError to_error() const { return RemoteError(type_name, message, traceback); }
};

/// Describes the exception being handled. Call only inside a catch block.
/// Messages longer than max_message bytes are cut (and say so).
ExceptionInfo capture_current_exception(std::size_t max_message = std::size_t{16} * 1024);

/// Demangles a C++ ABI type name; returns the input when it cannot.
std::string demangle(const char* mangled);

}  // namespace mproc::detail
