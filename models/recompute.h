// Activation recomputation ("checkpointing"): run a function without keeping its
// intermediate activations, and run it again in backward to get them. Used per decoder layer
// (train.activation_checkpointing: full), around attention's core (selective), and by ZeRO-3 for
// every unit, whose hooks gather the unit's parameters before each run and release them (and
// reduce-scatter its gradients) after.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <vector>

namespace kiln {

using TensorFn = std::function<at::Tensor(const std::vector<at::Tensor>&)>;

// Called around the two runs of fn. Empty functions are skipped.
struct RecomputeHooks {
  std::function<void()> before_forward, after_forward;    // around the forward's run (no grad)
  std::function<void()> before_backward, after_backward;  // around the re-run and its backward
  // Run backward even when no input needs a gradient (the embedding: integer ids in, but its
  // weight inside fn needs one).
  bool always_backward = false;
};

// fn must be deterministic and must not hold references to locals that die before backward.
// Gradients of tensors fn uses internally (module parameters) accumulate into their .grad as
// usual; the returned tensor's grad_fn yields gradients for `inputs`.
at::Tensor recompute(const std::vector<at::Tensor>& inputs, TensorFn fn,
                     std::shared_ptr<const RecomputeHooks> hooks = nullptr);

}  // namespace kiln
