// The usual "out parameter" attempt: f(int&) with std::ref(x). The change would
// never reach the parent.
#include <functional>
#include <mproc/process.hpp>

void work(int& counter) { ++counter; }

int main() {
  int x = 0;
  mproc::Process p(work, std::ref(x));
}
