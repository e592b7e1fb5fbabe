// Must compile (compile_fail.thread_executor_alone): a program that uses only
// ThreadPoolExecutor, Future, as_completed() and wait() includes
// <mproc/thread_executor.hpp> and sees none of the process pool. Each name below
// is defined here again: if the header had defined it (pulled in mproc/pool.hpp,
// the chunk encoder, the serializer), this is a redefinition error. Compiled
// with -DMPROC_CONTROL_WHOLE_EXECUTOR it includes <mproc/executor.hpp> instead
// and must fail on mproc::Pool (compile_fail.thread_executor_control): proof
// that the check bites. Issue 11: executor.hpp included pool.hpp for everyone.
#ifdef MPROC_CONTROL_WHOLE_EXECUTOR
#include <mproc/executor.hpp>
#else
#include <mproc/thread_executor.hpp>
#endif

#include <chrono>
#include <vector>

namespace mproc {
class Pool {};
}  // namespace mproc

#ifndef MPROC_CONTROL_WHOLE_EXECUTOR
#ifdef CEREAL_CEREAL_HPP_
#error "mproc/thread_executor.hpp includes cereal: a ThreadPoolExecutor user must not compile the serializer"
#endif
namespace mproc {
class ProcessPoolExecutor {};
class Writer {};  // mproc/serial.hpp
namespace detail {
class PoolCore {};
template <class Fn, class Arg, bool Star>
class ChunkEncoder {};
}  // namespace detail
}  // namespace mproc
#endif

namespace {

// Every member a thread program uses, instantiated (a capturing lambda: nothing
// a process pool could send).
int use_thread_executor() {
  int offset = 1;
  mproc::ThreadPoolExecutor ex(2);
  auto inc = [offset](int x) { return x + offset; };
  mproc::Future<int> f = ex.submit(inc, 1);
  f.add_done_callback([](const mproc::Future<int>&) {});
  int sum = f.get() + static_cast<int>(f.cancel()) + static_cast<int>(f.running());
  std::vector<mproc::Future<int>> fs{f, ex.submit(inc, 2)};
  for (auto& done : mproc::as_completed(fs, std::chrono::seconds(5))) sum += done.get();
  auto [done, not_done] = mproc::wait(fs, std::chrono::seconds(5), mproc::FIRST_EXCEPTION);
  for (int v : ex.map(inc, std::vector<int>{1, 2, 3})) sum += v;
  ex.shutdown(true, true);
  return sum + static_cast<int>(done.size() + not_done.size());
}

}  // namespace

int main() { return use_thread_executor() > 0 ? 0 : 1; }
