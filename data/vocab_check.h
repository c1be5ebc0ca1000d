// Vocabulary checks: a tokenizer (or a token store made with one) whose ids would index past
// the model's embedding is refused at start with one line naming both sizes and the key to set,
// instead of an out-of-range index deep inside the first forward.
#pragma once
#include <cstdint>
#include <string>

#include "base/model_config.h"

namespace kiln {

struct Config;

// UserError when `pieces` (the vocabulary of `what`: a tokenizer file or a token store) exceeds
// model.vocab_size. The message says where the model's size came from (model.init_from's
// config.json, or the config) and to set model.vocab_size to extend the embedding and head.
void check_vocab_fits(int64_t pieces, const std::string& what, const ModelConfig& model);

// check_vocab_fits for cfg.tokenizer, when one is set (a prepared data dir needs none).
void check_tokenizer_fits(const Config& cfg);

}  // namespace kiln
