// The AdamW update of a flat fp32 shard (declared in zero.h): the fused one-pass loop where it
// applies (models/ops/fused_adamw.h), LibTorch's elementwise ops otherwise and as its reference.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>

#include "models/ops/fused_adamw.h"
#include "parallel/zero.h"

namespace kiln {

void adamw_update(at::Tensor& master, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, const at::Tensor& grad,
                  const at::Tensor& decay_mask, double lr, double grad_scale, int64_t step,
                  const AdamWOptions& h, const at::Tensor& lr_mask) {
  if (!fused_adamw_supported(master, exp_avg, exp_avg_sq, grad, decay_mask, lr_mask))
    return adamw_update_reference(master, exp_avg, exp_avg_sq, grad, decay_mask, lr, grad_scale, step, h, lr_mask);
  fused_adamw(master, exp_avg, exp_avg_sq, grad, decay_mask, lr_mask,
              FusedAdamWStep{lr, h.beta1, h.beta2, h.eps, h.weight_decay, grad_scale, step});
}

void adamw_update_reference(at::Tensor& master, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, const at::Tensor& grad,
                            const at::Tensor& decay_mask, double lr, double grad_scale, int64_t step,
                            const AdamWOptions& h, const at::Tensor& lr_mask) {
  at::NoGradGuard no_grad;
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(step));
  // Elementwise, so in pieces: the temporaries stay a few MiB instead of copies of the shard.
  constexpr int64_t kPiece = int64_t{1} << 20;
  const int64_t n = master.numel();
  for (int64_t off = 0; off < n; off += kPiece) {
    const int64_t len = std::min(kPiece, n - off);
    at::Tensor p = master.narrow(0, off, len), m = exp_avg.narrow(0, off, len), v = exp_avg_sq.narrow(0, off, len);
    at::Tensor g = grad.narrow(0, off, len);
    if (grad_scale != 1.0) g = g * grad_scale;
    at::Tensor decay = decay_mask.narrow(0, off, len);
    if (lr_mask.defined()) decay = decay * lr_mask.narrow(0, off, len);
    p.mul_(1.0 - lr * h.weight_decay * decay);
    m.mul_(h.beta1).add_(g, 1.0 - h.beta1);
    v.mul_(h.beta2).addcmul_(g, g, 1.0 - h.beta2);
    at::Tensor denom = (v.sqrt() / std::sqrt(bc2)).add_(h.eps);
    if (lr_mask.defined())
      p.add_(m / denom * lr_mask.narrow(0, off, len), -lr / bc1);
    else
      p.addcdiv_(m, denom, -lr / bc1);
  }
}

}  // namespace kiln
