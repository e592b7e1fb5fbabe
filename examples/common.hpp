// examples/common.hpp — small helpers the example programs share: `--name=value`
// flags, a stopwatch, printf into a std::string, aligned text tables, and tasks
// spread over plain std::threads (the baseline the examples compare processes to).
// Nothing here is part of mproc; it only keeps each example about its scenario.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace examples {

/// printf into a std::string.
[[gnu::format(printf, 1, 2)]] inline std::string format(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  va_list ap2;
  va_copy(ap2, ap);
  int n = std::vsnprintf(nullptr, 0, fmt, ap);
  va_end(ap);
  std::string s(n > 0 ? static_cast<std::size_t>(n) : 0, '\0');
  std::vsnprintf(s.data(), s.size() + 1, fmt, ap2);
  va_end(ap2);
  return s;
}

/// Command-line flags of the form `--name=value` or `--name value` (or `--name` for
/// a switch). Ask for every flag with a default first, then call check(): an
/// unknown flag prints the known ones and exits, so a typo never silently runs the
/// defaults.
class Flags {
 public:
  Flags(int argc, char** argv) : program_(argc > 0 ? argv[0] : "example") {
    for (int i = 1; i < argc; ++i) args_.emplace_back(argv[i]);
  }

  long long get(std::string_view name, long long def, std::string_view help = {}) {
    auto v = find(name, help, std::to_string(def), true);
    return v ? std::strtoll(v->c_str(), nullptr, 10) : def;
  }
  double get_double(std::string_view name, double def, std::string_view help = {}) {
    auto v = find(name, help, format("%g", def), true);
    return v ? std::strtod(v->c_str(), nullptr) : def;
  }
  std::string get_string(std::string_view name, std::string def, std::string_view help = {}) {
    auto v = find(name, help, def, true);
    return v ? *v : def;
  }
  /// `--name` (or `--name=1`) present.
  bool has(std::string_view name, std::string_view help = {}) {
    auto v = find(name, help, "off", false);
    return v && *v != "0" && *v != "false";
  }

  /// Exits with the list of known flags on `--help` or an unknown flag.
  void check() const {
    bool help = false;
    for (std::size_t i = 0; i < args_.size(); ++i) {
      const std::string& a = args_[i];
      std::string_view name = flag_name(a);
      if (values_.count(i)) continue;  // the value of `--name value`
      if (a == "--help" || a == "-h") {
        help = true;
      } else if (!known_.count(std::string(name))) {
        std::fprintf(stderr, "%s: unknown argument '%s'\n", program_.c_str(), a.c_str());
        help = true;
      }
    }
    if (!help) return;
    std::fprintf(stderr, "usage: %s [flags]\n", program_.c_str());
    for (const auto& line : usage_) std::fprintf(stderr, "  %s\n", line.c_str());
    std::exit(2);
  }

 private:
  static std::string_view flag_name(std::string_view a) {
    if (a.substr(0, 2) != "--") return a;
    a.remove_prefix(2);
    return a.substr(0, a.find('='));
  }
  // `takes_value`: a flag without '=' takes the next argument as its value,
  // unless that is a flag itself.
  std::optional<std::string> find(std::string_view name, std::string_view help, const std::string& def,
                                  bool takes_value) {
    known_.emplace(name);
    usage_.push_back(format("--%-12.*s %.*s (default %s)", static_cast<int>(name.size()), name.data(),
                            static_cast<int>(help.size()), help.data(), def.c_str()));
    for (std::size_t i = 0; i < args_.size(); ++i) {
      const std::string& a = args_[i];
      if (flag_name(a) != name || a.substr(0, 2) != "--") continue;
      auto eq = a.find('=');
      if (eq != std::string::npos) return a.substr(eq + 1);
      if (takes_value && i + 1 < args_.size() && args_[i + 1].substr(0, 2) != "--") {
        values_.insert(i + 1);
        return args_[i + 1];
      }
      return std::string("1");
    }
    return std::nullopt;
  }

  std::string program_;
  std::vector<std::string> args_;
  std::set<std::string, std::less<>> known_;
  std::vector<std::string> usage_;
  std::set<std::size_t> values_;  // indices of arguments taken as a flag's value
};

/// Wall-clock time since construction (or the last reset()), on the monotonic clock.
class Stopwatch {
 public:
  using clock = std::chrono::steady_clock;
  Stopwatch() : t0_(clock::now()) {}
  void reset() { t0_ = clock::now(); }
  double seconds() const { return std::chrono::duration<double>(clock::now() - t0_).count(); }
  double ms() const { return seconds() * 1e3; }

 private:
  clock::time_point t0_;
};

/// Runs task(0) .. task(tasks - 1) on `workers` std::threads that take the next
/// index from a shared counter, and returns when all are done: plain C++'s way to
/// spread independent tasks over the cores, the baseline for a process pool.
template <class Task>
void run_on_threads(int workers, int tasks, const Task& task) {
  std::atomic<int> next{0};
  std::vector<std::jthread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&] {
      for (int t; (t = next++) < tasks;) task(t);
    });
  }
  // The jthreads join as the vector goes out of scope.
}

/// A text table: columns are as wide as their widest cell, right-aligned except
/// the first. Rows may be added from one thread only.
class Table {
 public:
  explicit Table(std::vector<std::string> header) : rows_{std::move(header)} {}
  void row(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
  void print(const char* indent = "  ") const {
    std::vector<std::size_t> width;
    for (const auto& r : rows_) {
      if (width.size() < r.size()) width.resize(r.size());
      for (std::size_t c = 0; c < r.size(); ++c) width[c] = std::max(width[c], r[c].size());
    }
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      std::string line = indent;
      for (std::size_t c = 0; c < rows_[i].size(); ++c) {
        int w = static_cast<int>(width[c]);
        line += format(c == 0 ? "%-*s" : "  %*s", w, rows_[i][c].c_str());
      }
      std::printf("%s\n", line.c_str());
      if (i == 0) {
        std::size_t total = 0;
        for (auto w : width) total += w + 2;
        std::printf("%s%s\n", indent, std::string(total - 2, '-').c_str());
      }
    }
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

/// "1.23 s" / "45.6 ms" / "789 us": a duration for a table cell.
inline std::string human_time(double seconds) {
  if (seconds >= 1) return format("%.2f s", seconds);
  if (seconds >= 1e-3) return format("%.1f ms", seconds * 1e3);
  return format("%.0f us", seconds * 1e6);
}

/// "[0, 1, 4]": a list of numbers the way Python prints one.
template <class Range>
std::string to_list(const Range& values) {
  std::string s = "[";
  for (const auto& v : values) {
    if (s.size() > 1) s += ", ";
    s += std::to_string(v);
  }
  return s + "]";
}

/// Prints the verdict line the CTest checks look for and returns main()'s exit code.
inline int verdict(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "OK" : "FAILED", what);
  return ok ? 0 : 1;
}

}  // namespace examples
