// Checkpoints: one directory per step under RUN_DIR/checkpoints, written to step-N.tmp by every
// rank and renamed to step-N by rank 0 once all have finished; `latest` (a one-line file naming
// the directory) is replaced atomically last. Each rank writes only what it owns, so no file
// holds the whole model unless the run is one process.
//
//   step-00000040/
//     shard-RRRRR-of-WWWWW.safetensors   rank R's slices: "master/NAME", "exp_avg/NAME",
//                        "exp_avg_sq/NAME" (trained) and "weight/NAME" (frozen), each an N-d box
//                        of the global tensor; __metadata__ "slices" maps every stored key to
//                        {name, shape (global), offset, length}
//     config.yaml        the resolved config
//     state.json         (rank 0, written last) format_version 2, step, data position, layout
//                        (world, tp, pp, dp, zero), every rank's RNG state, the global shape of
//                        every tensor, and the size and xxh3-64 checksum of every file
//
// Loading on any layout reads only the slices that overlap what the rank needs. Every reader
// (resume, eval, generate, export, init_from: ckpt:) verifies what it reads first.
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "parallel/tensor_slice.h"

namespace kiln {

class Communicator;
class WeightSource;

struct CheckpointState {
  int64_t step = 0;        // optimizer steps completed
  nlohmann::json data;     // loader state
  nlohmann::json extra;    // tokens seen, ...
  nlohmann::json layout;   // {world, tp, pp, dp, zero}
};

std::string checkpoint_root(const std::string& run_dir);
std::string checkpoint_dir_name(int64_t step);  // "step-00000040"

// What save_checkpoint writes for one rank.
struct CheckpointShard {
  std::vector<TensorSlice> slices;  // this rank's state slices (ZeroOptimizer::state_slices())
  // Every tensor of the model with its global shape (trained and frozen), the same on every rank.
  std::vector<std::pair<std::string, std::vector<int64_t>>> tensors;
  // The names of the trained tensors (they have master and moments), the same on every rank.
  std::vector<std::string> trained;
  // Frozen tensors this rank holds in full: it writes its dp partition of each as "weight/NAME".
  std::vector<std::pair<std::string, at::Tensor>> frozen;
  int dp_rank = 0, dp_size = 1;
};

// Collective over `world`. Writes step-N.tmp, checksums, renames, updates `latest`, keeps the
// newest keep_last (by step number).
void save_checkpoint(const std::string& run_dir, Communicator& world, const CheckpointState& state,
                     const CheckpointShard& shard, const std::string& config_yaml, int64_t keep_last);

// The verdict on one checkpoint directory: one line per file, and whether it can be used.
struct CheckpointCheck {
  struct File {
    std::string name;
    int64_t bytes = 0;
    std::string problem;  // "" = fine
  };
  std::vector<File> files;
  std::string problem;  // the first problem found ("FILE: what"), "" when usable
  bool ok() const { return problem.empty(); }
};
// Every file present with its recorded size and xxh3-64, state.json well formed, safetensors
// headers valid, and the slices covering every tensor exactly once. Reads every byte once.
CheckpointCheck verify_checkpoint(const std::string& dir);

// The checkpoint to resume from: `latest` when it verifies, else the newest step-* that does
// (each one skipped gets a warning line naming the file and what is wrong). "" when the run has
// no checkpoint. UserError when checkpoints exist but none is usable.
std::string find_resume_checkpoint(const std::string& run_dir);
// The same (tests and tools that name it so).
std::string latest_checkpoint(const std::string& run_dir);
// A run directory or a checkpoint directory -> a verified checkpoint directory (UserError if none).
std::string resolve_checkpoint(const std::string& run_or_checkpoint_dir);

CheckpointState read_checkpoint_state(const std::string& dir);
// The global tensors and their shapes recorded in state.json.
std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_tensors(const std::string& dir);
// The names of the tensors that had optimizer state (master and moments) in state.json's "trained".
std::vector<std::string> checkpoint_trained(const std::string& dir);
// The checkpoint's slices as a WeightSource for "master/NAME", "exp_avg/NAME", "exp_avg_sq/NAME"
// and "weight/NAME" (files mapped, only overlapping slices read).
std::unique_ptr<WeightSource> checkpoint_state_source(const std::string& dir);
// The model's weights by parameter name: "master/NAME" for trained tensors, else "weight/NAME".
std::unique_ptr<WeightSource> checkpoint_weights_source(const std::string& dir);
// Every weight of the checkpoint assembled whole, by name, in state.json's order: the whole
// model in memory, for tests and small tools (export streams instead).
std::vector<std::pair<std::string, at::Tensor>> read_checkpoint_weights(const std::string& dir);
// Every slice in the checkpoint (views into mapped files): tests and tools.
std::vector<TensorSlice> read_checkpoint_slices(const std::string& dir);
// The rank's RNG states recorded in state.json (empty when absent).
std::vector<std::string> checkpoint_rng_states(const std::string& dir);

}  // namespace kiln
