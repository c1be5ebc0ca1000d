// ZeroOptimizer: AdamW with fp32 master weights over the data-parallel group, ZeRO stages 0-3
// behind one interface and one implementation.
//
// The trained parameters are laid out per unit of the model (models/unit_chain.h): each unit's
// parameters end to end in one flat space padded to dp * S, rank r's partition being
// [r*S, (r+1)*S). What a stage changes is what a rank keeps and how gradients and weights move:
//   stage 0: every rank keeps the whole fp32 state; gradients all-reduced (bucketed)
//   stage 1: fp32 master and moments only for the rank's partition; gradients all-reduced
//   stage 2: also gradients, during backward: each gradient autograd accumulates is added into
//            its unit's flat gradient and freed, and once a unit's are all in, the flat gradient
//            is reduce-scattered into the partition (buckets of bucket_bytes) and freed, every
//            micro-batch (parallel/grad_hooks.h): the partition plus one unit in flight
//   stage 3: also the parameters: the model's tensors are empty between uses and each unit is
//            all-gathered just before its forward and again before its backward (recompute()
//            with hooks, models/recompute.h), the next unit prefetched; its gradients are
//            reduce-scattered into the partition as soon as its backward is done.
// AdamW with decoupled weight decay on matrices (dim >= 2) only.
//
// Values come from a WeightSource (models/weight_source.h): under stage 3 a rank reads only its
// partition of each tensor, so no rank ever holds the whole model; under stages 0-2 every rank
// holds the whole model in the compute dtype anyway and reads it tensor by tensor.
//
// Devices: the fp32 state starts on the CPU beside the fp32 model and follows to(): the model's
// device after model->to(), or the host (train.optimizer_offload: cpu). Collectives and the
// gradient flattening run on the model's device (NCCL needs CUDA tensors).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "parallel/tensor_slice.h"

namespace kiln {

class Communicator;
class UnitChain;
class WeightSource;

struct AdamWOptions {
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  // Parameter name -> its leading elements held fixed: their gradient is zeroed before any
  // reduction and they get no weight decay, so they stay bit for bit (train.trainable_new_rows_only:
  // the old rows of an extended embedding or head). Parameters that do not require grad are not
  // in the optimizer at all.
  std::map<std::string, int64_t> frozen_leading;
  // Parameter name -> learning-rate multiplier (LoRA+: B and the DoRA magnitude at lr * ratio);
  // absent = 1. Weight decay scales with it, as torch.optim.AdamW's per-group lr does.
  std::map<std::string, double> lr_scale;
};

// One AdamW update of a flat fp32 shard, in torch.optim.AdamW's order: decoupled weight decay
// (where decay_mask is 1), moments, bias-corrected step. `step` counts from 1; the gradient is
// multiplied by grad_scale first (clipping). lr_mask (undefined = 1): a per-element multiplier of lr.
// Contiguous fp32 CPU buffers take the fused one-pass loop (models/ops/fused_adamw.h); others
// (CUDA) the ATen ops of adamw_update_reference, which the tests compare it with.
void adamw_update(at::Tensor& master, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, const at::Tensor& grad,
                  const at::Tensor& decay_mask, double lr, double grad_scale, int64_t step,
                  const AdamWOptions& h, const at::Tensor& lr_mask = {});
void adamw_update_reference(at::Tensor& master, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, const at::Tensor& grad,
                            const at::Tensor& decay_mask, double lr, double grad_scale, int64_t step,
                            const AdamWOptions& h, const at::Tensor& lr_mask = {});

class ZeroOptimizer {
 public:
  // The model's parameters already hold their values (materialised): they are the start.
  ZeroOptimizer(UnitChain& model, Communicator& dp, int stage, int64_t bucket_bytes, AdamWOptions hyper,
                bool zero3_keep_gathered = false);
  // The model was built on the meta device: values are read from `source`, each rank reading
  // what it keeps (stage 3: its partition of each tensor; else whole tensors).
  ZeroOptimizer(UnitChain& model, Communicator& dp, int stage, int64_t bucket_bytes, AdamWOptions hyper,
                bool zero3_keep_gathered, WeightSource& source);
  ~ZeroOptimizer();
  ZeroOptimizer(const ZeroOptimizer&) = delete;
  ZeroOptimizer& operator=(const ZeroOptimizer&) = delete;

  int stage() const;
  void zero_grad();
  // After the last micro-batch's backward of a step (stage 2: most units were reduced during
  // backward already; this reduces what is left).
  void reduce_gradients();
  // Global L2 norm of the reduced gradient, across shards and ranks (same on every rank).
  double grad_norm();
  // Tensor parallel: the squared norm is also summed over `tp`, each parameter's share weighted
  // (name -> weight: 1 for a tp-split tensor, 1 / copies for one the tp ranks replicate, so it
  // counts once). Weights absent count 1.
  void set_grad_norm_group(Communicator* tp, std::map<std::string, double> weights);
  // Multiplies gradients by grad_scale (clipping), applies AdamW at lr, writes the new values
  // into the model's tensors (stage 1/2: all-gather of the updated partitions, unit by unit).
  void step(double lr, double grad_scale);
  int64_t steps_taken() const;

  // Moves the fp32 state to `device`. Values are unchanged.
  void to(const c10::Device& device);
  c10::Device state_device() const;

  // The names of the trained parameters with their global shapes, in model order.
  std::vector<std::pair<std::string, std::vector<int64_t>>> trained_shapes() const;
  // This rank's partition of the state as N-d slices: "master/NAME", "exp_avg/NAME",
  // "exp_avg_sq/NAME" (under stage 0 too, every rank writes only its partition, so the ranks'
  // slices together cover every tensor exactly once). Views of the state when it is on the
  // host: valid until the next step().
  std::vector<TensorSlice> state_slices() const;
  // Restores master and moments for what this rank keeps from slices saved on any layout.
  void load_state(const std::vector<TensorSlice>& slices, int64_t steps);
  // The same from a source that serves "master/NAME", "exp_avg/NAME" and "exp_avg_sq/NAME" (a
  // checkpoint): only the ranges this rank keeps are read. Also sets the model's tensors.
  void load_state(WeightSource& state, int64_t steps);
  // The full fp32 value of every trained parameter (collective over dp), in model order with
  // global names. The whole model on every rank: for tests and small tools only.
  std::vector<std::pair<std::string, at::Tensor>> gather_parameters() const;

  // Parameter bytes this rank holds now (stage 3: the gathered units plus its partition).
  int64_t resident_parameter_bytes() const;
  // Stage 3: the largest resident_parameter_bytes() seen at any gather since zero_grad(), and
  // the bytes held right after each unit's forward and backward released it (between layers: the
  // partition plus the prefetched unit).
  int64_t peak_resident_parameter_bytes() const;
  std::vector<int64_t> resident_between_units() const;
  // Gradient bytes this rank held at once, the most since zero_grad(): the parameters' .grad
  // tensors, the reduced gradient and the flat copies being reduced, measured from the live
  // tensors after every accumulation into a .grad and inside every reduction (stages 0-3).
  int64_t peak_gradient_bytes() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;  // shared with the unit runner installed on the model (stage 3)
};

// ZeRO-3 under its historical name (tests and tools that build stage 3 directly).
class Zero3Optimizer : public ZeroOptimizer {
 public:
  Zero3Optimizer(UnitChain& model, Communicator& dp, AdamWOptions hyper, bool keep_gathered = false)
      : ZeroOptimizer(model, dp, 3, int64_t{25} << 20, hyper, keep_gathered) {}
};

}  // namespace kiln
