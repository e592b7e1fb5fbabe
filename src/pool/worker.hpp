// The worker side of the pool engine: the function every pool worker process
// runs (worker.cpp). Its arguments travel as Process arguments; the channels go
// with their own codec (below), declared here so every file that starts or
// runs a worker sees the same one.
#pragma once

#include <cstdint>
#include <vector>

#include "mproc/detail/channel.hpp"
#include "mproc/detail/encoded_task.hpp"
#include "mproc/detail/segment.hpp"
#include "mproc/serial.hpp"

namespace mproc {

/// Pool workers receive their channels as Process arguments.
template <>
struct codec<detail::ChannelEnd> {
  static void encode(Writer& w, const detail::ChannelEnd& c) { c.encode(w); }
  static detail::ChannelEnd decode(Reader& r) { return detail::ChannelEnd::decode(r); }
};

namespace detail {

/// A pool worker: runs the initializer (an encoded process task, or empty),
/// then chunks from `tasks` until a stop message, EOF, `maxtasks` chunks (0: no
/// limit) or more than `max_memory_mb` resident (0: no limit); results and
/// failures go to `results`. `table` is the worker table (wire.hpp), `id` its slot.
void pool_worker_main(ChannelEnd tasks, ChannelEnd results, Segment table, std::uint32_t id,
                      EncodedTask initializer, long long maxtasks, long long max_memory_mb,
                      std::int64_t spin_ns, bool item_times, bool item_clock);

}  // namespace detail
}  // namespace mproc
