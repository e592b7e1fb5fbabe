// Included first by every mproc header: mproc is C++20 (concepts, std::span, designated
// initializers, <bit>, ...). Below C++20 one clear message says so, instead of hundreds of
// errors from deep inside the headers. g++ 12 still defaults to C++17: compile with
// -std=c++20 (or later); `pkg-config --cflags mproc` and CMake's mproc::mproc add it.
#pragma once

#if !defined(__cplusplus) || __cplusplus < 202002L
#error "mproc needs C++20 or later: compile with -std=c++20 (pkg-config --cflags mproc and the CMake target mproc::mproc add it)"
// #error does not stop the compiler; a missing include does ("compilation terminated"), so
// nothing of the headers below reaches a pre-C++20 compiler.
#include <mproc_needs_cxx20__compilation_stops_here>
#endif
