// Variable-length flash attention for packed rows (see varlen_attention.h). Shapes: N = B*T
// tokens, H query heads, K key/value heads, D head dim.
#include "models/ops/varlen_attention.h"

#include <ATen/ATen.h>
#include <ATen/ops/_flash_attention_backward.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <limits>

#ifdef KILN_WITH_CUDA
#include <ATen/cuda/CUDAContextLight.h>
#endif

#include "base/error.h"
#include "models/ops/cpu_attention.h"

namespace kiln {

std::vector<int32_t> cu_seqlens_from_positions(const int64_t* positions, int64_t B, int64_t T) {
  KILN_CHECK(B >= 0 && T > 0, "position_ids of shape (", B, ", ", T, ")");
  KILN_CHECK(B * T <= std::numeric_limits<int32_t>::max(), "varlen attention: ", B * T,
             " tokens overflow int32 sequence offsets");
  std::vector<int32_t> cu;
  for (int64_t i = 0; i < B * T; ++i)
    if (i % T == 0 || positions[i] == 0) cu.push_back(static_cast<int32_t>(i));
  cu.push_back(static_cast<int32_t>(B * T));
  return cu;
}

VarlenLayout varlen_layout(const at::Tensor& position_ids) {
  KILN_CHECK(position_ids.dim() == 2, "position_ids must be (B, T), got ", position_ids.sizes());
  at::Tensor pos = position_ids.to(at::kCPU, at::kLong).contiguous();  // (B, T); syncs the device
  std::vector<int32_t> cu = cu_seqlens_from_positions(pos.data_ptr<int64_t>(), pos.size(0), pos.size(1));
  VarlenLayout out;
  out.num_docs = static_cast<int64_t>(cu.size()) - 1;
  for (int64_t d = 0; d < out.num_docs; ++d)
    out.max_seqlen = std::max<int64_t>(out.max_seqlen, cu[d + 1] - cu[d]);
  out.cu_seqlens = at::tensor(cu, at::kInt).to(position_ids.device());  // (docs + 1)
  return out;
}

bool varlen_flash_supported(const c10::Device& device, at::ScalarType dtype, int64_t head_dim) {
  if (!device.is_cuda()) return false;
  if (dtype != at::kHalf && dtype != at::kBFloat16) return false;
  if (head_dim % 8 != 0 || head_dim > 256) return false;
#ifdef KILN_WITH_CUDA
  const c10::DeviceIndex index = device.has_index() ? device.index() : c10::DeviceIndex(-1);
  return at::cuda::getDeviceProperties(index)->major >= 8;  // FlashAttention-2: sm80+
#else
  return false;
#endif
}

namespace {

// Forward saves what the kernel's backward reads: q, k, v, the output, the log-sum-exp (H, N)
// fp32, the sequence offsets and the two RNG tensors the op returns (unused without dropout,
// but the backward takes them).
struct VarlenFlashFunction : public torch::autograd::Function<VarlenFlashFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& cu_seqlens, int64_t max_seqlen) {
    auto [out, lse, rng_state, rng_unused, debug_mask] = at::_flash_attention_forward(
        q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, /*dropout_p=*/0.0,
        /*is_causal=*/true, /*return_debug_mask=*/false);
    ctx->save_for_backward({q, k, v, out, lse, cu_seqlens, rng_state, rng_unused});
    ctx->saved_data["max_seqlen"] = max_seqlen;
    return out;  // (N, H, D)
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const int64_t max_seqlen = ctx->saved_data["max_seqlen"].toInt();
    auto [dq, dk, dv] = at::_flash_attention_backward(
        grad_out[0].contiguous(), saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], saved[5],
        max_seqlen, max_seqlen, /*dropout_p=*/0.0, /*is_causal=*/true, saved[6], saved[7]);
    return {dq, dk, dv, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor varlen_flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const VarlenLayout& layout) {
  KILN_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "varlen attention takes (N, heads, D) tensors");
  KILN_CHECK(q.size(0) == k.size(0) && k.sizes() == v.sizes() && q.size(2) == k.size(2),
             "varlen attention: q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes());
  KILN_CHECK(q.size(1) % k.size(1) == 0, "varlen attention: ", q.size(1), " query heads over ", k.size(1),
             " kv heads");
  KILN_CHECK(layout.cu_seqlens.defined() && layout.cu_seqlens.scalar_type() == at::kInt,
             "varlen attention needs int32 cu_seqlens");
  return VarlenFlashFunction::apply(q.contiguous(), k.contiguous(), v.contiguous(), layout.cu_seqlens,
                                    layout.max_seqlen);
}

bool varlen_attention_supported(const c10::Device& device, at::ScalarType dtype, int64_t head_dim) {
  return varlen_flash_supported(device, dtype, head_dim) || cpu_varlen_attention_supported(device, dtype);
}

at::Tensor varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const VarlenLayout& layout) {
  if (cpu_varlen_attention_supported(q.device(), q.scalar_type()))
    return cpu_varlen_attention(q, k, v, layout.cu_seqlens);
  return varlen_flash_attention(q, k, v, layout);
}

}  // namespace kiln
