// LoRA / QLoRA run setup (see lora_setup.h).
#include "trainer/lora_setup.h"

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <set>
#include <tuple>

#include "base/error.h"
#include "base/log.h"
#include "data/hf_tokenizer.h"
#include "models/hf.h"
#include "models/lora_projection.h"
#include "models/peft.h"
#include "models/tp_layers.h"
#include "models/weight_source.h"
#include "parallel/communicator.h"
#include "trainer/checkpoint.h"
#include "trainer/model_setup.h"

namespace kiln {

bool lora_enabled(const Config& cfg) { return cfg.lora.rank > 0; }

ProjectionFactory run_projections(const Config& cfg, std::shared_ptr<const LoraDropoutClock> clock,
                                  std::shared_ptr<TensorParallel> tp) {
  ProjectionFactory base = tp ? tensor_parallel_projections(tp) : dense_projections();
  if (!lora_enabled(cfg)) return base;
  LoraSettings s;
  s.rank = cfg.lora.rank;
  s.alpha = cfg.lora.alpha;
  s.dropout = cfg.lora.dropout;
  s.rslora = cfg.lora.rslora;
  s.dora = cfg.lora.dora;
  s.targets = cfg.lora.targets;
  s.quantize_base = cfg.lora.quantize_base == BaseQuant::nf4;
  return lora_projections(std::move(base), s, std::move(clock), std::move(tp));
}

LoraLoad load_lora_model(LlamaImpl& model, const Config& cfg, WeightSource& base, WeightSource* adapters) {
  const bool nf4 = cfg.lora.quantize_base == BaseQuant::nf4;
  std::map<std::string, LoraProjectionImpl*> wrappers;  // "PATH.weight" -> its wrapper
  for (auto& [path, p] : lora_projections_of(model, /*with_adapter=*/false)) wrappers[path + ".weight"] = p;
  LoraLoad out;
  at::NoGradGuard no_grad;
  int64_t packed_bytes = 0, quantized = 0;
  for (auto& item : model.named_parameters()) {
    at::Tensor& t = item.value();
    const std::string& name = item.key();
    out.trainable.total_elements += t.numel();
    if (is_lora_parameter(name)) {
      t.requires_grad_(true);
      out.trainable.trained.push_back(name);
      out.trainable.trained_elements += t.numel();
      continue;
    }
    t.requires_grad_(false);
    out.trainable.frozen.push_back(name);
    if (is_shape_only(t)) t.set_data(base.read_full(name, t.sizes().vec()));
    auto w = wrappers.find(name);
    if (nf4 && w != wrappers.end()) {
      w->second->quantize_base(cfg.lora.double_quant);
      packed_bytes += w->second->nf4()->nbytes();
      ++quantized;
    }
  }
  if (nf4)
    log0("qlora: ", quantized, " base projections quantized to NF4",
         cfg.lora.double_quant ? " (double quant)" : "", ", ", packed_bytes, " bytes packed");
  const std::vector<std::pair<std::string, LoraProjectionImpl*>> adapted = lora_projections_of(model);
  if (adapters) {
    for (auto& item : model.named_parameters())
      if (is_lora_parameter(item.key()))
        item.value().copy_(adapters->read_full(item.key(), item.value().sizes().vec()));
  } else if (!cfg.lora.init_from.empty() && cfg.lora.init_from != "none") {
    const std::string& init = cfg.lora.init_from;  // peft:DIR (trainer/config.cpp checks the prefix)
    load_peft_adapter(read_peft_adapter(init.substr(5)), named_adapters(model));
    log0("adapters: ", init);
  } else if (cfg.lora.dora) {
    for (auto& [path, p] : adapted) p->adapter->init_magnitude(p->lora_base());
  }
  std::vector<std::pair<std::string, at::Tensor>> values;
  for (auto& item : model.named_parameters())
    if (is_lora_parameter(item.key())) values.emplace_back(item.key(), item.value().detach().clone());
  out.adapters = tensors_source(std::move(values), "LoRA adapters");
  return out;
}

std::map<std::string, double> lora_lr_scales(LlamaImpl& model, const Config& cfg) {
  std::map<std::string, double> out;
  if (cfg.lora.lr_ratio == 1.0) return out;
  for (auto& [path, p] : lora_projections_of(model))
    for (auto& item : p->adapter->named_parameters(/*recurse=*/false)) {
      const double s = lora_plus_lr_scale(p->adapter->role(item.key()), cfg.lora.lr_ratio);
      if (s != 1.0) out[path + "." + item.key()] = s;
    }
  return out;
}

Llama build_lora_model(const Config& cfg, const std::string& ckpt_dir) {
  Llama model(cfg.model, LlamaBuild{StageSpec{}, run_projections(cfg, nullptr), /*meta=*/true});
  std::unique_ptr<WeightSource> base = initial_weights(cfg, *model);
  std::unique_ptr<WeightSource> ckpt = ckpt_dir.empty() ? nullptr : checkpoint_weights_source(ckpt_dir);
  load_lora_model(*model, cfg, *base, ckpt.get());
  return model;
}

namespace {

// Rank `rank`'s piece of t (flattened, zero-padded to a multiple of `world`).
at::Tensor shard_of(const at::Tensor& t, int rank, int world) {
  const int64_t n = t.numel(), s = (n + world - 1) / world;
  at::Tensor flat = at::constant_pad_nd(t.reshape({-1}), {0, s * world - n}, 0);
  return flat.narrow(0, rank * s, s).clone();
}

at::Tensor gather_of(Communicator& dp, const at::Tensor& shard, int64_t numel) {
  at::Tensor out = at::empty({shard.numel() * dp.size()}, shard.options());
  dp.all_gather(shard, out);
  return out.narrow(0, 0, numel);
}

}  // namespace

int64_t shard_lora_base(LlamaImpl& model, const Config& cfg, Communicator& dp) {
  if (!lora_enabled(cfg) || cfg.lora.quantize_base != BaseQuant::nf4 || cfg.parallel.zero != 3 ||
      dp.size() == 1)
    return 0;
  int64_t kept = 0, total = 0;
  for (auto& [path, p] : lora_projections_of(model, /*with_adapter=*/false)) {
    const Nf4Weight& full = *p->nf4();
    total += full.nbytes();
    Nf4Weight shard = full;
    const int64_t packed_n = full.packed.numel();
    shard.packed = shard_of(full.packed, dp.rank(), dp.size());
    at::Tensor Nf4Weight::*scales = full.double_quant() ? &Nf4Weight::absmax_q : &Nf4Weight::absmax;
    const int64_t scales_n = (full.*scales).numel();
    shard.*scales = shard_of(full.*scales, dp.rank(), dp.size());
    kept += shard.nbytes();
    Communicator* comm = &dp;  // the mesh's dp group outlives the model (trainer.cpp)
    p->shard_base(std::move(shard), [comm, packed_n, scales, scales_n](const Nf4Weight& s) {
      Nf4Weight w = s;
      w.packed = gather_of(*comm, s.packed, packed_n);
      w.*scales = gather_of(*comm, s.*scales, scales_n);
      return w;
    });
  }
  log0("qlora: ZeRO-3 shards the NF4 base over dp ", dp.size(), ": ", kept, " of ", total,
       " bytes on each rank");
  return kept;
}

LoraMemory lora_memory(const Config& cfg) {
  const ModelConfig& m = cfg.model;
  const int64_t h = m.hidden_size, f = m.ffn_size(), q = m.num_heads * m.head_dim(),
                kv = m.kv_heads() * m.head_dim();
  const std::vector<std::tuple<std::string, int64_t, int64_t>> projections = {
      {"q_proj", h, q},    {"k_proj", h, kv}, {"v_proj", h, kv},  {"o_proj", q, h},
      {"gate_proj", h, f}, {"up_proj", h, f}, {"down_proj", f, h}};  // (name, in, out)
  LoraMemory out;
  const bool nf4 = cfg.lora.quantize_base == BaseQuant::nf4;
  int64_t linear = 0;
  for (const auto& [name, in, o] : projections) {
    linear += in * o;
    if (lora_targets(cfg.lora.targets, name))
      out.adapter_params += cfg.lora.rank * (in + o) + (cfg.lora.dora ? o : 0);
  }
  linear *= m.num_layers;
  out.adapter_params *= m.num_layers;
  out.dense_params = m.num_parameters() - (nf4 ? linear : 0);
  if (nf4) {
    out.quantized_params = linear;
    const double blocks = std::ceil(linear / 64.0);
    out.packed_bytes = std::ceil(linear / 2.0);
    out.scale_bytes =
        cfg.lora.double_quant ? blocks + 4 * std::ceil(blocks / Nf4Weight::kScaleBlock) + 4 : 4 * blocks;
  }
  return out;
}

namespace {

PeftConfig peft_config(const Config& cfg) {
  PeftConfig c;
  c.r = cfg.lora.rank;
  c.alpha = cfg.lora.alpha;
  c.dropout = cfg.lora.dropout;
  c.rslora = cfg.lora.rslora;
  c.dora = cfg.lora.dora;
  for (const std::string& name : lora_target_names())
    if (lora_targets(cfg.lora.targets, name)) c.target_modules.push_back(name);
  const std::string& init = cfg.model.init_from;
  if (init.rfind("hf:", 0) == 0) c.base_model = init.substr(3);
  return c;
}

Config checkpoint_config(const std::string& ckpt_dir) {
  Config cfg = load_config(ckpt_dir + "/config.yaml");
  if (!lora_enabled(cfg))
    user_error(ckpt_dir, ": --format peft needs a LoRA run's checkpoint (lora.rank > 0)");
  return cfg;
}

}  // namespace

void export_peft(const std::string& ckpt_dir, const std::string& out_dir) {
  const Config cfg = checkpoint_config(ckpt_dir);
  Llama model = build_lora_model(cfg, ckpt_dir);
  write_peft_adapter(out_dir, peft_config(cfg), named_adapters(*model));
}

void export_merged_hf(const std::string& ckpt_dir, at::ScalarType dtype, const std::string& out_dir) {
  const Config cfg = checkpoint_config(ckpt_dir);
  Llama model = build_lora_model(cfg, ckpt_dir);
  std::map<std::string, LoraProjectionImpl*> wrappers;
  for (auto& [path, p] : lora_projections_of(*model, /*with_adapter=*/false)) wrappers[path + ".weight"] = p;
  std::map<std::string, at::Tensor> params;
  for (auto& item : model->named_parameters()) params[item.key()] = item.value();
  save_hf_streamed(
      cfg.model, dtype,
      [&](const std::string& name) {
        auto w = wrappers.find(name);
        if (w != wrappers.end()) return w->second->merged_weight();
        auto p = params.find(name);
        if (p == params.end()) user_error(ckpt_dir, ": the model has no tensor '", name, "' for the export");
        return p->second.detach();
      },
      out_dir);
  export_tokenizer(cfg, out_dir);
}

}  // namespace kiln
