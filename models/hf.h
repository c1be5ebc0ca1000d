// Hugging Face import and export: config.json <-> ModelConfig, model.safetensors (single or
// sharded with model.safetensors.index.json) <-> the parameters of a kiln model, whose names
// are Hugging Face's already (models/llama.h). No Python at run time.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
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

class SafetensorsFile;

// DIR/config.json -> ModelConfig. Reads both transformers layouts: rope_theta + rope_scaling
// {type | rope_type, factor, ...} (v4) and rope_parameters {rope_type, rope_theta, ...} (v5).
// model_type llama or baichuan (Baichuan: position and NormHead decided from the model class's
// config keys and the tensors, see hf.cpp; its context is model_max_length when
// max_position_embeddings is absent); kiln's own `position` and `norm_head` keys win. Missing required keys, unknown rope
// types and architectures kiln does not implement (biases, other activations, head_dim !=
// hidden/heads) are UserErrors naming DIR/config.json and the key. init_from is left "none".
ModelConfig read_hf_config(const std::string& dir);

// The tensors of an HF checkpoint directory: model.safetensors, or the shards listed in
// model.safetensors.index.json ("weight_map": name -> file). Files are mapped once each.
class HfWeights {
 public:
  explicit HfWeights(const std::string& dir);
  const std::string& dir() const { return dir_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return where_.count(name) > 0; }
  const SafetensorsFile& file_of(const std::string& name) const;  // UserError if absent
  at::Tensor tensor(const std::string& name) const;               // stored dtype, CPU
  std::vector<int64_t> shape(const std::string& name) const;
  // "DIR/model.safetensors" or "DIR/model.safetensors.index.json": what errors name.
  const std::string& source() const { return source_; }

 private:
  std::string dir_, source_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

// Copies every parameter of `model` (named as HF names them) from DIR's safetensors, converting
// dtype and device, under NoGradGuard. Errors (UserError, naming the file and the tensor):
// a tensor the model needs is missing; a shape differs (both shapes given); the file holds
// tensors the model does not use — except rotary inv_freq buffers and lm_head.weight when the
// model ties it. With partial = true (a pipeline stage holding some layers) unused tensors are
// allowed. Baichuan's fused W_pack (3h, h) is split into q_proj, k_proj, v_proj. Heads load raw:
// NormHead normalises in every forward (models/lm_head.h).
void load_hf_weights(torch::nn::Module& model, const std::string& dir, bool partial = false);
// The same checks, as a WeightSource reading ranges of the memory-mapped files on demand (a rank
// reads only its slices). `names`: every parameter of the model (or stage, with partial) and its
// shape.
class WeightSource;
std::unique_ptr<WeightSource> hf_weight_source(const std::string& dir,
                                               const std::vector<std::pair<std::string, std::vector<int64_t>>>& names,
                                               bool partial = false);

// Writes an HF LlamaForCausalLM directory: config.json (model_type llama, torch_dtype of the
// tensors) and model.safetensors, or model-0000i-of-0000n.safetensors + index when the tensors
// exceed max_shard_bytes. `named` must be the full model (hf_parameter_shapes(cfg); the embedding
// and head may carry model.vocab_pad_to's padding rows: cfg.vocab_size rows are written).
// config.json also carries kiln's `position` and `norm_head`; under norm_head the head's rows are
// written normalised, so LlamaForCausalLM gives kiln's logits. Atomic:
// everything goes to DIR.tmp, which is renamed to DIR; DIR must not exist or be empty.
void save_hf(const std::vector<std::pair<std::string, at::Tensor>>& named, const ModelConfig& cfg,
             const std::string& dir, int64_t max_shard_bytes = int64_t{5} * 1000 * 1000 * 1000);

// The same, fetching one tensor at a time by HF name (any dtype; converted to `dtype`), so an
// export never holds the whole model (kiln export from checkpoint shards).
void save_hf_streamed(const ModelConfig& cfg, at::ScalarType dtype,
                      const std::function<at::Tensor(const std::string&)>& fetch, const std::string& dir,
                      int64_t max_shard_bytes = int64_t{5} * 1000 * 1000 * 1000);
// HF names and shapes of every parameter of the full model, in transformers' order.
std::vector<std::pair<std::string, std::vector<int64_t>>> hf_parameter_shapes(const ModelConfig& cfg);

}  // namespace kiln
