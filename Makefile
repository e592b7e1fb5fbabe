# mproc — the README's two commands are `./run demo` and `./run test` (./run installs
# make and the rest through scripts/deps.sh first, for a bare Debian), which run:
#
#   make demo   install missing Debian packages, build (build/release), run the demo
#   make test   install missing Debian packages, then run the whole test suite three times:
#               in build/release, in build/asan with AddressSanitizer + UBSan, and in
#               build/tsan with ThreadSanitizer (TSAN_EXCLUDE below lists what it skips, and
#               why); then the fuzz targets' regression runs in build/fuzz (clang,
#               fuzz/README.md): each over its checked-in corpus for a fixed number of inputs
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
# ThreadSanitizer: every process writes its reports to build/tsan/tsan-reports/report.<pid>
# instead of stderr, and the step fails if any file is there. A report in a child whose death
# the test expects or survives (a pool worker the pool replaces, a child of a kill storm) would
# otherwise end that child quietly (halt_on_error) and the test would pass.
TSAN_REPORTS = $(CURDIR)/build/tsan/tsan-reports
TSAN_ENV = TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:log_path=$(TSAN_REPORTS)/report:suppressions=$(CURDIR)/tests/tsan.supp
# The TSan run keeps all three start methods. fork, spawn and forkserver children run the
# same instrumented code; a fork child of a multi-threaded parent keeps TSan's default
# die_after_fork=1, so one that started a thread would die loudly (none in the suite does:
# ProcessTest.StartFromManyThreadsWhileOthersAllocate/fork skips itself, as fork with threads
# is documented unsafe). PoolTest.BulkMapMatchesASerialLoop/fork_2 timed out (120 s) in the
# first TSan run, on the pool engine of db62e1f; on today's engine (the split of 89d0acc) it
# passed all 15 runs, in 4-13 s at load 13-18, never slow and never stuck: it is kept.
# Tests the ThreadSanitizer run leaves out (a ctest -E regex), each for a reason:
#   packaging\.    the consumer builds: they compile and run a one-line program against the
#                  installed package (CMake and pkg-config files, no threads of mproc's), which
#                  the release and ASan runs check; under TSan they would only be minutes of
#                  compiling.
#   compile_fail\. compiler diagnostics, the same in every build tree.
#   QueueHuge\.    one item of 1 GiB through a queue: TSan checks every byte copied and keeps
#                  shadow memory for each. Run alone under TSan (on the loaded 2-core VM):
#                  10 GiB peak RSS, and 111 s, in which its 60 s get() timed out. The release
#                  and ASan runs keep it; the out-of-band path it takes runs under TSan in
#                  Queue.MessageSizesAcrossTheOutOfBandThreshold (up to 16 MiB).
TSAN_EXCLUDE = ^(packaging\.|compile_fail\.|QueueHuge\.)

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
	$(CONFIGURE) -B build/tsan -DCMAKE_BUILD_TYPE=Debug -DMPROC_TSAN=ON -DMPROC_BUILD_BENCH=OFF
	cmake --build build/tsan
	rm -rf $(TSAN_REPORTS) && mkdir -p $(TSAN_REPORTS)
	cd build/tsan && { $(TSAN_ENV) $(CTEST) -E '$(TSAN_EXCLUDE)'; rc=$$?; \
	  if ls $(TSAN_REPORTS)/report.* >/dev/null 2>&1; then cat $(TSAN_REPORTS)/report.*; \
	    echo "ThreadSanitizer reported the above (files in $(TSAN_REPORTS))"; exit 1; fi; exit $$rc; }
	$(CONFIGURE) -B build/fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMPROC_FUZZ=ON \
	  -DMPROC_BUILD_TESTS=OFF -DMPROC_BUILD_EXAMPLES=OFF -DMPROC_BUILD_BENCH=OFF -DMPROC_INSTALL=OFF
	cmake --build build/fuzz
	cd build/fuzz && $(CTEST) -L fuzz

# bench/run.py configures build/release the way the targets above do when it is not there yet.
bench:
	scripts/deps.sh
	python3 bench/run.py $(BENCH_ARGS)
