// Device, dtype and weight-source selection shared by the verbs (see model_setup.h).
#include "trainer/model_setup.h"

#include <torch/cuda.h>

#include <filesystem>
#include <unordered_map>

#include "models/hf.h"
#include "models/lora_projection.h"
#include "models/weight_source.h"
#include "models/tp_weights.h"
#include "trainer/checkpoint.h"
#include "trainer/lora_setup.h"
#include "base/error.h"
#include "trainer/run_dir.h"
#include "trainer/vocab_setup.h"

namespace fs = std::filesystem;

namespace kiln {

ComputeSetup compute_setup(const Config& cfg) {
  ComputeSetup s;
  const bool cuda = cfg.train.device == DeviceChoice::cuda || (cfg.train.device == DeviceChoice::automatic && torch::cuda::is_available());
  if (cuda) {
    if (!torch::cuda::is_available())
      user_error("train.device: cuda, but no CUDA device is available; valid here: cpu | auto");
    s.device = c10::Device(c10::kCUDA);
  }
  switch (cfg.train.precision) {
    case Precision::bf16: s.dtype = c10::kBFloat16; break;
    case Precision::fp16: s.dtype = c10::kHalf; break;
    case Precision::fp32: s.dtype = c10::kFloat; break;
    case Precision::automatic: s.dtype = cuda ? c10::kBFloat16 : c10::kFloat; break;
  }
  return s;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes(const LlamaImpl& model) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  // The base model's tensors: LoRA adapters come from their own sources (trainer/lora_setup.h).
  for (const auto& item : model.named_parameters())
    if (!is_lora_parameter(item.key())) out.emplace_back(item.key(), item.value().sizes().vec());
  return tp_global_shapes(out, model.tp_shards());  // tensor parallel: the global tensors' shapes
}

std::unique_ptr<WeightSource> rank_source(std::unique_ptr<WeightSource> global, const LlamaImpl& model) {
  if (!model.tensor_parallel()) return global;
  return std::make_unique<TpShardedSource>(std::move(global), model.tp_shards());
}

std::unique_ptr<WeightSource> initial_weights(const Config& cfg, const LlamaImpl& model) {
  const std::string& init = cfg.model.init_from;
  // Vocabulary growth hook (trainer/vocab_setup.h): a checkpoint with fewer embedding/head rows
  // than model.vocab_size is served grown; otherwise these are the plain sources.
  const uint64_t seed = static_cast<uint64_t>(cfg.train.seed);
  if (init.rfind("hf:", 0) == 0)
    return hf_source_with_vocab_growth(init.substr(3), parameter_shapes(model), cfg.model, seed);
  if (init.rfind("ckpt:", 0) == 0) {
    const std::string dir = resolve_checkpoint(init.substr(5));
    return checkpoint_source_with_vocab_growth(dir, parameter_shapes(model), cfg.model, seed);
  }
  return random_init_source(cfg.model, static_cast<uint64_t>(cfg.train.seed));
}

Llama build_model(const Config& cfg, bool prefer_run_dir, std::string* from) {
  if (lora_enabled(cfg)) {  // LoRA hook: the base from model.init_from, adapters from the checkpoint
    const std::string ckpt = prefer_run_dir ? find_resume_checkpoint(cfg.train.run_dir) : "";
    if (from) *from = ckpt.empty() ? cfg.model.init_from + " + LoRA " + cfg.lora.init_from : ckpt;
    return build_lora_model(cfg, ckpt);
  }
  Llama model(cfg.model, LlamaBuild{StageSpec{}, {}, /*meta=*/true});
  const std::string ckpt = prefer_run_dir ? find_resume_checkpoint(cfg.train.run_dir) : "";
  std::unique_ptr<WeightSource> source = ckpt.empty() ? initial_weights(cfg, *model) : checkpoint_weights_source(ckpt);
  materialize(*model, *source);
  if (from) *from = ckpt.empty() && cfg.model.init_from != "none" ? cfg.model.init_from : source->describe();
  return model;
}

}  // namespace kiln
