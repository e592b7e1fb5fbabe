// A struct that is neither trivially copyable nor has serialize().
#include <string>
#include <vector>
#include <mproc/process.hpp>

struct Account {
  std::string owner;
  std::vector<int> history;
};

void work(Account a) { (void)a; }

int main() {
  mproc::Process p(work, Account{"ann", {1, 2}});
}
