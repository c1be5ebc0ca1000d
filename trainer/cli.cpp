// Command-line parsing shared by the verbs.
#include "trainer/cli.h"

#include <algorithm>

#include "base/error.h"

namespace kiln {

std::string Args::get(const std::string& name, const std::string& fallback) const {
  auto it = options.find(name);
  return it == options.end() ? fallback : it->second;
}

long long Args::get_int(const std::string& name, long long fallback) const {
  auto it = options.find(name);
  if (it == options.end()) return fallback;
  char* end = nullptr;
  long long v = std::strtoll(it->second.c_str(), &end, 10);
  if (it->second.empty() || *end != '\0')
    user_error("--", name, ": expected an integer, got '", it->second, "'");
  return v;
}

Args parse_args(int argc, char** argv, int first, const std::vector<std::string>& valued,
                const std::vector<std::string>& flags) {
  Args a;
  a.verb = first > 1 ? argv[first - 1] : "";
  auto contains = [](const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
  };
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      a.help = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0 || arg == "--") {
      a.positional.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2), value;
    bool has_value = false;
    auto eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (name == "set") {
      if (!has_value) {
        if (i + 1 >= argc) user_error("--set needs key.path=value");
        value = argv[++i];
      }
      a.sets.push_back(value);
    } else if (contains(flags, name)) {
      a.options[name] = has_value ? value : "true";
    } else if (contains(valued, name)) {
      if (!has_value) {
        if (i + 1 >= argc) user_error("--", name, " needs a value");
        value = argv[++i];
      }
      a.options[name] = value;
    } else {
      std::string known;
      for (const auto& v : valued) known += " --" + v;
      for (const auto& f : flags) known += " --" + f;
      user_error("unknown option --", name, "; valid:", known.empty() ? " none" : known, " --set --help");
    }
  }
  return a;
}

}  // namespace kiln
