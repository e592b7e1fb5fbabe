// Positive control for the compile_fail harness: compiled exactly like the
// cases beside it and must SUCCEED, proving that their failures come from the
// code under test and not from the command line, include paths or headers.
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <mproc/process.hpp>
#include <mproc/serial.hpp>
#include <mproc/task.hpp>

namespace {

void work(std::string text, const std::vector<int>& values, std::optional<double> scale) {
  (void)text;
  (void)values;
  (void)scale;
}

void add(int a, int b) { (void)(a + b); }

struct Functor {
  int factor = 2;
  void operator()(int v) const { (void)(v * factor); }
  template <class A>
  void serialize(A& ar) {
    ar(factor);
  }
};

struct Record {
  int id = 0;
  std::map<std::string, std::vector<int>> data;
  template <class A>
  void serialize(A& ar) {
    ar(id, data);
  }
};

}  // namespace

int main() {
  int x = 1;
  mproc::Process a(work, "text", std::vector<int>{1, 2}, 2.0);  // const char* converts to std::string
  mproc::Process b([](int v) { (void)v; }, x);                    // captureless lambda, value copied
  mproc::Process c(Functor{3}, 4);                                // stateful functor with serialize()
  mproc::Process d(mproc::bind(add, x), 2);                       // bound values instead of captures
  auto bytes = mproc::to_bytes(Record{1, {{"k", {1, 2}}}});
  (void)bytes;
}
