// A proxy call's arguments must convert to the method's parameters.
#include <string>

#include <mproc/manager.hpp>

struct Counter {
  int n = 0;
  int add(int k) { return n += k; }
};
template <>
constexpr auto mproc::exposed<Counter> = mproc::register_type<Counter>("Counter", &Counter::add);

int main() {
  mproc::ObjectProxy<Counter> c;
  c.call<&Counter::add>(std::string("one"));
}
