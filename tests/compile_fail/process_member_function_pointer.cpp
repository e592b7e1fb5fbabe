// A member function pointer as the callable: there is no object to call it on.
#include <mproc/process.hpp>

struct Job {
  void run() {}
};

int main() {
  mproc::Process p(&Job::run, Job{});
}
