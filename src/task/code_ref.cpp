// Module-relative code references (see mproc/detail/code_ref.hpp).
#include "mproc/detail/code_ref.hpp"

#include <elf.h>
#include <link.h>

#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace mproc::detail {
namespace {

struct LocateQuery {
  std::uintptr_t addr = 0;
  bool found = false;
  CodeRef ref;
};

int locate_cb(dl_phdr_info* info, std::size_t, void* data) {
  auto* q = static_cast<LocateQuery*>(data);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    std::uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
    if (q->addr >= lo && q->addr < lo + ph.p_memsz) {
      q->found = true;
      q->ref.module = info->dlpi_name ? info->dlpi_name : "";
      q->ref.offset = q->addr - info->dlpi_addr;
      return 1;
    }
  }
  return 0;
}

// What the child needs to check a code reference against a module: its load
// bias and its executable segments (as offsets from the bias).
struct ModuleCode {
  std::uintptr_t base = 0;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> exec;  // [lo, hi)

  bool contains(std::uint64_t offset) const {
    for (auto [lo, hi] : exec) {
      if (offset >= lo && offset < hi) return true;
    }
    return false;
  }
};

struct ResolveQuery {
  const std::string* module = nullptr;
  bool found = false;
  ModuleCode code;
};

ModuleCode module_code(const dl_phdr_info* info) {
  ModuleCode code;
  code.base = info->dlpi_addr;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_LOAD && (ph.p_flags & PF_X)) code.exec.emplace_back(ph.p_vaddr, ph.p_vaddr + ph.p_memsz);
  }
  return code;
}

int resolve_cb(dl_phdr_info* info, std::size_t, void* data) {
  auto* q = static_cast<ResolveQuery*>(data);
  const char* name = info->dlpi_name ? info->dlpi_name : "";
  if (*q->module != name) return 0;
  q->found = true;
  q->code = module_code(info);
  return 1;
}

// resolve_code's table. Modules do not move once loaded; remembering them saves a
// dl_iterate_phdr (a loader lock and a walk of every module) per decoded task.
struct ModuleTable {
  std::mutex mu;
  std::unordered_map<std::string, ModuleCode> modules;
};

ModuleTable& module_table() {
  static auto* t = new ModuleTable;  // never destroyed: children exit through _exit
  return *t;
}

int cache_cb(dl_phdr_info* info, std::size_t, void* data) {
  auto* t = static_cast<ModuleTable*>(data);
  ModuleCode code = module_code(info);
  if (!code.exec.empty()) t->modules.emplace(info->dlpi_name ? info->dlpi_name : "", std::move(code));
  return 0;
}

}  // namespace

void cache_loaded_modules() noexcept {
  ModuleTable& t = module_table();
  try {
    std::lock_guard lock(t.mu);
    dl_iterate_phdr(cache_cb, &t);
  } catch (...) {  // out of memory: resolve_code walks the modules itself
  }
}

CodeRef locate_code(const void* addr) {
  LocateQuery q;
  q.addr = reinterpret_cast<std::uintptr_t>(addr);
  dl_iterate_phdr(locate_cb, &q);
  if (!q.found) {
    throw Error("mproc: code at this address belongs to no loaded module, so another process "
                "cannot find it (JIT or hand-mapped code cannot be a task)");
  }
  return q.ref;
}

const void* resolve_code(const CodeRef& ref) {
  // The offset is checked on every call, cached module or not.
  ModuleTable& t = module_table();
  ModuleCode code;
  {
    std::lock_guard lock(t.mu);
    auto it = t.modules.find(ref.module);
    if (it != t.modules.end()) code = it->second;
  }
  if (code.exec.empty()) {
    ResolveQuery q;
    q.module = &ref.module;
    dl_iterate_phdr(resolve_cb, &q);
    if (!q.found) {
      throw SerializationError("mproc: the task's code lives in module '" + ref.module +
                               "', which is not loaded in this process. Load it (link it, or "
                               "dlopen it before mproc::init) in every process.");
    }
    code = q.code;
    std::lock_guard lock(t.mu);
    t.modules.emplace(ref.module, code);
  }
  if (!code.contains(ref.offset)) {
    throw SerializationError("mproc: code reference points outside the executable code of '" +
                             (ref.module.empty() ? std::string("<main program>") : ref.module) +
                             "': the child is not running the same binary as its parent");
  }
  return reinterpret_cast<const void*>(code.base + ref.offset);
}

}  // namespace mproc::detail

#include "mproc/task.hpp"

namespace mproc::detail {

Entry decode_entry(Reader& r) {
  auto ref = load<CodeRef>(r);
  auto id = load<std::uint64_t>(r);
  auto entry = reinterpret_cast<Entry>(const_cast<void*>(resolve_code(ref)));
  // The address lies in executable code of the right module; calling it with
  // nullptr only returns the trampoline's identity, which must match.
  if (entry(nullptr, nullptr) != id) {
    throw SerializationError("mproc: the task's entry point does not match: the child is not "
                             "running the same build of the program as its parent");
  }
  return entry;
}

}  // namespace mproc::detail
