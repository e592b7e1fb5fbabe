// A user type whose serialize() names a raw pointer member: the member is
// diagnosed with mproc's message (not cereal's "use a smart pointer").
#include <mproc/process.hpp>

struct Job {
  int id = 0;
  const char* name = nullptr;
  template <class A>
  void serialize(A& ar) {
    ar(id, name);
  }
};

void work(Job j) { (void)j; }

int main() {
  mproc::Process p(work, Job{});
}
