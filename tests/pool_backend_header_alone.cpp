// Compiled on its own, into test_pool_backend: <mproc/detail/pool_backend.hpp>
// (the backend seam) is self-sufficient and light: a backend's headers (the
// cluster's) include it without the serializer or cereal.
#include <mproc/detail/pool_backend.hpp>

#ifdef CEREAL_CEREAL_HPP_
#error "mproc/detail/pool_backend.hpp includes cereal: the backend seam must stay light"
#endif

namespace pool_backend_header {

std::size_t header_bytes() { return sizeof(mproc::detail::ChunkHeader); }

}  // namespace pool_backend_header
