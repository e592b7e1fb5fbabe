// mproc::bind stores its values as given (decayed), unlike Process, which converts
// arguments to the target's parameter types: a string literal is a const char*
// here and is refused with the raw-pointer message (which says: send std::string).
#include <string>
#include <mproc/task.hpp>

void work(std::string s, int n) { (void)s; (void)n; }

int main() {
  auto b = mproc::bind(work, "text");
  (void)b;
}
