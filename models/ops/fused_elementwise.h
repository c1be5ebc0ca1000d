// The decoder layer's elementwise pieces as one pass each on the CPU in fp32: RMSNorm, rotary
// embedding and SwiGLU, forward and backward. Each is an autograd function that saves only what
// its backward reads (RMSNorm: the input and one inverse RMS per row, not the normalised copy and
// the squares; SwiGLU: gate and up, not silu(gate)), where the ATen expression runs four to seven
// ops with a temporary each. Everything else (CUDA, other dtypes, non-contiguous inputs, or
// KILN_CPU_KERNELS=aten) takes the *_reference expression, which the tests compare with.
#pragma once
#include <ATen/core/Tensor.h>

namespace kiln {

// weight * x / sqrt(mean(x^2, last dim) + eps), normalising in fp32 and scaling in x's dtype, as
// transformers' LlamaRMSNorm. x: (..., h), weight: (h).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps);

// x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1) of x's two halves (last dim).
// The fused path takes x (N, H, D) with tables (N, 1, D); cos and sin get no gradient.
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor rope_reference(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// silu(gate) * up, gate and up of one shape.
at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up);
at::Tensor swiglu_reference(const at::Tensor& gate, const at::Tensor& up);

// Whether the fused RMSNorm and SwiGLU keep fewer tensors for backward than the references in
// this process (for kiln plan): the CPU in fp32 unless KILN_CPU_KERNELS=aten.
bool fused_elementwise_on(const c10::Device& device, at::ScalarType dtype);

}  // namespace kiln
