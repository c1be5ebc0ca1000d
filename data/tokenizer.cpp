// Tokenizer: sentencepiece wrapper and trainer (see tokenizer.h).
#include "data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <filesystem>
#include <unordered_map>

#include "base/error.h"
#include "data/bpe_encoder.h"

namespace kiln {

Tokenizer::Tokenizer(const std::string& model_path)
    : path_(model_path), sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  if (!std::filesystem::is_regular_file(model_path))
    user_error(model_path, ": tokenizer model not found (expected a sentencepiece .model file)");
  const auto status = sp_->Load(model_path);
  if (!status.ok()) user_error(model_path, ": not a sentencepiece model (", status.ToString(), ")");
  bpe_ = BpeEncoder::create(sp_->serialized_model_proto());
}

Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  if (bpe_) {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    if (bpe_->encode(text, out)) return out;
  }
  return encode_plain(text);  // a model the native encoder does not reproduce, or invalid UTF-8
}

std::vector<int32_t> Tokenizer::encode_uncached(const std::string& text) const {
  std::vector<int32_t> out;
  if (bpe_ && bpe_->encode_uncached(text, out)) return out;
  return encode_plain(text);
}

bool Tokenizer::word_cache() const { return bpe_ && bpe_->words_independent(); }

std::vector<int32_t> Tokenizer::encode_plain(const std::string& text) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  KILN_CHECK(status.ok(), "sentencepiece encode: ", status.ToString());
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  const auto status = sp_->Decode(std::vector<int>(ids.begin(), ids.end()), &out);
  KILN_CHECK(status.ok(), "sentencepiece decode: ", status.ToString());
  return out;
}

size_t Tokenizer::complete_prefix(const std::vector<int32_t>& ids) const {
  // Walk back over the trailing byte pieces to the lead byte of the last character; if the
  // bytes from it to the end are fewer than the lead byte announces, they are incomplete.
  size_t k = ids.size();
  for (int back = 0; back < 4 && k > 0 && sp_->IsByte(ids[k - 1]); ++back) {
    const int b = std::stoi(sp_->IdToPiece(ids[k - 1]).substr(3, 2), nullptr, 16);
    --k;
    if ((b & 0xC0) == 0x80) continue;  // a continuation byte: the lead is further back
    const int need = (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 1;
    return static_cast<int>(ids.size() - k) < need ? k : ids.size();
  }
  return ids.size();
}

int32_t Tokenizer::bos_id() const { return sp_->bos_id(); }
int32_t Tokenizer::eos_id() const { return sp_->eos_id(); }
int32_t Tokenizer::pad_id() const { return sp_->pad_id() >= 0 ? sp_->pad_id() : sp_->eos_id(); }
int64_t Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }

int32_t Tokenizer::piece_id(const std::string& piece) const {
  const int id = sp_->PieceToId(piece);
  // PieceToId answers unk for anything it does not know.
  if (id == sp_->unk_id() && piece != sp_->IdToPiece(id)) return -1;
  return id;
}

int32_t Tokenizer::require_piece(const std::string& piece, const std::string& what) const {
  const int32_t id = piece_id(piece);
  if (id < 0)
    user_error(path_, ": ", what, " needs the special token ", piece,
               " which this tokenizer lacks (train one with `kiln tokenizer train`, which defines ",
               "every chat template's special tokens, or pick another template)");
  return id;
}

std::string Tokenizer::piece(int32_t id) const {
  KILN_CHECK(id >= 0 && id < vocab_size(), "token id ", id, " out of range");
  return sp_->IdToPiece(id);
}

const std::vector<std::string>& chat_special_pieces() {
  static const std::vector<std::string> pieces = {"<_user>",      "<_bot>",     "<_end>",
                                                  "<|im_start|>", "<|im_end|>", "[INST]",
                                                  "[/INST]",      "<<SYS>>",    "<</SYS>>"};
  return pieces;
}

namespace {

class VectorIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorIterator(const std::vector<std::string>& v) : v_(v) {}
  bool done() const override { return i_ >= v_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return v_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& v_;
  size_t i_ = 0;
};

}  // namespace

void train_tokenizer(const std::vector<std::string>& sentences, const TokenizerTrainOptions& opt) {
  if (opt.vocab_size < 100) user_error("--vocab-size ", opt.vocab_size, ": must be at least 100");
  if (opt.model_type != "bpe" && opt.model_type != "unigram" && opt.model_type != "char" &&
      opt.model_type != "word")
    user_error("--model-type ", opt.model_type, ": expected bpe, unigram, char or word");
  if (sentences.empty()) user_error("tokenizer train: the input holds no text");
  std::string symbols;
  for (const auto& p : chat_special_pieces()) symbols += (symbols.empty() ? "" : ",") + p;
  const std::unordered_map<std::string, std::string> kw = {
      {"model_prefix", opt.out_prefix},
      {"vocab_size", std::to_string(opt.vocab_size)},
      {"model_type", opt.model_type},
      {"byte_fallback", "true"},
      {"character_coverage", std::to_string(opt.character_coverage)},
      // As Llama: no normalization, whitespace and newlines kept (chat templates depend on them).
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      // No dummy "▁" before every encoded piece: templates encode text between special tokens
      // piece by piece, and "<|im_start|>user" must not become "<|im_start|> user".
      {"add_dummy_prefix", "false"},
      {"user_defined_symbols", symbols},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "3"},
      {"input_sentence_size", std::to_string(opt.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"num_threads", std::to_string(opt.threads)},
      {"max_sentence_length", "16384"},
      {"hard_vocab_limit", "false"},
      {"minloglevel", "2"},
  };
  VectorIterator it(sentences);
  const auto status = sentencepiece::SentencePieceTrainer::Train(kw, &it);
  if (!status.ok()) user_error("tokenizer train: ", status.ToString());
}

}  // namespace kiln
