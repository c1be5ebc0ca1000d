// Parameter and FLOP counts of a ModelConfig, used by `kiln plan` and the per-step MFU.
#include "base/model_config.h"

namespace kiln {

int64_t ModelConfig::num_parameters() const {
  const int64_t h = hidden_size, kv = kv_heads() * head_dim(), f = ffn_size();
  const int64_t per_layer = h * h /*q*/ + 2 * h * kv /*k,v*/ + h * h /*o*/ + 3 * h * f + 2 * h /*norms*/;
  const int64_t embed = padded_vocab() * h;
  return embed + num_layers * per_layer + h + (tie_embeddings ? 0 : embed);
}

double ModelConfig::flops_per_token(int64_t seq_len) const {
  // Matmul parameters: everything but the input embedding lookup (the head always multiplies).
  const double matmul_params = static_cast<double>(num_parameters() - padded_vocab() * hidden_size +
                                                   (tie_embeddings ? padded_vocab() * hidden_size : 0));
  // Attention scores and weighted sum: 2 matmuls x 2 flops x T x h per token per layer forward,
  // x3 for forward + backward, halved by the causal mask.
  const double attention = 6.0 * num_layers * hidden_size * static_cast<double>(seq_len);
  return 6.0 * matmul_params + attention;
}

}  // namespace kiln
