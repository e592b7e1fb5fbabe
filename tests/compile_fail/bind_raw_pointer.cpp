// mproc::bind checks its values like Process checks arguments.
#include <mproc/task.hpp>

void work(int* p) { ++*p; }

int main() {
  int x = 0;
  auto b = mproc::bind(work, &x);
  (void)b;
}
