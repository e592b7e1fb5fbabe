// A capturing lambda as a value.
#include <mproc/serial.hpp>

int main() {
  int x = 1;
  auto bytes = mproc::to_bytes([&x] { return x; });
  (void)bytes;
}
