// The tiny model and batch the tensor-parallel tests share (test_tensor_parallel.cpp,
// test_lora_tp.cpp): 4 heads, so tp 2 and 4 split them; a vocabulary of 37, divisible by
// neither; and the largest elementwise difference relative to the reference's largest value.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "base/model_config.h"
#include "models/llama.h"

namespace kiln::test {

inline ModelConfig tiny(int64_t kv_heads) {
  ModelConfig c;
  c.vocab_size = 37;  // divisible by neither 2 nor 4
  c.hidden_size = 32;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = kv_heads;
  c.ffn_hidden_size = 48;
  c.max_seq_len = 16;
  return c;
}

inline Batch make_batch(const ModelConfig& c, bool packed) {
  at::manual_seed(11);
  Batch b;
  const int64_t B = 2, T = 8;
  b.input_ids = at::randint(c.vocab_size, {B, T}, at::kLong);
  b.labels = at::randint(c.vocab_size, {B, T}, at::kLong);
  b.labels.index_put_({0, 0}, kIgnoreIndex);
  b.labels.index_put_({1, 5}, kIgnoreIndex);
  b.labels.index_put_({1, 7}, c.vocab_size - 1);  // the last real entry (on the last rank)
  b.position_ids = at::arange(T, at::kLong).repeat({B, 1});
  if (packed) {  // row 0: documents of 3 and 5 tokens; row 1: 6 and 2
    b.position_ids[0] = at::tensor({0, 1, 2, 0, 1, 2, 3, 4}, at::kLong);
    b.position_ids[1] = at::tensor({0, 1, 2, 3, 4, 5, 0, 1}, at::kLong);
    b.packed = true;
  }
  b.loss_tokens = b.labels.ne(kIgnoreIndex).sum().item<int64_t>();
  return b;
}

inline double rel(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(1e-12, b.abs().max().item<double>());
}

}  // namespace kiln::test
