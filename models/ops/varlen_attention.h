// Variable-length causal attention for packed rows: every document of a packed batch attends
// only to itself, without a (T x T) mask. On CUDA this is FlashAttention-2's varlen kernel
// (at::_flash_attention_forward / _flash_attention_backward with cumulative sequence lengths)
// wrapped in an autograd function; on the CPU in fp32 kiln's own (models/ops/cpu_attention.h).
// Other types keep the block-diagonal mask path in llama.cpp.
//
// Documents are found from position_ids, which restart at 0 at every document start (see
// data/batch.h). Rows are laid end to end (B*T tokens); a row start always starts a document.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace kiln {

struct VarlenLayout {
  at::Tensor cu_seqlens;   // (docs + 1) int32 on the device of position_ids: 0, end of doc 0, ..., B*T
  int64_t max_seqlen = 0;  // tokens in the longest document
  int64_t num_docs = 0;
};

// Document boundaries of the flattened (B, T) position_ids: a document starts where the
// position is 0 or a row starts. Reads the positions on the host (one device sync per forward).
VarlenLayout varlen_layout(const at::Tensor& position_ids);

// The same from host values, row-major (B*T entries, rows of T): the start offsets of every
// document followed by B*T.
std::vector<int32_t> cu_seqlens_from_positions(const int64_t* positions, int64_t B, int64_t T);

// Whether varlen flash attention can run for activations of this device and dtype and this
// head dim: CUDA, fp16 or bf16, head_dim a multiple of 8 and at most 256, an sm80+ GPU.
bool varlen_flash_supported(const c10::Device& device, at::ScalarType dtype, int64_t head_dim);

// Either kernel: varlen_flash_supported, or the CPU in fp32 (cpu_varlen_attention_supported).
bool varlen_attention_supported(const c10::Device& device, at::ScalarType dtype, int64_t head_dim);
// The kernel that applies (the same arguments as varlen_flash_attention).
at::Tensor varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const VarlenLayout& layout);

// Causal attention within documents. q: (N, H, D), k, v: (N, K, D) with H % K == 0 (grouped
// query attention needs no repeat: the kernel maps head h to kv head h / (H/K)), N = B*T,
// fp16/bf16 on CUDA; scale 1/sqrt(D). Returns (N, H, D). Differentiable in q, k, v.
at::Tensor varlen_flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const VarlenLayout& layout);

}  // namespace kiln
