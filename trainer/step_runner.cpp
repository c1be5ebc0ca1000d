// The no-pipeline StepRunner (see step_runner.h).
#include "trainer/step_runner.h"

#include <ATen/ATen.h>

#include "models/llama.h"
#include "models/lora.h"

namespace kiln {
namespace {

Batch to_device(Batch b, const c10::Device& device) {
  if (device.is_cpu()) return b;
  b.input_ids = b.input_ids.to(device, /*non_blocking=*/true);
  b.labels = b.labels.to(device, /*non_blocking=*/true);
  b.position_ids = b.position_ids.to(device, /*non_blocking=*/true);
  return b;
}

class NoPipeline : public StepRunner {
 public:
  NoPipeline(LlamaImpl& model, const c10::Device& device, std::shared_ptr<LoraDropoutClock> clock)
      : model_(model), device_(device), clock_(std::move(clock)) {}

  at::Tensor run(std::vector<MicroBatch>& micro_batches, double divisor) override {
    at::Tensor total = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(device_));
    for (MicroBatch& mb : micro_batches) {
      Batch db = to_device(std::move(mb.batch), device_);
      at::Tensor w = mb.token_weights.defined() ? mb.token_weights.to(device_) : at::Tensor();
      set_clock(mb);
      at::Tensor loss = model_.forward_loss(db, w) / divisor;
      set_clock(mb);  // the backward's recomputation draws the forward's dropout masks
      loss.backward();
      total += loss.detach().to(at::kDouble);
    }
    return total;
  }

 private:
  void set_clock(const MicroBatch& mb) {
    if (!clock_) return;
    clock_->step = mb.step;
    clock_->micro_batch = mb.index;
  }
  LlamaImpl& model_;
  c10::Device device_;
  std::shared_ptr<LoraDropoutClock> clock_;
};

}  // namespace

std::unique_ptr<StepRunner> no_pipeline_runner(LlamaImpl& model, const c10::Device& device,
                                               std::shared_ptr<LoraDropoutClock> clock) {
  return std::make_unique<NoPipeline>(model, device, std::move(clock));
}

}  // namespace kiln
