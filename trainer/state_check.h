// Never save or continue non-finite training state (issue 10): checks on the optimizer's fp32
// state (master weights, AdamW moments) before a checkpoint is written and after one is read, and
// the rule that a run whose every step was skipped did not train.
#pragma once
#include <c10/core/Device.h>

#include <string>
#include <utility>
#include <vector>

#include "parallel/zero.h"

namespace kiln {

class Communicator;

// The name of the first slice (or weight) holding a NaN or an infinity, "" when all are finite.
std::string first_non_finite(const std::vector<TensorSlice>& slices,
                             const std::vector<std::pair<std::string, at::Tensor>>& weights = {});

// Collective over `world`: when any rank's state is non-finite, every rank throws UserError
// ("<what>: ..."), naming the tensor on the rank that holds it.
void require_finite_state(Communicator& world, const c10::Device& device,
                          const std::vector<TensorSlice>& slices,
                          const std::vector<std::pair<std::string, at::Tensor>>& weights,
                          const std::string& what);

// A resumed checkpoint's slices: UserError naming the checkpoint and the tensor when any is not
// finite (the same on every rank: every rank reads the same slices).
void require_finite_checkpoint(const std::string& dir, const std::vector<TensorSlice>& slices);

// The first tensor of a checkpoint shard file (safetensors) holding a NaN or an infinity, as
// "master/NAME" (its slice suffix dropped); "" when all are finite. verify_checkpoint calls it, so
// such a checkpoint is skipped for an earlier one like a corrupt one (checkpoint.h).
std::string first_non_finite_in_shard(const std::string& path);
// verify_checkpoint's line for a shard file: "tensor 'NAME' holds NaN or infinite values", the
// file's own error when it cannot be read, "" when it is finite.
std::string non_finite_problem(const std::string& path);

// UserError when `steps` > 0 steps ran and all `skipped` of them were skipped (non-finite gradients):
// such a run trained nothing and must not end as a success or save its position as progress.
void require_some_step_trained(int64_t steps, int64_t skipped, const std::string& resumed_from);

}  // namespace kiln
