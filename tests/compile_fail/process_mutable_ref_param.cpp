// A target taking int&: the child would modify its own copy only.
#include <mproc/process.hpp>

void work(int& counter) { ++counter; }

int main() {
  int x = 0;
  mproc::Process p(work, x);
}
