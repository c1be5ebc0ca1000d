// The LM head's logits as the model config asks for them: Baichuan2's NormHead (the head's rows
// L2-normalised in every forward, so the gradient flows through the normalisation and training
// follows the normalised weight, as Baichuan2's NormHead does in training) and vocabulary
// padding (model.vocab_pad_to: the padding columns are -inf, so softmax gives them exactly zero
// probability: never predicted, never sampled, no gradient into their rows).
#pragma once
#include <ATen/core/Tensor.h>

#include "base/model_config.h"
#include "models/projection.h"

namespace kiln {

// hidden (..., h), weight (padded_vocab, h) -> logits (..., padded_vocab) in fp32.
at::Tensor head_logits(const at::Tensor& hidden, const at::Tensor& weight, const ModelConfig& cfg);
// The same for a head projection (a plain, LoRA or other Projection); under norm_head its
// weight's normalised rows are multiplied directly.
at::Tensor head_logits(const at::Tensor& hidden, Projection& head, const ModelConfig& cfg);
// Padding columns (beyond cfg.vocab_size) of logits (..., padded_vocab) set to -inf.
at::Tensor mask_vocab_padding(const at::Tensor& logits, const ModelConfig& cfg);

// The rows the head multiplies with: weight / ||row||_2 under norm_head, else weight.
at::Tensor effective_head_weight(const at::Tensor& weight, const ModelConfig& cfg);

}  // namespace kiln
