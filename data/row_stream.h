// RowStream: the deterministic global sequence of packed rows (no tokens, just which sample
// pieces go where). Row k belongs to training step k / G (G = global batch in sequences); the
// mixer draws with the weights of that step, the packer fills rows of data.seq_len positions
// best-fit from chunks of drawn samples (about 16 rows' worth at a time), and each chunk's rows
// come out in a seeded shuffle (best-fit opens them longest-first). Depends on (seed, sample lengths,
// weights, schedule, G, seq_len, packing, overlong) only, never on the number of data-parallel ranks.
// Over-long samples (more than seq_len + 1 tokens), per source (see resolve_overlong):
//   split     consecutive pieces of at most seq_len + 1 tokens, each starting on the last token
//             of the one before, so that every label of the document is trained exactly once;
//             each piece is a sample of its own (positions from 0, no attention across pieces);
//   truncate  the first seq_len + 1 tokens;   drop  left out.
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "data/mixer.h"
#include "base/config.h"

namespace kiln {

struct Piece {
  int32_t source = 0;
  int64_t doc = 0;
  int64_t length = 0;  // tokens used: [offset, offset + length) of the doc
  int64_t offset = 0;  // > 0 for the later pieces of a split document
};
using Row = std::vector<Piece>;  // pieces take length-1 positions each, at most seq_len in all

// data.overlong for one source of `format` ("" = unknown, a store from before formats were
// recorded): auto is split for pretraining text and truncate for the SFT formats (a split answer
// would train a piece without its question); split on an SFT source is a UserError naming it.
std::string resolve_overlong(const std::string& overlong, const std::string& format,
                             const std::string& source);
// The pieces sample `doc` of `length` tokens becomes under `policy` (split, truncate or drop)
// at seq_len: one piece when it fits, none when dropped or shorter than 2 tokens.
std::vector<Piece> sample_pieces(int32_t source, int64_t doc, int64_t length, int64_t seq_len,
                                 const std::string& policy);

class RowStream {
 public:
  // lengths[source][doc]; weights[source] from data.json; names[source] for the schedule;
  // formats[source] the store's sample formats, for data.overlong: auto (empty = unknown).
  RowStream(std::shared_ptr<const SampleLengths> lengths, std::vector<std::string> names,
            std::vector<double> weights, const DataConfig& data, uint64_t seed, int64_t global_batch_size,
            const std::vector<std::string>& formats = {});
  RowStream(SampleLengths lengths, std::vector<std::string> names, std::vector<double> weights,
            const DataConfig& data, uint64_t seed, int64_t global_batch_size,
            const std::vector<std::string>& formats = {})
      : RowStream(std::make_shared<const SampleLengths>(std::move(lengths)), std::move(names),
                  std::move(weights), data, seed, global_batch_size, formats) {}
  Row next();
  int64_t rows() const { return rows_; }                                 // rows returned so far
  const std::vector<int64_t>& source_tokens() const { return tokens_; }  // [source] in those rows
  // Over-long samples drawn so far (into rows returned or about to be): truncated, dropped, and
  // split documents with the pieces they became.
  int64_t truncated() const { return truncated_; }
  int64_t dropped() const { return dropped_; }
  int64_t split() const { return split_; }
  int64_t split_pieces() const { return split_pieces_; }
  const std::vector<std::string>& overlong() const { return policy_; }  // [source] resolved

 private:
  static MixerOptions mixer_options(const DataConfig& data, const std::vector<std::string>& policy);
  void refill();

  std::shared_ptr<const SampleLengths> lengths_ptr_;
  const SampleLengths& lengths_;
  std::vector<std::string> names_;
  std::vector<double> weights_;
  DataConfig data_;
  int64_t global_batch_;
  uint64_t seed_;
  std::vector<std::string> policy_;  // [source] split | truncate | drop
  Mixer mixer_;
  std::deque<Row> ready_;
  int64_t rows_ = 0, truncated_ = 0, dropped_ = 0, split_ = 0, split_pieces_ = 0, chunks_ = 0;
  std::vector<int64_t> tokens_;
};

}  // namespace kiln
