# compile_fail.cxx17.<header>: `#include <mproc/HEADER>` compiled with -std=c++17 must stop
# with mproc/detail/config.hpp's one #error, and nothing else: the only other diagnostic
# allowed is the fatal missing include that ends the compilation right after it.
# Run as: cmake -DCXX=... -DINCLUDE_DIR=... -DHEADER=mproc/x.hpp -DWORK_DIR=... -P check_cxx17.cmake
cmake_minimum_required(VERSION 3.20)
string(REPLACE "/" "." src_name "cxx17.${HEADER}.cpp")
set(src ${WORK_DIR}/${src_name})
file(WRITE ${src} "#include <${HEADER}>\nint main() { return 0; }\n")
execute_process(
  COMMAND ${CXX} -std=c++17 -fsyntax-only -fdiagnostics-color=never -I${INCLUDE_DIR} ${src}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(rc EQUAL 0)
  message(FATAL_ERROR "${HEADER} compiled with -std=c++17; expected mproc's #error")
endif()
string(REGEX MATCHALL "[^\n]*error:[^\n]*" errors "${out}")
list(LENGTH errors n)
set(want_error [[error: (#error )?"mproc needs C\+\+20 or later: compile with -std=c\+\+20]])
set(want_stop [[fatal error: '?mproc_needs_cxx20__compilation_stops_here'?]])
list(GET errors 0 first)
if(NOT n EQUAL 2 OR NOT first MATCHES "${want_error}")
  message(FATAL_ERROR "${HEADER} with -std=c++17: expected exactly mproc's #error and the stop, "
                      "got ${n} error lines:\n${out}")
endif()
list(GET errors 1 second)
if(NOT second MATCHES "${want_stop}")
  message(FATAL_ERROR "${HEADER} with -std=c++17: the compilation went on past the #error:\n${out}")
endif()
message(STATUS "${HEADER}: one #error below C++20, as expected")
