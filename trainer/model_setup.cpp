// Device, dtype and weight-source selection shared by the verbs (see model_setup.h).
#include "trainer/model_setup.h"

#include <torch/cuda.h>

#include <filesystem>
#include <unordered_map>

#include "models/hf.h"
#include "trainer/checkpoint.h"
#include "trainer/error.h"
#include "trainer/run_dir.h"

namespace fs = std::filesystem;

namespace kiln {

ComputeSetup compute_setup(const Config& cfg) {
  ComputeSetup s;
  const bool cuda = cfg.train.device == "cuda" || (cfg.train.device == "auto" && torch::cuda::is_available());
  if (cuda) {
    if (!torch::cuda::is_available())
      user_error("train.device: cuda, but no CUDA device is available; valid here: cpu | auto");
    s.device = c10::Device(c10::kCUDA);
  }
  const std::string& p = cfg.train.precision;
  if (p == "bf16")
    s.dtype = c10::kBFloat16;
  else if (p == "fp16")
    s.dtype = c10::kHalf;
  else if (p == "fp32")
    s.dtype = c10::kFloat;
  else
    s.dtype = cuda ? c10::kBFloat16 : c10::kFloat;  // auto
  return s;
}

void load_named_weights(LlamaImpl& model, const std::vector<std::pair<std::string, at::Tensor>>& named,
                        const std::string& what) {
  std::unordered_map<std::string, at::Tensor> by_name(named.begin(), named.end());
  at::NoGradGuard no_grad;
  for (auto& item : model.named_parameters()) {
    auto it = by_name.find(item.key());
    if (it == by_name.end()) user_error(what, ": has no tensor '", item.key(), "' that the model needs");
    if (it->second.sizes() != item.value().sizes())
      user_error(what, ": tensor '", item.key(), "' has shape ", it->second.sizes(), ", the model needs ",
                 item.value().sizes(), " (model.* keys differ from the checkpoint's?)");
    item.value().copy_(it->second);
  }
}

Llama build_model(const Config& cfg, bool prefer_run_dir, std::string* from) {
  at::manual_seed(static_cast<uint64_t>(cfg.train.seed));
  Llama model(cfg.model);
  std::string source = "random init (seed " + std::to_string(cfg.train.seed) + ")";
  std::string ckpt = prefer_run_dir ? auto_resume_checkpoint(cfg.train.run_dir) : "";
  const std::string& init = cfg.model.init_from;
  if (!ckpt.empty()) {
    load_named_weights(*model, read_checkpoint_weights(ckpt), ckpt);
    source = ckpt;
  } else if (init.rfind("hf:", 0) == 0) {
    load_hf_weights(*model, init.substr(3));
    source = init;
  } else if (init.rfind("ckpt:", 0) == 0) {
    std::string dir = init.substr(5);
    if (fs::exists(fs::path(dir) / "checkpoints")) {
      std::string latest = auto_resume_checkpoint(dir);
      if (latest.empty()) user_error("model.init_from: ", dir, " has no checkpoint yet");
      dir = latest;
    }
    load_named_weights(*model, read_checkpoint_weights(dir), dir);
    source = init;
  }
  if (from) *from = source;
  return model;
}

}  // namespace kiln
