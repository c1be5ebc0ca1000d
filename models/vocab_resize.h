// Growing a vocabulary: the embedding and LM-head rows of a checkpoint with V_old rows served as
// a tensor of V_new >= V_old rows, for a model whose tokenizer was extended (continued
// pretraining with added pieces, as XuanYuan, Chinese-LLaMA and Ziya did).
//
// A pure function of (old rows, new row count, tensor name, seed): rows [0, V_old) are the old
// rows bit for bit; rows [V_old, V_new) are initialised as
//   mean      the mean of the old rows (in fp64, cast to fp32): transformers'
//             resize_token_embeddings(mean_resizing=True) when its covariance check fails
//   mean_cov  a draw from N(mean, 1e-9 * covariance of the old rows), transformers' default
//             draw; new row i uses its own generator seeded from (seed, name, i), so any row range
//             gives the same values as the whole tensor. The mean when the scaled covariance is
//             not positive definite (fewer old rows than columns), as transformers does.
//   zeros     all zeros
// Padding rows (model.vocab_pad_to) are initialised the same way; the model never predicts them.
//
// As a WeightSource wrapper (vocab_growth_source), a rank that reads a flat range of a grown
// tensor (its ZeRO-3 partition, say) gets the old rows it touches from the wrapped source and
// computes only the new rows it touches; the mean and covariance of the old rows are accumulated
// over pieces of rows, never the whole old tensor at once.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace kiln {

class WeightSource;

struct VocabResizeOptions {
  std::string init = "mean";  // mean | mean_cov | zeros
  uint64_t seed = 0;          // train.seed
};

// True for the tensors whose rows are vocabulary entries (model.embed_tokens.weight, lm_head.weight).
bool is_vocab_tensor(const std::string& name);

// Rows [row_begin, row_end) of `old` (V_old, h) grown to new_rows (row_end -1 = new_rows).
// Returns (row_end - row_begin, h) fp32 on the CPU. new_rows < V_old is a UserError naming `name`
// and both sizes (kiln never shrinks a vocabulary).
at::Tensor resize_vocab_rows(const at::Tensor& old, int64_t new_rows, const std::string& name,
                             const VocabResizeOptions& opt, int64_t row_begin = 0, int64_t row_end = -1);

using TensorShapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

// The model's shapes with each vocabulary tensor's rows replaced by those `stored` records (the
// checkpoint's own shapes): what the wrapped source is built for and checked against. A stored
// tensor with more rows than the model's, or another width, is a UserError naming `what`.
TensorShapes stored_vocab_shapes(const TensorShapes& model,
                                 const std::map<std::string, std::vector<int64_t>>& stored,
                                 const std::string& what);

// `inner` (holding the vocabulary tensors with `stored` shapes) serving them with the model's rows.
// Other tensors, and vocabulary tensors whose rows already match, pass through.
std::unique_ptr<WeightSource> vocab_growth_source(std::unique_ptr<WeightSource> inner,
                                                  std::map<std::string, std::vector<int64_t>> stored,
                                                  const VocabResizeOptions& opt);

}  // namespace kiln
