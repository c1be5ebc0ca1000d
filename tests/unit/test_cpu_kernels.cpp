// The CPU kernels against their ATen reference paths on random inputs of several shapes: the fused
// AdamW step (models/ops/fused_adamw.h) against adamw_update_reference, the fused fp64 sum of
// squares against x.double().pow(2).sum(), the OpenBLAS products (models/ops/cpu_gemm.h)
// against at::linear / at::mm, values and both gradients, and the fused RMSNorm, RoPE and SwiGLU
// (models/ops/fused_elementwise.h) against their ATen expressions, values and gradients; fp32
// within 1e-5. (The CPU attention kernel is tested in test_varlen.cpp.)
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include "models/ops/cpu_gemm.h"
#include "models/ops/cpu_math.h"
#include "models/ops/fused_elementwise.h"
#include "models/ops/fused_adamw.h"
#include "parallel/zero.h"

namespace kiln {
namespace {

double rel(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(1e-30, b.abs().max().item<double>());
}

TEST(FusedAdamW, MatchesTheAtenSteps) {
  at::manual_seed(11);
  for (int64_t n : std::vector<int64_t>{1, 7, 1000, 100003, (int64_t{1} << 20) + 5}) {
    for (bool with_lr_mask : {false, true}) {
      at::Tensor p = at::randn({n}), m = at::randn({n}) * 0.01, v = at::rand({n}) * 1e-4;
      at::Tensor decay = (at::rand({n}) > 0.3).to(at::kFloat);
      at::Tensor lr_mask = with_lr_mask ? (at::rand({n}) * 16).floor() : at::Tensor();
      at::Tensor rp = p.clone(), rm = m.clone(), rv = v.clone(), p0 = p.clone();
      AdamWOptions h{0.1, 0.9, 0.95, 1e-8};
      for (int64_t step = 1; step <= 3; ++step) {
        at::Tensor g = at::randn({n}) * 0.1;
        const double lr = 1e-3 * step, scale = step == 2 ? 0.25 : 1.0;
        ASSERT_TRUE(fused_adamw_supported(p, m, v, g, decay, lr_mask));
        adamw_update(p, m, v, g, decay, lr, scale, step, h, lr_mask);  // the fused path
        adamw_update_reference(rp, rm, rv, g, decay, lr, scale, step, h, lr_mask);
      }
      EXPECT_LT(rel(p, rp), 1e-6) << "n " << n << " lr_mask " << with_lr_mask;
      EXPECT_LT(rel(m, rm), 1e-6);
      EXPECT_LT(rel(v, rv), 1e-6);
      // The steps moved the weights (equal to the reference, and not by doing nothing).
      EXPECT_GT(rel(p, p0), 1e-4);
    }
  }
  // A non-contiguous or non-fp32 buffer is not the fused kernel's.
  at::Tensor a = at::zeros({4, 2}).t(), b = at::zeros({8});
  EXPECT_FALSE(fused_adamw_supported(a, a, a, a, a, {}));
  EXPECT_FALSE(fused_adamw_supported(b.to(at::kDouble), b, b, b, b, {}));
}

TEST(FusedAdamW, SumOfSquaresInDouble) {
  at::manual_seed(12);
  for (int64_t n : std::vector<int64_t>{0, 3, 32768, 32769, 1000001}) {
    at::Tensor x = at::randn({n}) * 1e3;
    const double ref = x.to(at::kDouble).pow(2).sum().item<double>();
    EXPECT_NEAR(sum_of_squares(x), ref, 1e-12 * std::max(1.0, ref)) << n;
  }
  // A slice (contiguous view) and a strided tensor (the ATen route) alike.
  at::Tensor x = at::randn({4000});
  EXPECT_NEAR(sum_of_squares(x.narrow(0, 100, 3000)), x.narrow(0, 100, 3000).to(at::kDouble).pow(2).sum().item<double>(),
              1e-9);
  at::Tensor s = at::randn({300, 7}).t();
  EXPECT_NEAR(sum_of_squares(s), s.to(at::kDouble).pow(2).sum().item<double>(), 1e-9);
}

TEST(CpuGemm, LinearMatchesAtenWithGradients) {
  at::manual_seed(13);
  struct Shape {
    std::vector<int64_t> x;
    int64_t out;
  };
  for (const Shape& s : {Shape{{5, 3}, 4}, Shape{{2, 17, 64}, 96}, Shape{{4, 128, 512}, 1408}, Shape{{1, 1, 8}, 1}}) {
    at::Tensor x = at::randn(s.x).requires_grad_(true);
    at::Tensor w = (at::randn({s.out, s.x.back()}) * 0.05).requires_grad_(true);
    at::Tensor xr = x.detach().clone().requires_grad_(true), wr = w.detach().clone().requires_grad_(true);
    at::Tensor y = dense_linear(x, w), yr = at::linear(xr, wr);
    ASSERT_EQ(y.sizes(), yr.sizes());
    EXPECT_LT(rel(y, yr), 1e-5);
    at::Tensor dy = at::randn(yr.sizes());
    (y * dy).sum().backward();
    (yr * dy).sum().backward();
    EXPECT_LT(rel(x.grad(), xr.grad()), 1e-5);
    EXPECT_LT(rel(w.grad(), wr.grad()), 1e-5);
  }
  // Only the weight trained (the input a leaf without grad): its gradient alone, the same.
  at::Tensor x = at::randn({6, 10}), w = at::randn({3, 10}).requires_grad_(true);
  dense_linear(x, w).sum().backward();
  at::Tensor wr = w.detach().clone().requires_grad_(true);
  at::linear(x, wr).sum().backward();
  EXPECT_LT(rel(w.grad(), wr.grad()), 1e-5);
}

TEST(CpuGemm, ProductsOfTransposedViewsAndAccumulation) {
  at::manual_seed(14);
  for (auto [m, k, n] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {33, 65, 17}, {524, 512, 400}, {64, 2048, 256}}) {
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        at::Tensor a = ta ? at::randn({k, m}).t() : at::randn({m, k});
        at::Tensor b = tb ? at::randn({n, k}).t() : at::randn({k, n});
        EXPECT_LT(rel(gemm(a, b), at::mm(a, b)), 1e-5) << m << "x" << k << "x" << n << " ta " << ta << " tb " << tb;
        at::Tensor out = at::randn({m, n}), ref = out.clone();
        gemm_into(out, a, b, 1.f);
        ref.addmm_(a, b);
        EXPECT_LT(rel(out, ref), 1e-5);
      }
  }
  // A row slice (leading dimension larger than its width) and a non-fp32 product (ATen's).
  at::Tensor big = at::randn({40, 90});
  at::Tensor a = big.narrow(1, 10, 50), b = at::randn({50, 30});
  EXPECT_LT(rel(gemm(a, b), at::mm(a, b)), 1e-5);
  at::Tensor ad = at::randn({8, 9}, at::kDouble), bd = at::randn({9, 4}, at::kDouble);
  EXPECT_LT(rel(gemm(ad, bd), at::mm(ad, bd)), 1e-12);
}

TEST(CpuGemm, NamesItsBackend) {
  const std::string name = cpu_gemm_name();
#ifdef KILN_WITH_OPENBLAS
  EXPECT_EQ(name, std::getenv("KILN_CPU_KERNELS") && std::string(std::getenv("KILN_CPU_KERNELS")) == "aten" ? "aten" : "openblas");
#else
  EXPECT_EQ(name, "aten");
#endif
}

// The forward and the gradients of every input of f and of its reference agree.
template <class F, class R>
void expect_same_with_grads(F fused, R reference, std::vector<at::Tensor> inputs, const std::string& what) {
  for (at::Tensor& t : inputs) t.requires_grad_(true);
  at::Tensor out = fused(inputs), ref = reference(inputs);
  if (cpu_kernels_on()) {  // the fused autograd function ran, not the ATen ops
    EXPECT_NE(out.grad_fn()->name().find("Function"), std::string::npos) << what << ": " << out.grad_fn()->name();
  }
  EXPECT_LT(rel(out, ref), 1e-5) << what;
  at::Tensor go = at::randn_like(out);
  auto grads = torch::autograd::grad({out}, inputs, {go});
  auto ref_grads = torch::autograd::grad({ref}, inputs, {go});
  for (size_t i = 0; i < inputs.size(); ++i) EXPECT_LT(rel(grads[i], ref_grads[i]), 1e-5) << what << ", input " << i;
}

TEST(CpuMath, ExpWithinAFewUlp) {
  at::Tensor x = at::linspace(-87, 88, 200001, at::kDouble);
  double worst = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double xi = static_cast<float>(x[i].item<double>());
    worst = std::max(worst, std::abs(exp_clamped(static_cast<float>(xi)) / std::exp(xi) - 1));
  }
  EXPECT_LT(worst, 4e-7);
  EXPECT_EQ(exp_clamped(-1000.f), exp_clamped(-87.3f));  // clamped, not 0 * inf or a wrapped exponent
  EXPECT_GT(exp_clamped(-1000.f), 0.f);
  EXPECT_TRUE(std::isfinite(exp_clamped(1000.f)));
}

TEST(FusedElementwise, RMSNormMatchesTheAtenExpression) {
  at::manual_seed(21);
  for (auto shape : std::vector<std::vector<int64_t>>{{1, 1, 8}, {2, 5, 64}, {3, 37, 100}, {4, 128, 512}}) {
    const int64_t h = shape.back();
    at::Tensor x = at::randn(shape) * 3, w = at::randn({h});
    auto fused = [](const std::vector<at::Tensor>& in) { return rms_norm(in[0], in[1], 1e-5); };
    auto ref = [](const std::vector<at::Tensor>& in) { return rms_norm_reference(in[0], in[1], 1e-5); };
    expect_same_with_grads(fused, ref, {x, w}, "rms_norm h " + std::to_string(h) + " rows " + std::to_string(x.numel() / h));
  }
  // A non-contiguous input takes the reference (and is still right).
  at::Tensor x = at::randn({16, 8}).t(), w = at::randn({16});
  EXPECT_LT(rel(rms_norm(x, w, 1e-6), rms_norm_reference(x.contiguous(), w, 1e-6)), 1e-6);
}

TEST(FusedElementwise, RopeMatchesTheAtenExpression) {
  at::manual_seed(22);
  struct Case {
    int64_t N, H, D;
  } cases[] = {{1, 1, 2}, {7, 3, 16}, {64, 8, 64}, {33, 2, 128}};
  for (const Case& c : cases) {
    at::Tensor x = at::randn({c.N, c.H, c.D});
    at::Tensor angle = at::rand({c.N, 1, c.D / 2}) * 6.3;
    at::Tensor cos = at::cat({angle, angle}, -1).cos(), sin = at::cat({angle, angle}, -1).sin();
    auto fused = [&](const std::vector<at::Tensor>& in) { return rope(in[0], cos, sin); };
    auto ref = [&](const std::vector<at::Tensor>& in) { return rope_reference(in[0], cos, sin); };
    expect_same_with_grads(fused, ref, {x}, "rope " + std::to_string(c.N) + "x" + std::to_string(c.H) + "x" +
                                                std::to_string(c.D));
  }
}

TEST(FusedElementwise, SwiGLUMatchesTheAtenExpression) {
  at::manual_seed(23);
  for (auto shape : std::vector<std::vector<int64_t>>{{1}, {3, 17}, {2, 64, 1408}}) {
    at::Tensor gate = at::randn(shape) * 4, up = at::randn(shape);
    if (gate.numel() > 2) gate.view(-1)[0] = -100.f, gate.view(-1)[1] = 100.f;  // saturated sigmoid
    auto fused = [](const std::vector<at::Tensor>& in) { return swiglu(in[0], in[1]); };
    auto ref = [](const std::vector<at::Tensor>& in) { return swiglu_reference(in[0], in[1]); };
    expect_same_with_grads(fused, ref, {gate, up}, "swiglu " + std::to_string(gate.numel()));
  }
}

}  // namespace
}  // namespace kiln
