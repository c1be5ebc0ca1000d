// Zero3Optimizer: ZeRO stage 3 over the data-parallel group. ZeroOptimizer delegates to it when
// parallel.zero is 3.
//
// Each unit of the model (LlamaImpl's chain: embedding, one per decoder layer, norm + head) is a
// shard group: its parameters laid end to end, padded to dp * S, rank r owning [r*S, (r+1)*S).
// A rank keeps only its shards: fp32 master, Adam moments and gradient (on the state device:
// the model's, or the host with optimizer offload), plus the parameter shard in the model's
// compute dtype on the model's device. The model's own tensors are empty between uses.
//
// A unit runner installed on the model wraps every unit in an autograd function that
//   forward:  all-gathers the unit's parameters (and prefetches the next unit's), runs the unit
//             without keeping activations, releases the parameters;
//   backward: all-gathers again (prefetching the previous unit), recomputes the unit with grad,
//             backpropagates, reduce-scatters the unit's gradients into this rank's fp32 shard
//             (accumulating over micro-batches), releases the parameters.
// keep_gathered (parallel.zero3_keep_gathered) leaves each unit gathered from its forward to
// its backward: one all-gather per unit instead of two, for parameter memory up to the model.
// With NCCL the gathers are stream-ordered on the communication stream, so the prefetch
// overlaps the current unit's compute; with MPI on the CPU they complete before returning.
//
// The model must outlive the optimizer; once the optimizer is gone the model's parameters stay
// empty (gather_parameters() gives their values).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "parallel/zero.h"

namespace kiln {

class Zero3Optimizer {
 public:
  Zero3Optimizer(LlamaImpl& model, Communicator& dp, AdamWOptions hyper, bool keep_gathered = false);
  ~Zero3Optimizer();
  Zero3Optimizer(const Zero3Optimizer&) = delete;
  Zero3Optimizer& operator=(const Zero3Optimizer&) = delete;

  void zero_grad();
  // Gradients were reduce-scattered unit by unit during backward; this checks nothing is left
  // gathered.
  void reduce_gradients();
  double grad_norm();
  // AdamW on this rank's shard; step_count is the 1-based number of this update.
  void step(double lr, double grad_scale, int64_t step_count);

  // Moves the fp32 shard state (master, moments, gradient) to `device`; the compute-dtype
  // parameter shard always follows the model's device (see ZeroOptimizer::to).
  void to(const c10::Device& device);
  c10::Device state_device() const;

  std::vector<TensorSlice> state_slices() const;
  void load_state(const std::vector<TensorSlice>& slices);
  std::vector<std::pair<std::string, at::Tensor>> gather_parameters() const;

  // Bytes of parameters this rank holds now: the model's tensors (non-empty only while a unit
  // is gathered) plus its own parameter shard in the compute dtype. Measured from the tensors.
  int64_t resident_parameter_bytes() const;
  // The largest resident_parameter_bytes() seen at any gather since the last zero_grad().
  int64_t peak_resident_parameter_bytes() const;
  // resident_parameter_bytes() right after each unit's forward and backward released it, since
  // the last zero_grad(): what a rank holds between layers (its shard + the prefetched unit).
  std::vector<int64_t> resident_between_units() const;

  struct Impl;

 private:
  LlamaImpl& model_;
  std::shared_ptr<Impl> impl_;  // shared with the unit runner installed on the model
};

}  // namespace kiln
