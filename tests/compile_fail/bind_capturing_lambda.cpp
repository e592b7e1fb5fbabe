// mproc::bind does not make a capturing lambda sendable.
#include <mproc/task.hpp>

int main() {
  int x = 0;
  auto b = mproc::bind([&x](int d) { x += d; }, 1);
  (void)b;
}
