// Manager::create<T> needs T registered with register_type.
#include <mproc/manager.hpp>

struct Plain {
  int get() const { return 1; }
};

int main() {
  mproc::Manager m;
  auto p = m.create<Plain>();
  (void)p;
}
