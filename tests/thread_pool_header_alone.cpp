// Compiled on its own, into test_thread_pool: <mproc/thread_pool.hpp> is
// self-sufficient and pulls in neither the serializer nor cereal (issue 11:
// ThreadPool users compiled both through pool.hpp).
#include <mproc/thread_pool.hpp>

#include <vector>

#ifdef CEREAL_CEREAL_HPP_
#error "mproc/thread_pool.hpp includes cereal: a ThreadPool user must not compile the serializer"
#endif

namespace thread_pool_header {

// A capturing lambda (nothing a process pool could send) over every method kind.
int run_alone() {
  int offset = 1;
  mproc::ThreadPool pool(mproc::PoolOptions{.processes = 2});
  auto inc = [offset](int x) { return x + offset; };
  int sum = pool.apply(inc, 1);
  for (int v : pool.map(inc, std::vector<int>{1, 2, 3}, 2)) sum += v;
  for (int v : pool.imap(inc, std::vector<int>{4})) sum += v;
  return sum;  // 2 + (2 + 3 + 4) + 5
}

}  // namespace thread_pool_header
