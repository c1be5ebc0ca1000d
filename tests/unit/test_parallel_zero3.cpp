// ZeRO-3 on one process (dp = 1, single communicator): the same training as stage 0, the
// model's tensors empty between uses, tied embeddings, evaluation without grad, and optimizer
// state that moves between stage 3 and stage 1 layouts.
#include <gtest/gtest.h>

#include <algorithm>

#include "parallel/communicator.h"
#include "tests/parallel/zero_run.h"

namespace kiln {
namespace {

using test::relative_error;
using test::run_zero;
using test::ZeroRunSpec;

std::unique_ptr<Communicator> single() { return make_world_communicator("auto", false, 5.0); }

void expect_same_training(const test::ZeroRunResult& got, const test::ZeroRunResult& want, double tol) {
  ASSERT_EQ(got.losses.size(), want.losses.size());
  for (size_t s = 0; s < want.losses.size(); ++s)
    EXPECT_NEAR(got.losses[s], want.losses[s], tol * std::abs(want.losses[s])) << "step " << s;
  ASSERT_EQ(got.params.size(), want.params.size());
  for (size_t i = 0; i < want.params.size(); ++i) {
    EXPECT_EQ(got.params[i].first, want.params[i].first);
    EXPECT_LE(relative_error(got.params[i].second, want.params[i].second), tol) << want.params[i].first;
  }
}

TEST(ParallelZero3, MatchesStageZeroOnOneRank) {
  auto dp = single();
  ZeroRunSpec spec;
  const auto want = run_zero(*dp, spec);
  spec.stage = 3;
  const auto got = run_zero(*dp, spec);
  expect_same_training(got, want, 1e-5);
  // The losses moved: the comparison is not between two untrained models.
  EXPECT_LT(want.losses.back(), want.losses.front() - 0.05);
}

TEST(ParallelZero3, TiedEmbeddingsMatchStageZero) {
  auto dp = single();
  ZeroRunSpec spec;
  spec.tied = true;
  const auto want = run_zero(*dp, spec);
  spec.stage = 3;
  const auto got = run_zero(*dp, spec);
  expect_same_training(got, want, 1e-5);
  for (const auto& [name, t] : got.params) EXPECT_NE(name, "lm_head.weight");
}

TEST(ParallelZero3, ModelTensorsAreEmptyBetweenUses) {
  auto dp = single();
  ZeroRunSpec spec;
  at::manual_seed(1);
  Llama model(test::tiny_model_config(spec));
  int64_t elements = 0;
  for (const auto& p : model->parameters()) elements += p.numel();
  std::vector<int64_t> unit_elements;  // [unit], measured before the optimizer releases them
  for (int64_t u = 0; u < model->num_units(); ++u) {
    unit_elements.push_back(0);
    for (const auto& np : model->unit_parameters(u)) unit_elements.back() += np.second.numel();
  }
  std::sort(unit_elements.rbegin(), unit_elements.rend());
  Zero3Optimizer opt(*model, *dp, AdamWOptions{});
  for (const auto& p : model->parameters()) EXPECT_EQ(p.numel(), 0);
  // One rank holds every shard: the resident bytes are the parameter shard, exactly the model
  // (each unit padded to a multiple of dp = 1, so no padding).
  EXPECT_EQ(opt.resident_parameter_bytes(), elements * 4);

  opt.zero_grad();
  Batch b = test::rows_of_step(0, 0, 2, spec, 64);
  lm_loss_sum(model->forward(b), b.labels).backward();
  opt.reduce_gradients();
  for (const auto& p : model->parameters()) {
    EXPECT_EQ(p.numel(), 0);
    EXPECT_FALSE(p.grad().defined());
  }
  EXPECT_GT(opt.grad_norm(), 0.0);
  // While units were gathered, at most the shard plus two units (current + prefetched) were
  // resident, and at least one unit was.
  EXPECT_GE(opt.peak_resident_parameter_bytes(), (elements + unit_elements.back()) * 4);
  EXPECT_LE(opt.peak_resident_parameter_bytes(), (elements + unit_elements[0] + unit_elements[1]) * 4);
}

TEST(ParallelZero3, KeepGatheredTrainsTheSameAndHoldsTheModelUntilBackward) {
  auto dp = single();
  ZeroRunSpec spec;
  spec.stage = 3;
  spec.steps = 3;
  const auto regathered = run_zero(*dp, spec);
  spec.keep_gathered = true;
  const auto kept = run_zero(*dp, spec);
  EXPECT_EQ(kept.losses, regathered.losses);  // the same arithmetic, one gather fewer
  for (size_t i = 0; i < kept.params.size(); ++i)
    EXPECT_TRUE(kept.params[i].second.equal(regathered.params[i].second)) << kept.params[i].first;

  at::manual_seed(2);
  Llama model(test::tiny_model_config(spec));
  int64_t elements = 0;
  for (const auto& p : model->parameters()) elements += p.numel();
  Zero3Optimizer opt(*model, *dp, AdamWOptions{}, /*keep_gathered=*/true);
  opt.zero_grad();
  Batch b = test::rows_of_step(0, 0, 2, spec, 64);
  at::Tensor loss = lm_loss_sum(model->forward(b), b.labels);
  // Between forward and backward every unit is gathered: the whole model plus the shard.
  EXPECT_EQ(opt.resident_parameter_bytes(), 2 * elements * 4);
  loss.backward();
  opt.reduce_gradients();
  EXPECT_EQ(opt.resident_parameter_bytes(), elements * 4);
  // A forward without its backward: zero_grad releases what it kept.
  model->forward(b);
  opt.zero_grad();
  EXPECT_EQ(opt.resident_parameter_bytes(), elements * 4);
}

TEST(ParallelZero3, EvaluationWithoutGradMatchesPlainModel) {
  auto dp = single();
  ZeroRunSpec spec;
  at::manual_seed(7);
  Llama plain(test::tiny_model_config(spec));
  plain->reset_parameters();
  at::manual_seed(7);
  Llama sharded(test::tiny_model_config(spec));
  sharded->reset_parameters();
  Zero3Optimizer opt(*sharded, *dp, AdamWOptions{});
  Batch b = test::rows_of_step(0, 0, 2, spec, 64);
  at::NoGradGuard no_grad;
  at::Tensor want = plain->forward(b), got = sharded->forward(b);
  EXPECT_LE(relative_error(got, want), 1e-6);
  for (const auto& p : sharded->parameters()) EXPECT_EQ(p.numel(), 0);
}

TEST(ParallelZero3, StateMovesBetweenStage3AndStage1) {
  auto dp = single();
  ZeroRunSpec spec;
  spec.stage = 3;
  spec.steps = 2;
  at::manual_seed(3);
  Llama a(test::tiny_model_config(spec));
  a->reset_parameters();
  ZeroOptimizer z3(*a, *dp, 3, 1024, AdamWOptions{});
  z3.zero_grad();
  Batch b = test::rows_of_step(0, 0, 2, spec, 64);
  lm_loss_sum(a->forward(b), b.labels).backward();
  z3.reduce_gradients();
  z3.step(1e-2, 1.0);

  at::manual_seed(4);  // different weights: load_state must overwrite them
  Llama c(test::tiny_model_config(spec));
  c->reset_parameters();
  ZeroOptimizer z1(*c, *dp, 1, 1024, AdamWOptions{});
  z1.load_state(z3.state_slices(), z3.steps_taken());
  const auto pa = z3.gather_parameters(), pc = z1.gather_parameters();
  ASSERT_EQ(pa.size(), pc.size());
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(pa[i].second.equal(pc[i].second)) << pa[i].first;
  // And back: stage 1 state into a fresh stage 3 optimizer.
  at::manual_seed(5);
  Llama d(test::tiny_model_config(spec));
  ZeroOptimizer z3b(*d, *dp, 3, 1024, AdamWOptions{});
  z3b.load_state(z1.state_slices(), z1.steps_taken());
  const auto pd = z3b.gather_parameters();
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(pa[i].second.equal(pd[i].second)) << pa[i].first;
}

}  // namespace
}  // namespace kiln
