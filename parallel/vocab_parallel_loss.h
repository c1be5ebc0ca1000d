// Cross-entropy from vocab-parallel logits: each rank holds logits (N, S) for vocabulary entries
// [offset, offset + S); the loss of every token needs only three all-reduces over tp of (N)
// values: the row max, the sum of exp(logit - max) and the target's logit (from the rank that
// holds it). No rank ever builds (N, V) logits. Entries at or past `vocab_size` (padding) are
// masked to -inf: never predicted, never counted.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace kiln {

class Communicator;

// Local logits (..., S) with the entries whose global index is >= vocab_size set to -inf.
at::Tensor mask_vocab_slice(const at::Tensor& logits, int64_t offset, int64_t vocab_size);

// Per-token cross-entropy (N) of local logits (N, S) (fp32) for labels (N) (global ids,
// ignore_index gives 0), identical on every rank of tp; differentiable (the gradient reaching
// this rank's logits is softmax - one-hot on its slice).
at::Tensor vocab_parallel_cross_entropy(const at::Tensor& logits, const at::Tensor& labels, int64_t offset,
                                        Communicator& tp, int64_t ignore_index);

}  // namespace kiln
