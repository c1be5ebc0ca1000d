// RMSNorm, rotary embedding and SwiGLU in one pass each on the CPU (see fused_elementwise.h).
#include "models/ops/fused_elementwise.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <vector>

#include "models/ops/cpu_gemm.h"
#include "models/ops/cpu_math.h"

namespace kiln {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kGrain = int64_t{1} << 14;  // elements per elementwise task
// RMSNorm's weight gradient is summed over fixed blocks of rows, then the blocks in order: the
// same result for any thread count.
constexpr int64_t kRowsPerBlock = 32;

bool fp32_cpu(const at::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous();
}

// ---- RMSNorm ----------------------------------------------------------------------------------

struct RMSNormFunction : public torch::autograd::Function<RMSNormFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, double eps) {
    const int64_t h = x.size(-1), rows = x.numel() / h;
    at::Tensor y = at::empty_like(x), rstd = at::empty({rows}, x.options());
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
    float *yp = y.data_ptr<float>(), *rp = rstd.data_ptr<float>();
    const float feps = static_cast<float>(eps);
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / h), [&](int64_t a, int64_t b) {
      for (int64_t r = a; r < b; ++r) {
        const float* xr = xp + r * h;
        float* yr = yp + r * h;
        float ss = 0.f;
#pragma omp simd reduction(+ : ss)
        for (int64_t i = 0; i < h; ++i) ss += xr[i] * xr[i];
        const float rs = 1.f / std::sqrt(ss / static_cast<float>(h) + feps);
        rp[r] = rs;
#pragma omp simd
        for (int64_t i = 0; i < h; ++i) yr[i] = wp[i] * (xr[i] * rs);
      }
    });
    ctx->save_for_backward({x, w, rstd});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &w = s[1], &rstd = s[2];
    at::Tensor g = grad_out[0].contiguous();
    const int64_t h = x.size(-1), rows = x.numel() / h, blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
    const bool want_dx = ctx->needs_input_grad(0), want_dw = ctx->needs_input_grad(1);
    at::Tensor dx = want_dx ? at::empty_like(x) : at::Tensor();
    at::Tensor partial = want_dw ? at::zeros({blocks, h}, x.options()) : at::Tensor();
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *rp = rstd.data_ptr<float>(),
                *gp = g.data_ptr<float>();
    float* dxp = want_dx ? dx.data_ptr<float>() : nullptr;
    float* pp = want_dw ? partial.data_ptr<float>() : nullptr;
    const float inv_h = 1.f / static_cast<float>(h);
    at::parallel_for(0, blocks, 1, [&](int64_t a, int64_t b) {
      for (int64_t blk = a; blk < b; ++blk) {
        for (int64_t r = blk * kRowsPerBlock; r < std::min(rows, (blk + 1) * kRowsPerBlock); ++r) {
          const float *xr = xp + r * h, *gr = gp + r * h;
          const float rs = rp[r];
          if (want_dx) {
            // dx = rs (g w) - x rs^3 mean(g w x)
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < h; ++i) dot += gr[i] * wp[i] * xr[i];
            const float c = dot * inv_h * rs * rs * rs;
            float* dxr = dxp + r * h;
#pragma omp simd
            for (int64_t i = 0; i < h; ++i) dxr[i] = rs * (gr[i] * wp[i]) - xr[i] * c;
          }
          if (want_dw) {
            float* pr = pp + blk * h;
#pragma omp simd
            for (int64_t i = 0; i < h; ++i) pr[i] += gr[i] * (xr[i] * rs);
          }
        }
      }
    });
    at::Tensor dw;
    if (want_dw) {
      dw = at::zeros({h}, x.options());
      float* dwp = dw.data_ptr<float>();
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const float* pr = pp + blk * h;
#pragma omp simd
        for (int64_t i = 0; i < h; ++i) dwp[i] += pr[i];
      }
    }
    return {dx, dw, at::Tensor()};
  }
};

// ---- rotary embedding -------------------------------------------------------------------------

// y = x c + rotate_half(x) s over rows of D (forward), or its transpose dx = g c + rotate_half^T(g s)
// (backward: the same loop with the sine's sign and half swapped).
void rotate_rows(const float* x, const float* cos, const float* sin, float* y, int64_t N, int64_t H, int64_t D,
                 bool transpose) {
  const int64_t half = D / 2;
  at::parallel_for(0, N, std::max<int64_t>(1, kGrain / (H * D)), [&](int64_t a, int64_t b) {
    for (int64_t n = a; n < b; ++n) {
      const float *c = cos + n * D, *s = sin + n * D;
      for (int64_t hd = 0; hd < H; ++hd) {
        const float* xr = x + (n * H + hd) * D;
        float* yr = y + (n * H + hd) * D;
        if (!transpose) {
#pragma omp simd
          for (int64_t i = 0; i < half; ++i) yr[i] = xr[i] * c[i] - xr[i + half] * s[i];
#pragma omp simd
          for (int64_t i = half; i < D; ++i) yr[i] = xr[i] * c[i] + xr[i - half] * s[i - half];
        } else {
#pragma omp simd
          for (int64_t i = 0; i < half; ++i) yr[i] = xr[i] * c[i] + xr[i + half] * s[i + half];
#pragma omp simd
          for (int64_t i = half; i < D; ++i) yr[i] = xr[i] * c[i] - xr[i - half] * s[i - half];
        }
      }
    }
  });
}

struct RopeFunction : public torch::autograd::Function<RopeFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    at::Tensor y = at::empty_like(x);
    rotate_rows(x.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), y.data_ptr<float>(), x.size(0),
                x.size(1), x.size(2), /*transpose=*/false);
    ctx->save_for_backward({cos, sin});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto s = ctx->get_saved_variables();
    at::Tensor g = grad_out[0].contiguous();
    at::Tensor dx = at::empty_like(g);
    rotate_rows(g.data_ptr<float>(), s[0].data_ptr<float>(), s[1].data_ptr<float>(), dx.data_ptr<float>(), g.size(0),
                g.size(1), g.size(2), /*transpose=*/true);
    return {dx, at::Tensor(), at::Tensor()};
  }
};

// ---- SwiGLU -----------------------------------------------------------------------------------

inline float sigmoid(float x) { return 1.f / (1.f + exp_clamped(-x)); }

struct SwiGLUFunction : public torch::autograd::Function<SwiGLUFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up) {
    at::Tensor y = at::empty_like(gate);
    const float *gp = gate.data_ptr<float>(), *up_ = up.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, gate.numel(), kGrain, [&](int64_t a, int64_t b) {
#pragma omp simd
      for (int64_t i = a; i < b; ++i) yp[i] = gp[i] * sigmoid(gp[i]) * up_[i];
    });
    ctx->save_for_backward({gate, up});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto s = ctx->get_saved_variables();
    at::Tensor g = grad_out[0].contiguous();
    at::Tensor dgate = at::empty_like(g), dup = at::empty_like(g);
    const float *gp = s[0].data_ptr<float>(), *up_ = s[1].data_ptr<float>(), *op = g.data_ptr<float>();
    float *dgp = dgate.data_ptr<float>(), *dup_ = dup.data_ptr<float>();
    at::parallel_for(0, g.numel(), kGrain, [&](int64_t a, int64_t b) {
#pragma omp simd
      for (int64_t i = a; i < b; ++i) {
        const float sg = sigmoid(gp[i]), silu = gp[i] * sg;
        dup_[i] = op[i] * silu;
        dgp[i] = op[i] * up_[i] * (sg + silu * (1.f - sg));  // d silu = s (1 + g (1 - s))
      }
    });
    return {dgate, dup};
  }
};

at::Tensor rotate_half(const at::Tensor& x) {
  auto halves = x.chunk(2, /*dim=*/-1);
  return at::cat({-halves[1], halves[0]}, /*dim=*/-1);
}

}  // namespace

bool fused_elementwise_on(const c10::Device& device, at::ScalarType dtype) {
  return device.is_cpu() && dtype == at::kFloat && cpu_kernels_on();
}

at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(/*dim=*/-1, /*keepdim=*/true);
  return weight * (xf * at::rsqrt(var + eps)).to(x.scalar_type());
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (!cpu_kernels_on() || !fp32_cpu(x) || !fp32_cpu(weight) || x.dim() < 1 || weight.dim() != 1 ||
      weight.size(0) != x.size(-1) || x.numel() == 0)
    return rms_norm_reference(x, weight, eps);
  return RMSNormFunction::apply(x, weight, eps);
}

at::Tensor rope_reference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return x * cos + rotate_half(x) * sin;
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const bool fused = cpu_kernels_on() && fp32_cpu(x) && fp32_cpu(cos) && fp32_cpu(sin) && x.dim() == 3 &&
                     x.size(2) % 2 == 0 && cos.sizes() == sin.sizes() && cos.dim() == 3 && cos.size(0) == x.size(0) &&
                     cos.size(1) == 1 && cos.size(2) == x.size(2) && !cos.requires_grad() && !sin.requires_grad();
  if (!fused) return rope_reference(x, cos, sin);
  return RopeFunction::apply(x, cos, sin);
}

at::Tensor swiglu_reference(const at::Tensor& gate, const at::Tensor& up) { return at::silu(gate) * up; }

at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up) {
  if (!cpu_kernels_on() || !fp32_cpu(gate) || !fp32_cpu(up) || gate.sizes() != up.sizes())
    return swiglu_reference(gate, up);
  return SwiGLUFunction::apply(gate, up);
}

}  // namespace kiln
