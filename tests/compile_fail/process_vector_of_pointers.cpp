// A container of pointers: the diagnosis walks into the vector and blames the pointer.
#include <vector>
#include <mproc/process.hpp>

void work(std::vector<int*> v) { (void)v; }

int main() {
  int a = 0, b = 0;
  mproc::Process p(work, std::vector<int*>{&a, &b});
}
