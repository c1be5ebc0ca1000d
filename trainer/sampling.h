// The next token of `kiln generate`: greedy (temperature 0), or a draw from the softmax of
// logits / temperature after top_k (keep the k highest scores) and top_p (keep the smallest set
// of the most likely tokens whose probability reaches top_p, renormalized), as transformers'
// TopKLogitsWarper and TopPLogitsWarper do, in that order.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace kiln {

struct GenerateConfig;

// (V) float64 probabilities summing to 1 that the draw uses; zero for every filtered token.
// temperature must be > 0.
at::Tensor next_token_probs(const at::Tensor& logits, const GenerateConfig& g);

// The token id: argmax of `logits` (V) when temperature <= 0, else one draw from
// next_token_probs with `gen` (the default CPU generator when undefined).
int64_t next_token(const at::Tensor& logits, const GenerateConfig& g, c10::optional<at::Generator> gen = {});

}  // namespace kiln
