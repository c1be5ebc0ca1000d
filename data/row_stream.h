// RowStream: the deterministic global sequence of packed rows (no tokens, just which sample
// pieces go where). Row k belongs to training step k / G (G = global batch in sequences); the
// mixer draws with the weights of that step, the packer fills rows of data.seq_len positions
// best-fit from chunks of drawn samples (about 16 rows' worth at a time), and each chunk's rows
// come out in a seeded shuffle (best-fit opens them longest-first). Depends on (seed, sample lengths,
// weights, schedule, G, seq_len, packing, overlong) only, never on the number of data-parallel ranks.
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "data/mixer.h"
#include "trainer/config.h"

namespace kiln {

struct Piece {
  int32_t source = 0;
  int64_t doc = 0;
  int64_t length = 0;  // tokens used from the start of the doc (its length, or truncated)
};
using Row = std::vector<Piece>;  // pieces take length-1 positions each, at most seq_len in all

class RowStream {
 public:
  // lengths[source][doc]; weights[source] from data.json; names[source] for the schedule.
  RowStream(std::shared_ptr<const SampleLengths> lengths, std::vector<std::string> names,
            std::vector<double> weights, const DataConfig& data, uint64_t seed, int64_t global_batch_size);
  RowStream(SampleLengths lengths, std::vector<std::string> names, std::vector<double> weights,
            const DataConfig& data, uint64_t seed, int64_t global_batch_size)
      : RowStream(std::make_shared<const SampleLengths>(std::move(lengths)), std::move(names),
                  std::move(weights), data, seed, global_batch_size) {}
  Row next();
  int64_t rows() const { return rows_; }                                 // rows returned so far
  const std::vector<int64_t>& source_tokens() const { return tokens_; }  // [source] in those rows
  int64_t truncated() const { return truncated_; }
  int64_t dropped() const { return dropped_; }

 private:
  void refill();

  std::shared_ptr<const SampleLengths> lengths_ptr_;
  const SampleLengths& lengths_;
  std::vector<std::string> names_;
  std::vector<double> weights_;
  DataConfig data_;
  int64_t global_batch_;
  uint64_t seed_;
  Mixer mixer_;
  std::deque<Row> ready_;
  int64_t rows_ = 0, truncated_ = 0, dropped_ = 0, chunks_ = 0;
  std::vector<int64_t> tokens_;
};

}  // namespace kiln
