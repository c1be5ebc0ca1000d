// fp32 matrix products on the CPU through OpenBLAS (its OpenMP build, which shares LibTorch's
// OpenMP runtime and thread count) instead of LibTorch's MKL: on the 2-core AMD EPYC (Zen 3)
// development machine MKL's sgemm reaches about 55% of the cores' peak, OpenBLAS's is 1.05-1.45x
// faster on the model's shapes (bench/gemm.cpp), and a bench/cpu.sh step about 20% faster
// (bench/RESULTS.md). Everything else (CUDA, bf16/fp16, a build without OpenBLAS,
// KILN_CPU_KERNELS=aten in the environment) takes the ATen op, which is also the reference the tests
// compare with.
#pragma once
#include <ATen/core/Tensor.h>

namespace kiln {

// False when KILN_CPU_KERNELS=aten is in the environment (read once): then the CPU products, the
// attention and the fused elementwise ops take LibTorch's ops, to compare. Unset, empty or kiln:
// true; any other value is a UserError naming the valid ones.
bool cpu_kernels_on();
// Built with OpenBLAS and cpu_kernels_on().
bool cpu_gemm_enabled();
// "openblas" or "aten": what dense fp32 CPU products use in this process (the run log says it).
const char* cpu_gemm_name();

// x (..., in) times w (out, in) transposed -> (..., out), differentiable in both: at::linear
// without a bias, its forward and both backward products through OpenBLAS where they apply.
at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& w);

// out = beta * out + a b for 2-D tensors (a (m, k), b (k, n), out (m, n) contiguous; a and b may
// be transposed views). OpenBLAS where it applies, else at::mm_out / at::addmm_.
void gemm_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta = 0.f);
// a b as a new tensor (the same rule).
at::Tensor gemm(const at::Tensor& a, const at::Tensor& b);

// c = alpha op(a) op(b) + beta c on row-major fp32 host matrices given by pointer and leading
// dimension (op(a) is (m, k), op(b) (k, n), c (m, n)): the CBLAS call, for kernels that work on
// pieces of larger tensors (models/ops/cpu_attention.cpp). OpenBLAS when cpu_gemm_enabled(), else
// at::addmm_ over views of the same memory. Safe to call from inside at::parallel_for: OpenBLAS's
// OpenMP build then runs the product on the calling thread.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace kiln
