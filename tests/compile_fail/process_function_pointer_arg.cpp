// A function pointer as an argument value (rather than as the callable).
#include <mproc/process.hpp>

void callback() {}
void work(void (*cb)()) { cb(); }

int main() {
  mproc::Process p(work, &callback);
}
