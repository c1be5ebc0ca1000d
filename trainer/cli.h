// Command-line parsing shared by every verb: positional arguments, --set overrides,
// --name value / --name=value options and boolean --flags.
#pragma once
#include <map>
#include <string>
#include <vector>

namespace kiln {

struct Args {
  std::string verb;
  std::vector<std::string> positional;
  std::vector<std::string> sets;               // --set a.b=c, in order
  std::map<std::string, std::string> options;  // --name value (flags map to "true")
  bool help = false;

  bool has(const std::string& name) const { return options.count(name) > 0; }
  std::string get(const std::string& name, const std::string& fallback = "") const;
  long long get_int(const std::string& name, long long fallback) const;
};

// `flags` names the options that take no value. Unknown options are UserErrors.
Args parse_args(int argc, char** argv, int first, const std::vector<std::string>& valued,
                const std::vector<std::string>& flags);

// Verbs. Each returns the process exit code; bad input throws UserError.
int cmd_train(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_plan(int argc, char** argv);
int cmd_generate(int argc, char** argv);
int cmd_export(int argc, char** argv);
int cmd_verify(int argc, char** argv);
int cmd_prep(int argc, char** argv);       // data/prep_command.cpp
int cmd_tokenizer(int argc, char** argv);  // data/prep_command.cpp

}  // namespace kiln
