// Sub-groups: split by color/key, and the tp / dp / pp groups of a Mesh, with membership
// checked in closed form (world_rank = tp_idx + tp * (dp_idx + dp * pp_idx)).
#include <gtest/gtest.h>

#include "parallel/mesh.h"
#include "tests/parallel/harness.h"
#include "base/error.h"

namespace kiln::test {
namespace {

// The world ranks of g's members in g's rank order (all_gather of each member's world rank).
std::vector<double> members(Communicator& g) {
  at::Tensor mine = at::full({1}, world().rank(), at::kLong);
  at::Tensor all = at::zeros({g.size()}, at::kLong);
  g.all_gather(mine, all);
  return values(all);
}

TEST(Groups, EvenOddSplit) {
  const int r = world().rank(), n = world().size();
  auto g = world().split(/*color=*/r % 2, /*key=*/r, "parity");
  EXPECT_EQ(g->name(), "parity");
  EXPECT_EQ(g->size(), (n - r % 2 + 1) / 2);
  EXPECT_EQ(g->rank(), r / 2);
  std::vector<double> want;
  for (int q = r % 2; q < n; q += 2) want.push_back(q);
  EXPECT_EQ(members(*g), want);
  // Sum of world ranks of the same parity.
  at::Tensor t = at::full({2}, r, at::kDouble);
  g->all_reduce(t);
  double sum = 0;
  for (double q : want) sum += q;
  EXPECT_EQ(values(t), (std::vector<double>{sum, sum}));
}

TEST(Groups, SplitKeyOrdersRanks) {
  const int r = world().rank(), n = world().size();
  auto g = world().split(/*color=*/0, /*key=*/n - r, "reversed");
  EXPECT_EQ(g->size(), n);
  EXPECT_EQ(g->rank(), n - 1 - r);
  std::vector<double> want;
  for (int q = n - 1; q >= 0; --q) want.push_back(q);
  EXPECT_EQ(members(*g), want);
}

TEST(Groups, CollectivesInsideSubgroups) {
  const int r = world().rank(), n = world().size();
  if (n < 2) GTEST_SKIP() << "needs two ranks";
  auto g = world().split(r % 2, r, "parity");
  const int gn = g->size(), gr = g->rank();
  // reduce_scatter: in[j] = gr + j on every member -> out[i] = gn(gn-1)/2 + gn (gr*2 + i).
  at::Tensor in = at::arange(2 * gn, at::kFloat).add(gr), out = at::zeros({2}, at::kFloat);
  g->reduce_scatter(in, out);
  EXPECT_EQ(values(out), (std::vector<double>{gn * (gn - 1) / 2.0 + gn * (gr * 2.0),
                                              gn * (gn - 1) / 2.0 + gn * (gr * 2.0 + 1)}));
  // all_gather_v with counts[q] = q + 1 inside the group; values 10 * world rank.
  std::vector<int64_t> counts;
  int64_t total = 0;
  for (int q = 0; q < gn; ++q) counts.push_back(q + 1), total += q + 1;
  at::Tensor shard = at::full({gr + 1}, 10 * r, at::kInt), all = at::zeros({total}, at::kInt);
  g->all_gather_v(shard, all, counts);
  std::vector<double> want;
  for (int q = 0; q < gn; ++q)
    for (int i = 0; i <= q; ++i) want.push_back(10.0 * (2 * q + r % 2));
  EXPECT_EQ(values(all), want);
  // broadcast from the group's last rank.
  at::Tensor b = at::full({1}, r, at::kLong);
  g->broadcast(b, gn - 1);
  EXPECT_EQ(values(b)[0], 2 * (gn - 1) + r % 2);
}

// For every tp, pp dividing the world: coordinates and the members of each group.
TEST(Groups, MeshGroupsMatchMegatronOrder) {
  const int r = world().rank(), n = world().size();
  for (int tp = 1; tp <= n; ++tp) {
    for (int pp = 1; pp * tp <= n; ++pp) {
      if (n % (tp * pp) != 0) continue;
      const int dp = n / (tp * pp);
      Mesh mesh(world().split(0, r, "world"), tp, pp);
      SCOPED_TRACE(str("tp ", tp, " pp ", pp, " dp ", dp));
      ASSERT_EQ(mesh.dp_size(), dp);
      const int t = r % tp, d = (r / tp) % dp, p = r / (tp * dp);
      EXPECT_EQ(mesh.coords().tp, t);
      EXPECT_EQ(mesh.coords().dp, d);
      EXPECT_EQ(mesh.coords().pp, p);
      EXPECT_EQ(mesh.rank_of(mesh.coords()), r);
      auto at = [&](int ti, int di, int pi) -> double { return ti + tp * (di + dp * pi); };
      std::vector<double> tp_members, dp_members, pp_members;
      for (int i = 0; i < tp; ++i) tp_members.push_back(at(i, d, p));
      for (int i = 0; i < dp; ++i) dp_members.push_back(at(t, i, p));
      for (int i = 0; i < pp; ++i) pp_members.push_back(at(t, d, i));
      EXPECT_EQ(mesh.tp().size(), tp);
      EXPECT_EQ(mesh.tp().rank(), t);
      EXPECT_EQ(members(mesh.tp()), tp_members);
      EXPECT_EQ(mesh.dp().rank(), d);
      EXPECT_EQ(members(mesh.dp()), dp_members);
      EXPECT_EQ(mesh.pp().rank(), p);
      EXPECT_EQ(members(mesh.pp()), pp_members);
      EXPECT_EQ(mesh.dp().name(), "dp");
    }
  }
}

TEST(Groups, MeshTp2On4Ranks) {
  const int r = world().rank(), n = world().size();
  if (n != 4) GTEST_SKIP() << "the 4-rank layout";
  Mesh mesh(world().split(0, r, "world"), /*tp=*/2, /*pp=*/1);
  // tp groups {0,1} {2,3}; dp groups {0,2} {1,3}; pp groups of one.
  const std::vector<std::vector<double>> tp_of{{0, 1}, {0, 1}, {2, 3}, {2, 3}};
  const std::vector<std::vector<double>> dp_of{{0, 2}, {1, 3}, {0, 2}, {1, 3}};
  EXPECT_EQ(members(mesh.tp()), tp_of[r]);
  EXPECT_EQ(members(mesh.dp()), dp_of[r]);
  EXPECT_EQ(members(mesh.pp()), std::vector<double>{static_cast<double>(r)});
  EXPECT_EQ(mesh.rank_of({/*tp=*/1, /*dp=*/1, /*pp=*/0}), 3);
}

TEST(Groups, MeshRejectsTpThatDoesNotDivide) {
  const int n = world().size();
  EXPECT_THROW(Mesh(world().split(0, world().rank(), "world"), n + 1, 1), UserError);
}

}  // namespace
}  // namespace kiln::test
