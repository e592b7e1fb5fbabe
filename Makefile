# mproc — the README's two commands are `./run demo` and `./run test` (./run installs
# make and the rest through scripts/deps.sh first, for a bare Debian), which run:
#
#   make demo   install missing Debian packages, build (build/release), run the demo
#   make test   install missing Debian packages, then run the whole test suite twice:
#               in build/release, and in build/asan with AddressSanitizer + UBSan; then the
#               fuzz targets' regression runs in build/fuzz (clang, fuzz/README.md): each
#               over its checked-in corpus for a fixed number of inputs
#
# and one more, for benchmarks:
#
#   make bench  install missing Debian packages (gnuplot-nox among them), build the benchmark
#               programs in build/release, run them all beside Python's multiprocessing and
#               write docs/BENCHMARKS.md, docs/bench/*.svg and docs/bench/results.json
#               (bench/run.py; `make bench BENCH_ARGS=--quick` for a short run)
#
# Anything else (other build types, single tests) is plain CMake/ctest in those directories.

.PHONY: demo test bench

# Ninja, plus ccache when it is there (scripts/deps.sh installs it).
CONFIGURE = cmake -S . -G Ninja -DCMAKE_CXX_COMPILER_LAUNCHER=$$(command -v ccache || true)
CTEST = ctest --output-on-failure -j2
# Stop at the first error with a stack trace, in the tests and in every child they start.
SANITIZER_ENV = ASAN_OPTIONS=halt_on_error=1:print_stacktrace=1:detect_leaks=1 \
                UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

demo:
	scripts/deps.sh
	$(CONFIGURE) -B build/release -DCMAKE_BUILD_TYPE=Release
	cmake --build build/release --target demo
	build/release/examples/demo

test:
	scripts/deps.sh
	$(CONFIGURE) -B build/release -DCMAKE_BUILD_TYPE=Release
	cmake --build build/release
	cd build/release && $(CTEST)
	$(CONFIGURE) -B build/asan -DCMAKE_BUILD_TYPE=Debug -DMPROC_SANITIZE=ON
	cmake --build build/asan
	cd build/asan && $(SANITIZER_ENV) $(CTEST)
	$(CONFIGURE) -B build/fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMPROC_FUZZ=ON \
	  -DMPROC_BUILD_TESTS=OFF -DMPROC_BUILD_EXAMPLES=OFF -DMPROC_BUILD_BENCH=OFF -DMPROC_INSTALL=OFF
	cmake --build build/fuzz
	cd build/fuzz && $(CTEST) -L fuzz

# bench/run.py configures build/release the way the targets above do when it is not there yet.
bench:
	scripts/deps.sh
	python3 bench/run.py $(BENCH_ARGS)
