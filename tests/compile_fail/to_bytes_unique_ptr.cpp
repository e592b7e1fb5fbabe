// Smart pointers own memory of this process.
#include <memory>
#include <mproc/serial.hpp>

int main() {
  auto bytes = mproc::to_bytes(std::unique_ptr<int>{});
  (void)bytes;
}
