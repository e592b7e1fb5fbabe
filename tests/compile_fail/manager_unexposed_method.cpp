// A manager proxy may call only the methods register_type lists.
#include <mproc/manager.hpp>

struct Counter {
  int n = 0;
  int add(int k) { return n += k; }
  int secret() const { return 42; }
};
template <>
constexpr auto mproc::exposed<Counter> = mproc::register_type<Counter>("Counter", &Counter::add);

int main() {
  mproc::ObjectProxy<Counter> c;
  c.call<&Counter::secret>();
}
