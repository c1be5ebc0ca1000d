// What train, eval, generate and export share: picking the device and compute dtype, building
// the model, and loading its weights from a checkpoint, a Hugging Face directory or a seed.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/llama.h"
#include "trainer/config.h"

namespace kiln {

struct ComputeSetup {
  c10::Device device = c10::Device(c10::kCPU);
  c10::ScalarType dtype = c10::kFloat;  // compute dtype of the model's tensors
};
ComputeSetup compute_setup(const Config& cfg);

class WeightSource;
// Where a new run's weights come from: model.init_from (hf:DIR, ckpt:DIR, verified) or the seeded
// random init. `model` gives the names and shapes (it may hold placeholders).
std::unique_ptr<WeightSource> initial_weights(const Config& cfg, const LlamaImpl& model);
// Global names and shapes (tensor parallel: of the global tensors the rank holds slices of).
std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes(const LlamaImpl& model);
// Tensor parallel: `global` served as this rank's slices (models/tp_weights.h); else `global`.
std::unique_ptr<WeightSource> rank_source(std::unique_ptr<WeightSource> global, const LlamaImpl& model);

// A model with weights from, in order: the latest checkpoint under train.run_dir (when
// prefer_run_dir), model.init_from (hf:DIR, ckpt:DIR), or a seeded random init. Returns the
// model in fp32 on the CPU and fills `from` with where the weights came from.
Llama build_model(const Config& cfg, bool prefer_run_dir, std::string* from);

}  // namespace kiln
