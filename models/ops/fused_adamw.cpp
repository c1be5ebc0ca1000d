// Fused AdamW and sum of squares on flat fp32 CPU buffers (see fused_adamw.h).
#include "models/ops/fused_adamw.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "base/error.h"

namespace kiln {
namespace {

constexpr int64_t kGrain = int64_t{1} << 15;  // elements per task: a few L2-sized pieces per thread

bool flat_f32(const at::Tensor& t, int64_t n) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == n;
}

}  // namespace

bool fused_adamw_supported(const at::Tensor& master, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                           const at::Tensor& grad, const at::Tensor& decay_mask, const at::Tensor& lr_mask) {
  const int64_t n = master.numel();
  return flat_f32(master, n) && flat_f32(exp_avg, n) && flat_f32(exp_avg_sq, n) && flat_f32(grad, n) &&
         flat_f32(decay_mask, n) && (!lr_mask.defined() || flat_f32(lr_mask, n));
}

void fused_adamw(at::Tensor& master, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, const at::Tensor& grad,
                 const at::Tensor& decay_mask, const at::Tensor& lr_mask, const FusedAdamWStep& h) {
  KILN_CHECK(fused_adamw_supported(master, exp_avg, exp_avg_sq, grad, decay_mask, lr_mask),
             "fused_adamw: contiguous fp32 CPU buffers of one length");
  float* p = master.data_ptr<float>();
  float* m = exp_avg.data_ptr<float>();
  float* v = exp_avg_sq.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  const float* decay = decay_mask.data_ptr<float>();
  const float* ratio = lr_mask.defined() ? lr_mask.data_ptr<float>() : nullptr;
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(h.step));
  const double bc2 = 1.0 - std::pow(h.beta2, static_cast<double>(h.step));
  const float scale = static_cast<float>(h.grad_scale), b1 = static_cast<float>(h.beta1),
              b2 = static_cast<float>(h.beta2), c1 = static_cast<float>(1.0 - h.beta1),
              c2 = static_cast<float>(1.0 - h.beta2), eps = static_cast<float>(h.eps),
              lr_wd = static_cast<float>(h.lr * h.weight_decay), step_size = static_cast<float>(h.lr / bc1),
              inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  at::parallel_for(0, master.numel(), kGrain, [&](int64_t a, int64_t b) {
    if (ratio) {
      for (int64_t i = a; i < b; ++i) {
        const float gi = g[i] * scale, r = ratio[i];
        p[i] *= 1.0f - lr_wd * decay[i] * r;
        m[i] = b1 * m[i] + c1 * gi;
        v[i] = b2 * v[i] + c2 * gi * gi;
        p[i] -= step_size * r * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
      }
      return;
    }
    for (int64_t i = a; i < b; ++i) {
      const float gi = g[i] * scale;
      p[i] *= 1.0f - lr_wd * decay[i];
      m[i] = b1 * m[i] + c1 * gi;
      v[i] = b2 * v[i] + c2 * gi * gi;
      p[i] -= step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
    }
  });
}

double sum_of_squares(const at::Tensor& x) {
  if (!(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous()))
    return x.to(at::kDouble).pow(2).sum().item<double>();
  const float* d = x.data_ptr<float>();
  const int64_t n = x.numel();
  // Fixed pieces summed in order: the same result for any number of threads.
  const int64_t pieces = (n + kGrain - 1) / kGrain;
  std::vector<double> part(static_cast<size_t>(pieces), 0.0);
  at::parallel_for(0, pieces, 1, [&](int64_t a, int64_t b) {
    for (int64_t k = a; k < b; ++k) {
      const int64_t end = std::min(n, (k + 1) * kGrain);
      double s0 = 0, s1 = 0, s2 = 0, s3 = 0;  // four chains: the adds overlap
      int64_t i = k * kGrain;
      for (; i + 4 <= end; i += 4) {
        s0 += double(d[i]) * d[i];
        s1 += double(d[i + 1]) * d[i + 1];
        s2 += double(d[i + 2]) * d[i + 2];
        s3 += double(d[i + 3]) * d[i + 3];
      }
      for (; i < end; ++i) s0 += double(d[i]) * d[i];
      part[static_cast<size_t>(k)] = (s0 + s1) + (s2 + s3);
    }
  });
  double total = 0;
  for (double s : part) total += s;
  return total;
}

}  // namespace kiln
