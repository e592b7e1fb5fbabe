// A functor with state but no serialize(): mproc cannot tell whether the state
// is safe to copy into another process.
#include <mproc/process.hpp>

struct Worker {
  int* sink;
  void operator()() const { ++*sink; }
};

int main() {
  int x = 0;
  mproc::Process p(Worker{&x});
}
