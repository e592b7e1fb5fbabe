// std::ref to a target that takes a reference_wrapper: the reference cannot cross.
#include <functional>
#include <mproc/process.hpp>

void work(std::reference_wrapper<int> counter) { ++counter.get(); }

int main() {
  int x = 0;
  mproc::Process p(work, std::ref(x));
}
