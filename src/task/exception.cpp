// Flattening exceptions for transport (see mproc/detail/exception.hpp).
#include "mproc/detail/exception.hpp"

#include <cxxabi.h>

#include <cstdlib>
#include <exception>
#include <memory>
#include <typeinfo>

namespace mproc::detail {

std::string demangle(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(mangled);
}

ExceptionInfo capture_current_exception(std::size_t max_message) {
  ExceptionInfo info;
  // The dynamic type of whatever was thrown, std::exception or not (throw 42 → "int").
  if (const std::type_info* t = abi::__cxa_current_exception_type()) {
    info.type_name = demangle(t->name());
  } else {
    info.type_name = "unknown";
  }
  try {
    throw;
  } catch (const RemoteError& e) {
    // Re-raised remote error: keep the original type and text.
    info.type_name = e.type_name();
    info.message = e.message();
    info.traceback = e.traceback();
  } catch (const std::exception& e) {
    info.message = e.what();
  } catch (...) {
    info.message = "(an exception that is not a std::exception; no message)";
  }
  if (info.message.size() > max_message) {
    info.message.resize(max_message);
    info.message += "… [cut by mproc]";
  }
  return info;
}

}  // namespace mproc::detail
