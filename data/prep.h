// Prep: a data.json mixture (or one .jsonl) -> a token store (token_store.h) + stats.json.
//
// data.json maps source paths (relative to the data.json) to a weight, or to an object
// {"weight": w, "format": f, "template": t, "loss": l} overriding the run's options:
//   {"en.jsonl": 1.0, "sft.jsonl": {"weight": 2, "format": "firefly"}}
// Sources are tokenized on N threads; the store is written under DIR.tmp-PID and renamed.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kiln {

struct Config;

struct PrepOptions {
  std::string data_json, tokenizer, out_dir;
  int64_t workers = 2;
  int64_t seq_len = 0;            // > 0: count over-long samples and report packing efficiency
  std::string overlong = "auto";  // data.overlong, for the counts and the packing estimate
  std::string format = "auto", chat_template = "firefly", loss = "all_turns";
  std::map<std::string, std::string> custom_template;
  bool skip_bad_lines = false;
  bool progress = true;  // a progress bar on stderr when it is a terminal
};

struct MixtureSource {
  std::string name;  // as written in data.json
  std::string path;  // resolved
  double weight = 1;
  std::string format, chat_template, loss;  // "" = the run's option
};

// Parses a data.json (or wraps one .jsonl as a single source of weight 1). UserError naming
// the file (and line) on malformed JSON, a bad weight, a zero weight sum or a missing file.
std::vector<MixtureSource> read_mixture(const std::string& path);

// Tokenizes everything into opt.out_dir (atomically) and returns the stats it also writes.
nlohmann::json run_prep(const PrepOptions& opt);

// For a training config whose data.mixture (or data.eval) is a data.json/.jsonl: prepares into
// <dir of it>/.kiln-cache/<content hash>/ (hash over the JSONL bytes, tokenizer bytes and the
// format/template/loss options) unless that exists, and returns the prepared dir. A prepared
// dir is returned as is. Concurrent processes on one host wait on a lock file.
std::string ensure_prepared(const Config& cfg, const std::string& mixture);

}  // namespace kiln
