#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages needed to build, test and run mproc, and only those
# that are missing, so it is a quick no-op on a machine that already has them.
set -euo pipefail

packages=(
  # build: make itself too (a minbase Debian has none; ./run installs it through here)
  build-essential make cmake ninja-build ccache pkg-config
  libgtest-dev libgmock-dev libbenchmark-dev libcereal-dev libfmt-dev
  # fuzz targets (fuzz/): libFuzzer needs clang, its runtime is in libclang-rt-14-dev
  clang libclang-rt-14-dev
  # benchmarks
  python3 gnuplot-nox libtbb-dev
  libssl-dev redis-server libhiredis-dev
  chromium  # test_timeline renders timeline.html headless and checks the screenshot
  libopenmpi-dev openmpi-bin  # mproc::mpi and its multi-rank tests (docs/cluster.md)
)

if ! command -v dpkg-query >/dev/null; then
  echo "deps.sh: dpkg-query not found; install these packages by hand: ${packages[*]}" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "deps.sh: installing missing packages: ${missing[*]}"
if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null; then
  as_root=(sudo)
else
  echo "deps.sh: need root to install ${missing[*]}: run as root, or install sudo" >&2
  exit 1
fi
"${as_root[@]}" apt-get update
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
