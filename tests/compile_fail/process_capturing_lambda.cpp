// A lambda that captures by reference: the capture points into this process.
#include <mproc/process.hpp>

int main() {
  int x = 0;
  mproc::Process p([&x] { ++x; });
}
