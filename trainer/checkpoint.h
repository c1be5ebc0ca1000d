// Checkpoints: one directory per step under RUN_DIR/checkpoints, written to step-N.tmp by every
// rank and renamed to step-N by rank 0 once all have finished; `latest` (a one-line file naming
// the directory) is replaced atomically last. A crash at any moment leaves either the previous
// complete checkpoint or the new one, never a half-written directory that looks complete.
//
//   step-00000040/
//     model.safetensors      full fp32 weights under Hugging Face names (rank 0)
//     optim-RRRRR.safetensors   each rank's optimizer slices ("master/NAME", "exp_avg/NAME",
//                            "exp_avg_sq/NAME"), with global shape and flat range in __metadata__
//     state.json             step, data position, layout, kiln version (rank 0, written last)
//     config.yaml            the resolved config
// Loading gathers slices from every optim file, so a different dp size or ZeRO stage resumes.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "parallel/zero.h"

namespace kiln {

class Communicator;

struct CheckpointState {
  int64_t step = 0;      // optimizer steps completed
  nlohmann::json data;   // loader state
  nlohmann::json extra;  // tokens seen, layout, ...
};

std::string checkpoint_root(const std::string& run_dir);
// The directory `latest` names, or "" when there is none. UserError if `latest` names a
// directory that is missing or incomplete.
std::string latest_checkpoint(const std::string& run_dir);

// Collective over `world`. weights: full fp32 tensors (only rank 0's are written).
void save_checkpoint(const std::string& run_dir, Communicator& world, const CheckpointState& state,
                     const std::vector<std::pair<std::string, at::Tensor>>& weights,
                     const std::vector<TensorSlice>& slices, const std::string& config_yaml,
                     int64_t keep_last);

CheckpointState read_checkpoint_state(const std::string& dir);
// Every optimizer slice in the checkpoint (views into mapped files).
std::vector<TensorSlice> read_checkpoint_slices(const std::string& dir);
// model.safetensors of a checkpoint as (name, tensor) pairs.
std::vector<std::pair<std::string, at::Tensor>> read_checkpoint_weights(const std::string& dir);

}  // namespace kiln
