// mproc/detail/huge_pages.hpp — big fresh buffers get transparent huge pages
// before they are first touched. On a VM a 4 KiB page fault costs ~10 µs: the
// page faults of a fresh 64 MiB vector (16,384 of them) were the largest cost of
// a 64 MiB Queue item and of a map with 80 MB of results. Used by the channels'
// decoder (channel.hpp) and the pool's result vectors (pool_jobs.hpp).
#pragma once

#include "mproc/detail/config.hpp"

#include <cstddef>
#include <vector>

namespace mproc::detail {

/// Asks for transparent huge pages over the whole pages of [p, p + bytes);
/// a no-op below 8 MiB, or where THP is off (src/os/sys.cpp).
void advise_huge_pages(void* p, std::size_t bytes) noexcept;

/// n value-initialized Vs; a big vector gets huge pages before it is zeroed.
template <class V>
std::vector<V> make_values(std::size_t n) {
  std::vector<V> v;
  v.reserve(n);
  advise_huge_pages(v.data(), n * sizeof(V));
  v.resize(n);
  return v;
}

}  // namespace mproc::detail
