// Activation recomputation ("checkpointing"): run a function without keeping its
// intermediate activations, and run it again in backward to get them. Used per decoder layer
// (train.activation_checkpointing: full) and around attention's core (selective).
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

namespace kiln {

using TensorFn = std::function<at::Tensor(const std::vector<at::Tensor>&)>;

// fn must be deterministic and must not hold references to locals that die before backward.
// Gradients of tensors fn uses internally (module parameters) accumulate into their .grad as
// usual; the returned tensor's grad_fn yields gradients for `inputs`.
at::Tensor recompute(const std::vector<at::Tensor>& inputs, TensorFn fn);

}  // namespace kiln
