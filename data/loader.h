// DataLoader: serves this data-parallel rank's micro-batches of the global row order.
// Step s consumes global rows [s*G, (s+1)*G); rank r takes the r-th contiguous G/dp of them,
// in micro-batches of train.micro_batch_size. The order depends only on (seed, data, weights,
// schedule, G), never on dp, and the position (LoaderState) goes into checkpoints: restore()
// replays the row order (indices only, no tokens) to the saved position. A background thread
// prepares data.prefetch batches ahead.
// EvalLoader: all of data.eval in order (no mixing), packed the same way, split across ranks;
// every rank gets the same number of batches (missing rows are all padding).
#pragma once
#include <ATen/core/Tensor.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "data/batch.h"
#include "data/mix_table.h"
#include "data/row_stream.h"
#include "data/token_store.h"
#include "base/config.h"

namespace kiln {

struct LoaderState {
  int64_t step = 0;   // the next batch belongs to this training step
  int64_t micro = 0;  // ... and is this rank's micro-batch number `micro` in it
  uint64_t seed = 0;
  std::vector<std::string> sources;    // names, to catch a resume on different data
  std::vector<int64_t> source_tokens;  // [source] tokens in all global rows before (step, micro);
                                       // at a step boundary: every rank's rows of the steps before
};
void to_json(nlohmann::json& j, const LoaderState& s);
void from_json(const nlohmann::json& j, LoaderState& s);

// Rows -> a Batch of `rows.size()` rows (an empty Row is all padding) of seq_len positions.
// Each piece of n tokens gives n-1 (input, label) pairs; labels are kIgnoreIndex where the
// label token's mask bit is 0; position ids restart at 0 for every piece and for the padding.
// With vocab_size > 0, a token id outside [0, vocab_size) is a UserError naming the store,
// the source and the document.
Batch make_batch(const TokenStore& store, const std::vector<Row>& rows, int64_t seq_len, int32_t pad_id,
                 int64_t vocab_size = 0);

// data.loss_average: sample. Per-token loss weights for a mean over samples instead of over
// tokens: weights (B, T) float32 is 1/(trained labels of that sample) where the label is
// trained and 0 elsewhere (samples found by position_ids restarting at 0); `samples` counts
// the samples with at least one trained label. The trainer's loss is then
//   sum(token_loss * weights) / (samples summed over micro-batches and data-parallel ranks).
struct SampleLossWeights {
  at::Tensor weights;
  int64_t samples = 0;
};
SampleLossWeights sample_loss_weights(const Batch& batch);

class DataLoader {
 public:
  DataLoader(const Config& cfg, int64_t dp_rank, int64_t dp_size, int64_t global_batch_size);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  Batch next();
  LoaderState state() const;
  void restore(const LoaderState& s);
  std::vector<std::string> source_names() const;
  std::vector<MixShare> mix_shares() const;  // what data.mix makes of the sources (mix_table.h)
  double packing_efficiency() const;         // non-padding fraction of the positions served so far
  double loss_fraction() const;              // trained (label != ignore) fraction of those positions
  int64_t truncated() const;                 // over-long samples truncated / dropped in the rows so far
  int64_t dropped() const;
  int64_t split() const;         // over-long documents split into pieces (data.overlong: split)
  int64_t split_pieces() const;  // ... and the pieces they became

 private:
  struct Item {
    Batch batch;
    LoaderState after;
    int64_t truncated = 0, dropped = 0, split = 0, split_pieces = 0;
    int64_t real_positions = 0;  // positions holding sample tokens (not padding)
  };
  void start(const LoaderState& from);
  void stop();
  void produce(LoaderState from);

  Config cfg_;
  int64_t rank_, dp_, global_batch_, micro_batch_, micro_per_step_;
  std::unique_ptr<TokenStore> store_;
  std::shared_ptr<const SampleLengths> lengths_;
  std::vector<std::string> names_;
  std::vector<double> weights_;
  std::vector<std::string> formats_;  // [source] as prepared, for data.overlong: auto
  int32_t pad_id_ = 0;

  LoaderState state_;
  int64_t positions_ = 0, real_positions_ = 0, loss_positions_ = 0, truncated_ = 0, dropped_ = 0;
  int64_t split_ = 0, split_pieces_ = 0;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::exception_ptr error_;
  bool stop_ = false;
  std::thread worker_;
};

class EvalLoader {
 public:
  EvalLoader(const Config& cfg, int64_t dp_rank, int64_t dp_size);
  bool next(Batch& out);  // false at the end
  int64_t rows() const { return static_cast<int64_t>(rows_.size()); }

 private:
  int64_t rank_, dp_, micro_batch_, seq_len_;
  std::unique_ptr<TokenStore> store_;
  int32_t pad_id_ = 0;
  int64_t vocab_size_ = 0;
  std::vector<Row> rows_;
  int64_t cursor_ = 0;  // first global row of the next eval step
};

}  // namespace kiln
