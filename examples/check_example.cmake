# check_example.cmake — the CTest driver of the examples (examples/CMakeLists.txt).
#
#   cmake -DPROGRAM=<exe> -DCHECKS=<name>.checks.cmake -P check_example.cmake
#
# Runs PROGRAM with ARGS and passes only if all of these hold (CTest's own
# PASS_REGULAR_EXPRESSION cannot do this: it ignores the exit code, and a list of
# expressions passes when any one of them matches):
#   * the exit code is 0;
#   * every LINES expression matches some line of the output in full (^...$);
#   * for every COUNT entry "N=expr", exactly N lines match expr in full;
#   * no REJECT expression matches anywhere in the output;
#   * with FILE set: the file exists, has at least FILE_MIN_LINES lines, and every
#     line matches FILE_LINE in full.
# CHECKS is a generated file that sets ARGS, LINES, COUNT, REJECT, FILE,
# FILE_LINE, FILE_MIN_LINES and RUN_TIMEOUT. Expressions are CMake regexes.
cmake_minimum_required(VERSION 3.20)
include(${CHECKS})

if(FILE)
  file(REMOVE ${FILE})
endif()
execute_process(COMMAND ${PROGRAM} ${ARGS}
                OUTPUT_VARIABLE out ERROR_VARIABLE out RESULT_VARIABLE rc
                TIMEOUT ${RUN_TIMEOUT})
message("${out}")

# Scans `text` line by line (without CMake lists: output may hold ';', '[' or ']')
# and sets scan_total, scan_matched (lines matching ^expr$) and scan_bad (the first
# few lines that do not) in the caller.
function(scan text expr)
  set(total 0)
  set(matched 0)
  set(bad "")
  set(rest "${text}")
  while(NOT rest STREQUAL "")
    string(FIND "${rest}" "\n" nl)
    if(nl EQUAL -1)
      set(line "${rest}")
      set(rest "")
    else()
      string(SUBSTRING "${rest}" 0 ${nl} line)
      math(EXPR next "${nl} + 1")
      string(SUBSTRING "${rest}" ${next} -1 rest)
    endif()
    math(EXPR total "${total} + 1")
    if("${line}" MATCHES "^${expr}$")
      math(EXPR matched "${matched} + 1")
    else()
      math(EXPR nbad "${total} - ${matched}")
      if(nbad LESS 5)
        string(APPEND bad "    '${line}'\n")
      endif()
    endif()
  endwhile()
  set(scan_total ${total} PARENT_SCOPE)
  set(scan_matched ${matched} PARENT_SCOPE)
  set(scan_bad "${bad}" PARENT_SCOPE)
endfunction()

set(failures "")
if(NOT rc STREQUAL "0")
  string(APPEND failures "  exit status ${rc} (expected 0)\n")
endif()

foreach(expr IN LISTS LINES)
  scan("${out}" "${expr}")
  if(scan_matched EQUAL 0)
    string(APPEND failures "  no line matches: ${expr}\n")
  endif()
endforeach()

foreach(entry IN LISTS COUNT)
  string(FIND "${entry}" "=" eq)
  string(SUBSTRING "${entry}" 0 ${eq} want)
  math(EXPR from "${eq} + 1")
  string(SUBSTRING "${entry}" ${from} -1 expr)
  scan("${out}" "${expr}")
  if(NOT scan_matched EQUAL want)
    string(APPEND failures "  ${scan_matched} lines match (expected ${want}): ${expr}\n")
  endif()
endforeach()

foreach(expr IN LISTS REJECT)
  if("${out}" MATCHES "${expr}")
    string(APPEND failures "  the output matches a rejected pattern: ${expr}\n")
  endif()
endforeach()

if(FILE)
  if(NOT EXISTS ${FILE})
    string(APPEND failures "  ${FILE} was not written\n")
  else()
    file(READ ${FILE} content)
    scan("${content}" "${FILE_LINE}")
    if(NOT scan_matched EQUAL scan_total)
      math(EXPR nbad "${scan_total} - ${scan_matched}")
      string(APPEND failures "  ${nbad} of ${scan_total} lines of ${FILE} do not match ${FILE_LINE}, e.g.\n${scan_bad}")
    endif()
    if(scan_total LESS FILE_MIN_LINES)
      string(APPEND failures "  ${FILE} has ${scan_total} lines (expected at least ${FILE_MIN_LINES})\n")
    endif()
  endif()
endif()

if(NOT failures STREQUAL "")
  message(FATAL_ERROR "example check failed:\n${failures}")
endif()
