# fuzz.<target>: runs TARGET over CORPUS (read only) plus RUNS mutated inputs, seed 1.
# New coverage lands in WORK/new (wiped first), crash inputs in WORK/ (artifact_prefix).
cmake_minimum_required(VERSION 3.20)
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK}/new)
execute_process(
  COMMAND ${TARGET} -runs=${RUNS} -seed=1 -max_len=8192 -rss_limit_mb=2048 -print_final_stats=1
          -artifact_prefix=${WORK}/ ${WORK}/new ${CORPUS}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  file(GLOB found ${WORK}/crash-* ${WORK}/leak-* ${WORK}/timeout-* ${WORK}/oom-*)
  message(FATAL_ERROR "${NAME} failed (exit ${rc}); the input is in: ${found}\n"
                      "Reproduce with: ${TARGET} <that file>")
endif()
