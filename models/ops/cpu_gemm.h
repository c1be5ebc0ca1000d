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

// False when KILN_CPU_KERNELS=aten is in the environment (read once): then the CPU products take
// LibTorch's ops, to compare.
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

}  // namespace kiln
