# Packaging test driver, run by ctest as `cmake -D... -P check.cmake` (see CMakeLists.txt).
#
#   MODE=install       install mproc's build tree into WORK_DIR/prefix, build project/ against
#                      it with find_package(mproc), run it; then build and run main.cpp with
#                      the flags from `pkg-config --cflags --libs mproc`.
#   MODE=subdirectory  build project/ with add_subdirectory(SOURCE_DIR), run it.
#   MODE=warnings      compile snippets/snippets.cpp (the README's and docs' snippets) with
#                      -Wall -Wextra -Wpedantic -Werror and mproc's headers given with -I, as
#                      pkg-config gives them: user code from the docs builds warning-free.
#
# Other inputs: SOURCE_DIR, BUILD_DIR (mproc's build tree), WORK_DIR (scratch, wiped first),
# LIBDIR (CMAKE_INSTALL_LIBDIR), GENERATOR, MAKE_PROGRAM, CXX, LAUNCHER, BUILD_TYPE, and
# EXTRA_FLAGS (compile+link flags every consumer needs, e.g. the sanitizers).
cmake_minimum_required(VERSION 3.20)

set(project_dir ${CMAKE_CURRENT_LIST_DIR}/project)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run)
  string(REPLACE ";" " " shown "${ARGN}")
  message(STATUS "+ ${shown}")
  execute_process(COMMAND ${ARGN} COMMAND_ERROR_IS_FATAL ANY)
endfunction()

set(configure_args
  -G ${GENERATOR}
  -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}
  -DCMAKE_CXX_COMPILER=${CXX}
  -DCMAKE_CXX_COMPILER_LAUNCHER=${LAUNCHER}
  -DCMAKE_BUILD_TYPE=${BUILD_TYPE}
  "-DCMAKE_CXX_FLAGS=${EXTRA_FLAGS}"
  "-DCMAKE_EXE_LINKER_FLAGS=${EXTRA_FLAGS}")
set(consumer_build ${WORK_DIR}/consumer-build)
if(WITH_MPI)
  list(APPEND configure_args -DMPROC_CONSUMER_MPI=ON)
endif()

if(MODE STREQUAL "install")
  set(prefix ${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
  foreach(f include/mproc/mproc.hpp ${LIBDIR}/cmake/mproc/mprocConfig.cmake
            ${LIBDIR}/cmake/mproc/mprocConfigVersion.cmake ${LIBDIR}/pkgconfig/mproc.pc)
    if(NOT EXISTS ${prefix}/${f})
      message(FATAL_ERROR "not installed: ${f}")
    endif()
  endforeach()

  run(${CMAKE_COMMAND} -S ${project_dir} -B ${consumer_build} ${configure_args} -DCMAKE_PREFIX_PATH=${prefix})
  # The package must come from our prefix, not from some mproc installed on the machine.
  file(STRINGS ${consumer_build}/CMakeCache.txt mproc_dir REGEX "^mproc_DIR:")
  if(NOT mproc_dir STREQUAL "mproc_DIR:PATH=${prefix}/${LIBDIR}/cmake/mproc")
    message(FATAL_ERROR "find_package(mproc) found the wrong package: ${mproc_dir}")
  endif()
  run(${CMAKE_COMMAND} --build ${consumer_build})
  run(${consumer_build}/consumer)

  # pkg-config: compile and link the same program with nothing but its flags.
  find_program(PKG_CONFIG pkg-config REQUIRED)
  execute_process(
    COMMAND ${CMAKE_COMMAND} -E env PKG_CONFIG_PATH=${prefix}/${LIBDIR}/pkgconfig
            ${PKG_CONFIG} --cflags --libs mproc
    OUTPUT_VARIABLE pc_flags OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
  message(STATUS "pkg-config --cflags --libs mproc: ${pc_flags}")
  # No -std here: `pkg-config --cflags` must bring -std=c++20 itself (g++ 12 defaults to C++17).
  if(NOT pc_flags MATCHES "(^| )-std=c\\+\\+20( |$)")
    message(FATAL_ERROR "pkg-config --cflags mproc lacks -std=c++20: ${pc_flags}")
  endif()
  separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
  separate_arguments(extra UNIX_COMMAND "${EXTRA_FLAGS}")
  run(${CXX} ${extra} ${project_dir}/main.cpp ${pc_flags} -o ${WORK_DIR}/consumer-pkgconfig)
  run(${WORK_DIR}/consumer-pkgconfig)
  if(WITH_MPI)
    # mproc-mpi.pc: the mproc::mpi consumer from its flags alone (Requires: mproc brings the rest).
    if(NOT EXISTS ${prefix}/${LIBDIR}/pkgconfig/mproc-mpi.pc OR NOT EXISTS ${prefix}/${LIBDIR}/cmake/mproc/mprocMpiTargets.cmake)
      message(FATAL_ERROR "mproc::mpi was built but mproc-mpi.pc or mprocMpiTargets.cmake is not installed")
    endif()
    execute_process(
      COMMAND ${CMAKE_COMMAND} -E env PKG_CONFIG_PATH=${prefix}/${LIBDIR}/pkgconfig
              ${PKG_CONFIG} --cflags --libs mproc-mpi
      OUTPUT_VARIABLE pc_mpi_flags OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
    message(STATUS "pkg-config --cflags --libs mproc-mpi: ${pc_mpi_flags}")
    separate_arguments(pc_mpi_flags UNIX_COMMAND "${pc_mpi_flags}")
    run(${CXX} ${extra} ${project_dir}/mpi_main.cpp ${pc_mpi_flags} -o ${WORK_DIR}/consumer-mpi-pkgconfig)
  endif()
elseif(MODE STREQUAL "subdirectory")
  run(${CMAKE_COMMAND} -S ${project_dir} -B ${consumer_build} ${configure_args} -DMPROC_SOURCE_DIR=${SOURCE_DIR})
  run(${CMAKE_COMMAND} --build ${consumer_build})
  run(${consumer_build}/consumer)
elseif(MODE STREQUAL "warnings")
  separate_arguments(extra UNIX_COMMAND "${EXTRA_FLAGS}")
  set(compiler ${CXX})
  if(LAUNCHER)
    set(compiler ${LAUNCHER} ${CXX})
  endif()
  run(${compiler} -std=c++20 -Wall -Wextra -Wpedantic -Werror -O2 ${extra} -I${SOURCE_DIR}/include
      -c ${CMAKE_CURRENT_LIST_DIR}/snippets/snippets.cpp -o ${WORK_DIR}/snippets.o)
else()
  message(FATAL_ERROR "MODE must be install, subdirectory or warnings, not '${MODE}'")
endif()
