// Causal attention within documents on the CPU, fp32: the CPU side of varlen attention
// (varlen_attention.h). Every document of the flattened batch attends only to its own earlier
// tokens, without a (B, 1, T, T) mask and without repeating k and v to every query head.
//
// The forward works on tiles of up to 128 query rows: the tile's scores against every key up to
// its last row (one product through models/ops/cpu_gemm.h), a causal softmax in place, and the
// product with v, keeping only the output and each row's log-sum-exp. The backward recomputes the
// tile's probabilities from the log-sum-exp and makes dq, dk and dv with four more products, one
// task per (document, kv head) so that a task owns the dk and dv it adds into. Scratch is two
// (tile rows, longest document) buffers per thread, the tile's rows fewer for long documents (at
// least 16): memory is linear in the document length, so a 16k packed row trains on the CPU. The
// tiles' scores beyond the diagonal are the only products spent on masked entries. (A document
// with fewer kv heads than threads leaves threads idle in the backward.)
#pragma once
#include <ATen/core/Tensor.h>

namespace kiln {

// Dense causal rows (one document each) take the kernel up to this length; longer ones SDPA's
// CPU flash kernel, which blocks the keys as well and is faster there (bench/attention.cpp on the
// 2-core development machine, forward + backward, H 8, K 4, D 64: 1.40x SDPA at 4 x 512, 1.11x at
// 2 x 1024, 0.83x at 1 x 2048). Packed rows always take the kernel (3.4x at 4 x 512, documents of
// 128; 10.6x at 1 x 4096, documents of 512: SDPA has to use the (T x T) mask).
constexpr int64_t kCpuAttentionDenseMaxLen = 1024;

// Whether the CPU kernel takes activations of this device and dtype: the CPU in fp32, unless
// KILN_CPU_KERNELS=aten asks for LibTorch's ops (then the mask path through SDPA).
bool cpu_varlen_attention_supported(const c10::Device& device, at::ScalarType dtype);

// q: (N, H, D), k, v: (N, K, D) fp32 CPU, H % K == 0; cu_seqlens: (docs + 1) int32 CPU offsets
// into N (0 first, N last); scale 1/sqrt(D). Returns (N, H, D). Differentiable in q, k, v.
at::Tensor cpu_varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& cu_seqlens);

// The kernels apart, for tests and benchmarks. The forward returns the output (N, H, D) and the
// log-sum-exp (N, H) of every query row; the backward takes them with the output's gradient.
struct CpuAttentionForward {
  at::Tensor out, lse;
};
CpuAttentionForward cpu_varlen_attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const at::Tensor& cu_seqlens);
struct CpuAttentionGrads {
  at::Tensor dq, dk, dv;
};
CpuAttentionGrads cpu_varlen_attention_backward(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                                const at::Tensor& cu_seqlens);

}  // namespace kiln
