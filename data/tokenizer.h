// Tokenizer: a sentencepiece model (encode, decode, special pieces by name) and the trainer
// behind `kiln tokenizer train` (BPE, byte fallback, every chat template's special pieces).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace kiln {

class BpeEncoder;

class Tokenizer {
 public:
  explicit Tokenizer(const std::string& model_path);  // UserError if missing or not a model
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // The ids of `text`, no bos/eos added. BPE models that keep text as it is (as `kiln tokenizer
  // train` makes them, and Llama's) go through kiln's own encoder (data/bpe_encoder.h), which
  // gives sentencepiece's ids without its per-call overhead; other models through sentencepiece.
  std::vector<int32_t> encode(const std::string& text) const;
  // sentencepiece's own encoder: the reference the native one is tested against.
  std::vector<int32_t> encode_plain(const std::string& text) const;
  // encode() without the word cache (the native encoder on the whole text, where it applies).
  std::vector<int32_t> encode_uncached(const std::string& text) const;
  // True when the native encoder applies to this model.
  bool native() const { return bpe_ != nullptr; }
  // True when encode() caches the ids of each "▁"-led word: no piece has "▁" after its first
  // character, so no merge crosses a word and each word encodes to the ids it has in the text.
  bool word_cache() const;
  std::string decode(const std::vector<int32_t>& ids) const;
  // How many of `ids` decode to whole characters: trailing byte pieces (<0xE5>, ...) that start
  // a UTF-8 character without finishing it are held back (generate stops mid-character).
  size_t complete_prefix(const std::vector<int32_t>& ids) const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t pad_id() const;  // the model's pad, else eos
  int64_t vocab_size() const;
  int32_t piece_id(const std::string& piece) const;  // -1 if the vocabulary lacks it
  // piece_id, or a UserError naming the piece and `what` needs it (a chat template, say).
  int32_t require_piece(const std::string& piece, const std::string& what) const;
  std::string piece(int32_t id) const;  // the piece text, e.g. "▁hello" or "</s>"
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::unique_ptr<BpeEncoder> bpe_;  // null: sentencepiece encodes
};

// Special pieces every built-in chat template needs; `kiln tokenizer train` defines them all.
const std::vector<std::string>& chat_special_pieces();

struct TokenizerTrainOptions {
  std::string out_prefix;  // writes PREFIX.model and PREFIX.vocab
  int64_t vocab_size = 2000;
  std::string model_type = "bpe";  // bpe | unigram | char | word
  int64_t max_sentences = 200000;  // sampled from the input when there are more
  int64_t threads = 2;
  double character_coverage = 0.9995;
};
// Trains on `sentences` (already extracted text). Throws UserError on bad options.
void train_tokenizer(const std::vector<std::string>& sentences, const TokenizerTrainOptions& opt);

}  // namespace kiln
