// The LoRA / QLoRA projection wrapper and its factory (see lora_projection.h).
#include "models/lora_projection.h"

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <algorithm>

#include "base/error.h"
#include "models/tp_layers.h"
#include "parallel/communicator.h"
#include "parallel/tp_mappings.h"

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

LoraProjectionImpl::LoraProjectionImpl(Projection wrapped, const std::optional<LoraOptions>& options,
                                       std::optional<LoraTensorParallel> tp)
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
  if (tp) adapter->shard(std::move(*tp));
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
  const at::Tensor in = base->enter(x);
  // ZeRO-3: the whole NF4 weight for this use only (nf4_linear's backward keeps it).
  const std::optional<Nf4Weight> gathered = gather_ ? std::optional<Nf4Weight>(gather_(*nf4_)) : std::nullopt;
  const Nf4Weight* q = gathered ? &*gathered : nf4_ ? &*nf4_ : nullptr;
  at::Tensor y = q ? nf4_linear(in, *q) : base->local(in);
  if (adapter) {
    LoraBase b;
    if (q)
      b.nf4 = q;
    else
      b.dense = base->local_weight();
    y = adapter->forward(in, y, b);
  }
  return base->leave(y);
}

ProjectionImpl::GlobalShape LoraProjectionImpl::global_shape(const std::string& param) const {
  if (!adapter || !is_lora_parameter("." + param)) return base->global_shape(param);
  const bool split = spec_.shard != ShardDim::None && spec_.shard_len > 0;
  const bool column = split && spec_.shard == ShardDim::Out, row = split && spec_.shard == ShardDim::In;
  const LoraRole role = adapter->role(param);
  return {adapter->global_shape(role), role == LoraRole::A ? (row ? 1 : -1) : (column ? 0 : -1)};
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
                                   std::shared_ptr<const LoraDropoutClock> clock,
                                   std::shared_ptr<TensorParallel> tp) {
  return [base, settings, clock, tp](const ProjectionSpec& spec) -> Projection {
    Projection p = base(spec);
    const bool adapted = settings.rank > 0 && lora_targets(settings.targets, spec.name);
    if (!adapted && !(settings.quantize_base && spec.layer >= 0)) return p;
    // The adapter follows the base's slice (models/lora.h): a column-parallel base splits B's
    // rows, a row-parallel one A's columns.
    const ProjectionSpec& local = p->spec();
    std::optional<LoraTensorParallel> split;
    if (local.shard != ShardDim::None && local.shard_len > 0) {
      KILN_CHECK(tp, "LoRA on ", spec.name, ": a split base needs its tensor-parallel group");
      KILN_CHECK(!settings.quantize_base, "LoRA on ", spec.name,
                 ": an NF4 base (QLoRA) is not split over tensor parallel");
      KILN_CHECK(
          local.shard_offset + local.shard_len <= (local.shard == ShardDim::Out ? local.out : local.in),
          "LoRA on ", spec.name, ": a padded slice");
      LoraTensorParallel t;
      t.row = local.shard == ShardDim::In;
      t.offset = local.shard_offset;
      t.len = local.shard_len;
      t.sum_grad = [tp](const at::Tensor& x) { return copy_to_region(x, tp->group()); };
      if (local.replicas > 1) {
        Communicator* shared = &tp->replica_group(local.replicas);  // owned by tp, which the map keeps
        t.sum_grad_replicas = [tp, shared](const at::Tensor& x) { return copy_to_region(x, *shared); };
      }
      t.sum = [tp](const at::Tensor& x) {
        at::Tensor out = x.contiguous().clone();
        tp->group().all_reduce(out);
        return out;
      };
      split = std::move(t);
    }
    std::optional<LoraOptions> o;
    if (adapted) {
      o.emplace(spec.in, spec.out, settings.rank);
      o->alpha(settings.alpha)
          .dropout(settings.dropout)
          .rslora(settings.rslora)
          .dora(settings.dora)
          .name(hf_module_path(spec));
    }
    auto impl = std::make_shared<LoraProjectionImpl>(p, o, adapted ? split : std::nullopt);
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
