// Batch: what the loader hands the model for one micro-batch.
// Packed rows hold several documents; position_ids restart at 0 at every document start,
// which is how attention finds document boundaries (block-diagonal causal mask on the CPU,
// cumulative sequence lengths for variable-length flash attention on CUDA).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace kiln {

constexpr int64_t kIgnoreIndex = -100;  // label value that carries no loss

struct Batch {
  at::Tensor input_ids;                // (B, T) int64
  at::Tensor labels;                   // (B, T) int64, the next token, kIgnoreIndex where no loss
  at::Tensor position_ids;             // (B, T) int64, 0 at each document start
  bool packed = false;                 // rows may hold several documents: attention must not cross them
  int64_t loss_tokens = 0;             // number of labels != kIgnoreIndex in this micro-batch
  std::vector<int64_t> source_tokens;  // [source index] tokens of each data source in this batch
};

}  // namespace kiln
