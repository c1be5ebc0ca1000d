// Vocabulary checks (see vocab_check.h).
#include "data/vocab_check.h"

#include "data/tokenizer.h"
#include "base/config.h"
#include "base/error.h"

namespace kiln {

void check_vocab_fits(int64_t pieces, const std::string& what, const ModelConfig& model) {
  if (pieces <= model.vocab_size) return;
  const bool hf = model.init_from.rfind("hf:", 0) == 0;
  user_error(what, ": ", pieces, " pieces, more than model.vocab_size ", model.vocab_size,
             hf ? str(" (from ", model.init_from.substr(3), "/config.json)") : std::string(),
             "; set model.vocab_size: ", pieces,
             " (or more) to extend the embedding and head (new rows: model.vocab_init)");
}

void check_tokenizer_fits(const Config& cfg) {
  if (cfg.tokenizer.empty()) return;
  Tokenizer tok(cfg.tokenizer);
  check_vocab_fits(tok.vocab_size(), cfg.tokenizer, cfg.model);
}

}  // namespace kiln
