// std::function may hide captured pointers; it cannot be a task.
#include <functional>
#include <mproc/process.hpp>

int main() {
  mproc::Process p(std::function<void()>{[] {}});
}
