// Fused AdamW and the gradient's sum of squares on flat fp32 CPU buffers: one pass over the
// state instead of the dozen elementwise passes (and their temporaries) that the same update
// takes as ATen ops. parallel/zero.cpp's adamw_update() calls these for contiguous fp32 CPU
// buffers and keeps the ATen ops (adamw_update_reference) for every other case; the unit tests
// compare the two.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace kiln {

struct FusedAdamWStep {
  double lr = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0;
  double grad_scale = 1;  // the gradient is multiplied by this first (clipping)
  int64_t step = 1;       // counts from 1 (bias correction)
};

// True when fused_adamw() takes these buffers: CPU, fp32, contiguous, the same length.
bool fused_adamw_supported(const at::Tensor& master, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                           const at::Tensor& grad, const at::Tensor& decay_mask, const at::Tensor& lr_mask);

// In place over master, exp_avg, exp_avg_sq, elementwise i:
//   g = grad[i] * grad_scale;  r = lr_mask[i] (1 when undefined)
//   master[i] *= 1 - lr * weight_decay * decay_mask[i] * r
//   exp_avg[i] = beta1 exp_avg[i] + (1 - beta1) g;  exp_avg_sq[i] = beta2 exp_avg_sq[i] + (1 - beta2) g^2
//   master[i] -= lr / (1 - beta1^step) * r * exp_avg[i] / (sqrt(exp_avg_sq[i]) / sqrt(1 - beta2^step) + eps)
void fused_adamw(at::Tensor& master, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, const at::Tensor& grad,
                 const at::Tensor& decay_mask, const at::Tensor& lr_mask, const FusedAdamWStep& h);

// sum(x^2) accumulated in fp64, in one pass without a copy (x: contiguous fp32 on the CPU; any
// other tensor goes through ATen: x.to(double).pow(2).sum()).
double sum_of_squares(const at::Tensor& x);

}  // namespace kiln
