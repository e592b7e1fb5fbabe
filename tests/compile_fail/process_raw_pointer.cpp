// Passing the address of a local: the pointer would mean nothing in the child.
#include <mproc/process.hpp>

void work(int* counter) { ++*counter; }

int main() {
  int x = 0;
  mproc::Process p(work, &x);
}
