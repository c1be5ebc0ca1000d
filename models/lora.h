// LoRA adapter of one linear projection, applied at the call site: the base layer computes
// base_out = W x + bias as it always does, and the adapter returns the adapted output
//
//   LoRA / rsLoRA:  base_out + s * B (A drop(x))          s = alpha / r, or alpha / sqrt(r) (rsLoRA)
//   DoRA:           base_out + (m / n - 1) * W x' + (m / n) * s * B (A x')
//                   x' = drop(x); n = ||W + s B A|| per output row, detached (DoRA paper 4.3);
//                   m the magnitude vector, initialised to n; without dropout W x' = base_out - bias
//
// exactly as PEFT's LoRA Linear and DoraLinearLayer compute it, so adapters move between kiln and
// PEFT (models/peft.h). The base weight is never changed nor owned: it is passed in (dense, or
// an Nf4Weight for QLoRA) and only DoRA and dropout-under-DoRA read it.
//
// Dropout is reproducible by construction: each application draws its mask from a generator
// seeded with a counter-based hash of (run seed, step, micro-batch, the adapter's global name).
// Nothing stateful is consumed, so the recompute of activation checkpointing redraws the
// identical mask, a resumed run draws the masks the uninterrupted one drew (the state to save is
// the step, which every checkpoint holds), and the mask does not depend on how many adapters ran
// before. The step runner sets the LoraDropoutClock before each forward and before each backward
// of a micro-batch (a pipeline schedule interleaves them).
#pragma once
#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/nf4.h"

namespace kiln {

// Where in training a forward is: set by the step runner, read by every adapter's dropout.
struct LoraDropoutClock {
  uint64_t seed = 0;        // train.seed
  int64_t step = 0;         // optimizer step
  int64_t micro_batch = 0;  // micro-batch within the step (global index across data parallel)
};

// The seed of one dropout mask: splitmix64 over (clock.seed, step, micro_batch, FNV-1a of name).
uint64_t lora_dropout_seed(const LoraDropoutClock& clock, const std::string& name);

// The weight of the projection an adapter wraps. Exactly one of dense / nf4 is set.
struct LoraBase {
  at::Tensor dense;                // (out, in) fp32 or bf16
  const Nf4Weight* nf4 = nullptr;  // or the QLoRA base (not owned)
  at::Tensor bias;                 // (out) or undefined

  // W in `dtype` (dequantized for NF4).
  at::Tensor weight(at::ScalarType dtype) const;
  // x W^T without the bias, in x's dtype (NF4 through nf4_linear).
  at::Tensor matmul(const at::Tensor& x) const;
};

struct LoraOptions {
  LoraOptions(int64_t in_features, int64_t out_features, int64_t rank)
      : in_features_(in_features), out_features_(out_features), rank_(rank) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(int64_t, rank);
  TORCH_ARG(double, alpha) = 16;
  TORCH_ARG(double, dropout) = 0.0;
  TORCH_ARG(bool, rslora) = false;
  TORCH_ARG(bool, dora) = false;
  // kaiming: A ~ kaiming_uniform(a = sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)), B = 0 (PEFT's
  // default); gaussian: A ~ N(0, 1/r), B = 0 (PEFT's init_lora_weights="gaussian").
  TORCH_ARG(std::string, init) = "kaiming";
  // The global name of the wrapped projection ("model.layers.3.self_attn.q_proj"): keys the
  // dropout mask and names the parameters in PEFT files.
  TORCH_ARG(std::string, name) = "";
};

// An adapter whose base projection is split over tensor parallel (models/lora_projection.cpp
// fills this) holds its slice of the global adapter, split as the base is:
//   column-parallel base (output rows split): B and the magnitude hold rows [offset, offset + len)
//       of (out, r) and (out); A is whole and its gradient is summed over tp (each rank's B slice
//       sees a part of the output); a replicated kv head's B and magnitude sum theirs over the
//       ranks that share the head.
//   row-parallel base (input columns split): A holds columns [offset, offset + len) of (r, in),
//       so B (A x_local) is this rank's part of B A x and is added to the base's partial product
//       before the sum over tp; B and the magnitude are whole, their gradients summed over tp;
//       dropout draws the whole input's mask and keeps this slice; DoRA's row norms sum their
//       squares over tp.
struct LoraTensorParallel {
  bool row = false;
  int64_t offset = 0, len = 0;
  using Map = std::function<at::Tensor(const at::Tensor&)>;
  Map sum_grad;           // forward identity, backward all-reduce over tp (copy_to_region)
  Map sum_grad_replicas;  // the same over the ranks that share a kv head; null without replicas
  Map sum;                // an all-reduce (sum) over tp of a tensor outside autograd
};

// Which optimizer group a parameter belongs to, for LoRA+ (lora.lr_ratio).
enum class LoraRole { A, B, Magnitude };
// LoRA+ learning-rate multiplier of a role: B and the (1-D) DoRA magnitude train at lr * lr_ratio,
// A at lr, as PEFT's create_loraplus_optimizer groups them.
double lora_plus_lr_scale(LoraRole role, double lr_ratio);

class LoraAdapterImpl : public torch::nn::Module {
 public:
  explicit LoraAdapterImpl(const LoraOptions& options);

  // The adapted output. x (..., in), base_out (..., out) = the base layer's output for x
  // (bias included). `base` is read only for DoRA. Dropout applies in training mode (is_training()).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& base_out, const LoraBase& base = {});

  // Draws A and B per options.init from `gen` (a CPU generator; deterministic per seed).
  void reset_parameters(at::Generator gen);
  // DoRA: magnitude = ||W + s B A|| per output row (PEFT's update_layer). Call once A, B and the
  // base are in place (after loading an adapter without a magnitude, say).
  void init_magnitude(const LoraBase& base);

  // Tensor parallel: narrows this freshly made (global) adapter to its slice (see above).
  void shard(LoraTensorParallel tp);
  // The global shape of a role's tensor, and this rank's slice of a global tensor of that shape
  // (a PEFT file holds the whole adapter).
  std::vector<int64_t> global_shape(LoraRole role) const;
  at::Tensor local_slice(LoraRole role, const at::Tensor& global) const;
  // ||W + s B A|| per output row over the whole input (W: the base weight, this rank's slice).
  at::Tensor row_norms(const at::Tensor& w) const;

  // Every application after this reads the clock for its dropout mask; without a clock (and in
  // eval mode) there is no dropout.
  void set_dropout_clock(std::shared_ptr<const LoraDropoutClock> clock) { clock_ = std::move(clock); }
  // The mask multiplier used for x of this shape now: 0 or 1/(1-p), as torch.nn.Dropout draws it.
  at::Tensor dropout_mask(const at::Tensor& x) const;

  double scaling() const;
  LoraRole role(const std::string& parameter_name) const;  // "lora_A" | "lora_B" | "lora_magnitude_vector"
  const LoraOptions& options() const { return options_; }

  at::Tensor lora_A;                 // (r, in)
  at::Tensor lora_B;                 // (out, r)
  at::Tensor lora_magnitude_vector;  // (out), DoRA only
 private:
  LoraOptions options_;
  std::shared_ptr<const LoraDropoutClock> clock_;
  std::optional<LoraTensorParallel> tp_;
};
TORCH_MODULE(LoraAdapter);

}  // namespace kiln
