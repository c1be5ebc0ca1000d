// ZeRO 0, 1, 2 and 3 over dp = world size give the losses and final parameters of dp = 1 with
// the same global batch (fp32, 5 steps, relative 1e-5), and under ZeRO-3 each rank holds about
// 1/dp of the parameter bytes between steps (measured from its tensors).
#include <gtest/gtest.h>

#include <algorithm>

#include "tests/parallel/harness.h"
#include "tests/parallel/zero_run.h"

namespace kiln::test {
namespace {

// The dp = 1 run every layout is compared against: the whole global batch on this process.
const ZeroRunResult& reference(bool tied) {
  static ZeroRunResult untied, with_tie;
  ZeroRunResult& r = tied ? with_tie : untied;
  if (r.losses.empty()) {
    ZeroRunSpec spec;
    spec.tied = tied;
    auto single = world().split(world().rank(), 0, "dp1");  // a group of one, same backend
    r = run_zero(*single, spec);
  }
  return r;
}

void expect_equivalent(const ZeroRunResult& got, const ZeroRunResult& want) {
  ASSERT_EQ(got.losses.size(), want.losses.size());
  for (size_t s = 0; s < want.losses.size(); ++s)
    EXPECT_LE(std::abs(got.losses[s] - want.losses[s]), 1e-5 * std::abs(want.losses[s]))
        << "step " << s << ": " << got.losses[s] << " vs " << want.losses[s];
  ASSERT_EQ(got.params.size(), want.params.size());
  for (size_t i = 0; i < want.params.size(); ++i) {
    EXPECT_EQ(got.params[i].first, want.params[i].first);
    EXPECT_LE(relative_error(got.params[i].second, want.params[i].second), 1e-5) << want.params[i].first;
  }
}

class ZeroEquivalence : public ::testing::TestWithParam<int> {};

TEST_P(ZeroEquivalence, MatchesSingleRank) {
  ZeroRunSpec spec;
  spec.stage = GetParam();
  ASSERT_EQ(spec.global_batch % (world().size() * spec.micro_batch), 0);
  const ZeroRunResult got = run_zero(world(), spec);
  expect_equivalent(got, reference(false));
  EXPECT_LT(got.losses.back(), got.losses.front() - 0.05);  // it trained
}

TEST_P(ZeroEquivalence, TiedEmbeddingsMatchSingleRank) {
  ZeroRunSpec spec;
  spec.stage = GetParam();
  spec.tied = true;
  expect_equivalent(run_zero(world(), spec), reference(true));
}

INSTANTIATE_TEST_SUITE_P(Stages, ZeroEquivalence, ::testing::Values(0, 1, 2, 3),
                         [](const auto& info) { return "zero" + std::to_string(info.param); });

TEST(Zero3KeepGathered, MatchesSingleRank) {
  ZeroRunSpec spec;
  spec.stage = 3;
  spec.keep_gathered = true;
  expect_equivalent(run_zero(world(), spec), reference(false));
}

TEST(Zero3Memory, EachRankHoldsAboutOneOverDp) {
  const int dp = world().size();
  ZeroRunSpec spec;
  spec.stage = 3;
  spec.layers = 6;
  spec.steps = 2;
  const ZeroRunResult r = run_zero(world(), spec);
  // Measured after each step: the rank's parameter shard only. Every unit is padded to a
  // multiple of dp, so the shard is at most (units x (dp - 1)) elements above model / dp.
  const int64_t units = spec.layers + 2;
  for (int64_t bytes : r.resident_after_step) {
    EXPECT_GE(bytes * dp, r.model_bytes);
    EXPECT_LE(bytes * dp, r.model_bytes + units * (dp - 1) * 4);
  }
  // And it is the same on every rank.
  at::Tensor mine = at::full({1}, r.resident_after_step.back(), at::kLong);
  at::Tensor lo = mine.clone(), hi = mine.clone();
  world().all_reduce(lo, ReduceOp::Min);
  world().all_reduce(hi, ReduceOp::Max);
  EXPECT_EQ(lo.item<int64_t>(), hi.item<int64_t>());
}

TEST(Zero3Memory, BetweenLayersEachRankHoldsItsShardAndOnePrefetchedUnit) {
  const int dp = world().size();
  ZeroRunSpec spec;
  spec.layers = 6;
  at::manual_seed(11);
  Llama model(tiny_model_config(spec));
  int64_t model_bytes = 0, largest_unit = 0;  // measured from the tensors before sharding
  for (const auto& p : model->parameters()) model_bytes += p.numel() * p.element_size();
  for (int64_t u = 0; u < model->num_units(); ++u) {
    int64_t bytes = 0;
    for (const auto& np : model->unit_parameters(u)) bytes += np.second.numel() * 4;
    largest_unit = std::max(largest_unit, bytes);
  }
  Zero3Optimizer opt(*model, world(), AdamWOptions{});
  opt.zero_grad();
  Batch b = rows_of_step(0, world().rank() * 2, 2, spec, 64);
  lm_loss_sum(model->forward(b), b.labels).backward();
  opt.reduce_gradients();
  const std::vector<int64_t> between = opt.resident_between_units();
  ASSERT_EQ(between.size(), static_cast<size_t>(2 * model->num_units()));  // forward + backward
  const int64_t shard = opt.resident_parameter_bytes();  // all released now: the shard alone
  const int64_t padding = model->num_units() * (dp - 1) * 4;
  EXPECT_LE(shard * dp, model_bytes + padding);
  for (int64_t bytes : between) {
    EXPECT_GE(bytes, shard);
    EXPECT_LE(bytes, shard + largest_unit);  // one prefetched unit at most
  }
  // Six layers: a unit is well under a sixth of the model, so between layers a rank holds less
  // than 1/dp + 1/6 of it.
  for (int64_t bytes : between) EXPECT_LT(bytes, model_bytes / dp + model_bytes / 6 + padding);
}

}  // namespace
}  // namespace kiln::test
