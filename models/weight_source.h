// WeightSource: where a rank's parameter values come from, one global tensor (or a flat range of
// one) at a time, so that no rank ever needs the whole model in memory: a seeded random init
// defined per tensor, a Hugging Face directory (memory-mapped; only the touched pages are read),
// a kiln checkpoint (only the slices that overlap), or tensors already in memory.
//
// Random init is a function of (train.seed, the tensor's global name): every layout (dp, ZeRO
// stage, later tp and pp) starts from exactly the same weights, whatever order ranks build in.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/model_config.h"

namespace torch {
namespace nn {
class Module;
}
}  // namespace torch

namespace kiln {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // What errors and logs name ("random init (seed 1234)", "hf:DIR", a checkpoint directory).
  virtual std::string describe() const = 0;
  // Elements [begin, end) of the flattened global tensor `name` of global shape `shape`, as a
  // 1-D fp32 tensor on the CPU. UserError naming the source when it lacks the tensor or the
  // shape differs.
  virtual at::Tensor read(const std::string& name, const std::vector<int64_t>& shape, int64_t begin,
                          int64_t end) = 0;
  at::Tensor read_full(const std::string& name, const std::vector<int64_t>& shape);
};

// normal(0, init_std) for matrices (output projections o_proj / down_proj scaled by
// 1/sqrt(2 * num_layers)), ones for norm weights; each tensor from its own generator seeded by
// hash(seed, name). The last tensor generated is kept, so consecutive ranges of one tensor cost
// one generation.
std::unique_ptr<WeightSource> random_init_source(const ModelConfig& cfg, uint64_t seed);
// The values of tensors in memory (a materialised model's parameters, say), by name.
std::unique_ptr<WeightSource> tensors_source(std::vector<std::pair<std::string, at::Tensor>> named,
                                             const std::string& what);

// Fills every parameter of `model` from `source`: a placeholder (shape_only()) becomes an fp32
// CPU tensor, an allocated parameter keeps its dtype and device. The whole model in memory: for one process (eval, generate, export, tests).
void materialize(torch::nn::Module& model, WeightSource& source);

// 64-bit hash of a tensor name with a seed (xxh64): the per-tensor generator seed.
uint64_t tensor_seed(uint64_t seed, const std::string& name);

}  // namespace kiln
