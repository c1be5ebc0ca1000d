// LoRA / QLoRA runs (lora.rank > 0): the projection factory, loading the frozen base and the
// adapters, the trainable set and LoRA+'s learning-rate groups. What train, eval, generate and
// export share; the trainer, model_setup and export call these hooks and nothing else of LoRA.
//
// A LoRA run's checkpoints hold only the adapters (master weights and AdamW moments): the base
// is read again from model.init_from (and quantized again, deterministically) whenever a
// checkpoint is used, so a checkpoint is megabytes whatever the model's size.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "models/llama.h"
#include "models/lora.h"
#include "trainer/config.h"
#include "trainer/trainable.h"

namespace kiln {

class WeightSource;

bool lora_enabled(const Config& cfg);
class TensorParallel;
// The run's projections: dense (or tensor-parallel with `tp`), wrapped with adapters (and
// NF4-ready base wrappers for QLoRA) when lora.rank > 0. clock: read by the adapters' dropout
// (null: no dropout, eval and tools).
ProjectionFactory run_projections(const Config& cfg, std::shared_ptr<const LoraDropoutClock> clock,
                                  std::shared_ptr<TensorParallel> tp = nullptr);

struct LoraLoad {
  std::unique_ptr<WeightSource> adapters;  // the adapters' values by parameter name (the optimizer's start)
  TrainableSet trainable;                  // adapters trained, everything else frozen
};
// Fills a LoRA model built with run_projections(): every base tensor from `base`, one at a time,
// each base linear weight quantized to NF4 right after it is read when lora.quantize_base is nf4;
// then the adapters from `adapters` (a checkpoint's weights: resume, eval, export) or, for a new
// run, from lora.init_from (peft:DIR) or their own init (DoRA's magnitude computed from the
// base, as PEFT does). Only the adapters require grad.
LoraLoad load_lora_model(LlamaImpl& model, const Config& cfg, WeightSource& base, WeightSource* adapters);

// LoRA+ (lora.lr_ratio): parameter name -> learning-rate multiplier, for B and the DoRA magnitude
// (empty when lr_ratio is 1).
std::map<std::string, double> lora_lr_scales(LlamaImpl& model, const Config& cfg);

// The model of a LoRA checkpoint (or of model.init_from + lora.init_from when ckpt_dir is ""),
// fp32 on the CPU: eval, generate and export.
Llama build_lora_model(const Config& cfg, const std::string& ckpt_dir);

class Communicator;
// ZeRO-3 with dp > 1 and an NF4 base (QLoRA): every projection keeps 1/dp of its packed codes and
// absmax scales (the small second-level scales stay whole) and all-gathers the rest for each use,
// so the frozen base is sharded over dp like the trained parameters. Returns the packed bytes this
// rank keeps; 0 (and nothing changes) for other runs.
int64_t shard_lora_base(LlamaImpl& model, const Config& cfg, Communicator& dp);

// What `kiln plan` shows for a LoRA / QLoRA run (whole model, before any sharding).
struct LoraMemory {
  int64_t quantized_params = 0;  // base linear weights held as NF4 (QLoRA), else 0
  double packed_bytes = 0;       // their 4-bit codes
  double scale_bytes = 0;        // their absmax scales (8-bit + fp32 per 256 blocks with double quant)
  int64_t dense_params = 0;      // base tensors kept in the compute dtype (embeddings, norms, head, ...)
  int64_t adapter_params = 0;    // A, B (and DoRA magnitudes) of every adapted projection
};
LoraMemory lora_memory(const Config& cfg);

// kiln export --format peft: the adapters of checkpoint `ckpt_dir` as a PEFT adapter directory.
void export_peft(const std::string& ckpt_dir, const std::string& out_dir);
// kiln export --format hf of a LoRA checkpoint: every adapter merged into its base (dequantized
// for QLoRA), one tensor at a time, as PEFT's merge_and_unload.
void export_merged_hf(const std::string& ckpt_dir, at::ScalarType dtype, const std::string& out_dir);

}  // namespace kiln
