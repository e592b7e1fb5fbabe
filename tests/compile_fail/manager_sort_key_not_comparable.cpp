// sort(key) orders the items by key(item) with operator<: a key without one cannot.
#include <mproc/manager.hpp>

struct Unordered {
  int v = 0;
};

Unordered wrap(const int& x) { return {x}; }

int main() {
  mproc::ListProxy<int> l;
  l.sort(wrap);
}
