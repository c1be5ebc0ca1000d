// LM-head logits with NormHead and vocabulary padding (see lm_head.h).
#include "models/lm_head.h"

#include <ATen/ATen.h>

#include <limits>

namespace kiln {

at::Tensor effective_head_weight(const at::Tensor& weight, const ModelConfig& cfg) {
  if (!cfg.norm_head) return weight;
  // Baichuan2: nn.functional.normalize(weight), eps 1e-12 on the row norm.
  return weight / weight.norm(/*p=*/2, /*dim=*/{1}, /*keepdim=*/true).clamp_min(1e-12);
}

at::Tensor mask_vocab_padding(const at::Tensor& logits, const ModelConfig& cfg) {
  const int64_t padded = logits.size(-1), real = cfg.vocab_size;
  if (padded <= real) return logits;
  at::Tensor pad = at::arange(padded, at::TensorOptions().dtype(at::kLong).device(logits.device())) >= real;
  return logits.masked_fill(pad, -std::numeric_limits<float>::infinity());
}

at::Tensor head_logits(const at::Tensor& hidden, const at::Tensor& weight, const ModelConfig& cfg) {
  return mask_vocab_padding(at::linear(hidden, effective_head_weight(weight, cfg)).to(at::kFloat), cfg);
}

at::Tensor head_logits(const at::Tensor& hidden, Projection& head, const ModelConfig& cfg) {
  if (cfg.norm_head) return head_logits(hidden, head->weight, cfg);
  return mask_vocab_padding(head(hidden).to(at::kFloat), cfg);
}

}  // namespace kiln
