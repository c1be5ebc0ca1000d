// tokenizer.model, tokenizer_config.json, special_tokens_map.json and generation_config.json
// for an exported model (see hf_tokenizer.h).
#include "data/hf_tokenizer.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "base/config.h"
#include "base/error.h"
#include "base/file_io.h"

namespace fs = std::filesystem;

namespace kiln {

void export_tokenizer(const Config& cfg, const std::string& out_dir) {
  fs::create_directories(out_dir);
  const auto out = [&](const std::string& name) { return (fs::path(out_dir) / name).string(); };
  const GenerateConfig& g = cfg.generate;
  nlohmann::ordered_json gen = {{"_from_model_config", false}, {"max_new_tokens", g.max_new_tokens}};
  if (g.temperature > 0) {
    gen["do_sample"] = true;
    gen["temperature"] = g.temperature;
    gen["top_k"] = g.top_k;  // 0: no top-k filter, in transformers as in kiln
    gen["top_p"] = g.top_p;
  } else {
    gen["do_sample"] = false;  // greedy, kiln's default
  }
  if (cfg.tokenizer.empty()) {
    write_file_atomic(out("generation_config.json"), gen.dump(2) + "\n");
    return;
  }
  std::ifstream in(cfg.tokenizer, std::ios::binary);
  if (!in) user_error("tokenizer: ", cfg.tokenizer, ": cannot read the tokenizer to export it");
  std::stringstream bytes;
  bytes << in.rdbuf();
  Tokenizer tok(cfg.tokenizer);
  gen["bos_token_id"] = tok.bos_id();
  gen["eos_token_id"] = tok.eos_id();
  gen["pad_token_id"] = tok.pad_id();

  // The run's chat template's pieces (inserted by id in training): one token each in
  // transformers too, never split.
  nlohmann::json specials = nlohmann::json::array();
  for (const auto& p : chat_template(cfg.data.chat_template, cfg.data.custom_template).specials)
    if (tok.piece_id(p) >= 0) specials.push_back(p);
  const std::string pad = tok.piece(tok.pad_id());
  nlohmann::ordered_json map = {{"bos_token", tok.piece(tok.bos_id())},
                                {"eos_token", tok.piece(tok.eos_id())},
                                {"unk_token", tok.piece(0)},
                                {"pad_token", pad},
                                {"additional_special_tokens", specials}};
  nlohmann::ordered_json config = {
      {"tokenizer_class", "LlamaTokenizer"},
      {"bos_token", map["bos_token"]},
      {"eos_token", map["eos_token"]},
      {"unk_token", map["unk_token"]},
      {"pad_token", pad},
      {"additional_special_tokens", specials},
      {"add_bos_token", true},  // kiln starts every sample and prompt with <s>
      {"add_eos_token", false},
      // kiln's models add no dummy prefix ("hello" is not "▁hello"): legacy sentencepiece
      // behaviour without a prefix space keeps transformers' ids equal to kiln's.
      {"add_prefix_space", false},
      {"legacy", true},
      {"clean_up_tokenization_spaces", false},
      {"model_max_length", cfg.model.max_seq_len},
      {"sp_model_kwargs", nlohmann::json::object()}};
  write_file_atomic(out("tokenizer.model"), bytes.str());
  write_file_atomic(out("special_tokens_map.json"), map.dump(2) + "\n");
  write_file_atomic(out("tokenizer_config.json"), config.dump(2) + "\n");
  write_file_atomic(out("generation_config.json"), gen.dump(2) + "\n");
}

}  // namespace kiln
