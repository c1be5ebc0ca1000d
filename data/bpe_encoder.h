// A native encoder for sentencepiece BPE models that keep text as it is (no normalization rule,
// whitespace kept, spaces escaped as "▁"): the models `kiln tokenizer train` makes and Llama's.
// It gives exactly sentencepiece's ids (the same merge order: highest piece score first, the
// leftmost pair on ties; user-defined symbols matched longest-first and never merged; unused
// pieces resegmented; byte fallback, or one unk for a run of unknown pieces), without
// sentencepiece's per-call protobuf and allocations.
//
// When no piece has "▁" after its first character, no merge can cross a "▁", so each "▁"-led
// word encodes by itself to the ids it gets in the whole text; words are then served from a
// per-thread cache. Tests compare every path against libsentencepiece (test_data_format.cpp)
// and bench/prep.sh against the Python wheel's ids.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

class BpeEncoder {
 public:
  // The encoder of a serialized sentencepiece ModelProto, or nullptr when the model is one this
  // encoder does not reproduce exactly (unigram, a normalization rule, extra whitespace removed,
  // whitespace as suffix, a user-defined symbol with a space).
  static std::unique_ptr<BpeEncoder> create(const std::string& model_proto);
  ~BpeEncoder();

  // Appends the ids of `text` to `out`; false (nothing appended) when `text` is not valid UTF-8,
  // which sentencepiece replaces character by character: the caller asks sentencepiece then.
  bool encode(std::string_view text, std::vector<int32_t>& out) const;
  // Encoding word by word is exact for this model, so encode() caches words.
  bool words_independent() const { return words_independent_; }
  // encode() without the word cache (the same ids): for tests.
  bool encode_uncached(std::string_view text, std::vector<int32_t>& out) const;

 private:
  struct Piece {
    std::string_view text;
    float score;
    int32_t id;  // -1: an empty slot of the table
    int type;
    uint32_t tag;  // the text's hash (its high half), compared before the text
  };
  BpeEncoder() = default;
  // The entry of `s` among the mergeable pieces (normal, user-defined, unused), or nullptr.
  const Piece* find(std::string_view s) const;
  int32_t piece_to_id(std::string_view s) const;  // reserved pieces first, then mergeable; else unk
  void normalize(std::string_view text, std::string& out) const;
  void encode_normalized(std::string_view norm, std::vector<int32_t>& out) const;
  size_t prefix_match(std::string_view s, bool* user_defined) const;

  std::string storage_;                 // every piece's text, back to back
  std::vector<Piece> pieces_;           // open-addressing table over mergeable pieces
  std::vector<Piece> reserved_;         // control, unknown and byte pieces (by text)
  std::vector<std::string_view> user_;  // user-defined symbols
  size_t max_user_ = 0;
  std::vector<int> types_;  // [id] piece type
  int32_t byte_ids_[256] = {};
  int32_t unk_id_ = 0;
  bool byte_fallback_ = false, dummy_prefix_ = false, words_independent_ = false, reserved_overlap_ = false;
  uint64_t instance_ = 0;  // tells the per-thread word caches of different encoders apart
};

}  // namespace kiln
