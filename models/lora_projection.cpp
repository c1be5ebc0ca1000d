// The LoRA / QLoRA projection wrapper and its factory (see lora_projection.h).
#include "models/lora_projection.h"

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <algorithm>

#include "base/error.h"

namespace kiln {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

const std::vector<std::string>& lora_target_names() {
  static const std::vector<std::string> names = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"};
  return names;
}

bool lora_targets(const std::vector<std::string>& targets, const std::string& name) {
  if (name == "lm_head") return false;
  for (const std::string& t : targets)
    if (t == name || ((t == "all_linear" || t == "all-linear") &&
                      std::count(lora_target_names().begin(), lora_target_names().end(), name)))
      return true;
  return false;
}

std::string hf_module_path(const ProjectionSpec& spec) {
  if (spec.layer < 0) return spec.name;
  const bool attention =
      spec.name == "q_proj" || spec.name == "k_proj" || spec.name == "v_proj" || spec.name == "o_proj";
  return str("model.layers.", spec.layer, attention ? ".self_attn." : ".mlp.", spec.name);
}

bool is_lora_parameter(const std::string& name) {
  return ends_with(name, ".lora_A") || ends_with(name, ".lora_B") ||
         ends_with(name, ".lora_magnitude_vector");
}

LoraProjectionImpl::LoraProjectionImpl(Projection wrapped, const std::optional<LoraOptions>& options)
    : ProjectionImpl(wrapped->spec(), NoWeight{}), base(std::move(wrapped)) {
  // The base's tensors under their own names (weight, and whatever a parallel projection holds),
  // the same tensor objects, so materialize(), ZeRO and to() reach them through the wrapper.
  for (auto& item : base->named_parameters(/*recurse=*/true)) {
    KILN_CHECK(item.key().find('.') == std::string::npos, "LoRA wraps projections without submodules; ",
               spec_.name, " has ", item.key());
    register_parameter(item.key(), item.value(), item.value().requires_grad());
  }
  weight = base->weight;
  if (!options) return;
  adapter = LoraAdapter(*options);
  for (auto& item : adapter->named_parameters(/*recurse=*/false))
    register_parameter(item.key(), item.value());
}

LoraBase LoraProjectionImpl::lora_base() const {
  KILN_CHECK(!gather_, spec_.name, ": the base is sharded over dp (ZeRO-3); lora_base() needs it whole");
  LoraBase b;
  if (nf4_)
    b.nf4 = &*nf4_;
  else
    b.dense = weight;
  return b;
}

at::Tensor LoraProjectionImpl::forward(const at::Tensor& x) {
  if (gather_) {  // ZeRO-3: the whole NF4 weight for this use only (nf4_linear's backward keeps it)
    const Nf4Weight full = gather_(*nf4_);
    at::Tensor y = nf4_linear(x, full);
    LoraBase b;
    b.nf4 = &full;
    return adapter ? adapter->forward(x, y, b) : y;
  }
  at::Tensor y = nf4_ ? nf4_linear(x, *nf4_) : base->forward(x);
  return adapter ? adapter->forward(x, y, lora_base()) : y;
}

void LoraProjectionImpl::shard_base(Nf4Weight shard, Nf4Gather gather) {
  KILN_CHECK(nf4_ && !gather_, spec_.name, ": shard_base needs a quantized, unsharded base");
  nf4_ = std::move(shard);
  gather_ = std::move(gather);
}

void LoraProjectionImpl::quantize_base(bool double_quant) {
  KILN_CHECK(!nf4_, spec_.name, ": base already quantized");
  KILN_CHECK(weight.defined() && weight.numel() > 0 && !is_shape_only(weight), spec_.name,
             ": quantize_base needs the base weight's values");
  torch::NoGradGuard no_grad;
  nf4_ = nf4_quantize(weight.detach(), double_quant);
  // The dense base is gone; the parameter stays (empty, frozen) so the module keeps HF's names.
  weight.set_data(at::empty({0}, weight.options()));
}

at::Tensor LoraProjectionImpl::merged_weight() const {
  torch::NoGradGuard no_grad;
  at::Tensor w = lora_base().weight(at::kFloat);
  if (!adapter) return w;
  at::Tensor delta =
      adapter->lora_B.to(at::kFloat).matmul(adapter->lora_A.to(at::kFloat)) * adapter->scaling();
  at::Tensor merged = w + delta;
  if (!adapter->options().dora()) return merged;
  at::Tensor norm = at::linalg_vector_norm(merged, 2, {1});  // (out)
  return (adapter->lora_magnitude_vector.to(at::kFloat) / norm).view({-1, 1}) * merged;
}

void LoraProjectionImpl::train(bool on) {
  ProjectionImpl::train(on);
  if (adapter) adapter->train(on);
  base->train(on);
}

void LoraProjectionImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  ProjectionImpl::to(device, dtype, non_blocking);
  if (nf4_) nf4_ = nf4_->to(device);  // codes and scales keep their dtypes
}

void LoraProjectionImpl::to(torch::Dtype dtype, bool non_blocking) {
  ProjectionImpl::to(dtype, non_blocking);
}

void LoraProjectionImpl::to(torch::Device device, bool non_blocking) {
  ProjectionImpl::to(device, non_blocking);
  if (nf4_) nf4_ = nf4_->to(device);
}

ProjectionFactory lora_projections(ProjectionFactory base, const LoraSettings& settings,
                                   std::shared_ptr<const LoraDropoutClock> clock) {
  return [base, settings, clock](const ProjectionSpec& spec) -> Projection {
    Projection p = base(spec);
    const bool adapted = settings.rank > 0 && lora_targets(settings.targets, spec.name);
    if (!adapted && !(settings.quantize_base && spec.layer >= 0)) return p;
    // Tensor-parallel seam: the adapter follows the base's local weight (out_local, in_local).
    // A column-parallel base (ShardDim::Out) holds out/tp rows: B (out, r) splits the same way,
    // A stays whole. A row-parallel base (ShardDim::In) holds in/tp columns: A (r, in) splits the
    // same way, B stays whole, and A x (a partial sum per rank) is reduced over tp before B. Until
    // the tp projections exist every base here is whole.
    const at::IntArrayRef local = p->weight.sizes();
    KILN_CHECK(local.size() == 2 && local[0] == spec.out && local[1] == spec.in, "LoRA on ", spec.name,
               ": the base weight is sharded (", local, " of ", spec.out, " x ", spec.in,
               "); LoRA over tensor-parallel projections is not wired yet");
    std::optional<LoraOptions> o;
    if (adapted) {
      o.emplace(spec.in, spec.out, settings.rank);
      o->alpha(settings.alpha)
          .dropout(settings.dropout)
          .rslora(settings.rslora)
          .dora(settings.dora)
          .name(hf_module_path(spec));
    }
    auto impl = std::make_shared<LoraProjectionImpl>(p, o);
    if (clock && impl->adapter) impl->adapter->set_dropout_clock(clock);
    return Projection(std::shared_ptr<ProjectionImpl>(impl));
  };
}

std::vector<std::pair<std::string, LoraProjectionImpl*>> lora_projections_of(torch::nn::Module& model,
                                                                             bool with_adapter) {
  std::vector<std::pair<std::string, LoraProjectionImpl*>> out;
  for (auto& item : model.named_modules(/*name_prefix=*/"", /*include_self=*/false))
    if (auto* p = dynamic_cast<LoraProjectionImpl*>(item.value().get()))
      if (p->adapter || !with_adapter) out.emplace_back(item.key(), p);
  return out;
}

NamedAdapters named_adapters(torch::nn::Module& model) {
  NamedAdapters out;
  for (auto& [path, p] : lora_projections_of(model)) out.emplace_back(path, p->adapter);
  return out;
}

}  // namespace kiln
