// Chunked linear + cross-entropy (see linear_cross_entropy.h).
#include "models/ops/linear_cross_entropy.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>

#include <algorithm>
#include <optional>

#include "base/error.h"
#include "models/ops/cpu_gemm.h"

namespace kiln {
namespace {

constexpr int64_t kChunkLogitBytes = int64_t{8} << 20;

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct ChunkResult {
  at::Tensor loss;                      // () fp32
  at::Tensor grad_hidden, grad_weight;  // undefined unless wanted
};

// The loss, and when `want_grad` the gradients of the loss sum, chunk by chunk.
ChunkResult chunked_loss(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                         const at::Tensor& token_weights, int64_t ignore_index, int64_t chunk_rows,
                         bool want_grad) {
  const int64_t N = hidden.size(0), V = weight.size(0);
  if (chunk_rows <= 0) chunk_rows = std::max<int64_t>(64, kChunkLogitBytes / (4 * std::max<int64_t>(V, 1)));
  ChunkResult r;
  r.loss = at::zeros({}, hidden.options().dtype(at::kFloat));
  if (want_grad) {
    r.grad_hidden = at::empty_like(hidden);
    r.grad_weight = at::zeros_like(weight);
  }
  for (int64_t a = 0; a < N; a += chunk_rows) {
    const int64_t n = std::min(chunk_rows, N - a);
    at::Tensor x = hidden.narrow(0, a, n);                     // (n, h)
    at::Tensor t = targets.narrow(0, a, n);                    // (n)
    at::Tensor logits = gemm(x, weight.t()).to(at::kFloat);  // (n, V) fp32
    at::Tensor valid = t.ne(ignore_index);
    at::Tensor w = valid.to(at::kFloat);  // (n): 0 on ignored tokens
    if (token_weights.defined()) w.mul_(token_weights.narrow(0, a, n).to(at::kFloat));
    at::Tensor safe_t = t.masked_fill(valid.logical_not(), 0).unsqueeze(1);  // (n, 1)
    at::Tensor lse = at::logsumexp(logits, /*dim=*/{1}, /*keepdim=*/true);   // (n, 1)
    at::Tensor target_logit = logits.gather(1, safe_t);                      // (n, 1)
    r.loss += ((lse - target_logit).squeeze(1) * w).sum();
    if (!want_grad) continue;
    // dlogits = w * (softmax - onehot), in place over the logits.
    at::Tensor d = logits.sub_(lse).exp_();
    d.scatter_add_(1, safe_t, at::full({n, 1}, -1.0f, d.options()));
    d.mul_(w.unsqueeze(1));
    at::Tensor dc = d.to(hidden.scalar_type());
    at::Tensor gh = r.grad_hidden.narrow(0, a, n);
    gemm_into(gh, dc, weight);                   // (n, h)
    gemm_into(r.grad_weight, dc.t(), x, 1.f);  // (V, h)
  }
  return r;
}

class LinearCrossEntropy : public torch::autograd::Function<LinearCrossEntropy> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, const std::optional<at::Tensor>& token_weights,
                            int64_t ignore_index, int64_t chunk_rows) {
    // token_weights as an optional: an undefined tensor cannot be a Function's input.
    ChunkResult r = chunked_loss(hidden, weight, targets, token_weights.value_or(at::Tensor()), ignore_index,
                                 chunk_rows, /*want_grad=*/true);
    ctx->saved_data["grad_hidden"] = r.grad_hidden;
    ctx->saved_data["grad_weight"] = r.grad_weight;
    return r.loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    // The gradients were computed in forward for an incoming gradient of 1: scale them (in place,
    // they are this op's own) and hand them over.
    at::Tensor g = grad_out[0];
    at::Tensor gh = ctx->saved_data["grad_hidden"].toTensor();
    at::Tensor gw = ctx->saved_data["grad_weight"].toTensor();
    ctx->saved_data.clear();
    gh.mul_(g.to(gh.scalar_type()));
    gw.mul_(g.to(gw.scalar_type()));
    return {gh, gw, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor linear_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight,
                                    const at::Tensor& targets, const at::Tensor& token_weights,
                                    int64_t ignore_index, int64_t chunk_rows) {
  KILN_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
             "linear_cross_entropy_sum: hidden (N, h) and weight (V, h), got ", hidden.sizes(), " and ",
             weight.sizes());
  KILN_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0),
             "linear_cross_entropy_sum: targets (N)");
  KILN_CHECK(!token_weights.defined() || token_weights.numel() == hidden.size(0),
             "linear_cross_entropy_sum: token_weights (N)");
  const bool grad = at::GradMode::is_enabled() && (hidden.requires_grad() || weight.requires_grad());
  if (!grad)
    return chunked_loss(hidden, weight, targets, token_weights, ignore_index, chunk_rows, /*want_grad=*/false)
        .loss;
  std::optional<at::Tensor> tw =
      token_weights.defined() ? std::optional<at::Tensor>(token_weights) : std::nullopt;
  return LinearCrossEntropy::apply(hidden, weight, targets, tw, ignore_index, chunk_rows);
}

at::Tensor linear_cross_entropy_sum_reference(const at::Tensor& hidden, const at::Tensor& weight,
                                              const at::Tensor& targets, const at::Tensor& token_weights,
                                              int64_t ignore_index) {
  at::Tensor logits = at::linear(hidden, weight).to(at::kFloat);
  if (!token_weights.defined())
    return at::cross_entropy_loss(logits, targets, /*weight=*/{}, at::Reduction::Sum, ignore_index);
  at::Tensor per_token =
      at::cross_entropy_loss(logits, targets, /*weight=*/{}, at::Reduction::None, ignore_index);
  return (per_token * token_weights.to(at::kFloat)).sum();
}

}  // namespace kiln
