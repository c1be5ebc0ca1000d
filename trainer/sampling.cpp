// Temperature, top_k and top_p sampling of the next token (see sampling.h).
#include "trainer/sampling.h"

#include <ATen/ATen.h>

#include <limits>

#include "base/config.h"
#include "base/error.h"

namespace kiln {

at::Tensor next_token_probs(const at::Tensor& logits, const GenerateConfig& g) {
  KILN_CHECK(g.temperature > 0, "next_token_probs needs temperature > 0, got ", g.temperature);
  KILN_CHECK(logits.dim() == 1, "next_token_probs takes (V) logits");
  at::Tensor scores = logits.to(at::kCPU, at::kDouble) / g.temperature;  // (V)
  if (g.top_k > 0 && g.top_k < scores.numel()) {
    // Ties with the k-th score stay (as transformers' TopKLogitsWarper keeps them).
    const at::Tensor kth = std::get<0>(scores.topk(g.top_k)).min();
    scores = scores.masked_fill(scores < kth, -std::numeric_limits<double>::infinity());
  }
  at::Tensor probs = scores.softmax(/*dim=*/0);
  if (g.top_p < 1.0) {
    auto [sorted, order] = probs.sort(/*dim=*/0, /*descending=*/true);
    // A token stays while the mass before it is below top_p: the smallest prefix reaching top_p
    // (the most likely token always stays).
    const at::Tensor drop = (sorted.cumsum(0) - sorted) >= g.top_p;
    drop[0] = false;
    probs = probs.scatter(0, order, sorted.masked_fill(drop, 0.0));
    probs = probs / probs.sum();
  }
  return probs;
}

int64_t next_token(const at::Tensor& logits, const GenerateConfig& g, c10::optional<at::Generator> gen) {
  if (g.temperature <= 0) return logits.argmax().item<int64_t>();
  return at::multinomial(next_token_probs(logits, g), 1, /*replacement=*/false, gen).item<int64_t>();
}

}  // namespace kiln
