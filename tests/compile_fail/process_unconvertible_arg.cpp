// An argument that does not convert to the parameter type.
#include <mproc/process.hpp>

void work(int n) { (void)n; }

int main() {
  mproc::Process p(work, "text");
}
