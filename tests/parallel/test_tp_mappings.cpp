// The tensor/sequence-parallel mappings (parallel/tp_mappings.h) against closed forms, forward
// and backward, with the world as the tp group (np 2 and 4). Rank r's inputs are filled from r
// and upstream gradients are (r + 1), so every expected value is a small sum over ranks.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "parallel/tp_mappings.h"
#include "tests/parallel/harness.h"

namespace kiln::test {
namespace {

int n() { return world().size(); }
int r() { return world().rank(); }
double tri() { return n() * (n() + 1) / 2.0; }  // sum over ranks of (s + 1)

at::Tensor leaf(at::Tensor t) { return t.to(at::kDouble).requires_grad_(true); }

TEST(TpMappings, CopyToRegionIsIdentityForwardAllReduceBackward) {
  at::Tensor x = leaf(at::full({2, 3}, r() + 1.0));
  at::Tensor y = copy_to_region(x, world());
  EXPECT_TRUE(y.equal(x.detach()));
  (y * (r() + 1.0)).sum().backward();
  EXPECT_TRUE(x.grad().equal(at::full({2, 3}, tri(), at::kDouble)));
}

TEST(TpMappings, ReduceFromRegionIsAllReduceForwardIdentityBackward) {
  at::Tensor x = leaf(at::full({2, 3}, r() + 1.0));
  at::Tensor y = reduce_from_region(x, world());
  EXPECT_TRUE(y.detach().equal(at::full({2, 3}, tri(), at::kDouble)));
  (y * (r() + 1.0)).sum().backward();
  EXPECT_TRUE(x.grad().equal(at::full({2, 3}, r() + 1.0, at::kDouble)));
}

TEST(TpMappings, GatherLastDimConcatenatesRanksAndSlicesTheGradient) {
  at::Tensor x = leaf(at::full({2, 3}, static_cast<double>(r())));
  at::Tensor y = gather_last_dim(x, world());
  ASSERT_EQ(y.sizes(), (at::IntArrayRef{2, 3 * n()}));
  for (int s = 0; s < n(); ++s)
    EXPECT_TRUE(y.detach().narrow(1, 3 * s, 3).equal(at::full({2, 3}, s, at::kDouble)));
  at::Tensor g = at::arange(3 * n(), at::kDouble).expand({2, 3 * n()});
  (y * g).sum().backward();
  EXPECT_TRUE(x.grad().equal(g.narrow(1, 3 * r(), 3)));
}

TEST(TpMappings, ScatterLastDimTakesTheSliceAndGathersTheGradient) {
  at::Tensor x = leaf(at::arange(3 * n(), at::kDouble).expand({2, 3 * n()}) + 100.0 * r());
  at::Tensor y = scatter_last_dim(x, world());
  EXPECT_TRUE(y.detach().equal(x.detach().narrow(1, 3 * r(), 3)));
  (y * (r() + 1.0)).sum().backward();
  for (int s = 0; s < n(); ++s)
    EXPECT_TRUE(x.grad().narrow(1, 3 * s, 3).equal(at::full({2, 3}, s + 1.0, at::kDouble)));
}

TEST(TpMappings, GatherSeqConcatenatesSequenceAndReduceScattersTheGradient) {
  at::Tensor x = leaf(at::full({2, 2, 5}, static_cast<double>(r())));  // (B, T/tp, h)
  at::Tensor y = gather_seq(x, world());
  ASSERT_EQ(y.sizes(), (at::IntArrayRef{2, 2 * n(), 5}));
  for (int s = 0; s < n(); ++s)
    EXPECT_TRUE(y.detach().narrow(1, 2 * s, 2).equal(at::full({2, 2, 5}, s, at::kDouble)));
  // Upstream gradient (r + 1) * (t + 1) at sequence position t: rank r receives the sum over
  // ranks of its own positions.
  at::Tensor pos = (at::arange(2 * n(), at::kDouble) + 1).view({1, -1, 1});
  (y * pos * (r() + 1.0)).sum().backward();
  EXPECT_TRUE(x.grad().equal((pos.narrow(1, 2 * r(), 2) * tri()).expand({2, 2, 5})));
}

TEST(TpMappings, ReduceScatterSeqSumsAndSlicesAndGathersTheGradient) {
  at::Tensor pos = (at::arange(2 * n(), at::kDouble) + 1).view({1, -1, 1});
  at::Tensor x = leaf((pos * (r() + 1.0)).expand({2, 2 * n(), 5}).contiguous());
  at::Tensor y = reduce_scatter_seq(x, world());
  ASSERT_EQ(y.sizes(), (at::IntArrayRef{2, 2, 5}));
  EXPECT_TRUE(y.detach().equal((pos.narrow(1, 2 * r(), 2) * tri()).expand({2, 2, 5})));
  (y * (r() + 1.0)).sum().backward();
  for (int s = 0; s < n(); ++s)
    EXPECT_TRUE(x.grad().narrow(1, 2 * s, 2).equal(at::full({2, 2, 5}, s + 1.0, at::kDouble)));
}

TEST(TpMappings, ScatterSeqTakesTheSliceAndGathersTheGradient) {
  at::Tensor pos = at::arange(2 * n(), at::kDouble).view({1, -1, 1});
  at::Tensor x = leaf((pos + 100.0 * r()).expand({2, 2 * n(), 5}).contiguous());
  at::Tensor y = scatter_seq(x, world());
  EXPECT_TRUE(y.detach().equal(x.detach().narrow(1, 2 * r(), 2)));
  (y * (r() + 1.0)).sum().backward();
  for (int s = 0; s < n(); ++s)
    EXPECT_TRUE(x.grad().narrow(1, 2 * s, 2).equal(at::full({2, 2, 5}, s + 1.0, at::kDouble)));
}

// Conjugacy: gather_seq then reduce_scatter_seq round-trips the forward, and the region pair
// copy -> reduce gives tp * x forward and tp * g backward.
TEST(TpMappings, PairsComposeAsConjugates) {
  at::Tensor x = leaf(at::full({1, 2, 3}, r() + 1.0));
  at::Tensor y = reduce_scatter_seq(gather_seq(x, world()), world());
  EXPECT_TRUE(y.detach().equal(x.detach() * n()));
  at::Tensor z = reduce_from_region(copy_to_region(x, world()), world());
  EXPECT_TRUE(z.detach().equal(at::full({1, 2, 3}, tri(), at::kDouble)));
}

}  // namespace
}  // namespace kiln::test
