// bench/common/report.hpp — what every benchmark program shares: arguments,
// percentiles, running the Python side, and printing/writing results with ratios.
#pragma once

#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace bench {

struct Args {
  bool quick = false;
  std::string json;
  std::string python = "python3";
  Args(int argc, char** argv, std::string default_json) : json(std::move(default_json)) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--quick") quick = true;
      else if (a == "--json" && i + 1 < argc) json = argv[++i];
      else if (a == "--python" && i + 1 < argc) python = argv[++i];
      else if (a == "--no-python") python.clear();
    }
    if (const char* q = std::getenv("MPROC_BENCH_QUICK"); q && *q == '1') quick = true;
  }
};

inline double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  auto i = static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

/// Numbers from a JSON object, flattened to "a.b" keys. Only what our Python
/// scripts print: nested objects of numbers and strings.
class Flat {
 public:
  Flat() = default;
  explicit Flat(const std::string& json) {
    std::size_t i = 0;
    parse(json, i, "");
  }
  /// The number at `key`, or -1 when missing (the Python side did not run).
  double num(const std::string& key) const {
    auto it = nums_.find(key);
    return it == nums_.end() ? -1 : it->second;
  }
  bool empty() const { return nums_.empty(); }

 private:
  static void skip(const std::string& s, std::size_t& i) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r' || s[i] == ',' || s[i] == ':')) ++i;
  }
  static std::string str(const std::string& s, std::size_t& i) {
    std::string out;
    for (++i; i < s.size() && s[i] != '"'; ++i) out += s[i];
    ++i;
    return out;
  }
  void parse(const std::string& s, std::size_t& i, const std::string& prefix) {
    skip(s, i);
    if (i >= s.size()) return;
    if (s[i] == '{') {
      ++i;
      for (;;) {
        skip(s, i);
        if (i >= s.size() || s[i] == '}') {
          ++i;
          return;
        }
        std::string k = str(s, i);
        parse(s, i, prefix.empty() ? k : prefix + "." + k);
      }
    } else if (s[i] == '"') {
      str(s, i);
    } else {
      char* end = nullptr;
      double v = std::strtod(s.c_str() + i, &end);
      nums_[prefix] = v;
      i = static_cast<std::size_t>(end - s.c_str());
    }
  }
  std::map<std::string, double> nums_;
};

/// Runs `python3 script [--quick]` and parses the JSON it prints. Empty on failure
/// (reported, not fatal: the C++ numbers still stand).
inline Flat run_python(const Args& a, const std::string& script) {
  if (a.python.empty()) return {};
  std::string cmd = a.python + " " + script + (a.quick ? " --quick" : "");
  std::fprintf(stderr, "running %s ...\n", cmd.c_str());
  std::unique_ptr<FILE, int (*)(FILE*)> p(::popen(cmd.c_str(), "r"), ::pclose);
  if (!p) return {};
  std::string out;
  char buf[4096];
  while (std::size_t n = std::fread(buf, 1, sizeof buf, p.get())) out.append(buf, n);
  Flat f(out);
  if (f.empty()) std::fprintf(stderr, "warning: %s printed no results\n", script.c_str());
  return f;
}

enum Better { lower_is_better, higher_is_better };

class Report {
 public:
  Report(std::string suite, const Args& args) : suite_(std::move(suite)), args_(args) {
    std::printf("# %s benchmark%s\n", suite_.c_str(), args.quick ? " (quick)" : "");
    utsname u{};
    ::uname(&u);
    machine_ = std::string(u.sysname) + " " + u.release + " " + u.machine + ", " +
               std::to_string(::sysconf(_SC_NPROCESSORS_ONLN)) + " CPUs";
    std::printf("machine: %s\n", machine_.c_str());
  }

  void section(const std::string& title) {
    section_ = title;
    std::printf("\n## %s\n", title.c_str());
  }

  /// One measurement, with comparisons (a value < 0 means "not measured").
  void row(const std::string& name, double value, const std::string& unit,
           std::vector<std::pair<std::string, double>> compare, Better better) {
    add({section_, name, value, unit, std::move(compare), better, {}, 0, {}});
  }

  /// One point of a sweep: a row named "<series>, <x> <x_unit>" that also records
  /// the series and the swept parameter, so bench/run.py can plot the section
  /// with one line for the series and one for each comparison.
  void point(const std::string& series, double x, const std::string& x_unit, double value, const std::string& unit,
             std::vector<std::pair<std::string, double>> compare, Better better) {
    add({section_, series + ", " + x_label(x, x_unit), value, unit, std::move(compare), better, series, x, x_unit});
  }

  /// Writes the JSON file (creating its directory).
  void finish() const {
    std::string dir = args_.json.substr(0, args_.json.rfind('/'));
    if (args_.json.find('/') != std::string::npos) std::system(("mkdir -p '" + dir + "'").c_str());
    std::ofstream f(args_.json);
    f << "{\n  \"suite\": \"" << suite_ << "\",\n  \"machine\": \"" << machine_ << "\",\n  \"quick\": "
      << (args_.quick ? "true" : "false") << ",\n  \"rows\": [\n";
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      const auto& r = rows_[i];
      f << "    {\"section\": \"" << r.section << "\", \"name\": \"" << r.name << "\", \"value\": " << json_num(r.value)
        << ", \"unit\": \"" << r.unit << "\", \"better\": \"" << (r.better == lower_is_better ? "lower" : "higher")
        << "\"";
      if (!r.series.empty()) f << ", \"series\": \"" << r.series << "\", \"x\": " << r.x << ", \"x_unit\": \"" << r.x_unit << "\"";
      f << ", \"compare\": {";
      for (std::size_t k = 0; k < r.compare.size(); ++k) {
        f << (k ? ", " : "") << "\"" << r.compare[k].first << "\": " << json_num(r.compare[k].second);
      }
      f << "}}" << (i + 1 < rows_.size() ? "," : "") << "\n";
    }
    f << "  ]\n}\n";
    std::printf("\nresults written to %s\n", args_.json.c_str());
  }

  static std::string fmt(double v) {
    char b[64];
    if (v >= 1e9) std::snprintf(b, sizeof b, "%.2fG", v / 1e9);
    else if (v >= 1e6) std::snprintf(b, sizeof b, "%.2fM", v / 1e6);
    else if (v >= 1e4) std::snprintf(b, sizeof b, "%.1fk", v / 1e3);
    else if (v >= 100) std::snprintf(b, sizeof b, "%.0f", v);
    else std::snprintf(b, sizeof b, "%.2f", v);
    return b;
  }
  /// A JSON number; -1 ("not measured") for an infinity or NaN, which JSON cannot hold.
  static std::string json_num(double v) {
    if (!std::isfinite(v)) return "-1";
    std::ostringstream o;
    o.precision(6);
    o << v;
    return o.str();
  }
  /// "8 B", "1 KiB", "1 MiB" for bytes; "10 µs" and the like otherwise.
  static std::string x_label(double x, const std::string& unit) {
    char b[64];
    if (unit == "B" && x >= 1 << 20) std::snprintf(b, sizeof b, "%g MiB", x / (1 << 20));
    else if (unit == "B" && x >= 1 << 10) std::snprintf(b, sizeof b, "%g KiB", x / (1 << 10));
    else std::snprintf(b, sizeof b, "%g %s", x, unit.c_str());
    return b;
  }
  static std::string ratio_text(double r) {
    char b[64];
    if (r >= 1) std::snprintf(b, sizeof b, "mproc %.1fx better", r);
    else std::snprintf(b, sizeof b, "mproc %.1fx worse", 1 / r);
    return b;
  }

 private:
  struct Row {
    std::string section, name;
    double value;
    std::string unit;
    std::vector<std::pair<std::string, double>> compare;
    Better better;
    std::string series;  // empty unless a sweep point
    double x;
    std::string x_unit;
  };
  void add(Row row) {
    std::printf("  %-48s %12s %-6s", row.name.c_str(), fmt(row.value).c_str(), row.unit.c_str());
    for (auto& [who, v] : row.compare) {
      if (v < 0) {
        std::printf("  | %s: n/a", who.c_str());
        continue;
      }
      double ratio = row.better == lower_is_better ? v / row.value : row.value / v;
      std::printf("  | %s %s (%s)", who.c_str(), fmt(v).c_str(), ratio_text(ratio).c_str());
    }
    std::printf("\n");
    std::fflush(stdout);
    rows_.push_back(std::move(row));
  }
  std::string suite_;
  const Args& args_;
  std::string machine_;
  std::string section_;
  std::vector<Row> rows_;
};

}  // namespace bench
