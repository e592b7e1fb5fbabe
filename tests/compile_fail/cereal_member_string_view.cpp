// A user type whose serialize() names a string_view member.
#include <string_view>
#include <mproc/serial.hpp>

struct Job {
  std::string_view name;
  template <class A>
  void serialize(A& ar) {
    ar(name);
  }
};

int main() {
  auto bytes = mproc::to_bytes(Job{"x"});
  (void)bytes;
}
