#!/usr/bin/env bash
# Checks that the README's two commands work as written on a bare Debian 12: bootstraps a
# minbase bookworm (debootstrap --variant=minbase: no make, no compiler, no git), clones
# this repository's HEAD into it, and runs `./run demo`, then `./run test` in a chroot.
#
#   sudo scripts/check-minbase.sh [--test-timeout SECONDS] [--keep] [--dir DIR]
#
#   --test-timeout S  stop `./run test` after S seconds (0: no limit, the default). The
#                     full suite on a minbase box compiles everything from scratch; a
#                     timed-out test run is reported as "test: stopped after S s" with the
#                     last lines it printed, so it can be checked "up to a good point".
#   --keep            leave the chroot (unmounted) in DIR for a later look.
#   --dir DIR         where to build the chroot (default: a new directory in /var/tmp).
#   MIRROR=URL        the Debian mirror (default http://deb.debian.org/debian).
#
# Needs root (debootstrap, mount, chroot) and debootstrap (`apt-get install debootstrap`).
# Everything is unmounted and removed on exit, also on Ctrl-C or an error. The last lines
# it prints are a summary to record in docs/design.md ("last checked on a minbase chroot").
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
test_timeout=0
keep=0
dir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --test-timeout) test_timeout=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --dir) dir=$2; shift 2 ;;
    *) echo "usage: $0 [--test-timeout SECONDS] [--keep] [--dir DIR]" >&2; exit 2 ;;
  esac
done
mirror=${MIRROR:-http://deb.debian.org/debian}

if [[ $(id -u) -ne 0 ]]; then
  echo "check-minbase: needs root (debootstrap, mount and chroot): run it with sudo" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null; then
  echo "check-minbase: debootstrap is missing: apt-get install debootstrap" >&2
  exit 1
fi

commit=$(git -C "$repo" rev-parse HEAD)
if [[ -n $(git -C "$repo" status --porcelain --untracked-files=no) ]]; then
  echo "check-minbase: note: uncommitted changes are not checked, only HEAD ($commit)" >&2
fi
if [[ -z $dir ]]; then
  dir=$(mktemp -d /var/tmp/mproc-minbase.XXXXXX)
else
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
fi

mounts=()   # mounted points, in mount order
cleanup() {
  local rc=$?
  set +e
  # Processes still running inside the chroot (a forkserver, a stuck test) keep the mounts
  # busy: end those, and only those (their root is the chroot).
  local p root
  for p in /proc/[0-9]*; do
    root=$(readlink "$p/root" 2>/dev/null) || continue
    [[ $root == "$dir" || $root == "$dir"/* ]] && kill -KILL "${p#/proc/}" 2>/dev/null
  done
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}"
  done
  # Never remove files while anything is still mounted below the chroot: that would
  # delete the host's /dev or /proc entries through the bind mounts.
  if awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { found = 1 } END { exit !found }' /proc/mounts; then
    echo "check-minbase: something is still mounted under $dir; not removing it" >&2
  elif [[ $keep -eq 1 ]]; then
    echo "check-minbase: the chroot is kept in $dir"
  else
    rm -rf --one-file-system "$dir"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "check-minbase: $(date -u '+%H:%M:%S') $*"; }

log "debootstrap --variant=minbase bookworm $dir $mirror"
debootstrap --variant=minbase bookworm "$dir" "$mirror" > "$dir.debootstrap.log" 2>&1 || {
  tail -20 "$dir.debootstrap.log" >&2; exit 1; }
rm -f "$dir.debootstrap.log"
for tool in make gcc g++ cmake git; do
  if chroot "$dir" /bin/sh -c "command -v $tool" >/dev/null; then
    echo "check-minbase: the minbase chroot already has $tool; the check would prove nothing" >&2
    exit 1
  fi
done

for m in proc sys dev dev/shm; do
  mount --bind "/$m" "$dir/$m"
  mounts+=("$dir/$m")
done
# The chroot needs the host's name servers to reach the mirror.
cp -L /etc/resolv.conf "$dir/etc/resolv.conf"

# Cloned from the host (a minbase system has no git): the committed HEAD, as a user's clone.
git clone --quiet --no-hardlinks "$repo" "$dir/root/mproc"
git -C "$dir/root/mproc" checkout --quiet "$commit"

in_chroot() {
  chroot "$dir" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "cd /root/mproc && $1"
}

start=$(date +%s)
log "chroot: ./run demo   (commit $commit)"
set +e
in_chroot "./run demo" 2>&1 | tee "$dir.demo.log" | sed 's/^/  demo| /'
demo_rc=${PIPESTATUS[0]}
set -e
demo_s=$(( $(date +%s) - start ))
[[ $demo_rc -eq 0 ]] && demo="ok (${demo_s} s)" || demo="FAILED (exit $demo_rc)"
log "demo: $demo"

test=""
if [[ $demo_rc -eq 0 ]]; then
  start=$(date +%s)
  log "chroot: ./run test$([[ $test_timeout -gt 0 ]] && echo "   (stopped after $test_timeout s)")"
  cmd="./run test"
  [[ $test_timeout -gt 0 ]] && cmd="timeout --signal=TERM --kill-after=30 $test_timeout ./run test"
  set +e
  in_chroot "$cmd" 2>&1 | tee "$dir.test.log" | sed 's/^/  test| /'
  test_rc=${PIPESTATUS[0]}
  set -e
  test_s=$(( $(date +%s) - start ))
  if [[ $test_rc -eq 0 ]]; then
    test="ok (${test_s} s)"
  elif [[ $test_rc -eq 124 || $test_rc -eq 137 ]] && [[ $test_timeout -gt 0 ]]; then
    last=$(grep -E '^\[[0-9]+/[0-9]+\]|tests passed|Test +#' "$dir.test.log" | tail -1)
    test="stopped after ${test_s} s, no failure up to: ${last:-?}"
  else
    test="FAILED (exit $test_rc)"
  fi
  log "test: $test"
fi

echo
echo "minbase check: $(date -u '+%Y-%m-%d %H:%M UTC'), commit ${commit:0:12}, Debian $(cat "$dir/etc/debian_version")"
echo "  ./run demo: $demo"
[[ -n $test ]] && echo "  ./run test: $test"
echo "  full output: $dir.demo.log$([[ -n $test ]] && echo " $dir.test.log")"
[[ $demo_rc -eq 0 && ( -z $test || $test == ok* || $test == stopped* ) ]]
