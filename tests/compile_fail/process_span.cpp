// span does not own its elements.
#include <span>
#include <vector>
#include <mproc/process.hpp>

void work(std::span<const int> s) { (void)s; }

int main() {
  std::vector<int> v{1, 2, 3};
  mproc::Process p(work, std::span<const int>(v));
}
