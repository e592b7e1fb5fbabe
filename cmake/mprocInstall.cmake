# Install rules for the CMake package (mproc::mproc) and the pkg-config file.
# The library and header install rules live beside the target in src/CMakeLists.txt.
include(CMakePackageConfigHelpers)

set(MPROC_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/mproc
    CACHE STRING "Where to install mprocConfig.cmake, relative to the prefix")
set(MPROC_INSTALL_PKGCONFIGDIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig
    CACHE STRING "Where to install mproc.pc, relative to the prefix")

install(EXPORT mprocTargets
  NAMESPACE mproc::
  FILE mprocTargets.cmake
  DESTINATION ${MPROC_INSTALL_CMAKEDIR})

configure_package_config_file(
  ${CMAKE_CURRENT_LIST_DIR}/mprocConfig.cmake.in
  ${PROJECT_BINARY_DIR}/mprocConfig.cmake
  INSTALL_DESTINATION ${MPROC_INSTALL_CMAKEDIR})
write_basic_package_version_file(
  ${PROJECT_BINARY_DIR}/mprocConfigVersion.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMajorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/mprocConfig.cmake
  ${PROJECT_BINARY_DIR}/mprocConfigVersion.cmake
  DESTINATION ${MPROC_INSTALL_CMAKEDIR})

# mproc.pc locates the prefix from its own directory (${pcfiledir}), so it stays right
# when the install is moved or done with `cmake --install --prefix`.
file(RELATIVE_PATH MPROC_PC_PREFIX_FROM_PCDIR
     /prefix/${MPROC_INSTALL_PKGCONFIGDIR} /prefix)
set(MPROC_PC_PREFIX "\${pcfiledir}/${MPROC_PC_PREFIX_FROM_PCDIR}")
string(REGEX REPLACE "/$" "" MPROC_PC_PREFIX "${MPROC_PC_PREFIX}")
# A static libmproc needs its own dependencies named on the link line; a shared one
# records them itself.
set(MPROC_PC_DEPS "-pthread -lcrypto")
foreach(_lib IN LISTS CMAKE_DL_LIBS)
  string(APPEND MPROC_PC_DEPS " -l${_lib}")
endforeach()
get_target_property(_mproc_type mproc TYPE)
if(_mproc_type STREQUAL "STATIC_LIBRARY")
  set(MPROC_PC_LIBS "-L\${libdir} -lmproc ${MPROC_PC_DEPS}")
  set(MPROC_PC_LIBS_PRIVATE "")
else()
  set(MPROC_PC_LIBS "-L\${libdir} -lmproc")
  set(MPROC_PC_LIBS_PRIVATE "${MPROC_PC_DEPS}")
endif()
# cereal's headers are included by mproc's; name their directory unless the compiler
# searches it anyway (Debian's libcereal-dev puts them in /usr/include).
# -std=c++20: mproc's headers need it (g++ 12 defaults to C++17, where they stop with an
# #error, mproc/detail/config.hpp). A program built as C++23 names its -std after these flags.
set(MPROC_PC_CFLAGS "-std=c++20 -I\${includedir}")
if(NOT MPROC_CEREAL_INCLUDE IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES)
  string(APPEND MPROC_PC_CFLAGS " -I${MPROC_CEREAL_INCLUDE}")
endif()
configure_file(${CMAKE_CURRENT_LIST_DIR}/mproc.pc.in ${PROJECT_BINARY_DIR}/mproc.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/mproc.pc DESTINATION ${MPROC_INSTALL_PKGCONFIGDIR})

# ---- mproc::mpi (when built): its own export set and pkg-config file, so that a machine
# without MPI can still use mproc::mproc from the same install.
if(TARGET mproc_mpi)
  install(EXPORT mprocMpiTargets
    NAMESPACE mproc::
    FILE mprocMpiTargets.cmake
    DESTINATION ${MPROC_INSTALL_CMAKEDIR})
  # mproc-mpi.pc: mproc's flags (Requires) plus MPI's, as FindMPI found them here.
  set(MPROC_MPI_PC_CFLAGS "-DOMPI_SKIP_MPICXX=1 -DMPICH_SKIP_MPICXX=1")
  foreach(_dir IN LISTS MPI_CXX_INCLUDE_DIRS)
    if(NOT _dir IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES)
      string(APPEND MPROC_MPI_PC_CFLAGS " -I${_dir}")
    endif()
  endforeach()
  set(MPROC_MPI_PC_LIBS "-L\${libdir} -lmproc_mpi")
  foreach(_lib IN LISTS MPI_CXX_LIBRARIES)
    string(APPEND MPROC_MPI_PC_LIBS " ${_lib}")
  endforeach()
  configure_file(${CMAKE_CURRENT_LIST_DIR}/mproc-mpi.pc.in ${PROJECT_BINARY_DIR}/mproc-mpi.pc @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/mproc-mpi.pc DESTINATION ${MPROC_INSTALL_PKGCONFIGDIR})
endif()
