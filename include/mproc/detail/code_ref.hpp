// mproc/detail/code_ref.hpp — naming code so another process can find it.
//
// A function's address is meaningless in a process with a different load base:
// spawn and forkserver children re-execute the program, so ASLR places every
// module elsewhere. Code is therefore named as (module, offset from the module's
// load base); the child looks the module up among its own loaded modules and adds
// its own base. Under fork the result is the same address, so one mechanism
// serves all start methods (and, later, MPI ranks running the same binary).
#pragma once

#include "mproc/detail/config.hpp"

#include <cstdint>
#include <string>

#include "mproc/serial.hpp"

namespace mproc::detail {

struct CodeRef {
  std::string module;        // dl_iterate_phdr name; "" is the main executable
  std::uint64_t offset = 0;  // address minus the module's load bias

  template <class A>
  void serialize(A& ar) {
    ar(module, offset);
  }
};

/// Names the code at addr. Throws mproc::Error if addr lies in no loaded module
/// (e.g. JIT-generated code).
CodeRef locate_code(const void* addr);

/// The address of ref in this process. Throws SerializationError if the module
/// is not loaded here or the offset does not fall in one of its executable segments.
const void* resolve_code(const CodeRef& ref);

/// Fills resolve_code's table with every module loaded now, so that a later
/// resolve_code does no module walk (a fork server does it once for all its
/// children). Safe from several threads; never throws.
void cache_loaded_modules() noexcept;

}  // namespace mproc::detail
