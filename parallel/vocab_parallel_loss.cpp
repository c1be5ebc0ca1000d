// Vocab-parallel cross-entropy (see vocab_parallel_loss.h). For token n with target t:
//   loss_n = log(sum_r sum_j exp(l_rj - m)) + m - l_t,   m = max over every rank's slice,
// composed from the tp mappings so autograd gives each rank softmax - one-hot on its slice:
// the sums are reduce_from_region (forward all-reduce, backward identity: every rank holds the
// whole loss, and the gradient of a summed term is the same for each rank's share), m is a
// constant (it cancels).
#include "parallel/vocab_parallel_loss.h"

#include <ATen/ATen.h>

#include <limits>

#include "parallel/communicator.h"
#include "parallel/tp_mappings.h"

namespace kiln {

at::Tensor mask_vocab_slice(const at::Tensor& logits, int64_t offset, int64_t vocab_size) {
  const int64_t S = logits.size(-1);
  if (offset + S <= vocab_size) return logits;
  at::Tensor pad = at::arange(offset, offset + S,
                              at::TensorOptions().dtype(at::kLong).device(logits.device())) >= vocab_size;
  return logits.masked_fill(pad, -std::numeric_limits<float>::infinity());
}

at::Tensor vocab_parallel_cross_entropy(const at::Tensor& logits, const at::Tensor& labels, int64_t offset,
                                        Communicator& tp, int64_t ignore_index) {
  const int64_t S = logits.size(-1);
  at::Tensor m = std::get<0>(logits.detach().max(/*dim=*/-1));  // (N)
  tp.all_reduce(m, ReduceOp::Max);
  at::Tensor shifted = logits - m.unsqueeze(-1);                               // (N, S)
  at::Tensor sum_exp = reduce_from_region(shifted.exp().sum(/*dim=*/-1), tp);  // (N)
  at::Tensor ignored = labels.eq(ignore_index);
  at::Tensor local = labels - offset;
  at::Tensor here = local.ge(0).logical_and(local.lt(S)).logical_and(ignored.logical_not());
  at::Tensor idx = local.masked_fill(here.logical_not(), 0).unsqueeze(-1);
  at::Tensor target = shifted.gather(/*dim=*/-1, idx).squeeze(-1).masked_fill(here.logical_not(), 0.0);
  target = reduce_from_region(target, tp);  // (N): the target's shifted logit, from its owner
  return (sum_exp.log() - target).masked_fill(ignored, 0.0);
}

}  // namespace kiln
