// Token store: what `kiln prep` writes and the loader memory-maps.
//
// A prepared directory DIR holds, for every source k of the mixture (in data.json order):
//   DIR/source_k.tokens  int32 little-endian token ids, all documents back to back
//   DIR/source_k.mask    uint8, one per token: 1 = the token is a trained label
//   DIR/source_k.index   int64 little-endian document offsets into .tokens, docs+1 entries
// and DIR/manifest.json {"format": "kiln-token-store", "version": 1, "vocab_size", "tokenizer",
// "sources": [{"name", "weight", "format", "prefix", "docs", "tokens", "loss_tokens"}]} plus
// DIR/stats.json. A directory is complete only when manifest.json exists; prep writes under a
// temporary name and renames, so an interrupted prep never leaves a store that looks complete.
#pragma once
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "base/file_io.h"

namespace kiln {

// Appends documents to one source's three files; finish() flushes and fsyncs them.
class TokenStoreWriter {
 public:
  TokenStoreWriter(const std::string& dir, const std::string& prefix);
  ~TokenStoreWriter();
  void append(const std::vector<int32_t>& tokens, const std::vector<uint8_t>& mask);
  void finish();
  int64_t docs() const { return docs_; }
  int64_t tokens() const { return offset_; }

 private:
  std::FILE* tokens_ = nullptr;
  std::FILE* mask_ = nullptr;
  std::FILE* index_ = nullptr;
  std::string prefix_path_;
  int64_t docs_ = 0;
  int64_t offset_ = 0;
};

struct StoreSource {
  std::string name;    // the path as written in data.json
  double weight = 1;   // its data.json weight
  std::string format;  // text | alpaca | ... as prepared ("" in stores from before formats were kept)
  int64_t docs = 0;
  int64_t tokens = 0;
  std::unique_ptr<MappedFile> tokens_file, mask_file, index_file;

  int64_t doc_length(int64_t i) const { return offsets()[i + 1] - offsets()[i]; }
  const int32_t* doc_tokens(int64_t i) const {
    return reinterpret_cast<const int32_t*>(tokens_file->data()) + offsets()[i];
  }
  const uint8_t* doc_mask(int64_t i) const { return mask_file->data() + offsets()[i]; }
  const int64_t* offsets() const { return reinterpret_cast<const int64_t*>(index_file->data()); }
};

// A prepared directory, memory-mapped. UserError when DIR is missing, incomplete or corrupt.
class TokenStore {
 public:
  explicit TokenStore(const std::string& dir);
  const std::string& dir() const { return dir_; }
  int64_t vocab_size() const { return vocab_size_; }
  int32_t pad_id() const { return pad_id_; }
  const std::vector<StoreSource>& sources() const { return sources_; }

 private:
  std::string dir_;
  int64_t vocab_size_ = 0;
  int32_t pad_id_ = 0;
  std::vector<StoreSource> sources_;
};

// True when DIR holds a complete token store (its manifest.json exists).
bool is_token_store(const std::string& dir);

}  // namespace kiln
