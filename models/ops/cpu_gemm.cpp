// fp32 CPU matrix products through OpenBLAS (see cpu_gemm.h).
#include "models/ops/cpu_gemm.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cstdlib>
#include <cstring>

#include "base/error.h"

#ifdef KILN_WITH_OPENBLAS
// The CBLAS entry point (OpenBLAS's cblas.h declares the same; its enums are these ints).
extern "C" void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                            int lda, const float* b, int ldb, float beta, float* c, int ldc);
#endif

namespace kiln {
namespace {

#ifdef KILN_WITH_OPENBLAS
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
#endif

// A 2-D fp32 CPU tensor as a row-major matrix, transposed or not: one of its strides must be 1.
struct Operand {
  bool ok = false, trans = false;
  int64_t ld = 0;
};

Operand operand(const at::Tensor& t) {
  Operand o;
  if (!t.defined() || t.dim() != 2 || !t.device().is_cpu() || t.scalar_type() != at::kFloat) return o;
  const int64_t r = t.size(0), c = t.size(1);
  if (t.stride(1) == 1 && t.stride(0) >= std::max<int64_t>(1, c)) {
    o = {true, false, t.stride(0)};
  } else if (t.stride(0) == 1 && t.stride(1) >= std::max<int64_t>(1, r)) {
    o = {true, true, t.stride(1)};
  }
  constexpr int64_t kMax = int64_t{1} << 31;
  if (r >= kMax || c >= kMax || o.ld >= kMax) o.ok = false;
  return o;
}

// out = beta out + a b through OpenBLAS; false when it does not apply (then nothing is written).
bool blas_mm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta) {
#ifdef KILN_WITH_OPENBLAS
  if (!cpu_gemm_enabled()) return false;
  const Operand oa = operand(a), ob = operand(b), oc = operand(out);
  if (!oa.ok || !ob.ok || !oc.ok || oc.trans) return false;
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  if (m == 0 || n == 0) return true;
  if (k == 0) {
    if (beta == 0.f) out.zero_(); else out.mul_(beta);
    return true;
  }
  cblas_sgemm(kRowMajor, oa.trans ? kTrans : kNoTrans, ob.trans ? kTrans : kNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), 1.f, a.data_ptr<float>(), static_cast<int>(oa.ld),
              b.data_ptr<float>(), static_cast<int>(ob.ld), beta, out.data_ptr<float>(), static_cast<int>(oc.ld));
  return true;
#else
  return false;
#endif
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class DenseLinear : public torch::autograd::Function<DenseLinear> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w) {
    at::Tensor x2 = x.reshape({-1, x.size(-1)});
    ctx->save_for_backward({x2, w});
    ctx->saved_data["x_shape"] = x.sizes().vec();
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = w.size(0);
    return gemm(x2, w.t()).view(shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x2 = saved[0];
    const at::Tensor& w = saved[1];
    const std::vector<int64_t> x_shape = ctx->saved_data["x_shape"].toIntVector();
    at::Tensor g = grad_out[0].reshape({-1, w.size(0)});
    if (!g.is_contiguous()) g = g.contiguous();
    at::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) dx = gemm(g, w).view(x_shape);  // (N, out)(out, in)
    if (ctx->needs_input_grad(1)) dw = gemm(g.t(), x2);           // (out, N)(N, in)
    return {dx, dw};
  }
};

}  // namespace

bool cpu_kernels_on() {
  static const bool on = [] {
    const char* env = std::getenv("KILN_CPU_KERNELS");
    if (!env || !*env || !std::strcmp(env, "kiln")) return true;
    if (!std::strcmp(env, "aten")) return false;
    user_error("KILN_CPU_KERNELS=", env, ": valid values are kiln (the default: OpenBLAS products, kiln's "
               "attention and fused ops) and aten (LibTorch's ops, to compare)");
  }();
  return on;
}

bool cpu_gemm_enabled() {
#ifdef KILN_WITH_OPENBLAS
  return cpu_kernels_on();
#else
  return false;
#endif
}

const char* cpu_gemm_name() { return cpu_gemm_enabled() ? "openblas" : "aten"; }

at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& w) {
  if (!cpu_gemm_enabled() || !x.device().is_cpu() || x.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat ||
      x.dim() < 1 || w.dim() != 2)
    return at::linear(x, w);
  return DenseLinear::apply(x, w);
}

void gemm_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta) {
  KILN_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0) && out.dim() == 2 && out.size(0) == a.size(0) &&
                 out.size(1) == b.size(1),
             "gemm_into: (m, k) (k, n) -> (m, n), got ", a.sizes(), " ", b.sizes(), " -> ", out.sizes());
  if (blas_mm(out, a, b, beta)) return;
  if (beta == 0.f)
    at::mm_out(out, a, b);
  else
    out.addmm_(a, b, beta, 1.0);
}

at::Tensor gemm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  gemm_into(out, a, b);
  return out;
}

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
#ifdef KILN_WITH_OPENBLAS
  if (cpu_gemm_enabled()) {
    cblas_sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, static_cast<int>(m),
                static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb),
                beta, c, static_cast<int>(ldc));
    return;
  }
#endif
  // op(x) of a row-major (rows, cols) matrix with leading dimension ld, as a view.
  auto view = [](const float* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    at::Tensor t = at::from_blob(const_cast<float*>(p), {trans ? cols : rows, trans ? rows : cols}, {ld, 1},
                                 at::TensorOptions().dtype(at::kFloat));
    return trans ? t.t() : t;
  };
  at::Tensor out = view(c, m, n, ldc, false);
  if (k == 0) {
    if (beta == 0.f) out.zero_(); else out.mul_(beta);
    return;
  }
  at::Tensor prod = at::mm(view(a, m, k, lda, trans_a), view(b, k, n, ldb, trans_b));
  if (beta == 0.f)
    out.copy_(prod.mul_(alpha));
  else
    out.mul_(beta).add_(prod, alpha);
}

}  // namespace kiln
