// mproc/pool_options.hpp — the settings of a pool (PoolOptions, shared by Pool
// and ThreadPool) and of one map-family call (MapOptions). Light on purpose:
// ThreadPool's header includes it without the serializer.
#pragma once

#include "mproc/detail/config.hpp"

#include <chrono>
#include <optional>
#include <string>
#include <utility>

#include "mproc/detail/timeout.hpp"  // OptionalTimeout

namespace mproc {

// Defined in mproc/process.hpp (with the serializer, which this header avoids):
// an opaque declaration is a complete type, enough for std::optional below.
enum class StartMethod;

/// Pool settings, validated at construction (UsageError with what to change).
struct PoolOptions {
  /// Worker processes; 0 means cpu_count(). Negative: UsageError.
  int processes = 0;
  /// Start method of the workers; empty means the global default (forkserver).
  std::optional<StartMethod> start_method{};
  /// Replace a worker after this many chunks (Python's maxtasksperchild); 0 = never.
  long long maxtasksperchild = 0;
  /// Per-task time limit: a task still running after it is killed with its worker
  /// and fails with TaskTimeoutError. Empty: no limit. Any std::chrono::duration
  /// (rounded up to nanoseconds); zero or negative: UsageError.
  detail::OptionalTimeout timeout{};
  /// Re-run a task whose worker died this many times before failing it.
  int retries = 0;
  /// Replace a worker whose resident memory passed this many MiB after a chunk
  /// (a leaking task library, a cache that only grows); 0 = never. Negative: UsageError.
  long long max_memory_mb = 0;
  /// Record a TaskRecord per task (Pool::timeline(), docs/timeline.md). Off:
  /// nothing is recorded and nothing changes on the hot path.
  bool timeline = false;
};

/// Per-call options of the map family. `pool.map(f, xs, 10)` sets the chunk size,
/// as in Python; `pool.map(f, xs, {0, true, "squares"})` also draws a progress bar.
struct MapOptions {
  /// Items per chunk; 0 picks one (docs/pool.md). Negative: UsageError.
  long long chunksize = 0;
  /// Draw a progress bar on stderr while the call runs (mproc/progress.hpp).
  bool progress = false;
  /// The progress bar's label.
  std::string desc{};
  MapOptions() = default;
  MapOptions(long long chunk) : chunksize(chunk) {}  // NOLINT: implicit, like Python's positional arg
  MapOptions(long long chunk, bool show_progress, std::string description = {})
      : chunksize(chunk), progress(show_progress), desc(std::move(description)) {}
};

}  // namespace mproc
