// The LM head and its cross-entropy in one op, chunk by chunk over the tokens, so that the fp32
// logits of the whole batch (N x V: 32 MiB for 2048 tokens of a 4000-piece vocabulary, 1 GiB for
// 8192 tokens of 32000) never exist at once, and neither do their log-softmax and gradient.
//
// The loss is the op's final use, so when a gradient is wanted the forward computes it at once:
// per chunk, logits = x W^T (fp32), p = softmax(logits), dlogits = w * (p - onehot(target)),
// grad_x = dlogits W, grad_W += dlogits^T x; backward only scales those by the incoming gradient.
// Nothing of (N x V) is kept and the head's matmul is not run again in backward.
//
// A plain function of (hidden, weight, targets, token weights) so that other heads (a
// vocab-parallel one, NormHead, a padded vocabulary cut to its real rows) reuse it.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace kiln {

// Sum over tokens of token_weights[i] * CE(hidden[i] W^T, targets[i]), skipping targets equal
// to ignore_index. hidden: (N, h), weight: (V, h), same dtype; targets: (N) int64;
// token_weights: (N) or undefined (all 1). The logits are computed in the input dtype and
// taken to fp32 before the softmax, as at::linear(...).to(kFloat) + cross_entropy do. Returns a
// fp32 scalar, differentiable in hidden and weight (when either requires grad and grad mode is
// on). chunk_rows <= 0: chosen so a chunk's fp32 logits take about 8 MiB.
at::Tensor linear_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight,
                                    const at::Tensor& targets, const at::Tensor& token_weights = {},
                                    int64_t ignore_index = -100, int64_t chunk_rows = 0);

// The ATen composite it replaces (the reference for tests): at::linear, fp32 logits of every
// token, at::cross_entropy_loss.
at::Tensor linear_cross_entropy_sum_reference(const at::Tensor& hidden, const at::Tensor& weight,
                                              const at::Tensor& targets, const at::Tensor& token_weights = {},
                                              int64_t ignore_index = -100);

}  // namespace kiln
