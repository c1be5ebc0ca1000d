// PEFT's adapter directory format, written and read by kiln so adapters move to and from PEFT and
// vLLM:
//
//   DIR/adapter_config.json         LoraConfig fields: peft_type LORA, r, lora_alpha, lora_dropout,
//                                   target_modules, use_rslora, use_dora, bias none, ...
//   DIR/adapter_model.safetensors   per adapted module M (a Hugging Face module path such as
//                                   model.layers.3.self_attn.q_proj):
//                                     base_model.model.M.lora_A.weight      (r, in)
//                                     base_model.model.M.lora_B.weight      (out, r)
//                                     base_model.model.M.lora_magnitude_vector  (out), DoRA only
//
// Reading checks everything before a tensor is used: the config's fields and the features kiln
// does not have (rank_pattern, alpha_pattern, bias, fan_in_fan_out), every tensor name, and then
// load_peft_adapter checks that each kiln adapter finds its tensors with its shapes and that no
// tensor is left over. Each problem is a UserError of one line naming the file and the key or
// tensor, and what would be valid.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "models/lora.h"

namespace kiln {

struct PeftConfig {
  int64_t r = 8;
  double alpha = 16;
  double dropout = 0;
  bool rslora = false;
  bool dora = false;
  std::vector<std::string> target_modules;  // q_proj, ...; or {"all-linear"}
  std::string base_model;                   // base_model_name_or_path; "" = null
  std::string init = "kaiming";             // init_lora_weights: true (kaiming) | "gaussian"
};

// An adapted module and its adapter: "model.layers.0.self_attn.q_proj" -> adapter.
using NamedAdapters = std::vector<std::pair<std::string, LoraAdapter>>;

// "base_model.model." + module + ".lora_A.weight" etc.
std::string peft_tensor_name(const std::string& module, LoraRole role);

// Writes DIR/adapter_model.safetensors then DIR/adapter_config.json (each atomically; DIR is
// created if missing). Tensors are stored in the adapters' dtype.
void write_peft_adapter(const std::string& dir, const PeftConfig& config, const NamedAdapters& adapters);

struct PeftModuleTensors {
  at::Tensor lora_A, lora_B, magnitude;  // magnitude undefined without DoRA
};
struct PeftAdapter {
  std::string dir;
  PeftConfig config;
  std::map<std::string, PeftModuleTensors> modules;  // by module path
};
PeftAdapter read_peft_adapter(const std::string& dir);

// Copies the read tensors into the adapters. The config must agree with each adapter's options
// (rank, alpha, rsLoRA, DoRA); every adapter needs its tensors with its shapes and every module in
// the file an adapter. A DoRA adapter from a file without magnitudes is an error too.
void load_peft_adapter(const PeftAdapter& src, const NamedAdapters& adapters);

}  // namespace kiln
