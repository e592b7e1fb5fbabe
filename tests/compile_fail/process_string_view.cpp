// string_view does not own its characters.
#include <string_view>
#include <mproc/process.hpp>

void work(std::string_view s) { (void)s; }

int main() {
  mproc::Process p(work, std::string_view("a"));
}
