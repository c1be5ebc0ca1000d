// Config: one typed struct tree (base/config.h) read from YAML once (plus --set overrides),
// validated once. Every key has a default suited to the tiny CPU examples; describe_keys() lists
// them all with their meaning (`kiln plan --explain`). Errors are UserErrors naming the file, line
// and key.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "base/config.h"

namespace kiln {

// Reads `path`, applies overrides ("a.b=value", YAML-typed), and checks every key and range.
// Relative paths in the file are resolved against the file's directory.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Same, from YAML text (tests, or a config stored in a checkpoint).
Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides = {});

// Layout checks that need the world size: tp*pp*dp == world, heads % tp, layers % (pp*vpp),
// global batch % (micro batch * dp). Throws UserError naming the key.
void validate_layout(const Config& cfg, int64_t world_size);
// Everything `kiln train` refuses from the config alone at `world_size` processes: the layout,
// what this build cannot run, and options no data can make right. `kiln plan --world N` and
// `kiln train` both call it, so they refuse the same configs with the same message; what depends
// on the machine or the inputs (files, devices, checkpoints) is checked by train when it opens them.
void validate_run(const Config& cfg, int64_t world_size);

// dp = world / (tp*pp); accumulation steps = global / (micro * dp).
int64_t data_parallel_size(const Config& cfg, int64_t world_size);
int64_t accumulation_steps(const Config& cfg, int64_t world_size);

// The resolved config as YAML (every key, defaults included).
std::string to_yaml(const Config& cfg);
// One line per key: "section.key  default  meaning".
std::string describe_keys();

// Levenshtein distance, for "did you mean" hints.
size_t edit_distance(const std::string& a, const std::string& b);

}  // namespace kiln
