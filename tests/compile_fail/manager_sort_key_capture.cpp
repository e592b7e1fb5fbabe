// sort(key) runs key on the server: a lambda that captures cannot be sent there.
#include <mproc/manager.hpp>

int main() {
  mproc::ListProxy<int> l;
  int offset = 3;
  l.sort([offset](const int& x) { return x + offset; });
}
