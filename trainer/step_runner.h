// StepRunner: the forward and backward of one step's micro-batches behind one interface. The
// no-pipeline runner here runs them one after another on the whole model; a pipeline executor
// (1F1B, interleaved) is another implementation over the same micro-batches. Each returns this
// rank's share of the step's loss; the trainer reduces it over the groups that own it.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <vector>

#include "data/batch.h"

namespace kiln {

class LlamaImpl;

struct MicroBatch {
  Batch batch;
  at::Tensor token_weights;  // (B, T) for data.loss_average: sample; undefined = per token
  // Where it sits in training, for the LoRA dropout clock (models/lora.h): the optimizer step and
  // the micro-batch's global index in it (dp rank * micro-batches per rank + its own index, the
  // same rows whatever the dp size).
  int64_t step = 0, index = 0;
};

class StepRunner {
 public:
  virtual ~StepRunner() = default;
  // Forward and backward of every micro-batch, the loss of each divided by `divisor` (the
  // trained tokens or samples of the whole global batch) so that gradients accumulate into the
  // mean. Returns the sum of this rank's divided losses, a double scalar on the device (one host
  // sync per step, by the caller).
  virtual at::Tensor run(std::vector<MicroBatch>& micro_batches, double divisor) = 0;
};

struct LoraDropoutClock;
// One stage holding every layer: forward_loss (the loss computed in the head unit) and backward,
// micro-batch by micro-batch. `clock` (LoRA dropout; may be null) is set to the micro-batch before
// its forward and again before its backward, whose recomputation (activation checkpointing,
// ZeRO-3) then redraws the forward's masks.
std::unique_ptr<StepRunner> no_pipeline_runner(LlamaImpl& model, const c10::Device& device,
                                               std::shared_ptr<LoraDropoutClock> clock = nullptr);

}  // namespace kiln
