// std::ref to a generic target (parameter types unknown): the reference_wrapper
// itself would be sent.
#include <functional>
#include <mproc/process.hpp>

int main() {
  int x = 0;
  mproc::Process p([](auto counter) { ++counter.get(); }, std::ref(x));
}
