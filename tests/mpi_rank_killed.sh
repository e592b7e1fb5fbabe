#!/usr/bin/env bash
# mpi_rank_killed.sh MPIRUN BTL PROGRAM [ARG]: runs PROGRAM (tests/test_mpi_rank_killed.cpp)
# under `mpirun -np 3`; it kills a serving rank with SIGKILL (with ARG "root": rank 0
# aborts itself). Passes when
#   1. mpirun ends by itself within 60 s (nothing hangs) with a failure status;
#   2. within 10 s after, no process of the job is left: every process mpirun
#      started carries MPROC_TEST_MARKER=<unique> in its environment (the ranks,
#      their forkservers and their workers inherit it), and none may remain.
set -u
mpirun=$1 btl=$2 program=$3 arg=${4:-}
marker="mpi-rank-killed-$$-$RANDOM"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=$(mktemp)
trap 'rm -f "$out"' EXIT

survivors() {
  local p
  for p in /proc/[0-9]*; do
    [[ $p == "/proc/$$" ]] && continue
    if { tr '\0' '\n' < "$p/environ"; } 2>/dev/null | grep -qx "MPROC_TEST_MARKER=$marker"; then
      echo "${p#/proc/} $({ tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null)"
    fi
  done
}

start=$(date +%s%N)
MPROC_TEST_MARKER=$marker timeout -k 5 60 "$mpirun" --oversubscribe -np 3 -x MPROC_TEST_MARKER \
  --mca btl "self,$btl" --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo "$program" $arg >"$out" 2>&1
rc=$?
end=$(date +%s%N)
cat "$out"
echo "mpirun exit status $rc after $(( (end - start) / 1000000 )) ms"
if [[ $rc -eq 124 || $rc -eq 137 && $(( (end - start) / 1000000000 )) -ge 60 ]]; then
  echo "FAIL: mpirun did not end within 60 s (the job hung)"; exit 1
fi
if [[ $rc -eq 0 ]]; then
  echo "FAIL: mpirun reported success although a rank was killed"; exit 1
fi
if grep -q "the map returned" "$out"; then
  echo "FAIL: rank 0 went on as if nothing happened"; exit 1
fi
deadline=$(( $(date +%s) + 10 ))
while :; do
  left=$(survivors)
  [[ -z $left ]] && { echo "ok: no process of the job is left"; exit 0; }
  (( $(date +%s) < deadline )) || break
  sleep 0.1
done
echo "FAIL: processes of the job are still alive 10 s after mpirun ended:"
echo "$left"
exit 1
