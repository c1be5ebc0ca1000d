// ZeroOptimizer: the optimizer side of training over the data-parallel group.
//   stage 0: gradients all-reduced (bucketed), every rank holds full fp32 master + Adam moments
//   stage 1: fp32 master weights and Adam moments sharded across dp ranks (flat buffer, rank r
//            owns elements [r*n/dp, (r+1)*n/dp) of the padded flat parameter space)
//   stage 2: also gradients: reduce-scattered into flat bucketed shards
//   stage 3: also the parameters: model tensors are released between uses and all-gathered per
//            unit (see LlamaImpl's UnitRunner) just before its forward and again before its
//            backward, the next unit prefetched.
// AdamW with decoupled weight decay on matrices (dim >= 2) only; fp32 master weights, the
// model's tensors (bf16 on CUDA, fp32 on the CPU) are copies of the master.
//
// Devices: the fp32 state (master, moments, reduced gradient) starts where the model's tensors
// are when the optimizer is built (the trainer builds it on the CPU, to copy exact fp32 values,
// and moves the model afterwards) and moves with to(). Collectives and the gradient flattening
// always run on the model's device (NCCL needs CUDA tensors); with the state on the host
// (train.optimizer_offload: cpu) each step copies the reduced gradient shard down and the
// updated master shard up.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace kiln {

class Communicator;
class LlamaImpl;
class Zero3Optimizer;

struct AdamWOptions {
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
};

// One AdamW update of a flat fp32 shard, in torch.optim.AdamW's order: decoupled weight decay
// (where decay_mask is 1), moments, bias-corrected step. `step` counts from 1; the gradient is
// multiplied by grad_scale first (clipping).
void adamw_update(at::Tensor& master, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, const at::Tensor& grad,
                  const at::Tensor& decay_mask, double lr, double grad_scale, int64_t step,
                  const AdamWOptions& h);

// A slice of a named global tensor: elements [flat_begin, flat_end) of the flattened tensor.
// Checkpoints store optimizer state as such slices so that a different dp size (or tp/pp
// layout) can reassemble and re-slice them.
struct TensorSlice {
  std::string name;  // e.g. "exp_avg/model.layers.0.mlp.up_proj.weight"
  std::vector<int64_t> global_shape;
  int64_t flat_begin = 0, flat_end = 0;
  at::Tensor data;  // 1-D, flat_end - flat_begin elements, fp32
};

class ZeroOptimizer {
 public:
  // zero3_keep_gathered: stage 3 keeps each unit gathered from its forward to its backward.
  ZeroOptimizer(LlamaImpl& model, Communicator& dp, int stage, int64_t bucket_bytes, AdamWOptions hyper,
                bool zero3_keep_gathered = false);
  ~ZeroOptimizer();

  int stage() const { return stage_; }
  void zero_grad();
  // After the last micro-batch's backward of a step.
  void reduce_gradients();
  // Global L2 norm of the reduced gradient, across shards and ranks (same on every rank).
  double grad_norm();
  // Multiplies gradients by grad_scale (clipping), applies AdamW at lr, writes the new values
  // into the model's tensors (stage 1/2: all-gather of the updated shards).
  void step(double lr, double grad_scale);
  int64_t steps_taken() const { return steps_; }

  // Moves the fp32 state to `device`: the model's device after model->to(), or the CPU for
  // optimizer offload. Values are unchanged.
  void to(const c10::Device& device);
  c10::Device state_device() const;

  // This rank's optimizer state: "master/NAME", "exp_avg/NAME", "exp_avg_sq/NAME" slices.
  std::vector<TensorSlice> state_slices() const;
  // Restores from slices gathered from any layout (each rank passes whatever covers its
  // shard; missing coverage is an error naming the tensor). Also sets the model's tensors.
  void load_state(const std::vector<TensorSlice>& slices, int64_t steps);
  // The full fp32 value of every trained parameter (collective over dp: every rank calls it),
  // in model order with global names — what checkpoints and exports write.
  std::vector<std::pair<std::string, at::Tensor>> gather_parameters() const;
  // Parameter bytes this rank currently holds in the model's tensors (ZeRO-3 measurement).
  int64_t resident_parameter_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<Zero3Optimizer> zero3_;  // stage 3 (parallel/zero3.h): every call goes there
  int stage_;
  int64_t steps_ = 0;
};

}  // namespace kiln
