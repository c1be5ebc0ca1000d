// LoRA and QLoRA at the projection call site (STYLE.md 13): a ProjectionFactory that wraps
// whatever projection a base factory returns (dense today; the tensor-parallel column / row
// projections later) with a LoraAdapter for the targeted names. The base projection is not
// changed: its tensors are registered on the wrapper under their own names (so
// model.layers.0.self_attn.q_proj.weight stays the Hugging Face name), and the adapter's beside
// them:
//
//   model.layers.{i}.self_attn.q_proj.weight                  (out, in) the frozen base
//   model.layers.{i}.self_attn.q_proj.lora_A                  (r, in)
//   model.layers.{i}.self_attn.q_proj.lora_B                  (out, r)
//   model.layers.{i}.self_attn.q_proj.lora_magnitude_vector   (out), DoRA only
//
// so an adapter lives in the layer it wraps (a pipeline stage holds exactly its own) and ZeRO-3
// gathers it with its layer's unit.
//
// QLoRA: quantize_base() replaces the dense base weight by an Nf4Weight (models/nf4.h) once it
// holds its values; the `weight` parameter is then an empty placeholder kept for the name, the
// forward runs nf4_linear (dequantized on the fly in the activation's dtype), and to(dtype) never
// casts the packed codes (the wrapper's to() moves them to a device only).
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "models/lora.h"
#include "models/nf4.h"
#include "models/peft.h"
#include "models/projection.h"

namespace kiln {

struct LoraSettings {
  int64_t rank = 0;
  double alpha = 16;
  double dropout = 0;
  bool rslora = false;
  bool dora = false;
  std::vector<std::string> targets = {"all_linear"};  // names (q_proj, ...) or all_linear
  // QLoRA: every linear projection of the decoder layers is wrapped (those not targeted without
  // an adapter) so that each base weight can be quantized at load time (quantize_base()).
  bool quantize_base = false;
};

// Whether projection `name` (q_proj, ..., down_proj, lm_head) is adapted: all_linear is every
// projection of a decoder layer; lm_head never is.
bool lora_targets(const std::vector<std::string>& targets, const std::string& name);
// The projections a target list can name, for error messages.
const std::vector<std::string>& lora_target_names();
// The Hugging Face module path of a layer's projection: model.layers.3.self_attn.q_proj.
std::string hf_module_path(const ProjectionSpec& spec);
// Whether a parameter name is an adapter's (ends in .lora_A, .lora_B, .lora_magnitude_vector).
bool is_lora_parameter(const std::string& name);

class LoraProjectionImpl : public ProjectionImpl {
 public:
  // options: the adapter; none = a base-only wrapper (a QLoRA base projection not targeted).
  // tp: the base is split over tensor parallel; the adapter is split with it (models/lora.h).
  LoraProjectionImpl(Projection base, const std::optional<LoraOptions>& options,
                     std::optional<LoraTensorParallel> tp = std::nullopt);

  // The base's enter, its local product (or NF4's), the adapter's term, the base's leave.
  at::Tensor forward(const at::Tensor& x) override;
  GlobalShape global_shape(const std::string& param) const override;

  // QLoRA: the base weight (holding its values) becomes NF4 codes; the dense tensor is freed.
  void quantize_base(bool double_quant);
  const Nf4Weight* nf4() const { return nf4_ ? &*nf4_ : nullptr; }
  // ZeRO-3 (trainer/lora_setup.h): from now on nf4() is this rank's shard of the codes and scales,
  // and each use of the base calls `gather` for the whole weight, which lives only while the
  // forward (and its backward) needs it.
  using Nf4Gather = std::function<Nf4Weight(const Nf4Weight& shard)>;
  void shard_base(Nf4Weight shard, Nf4Gather gather);
  bool base_sharded() const { return static_cast<bool>(gather_); }
  // What the adapter reads of the base (DoRA's norm, a merge): the dense weight or the NF4 one.
  LoraBase lora_base() const;
  // W + the adapter's update (W alone without an adapter), as merge_and_unload computes it, in fp32
  // (dequantized for QLoRA): LoRA W + s B A; DoRA (m / ||W + s B A||) (W + s B A), the norm per output row.
  at::Tensor merged_weight() const;

  LoraAdapter adapter{nullptr};  // its tensors are registered here, not the module; may be null
  Projection base{nullptr};      // the wrapped projection (its tensors registered here)

  void train(bool on = true) override;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, bool non_blocking = false) override;

 private:
  std::optional<Nf4Weight> nf4_;
  Nf4Gather gather_;
};
TORCH_MODULE(LoraProjection);

class TensorParallel;
// Wraps `base`'s projections named by settings.targets with adapters whose dropout reads `clock`
// (set by the step runner). Adapter A starts from PEFT's kaiming init seeded by the module path,
// B at zero, so every layout starts from the same adapter. `tp`: the group of a
// tensor-parallel base factory (models/tp_layers.h), whose split projections get split adapters.
ProjectionFactory lora_projections(ProjectionFactory base, const LoraSettings& settings,
                                   std::shared_ptr<const LoraDropoutClock> clock,
                                   std::shared_ptr<TensorParallel> tp = nullptr);

// Every LoRA projection of `model` with its module path, in model order (with_adapter: only those
// holding an adapter, else base-only QLoRA wrappers too).
std::vector<std::pair<std::string, LoraProjectionImpl*>> lora_projections_of(torch::nn::Module& model,
                                                                             bool with_adapter = true);
// The same as (path, adapter) pairs, for PEFT files (models/peft.h).
NamedAdapters named_adapters(torch::nn::Module& model);

}  // namespace kiln
