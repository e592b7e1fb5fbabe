// Too few arguments for the target.
#include <mproc/process.hpp>

void work(int a, int b) { (void)a; (void)b; }

int main() {
  mproc::Process p(work, 1);
}
