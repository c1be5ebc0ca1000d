// Where ZeroOptimizer keeps its fp32 state: built with the model on the CPU, then moved with
// to() after model->to() (the trainer's order). On a CUDA machine: state on the GPU gives the
// CPU run's training, and host offload (state on the CPU, model on the GPU) gives the same
// training as state on the GPU, for ZeRO stages 0-3. Without a GPU only the harness check runs.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "parallel/communicator.h"
#include "tests/parallel/zero_run.h"

namespace kiln {
namespace {

using test::relative_error;
using test::ZeroRunResult;
using test::ZeroRunSpec;

Batch on(Batch b, const c10::Device& device) {
  b.input_ids = b.input_ids.to(device);
  b.labels = b.labels.to(device);
  b.position_ids = b.position_ids.to(device);
  return b;
}

// test::run_zero with the model on `model_device` and the optimizer state on `state_device`.
ZeroRunResult run_placed(Communicator& dp, const ZeroRunSpec& spec, const c10::Device& model_device,
                         const c10::Device& state_device) {
  const ModelConfig cfg = test::tiny_model_config(spec);
  at::manual_seed(1234);
  Llama model(cfg);
  model->reset_parameters();
  ZeroOptimizer opt(*model, dp, spec.stage, spec.bucket_bytes, spec.adam);
  model->to(model_device);
  opt.to(state_device);
  EXPECT_EQ(opt.state_device(), state_device);
  ZeroRunResult result;
  for (int step = 0; step < spec.steps; ++step) {
    opt.zero_grad();
    const double global_tokens = test::global_loss_tokens(step, spec);
    double loss_part = 0;
    for (int64_t m = 0; m < spec.global_batch; m += spec.micro_batch) {
      Batch b = on(test::rows_of_step(step, m, spec.micro_batch, spec, cfg.vocab_size), model_device);
      at::Tensor loss = lm_loss_sum(model->forward(b), b.labels) / global_tokens;
      loss.backward();
      loss_part += loss.item<double>();
    }
    opt.reduce_gradients();
    const double norm = opt.grad_norm();
    result.losses.push_back(loss_part);
    opt.step(spec.lr, norm > spec.clip ? spec.clip / (norm + 1e-6) : 1.0);
  }
  EXPECT_EQ(opt.state_device(), state_device);
  result.params = opt.gather_parameters();
  for (const auto& [name, t] : result.params) EXPECT_TRUE(t.device().is_cpu()) << name;
  return result;
}

void expect_same_training(const ZeroRunResult& got, const ZeroRunResult& want, double tol, int stage) {
  ASSERT_EQ(got.losses.size(), want.losses.size());
  for (size_t s = 0; s < want.losses.size(); ++s)
    EXPECT_NEAR(got.losses[s], want.losses[s], tol * std::abs(want.losses[s]))
        << "stage " << stage << " step " << s;
  ASSERT_EQ(got.params.size(), want.params.size());
  for (size_t i = 0; i < want.params.size(); ++i)
    EXPECT_LE(relative_error(got.params[i].second, want.params[i].second), tol)
        << "stage " << stage << " " << want.params[i].first;
  EXPECT_LT(want.losses.back(), want.losses.front() - 0.05);  // the runs trained
}

TEST(ZeroDevice, PlacedRunOnCpuIsTheReferenceRun) {
  // The harness the CUDA tests use: with everything on the CPU it is test::run_zero, exactly.
  auto dp = make_world_communicator("auto", /*cuda=*/false, 5.0);
  for (int stage : {0, 1, 2, 3}) {
    ZeroRunSpec spec;
    spec.stage = stage;
    spec.steps = 3;
    const ZeroRunResult want = test::run_zero(*dp, spec);
    const ZeroRunResult got = run_placed(*dp, spec, at::kCPU, at::kCPU);
    expect_same_training(got, want, 0.0, stage);
  }
}

TEST(ZeroDeviceCuda, StateOnTheGpuTrainsLikeTheCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto dp = make_world_communicator("auto", /*cuda=*/true, 30.0);
  const c10::Device gpu(at::kCUDA, 0);
  for (int stage : {0, 1, 2, 3}) {
    ZeroRunSpec spec;
    spec.stage = stage;
    auto cpu_dp = make_world_communicator("auto", /*cuda=*/false, 5.0);
    const ZeroRunResult want = test::run_zero(*cpu_dp, spec);
    const ZeroRunResult got = run_placed(*dp, spec, gpu, gpu);
    // fp32 on both: only the reduction order differs (uneven masks, Adam eps 1e-6: see zero_run.h)
    expect_same_training(got, want, 1e-5, stage);
  }
}

TEST(ZeroDeviceCuda, HostOffloadTrainsLikeStateOnTheGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto dp = make_world_communicator("auto", /*cuda=*/true, 30.0);
  const c10::Device gpu(at::kCUDA, 0);
  for (int stage : {0, 1, 2, 3}) {
    ZeroRunSpec spec;
    spec.stage = stage;
    const ZeroRunResult want = run_placed(*dp, spec, gpu, gpu);
    const ZeroRunResult got = run_placed(*dp, spec, gpu, at::kCPU);
    expect_same_training(got, want, 1e-5, stage);  // only AdamW runs elsewhere
  }
}

}  // namespace
}  // namespace kiln
