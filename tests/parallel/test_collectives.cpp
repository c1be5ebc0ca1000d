// Every collective of the MPI communicator on the world group, in every dtype, against closed
// forms in the rank r and the group size n (flashlight's rank-sum test, STYLE.md 8). Values
// stay below 256 so that they are exact in bf16 and fp16.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tests/parallel/harness.h"
#include "base/error.h"

namespace kiln::test {
namespace {

at::TensorOptions opts(at::ScalarType s) { return at::TensorOptions().dtype(s); }

TEST(Collectives, WorldMatchesLaunch) {
  EXPECT_EQ(world().backend(), launch_info().under_mpi ? "mpi" : "single");
  EXPECT_EQ(world().rank(), launch_info().world_rank);
  EXPECT_EQ(world().size(), launch_info().world_size);
  EXPECT_GE(launch_info().local_rank, 0);
  EXPECT_LT(launch_info().local_rank, launch_info().local_size);
}

TEST(Collectives, AllReduceSumIsSumOfRanks) {
  const int r = world().rank(), n = world().size();
  for (at::ScalarType dt : all_dtypes()) {
    at::Tensor t = at::full({5}, r, opts(dt));
    world().all_reduce(t, ReduceOp::Sum);
    EXPECT_EQ(t.scalar_type(), dt);
    for (double v : values(t)) EXPECT_EQ(v, n * (n - 1) / 2.0) << dt;
  }
}

TEST(Collectives, AllReduceMaxAndMin) {
  const int r = world().rank(), n = world().size();
  for (at::ScalarType dt : all_dtypes()) {
    // t[i] = 10 r + i (rank-dependent), and t[3] = -r to make the extremes differ by element.
    at::Tensor t = at::arange(4, opts(dt)).add(10 * r);
    t[3] = -r;
    at::Tensor mx = t.clone(), mn = t.clone();
    world().all_reduce(mx, ReduceOp::Max);
    world().all_reduce(mn, ReduceOp::Min);
    EXPECT_EQ(values(mx), (std::vector<double>{10.0 * (n - 1), 10.0 * (n - 1) + 1, 10.0 * (n - 1) + 2, 0.0}))
        << dt;
    EXPECT_EQ(values(mn), (std::vector<double>{0, 1, 2, -(n - 1.0)})) << dt;
  }
}

TEST(Collectives, AllReduceNonContiguousInPlace) {
  const int r = world().rank(), n = world().size();
  at::Tensor base = at::zeros({3, 4}, at::kFloat);
  at::Tensor t = base.t();  // (4, 3) view, not contiguous
  t.fill_(r + 1);
  world().all_reduce(t);
  for (double v : values(base)) EXPECT_EQ(v, n * (n + 1) / 2.0);
}

TEST(Collectives, AllGatherConcatenatesInRankOrder) {
  const int r = world().rank(), n = world().size();
  for (at::ScalarType dt : all_dtypes()) {
    at::Tensor shard = at::arange(3, opts(dt)).add(10 * r);  // {10r, 10r+1, 10r+2}
    at::Tensor out = at::full({3 * n}, -1, opts(dt));
    world().all_gather(shard, out);
    std::vector<double> want;
    for (int q = 0; q < n; ++q)
      for (int i = 0; i < 3; ++i) want.push_back(10 * q + i);
    EXPECT_EQ(values(out), want) << dt;
  }
}

TEST(Collectives, AllGatherInPlaceFromOwnSlice) {
  const int r = world().rank(), n = world().size();
  at::Tensor out = at::zeros({2 * n}, at::kFloat);
  at::Tensor mine = out.narrow(0, 2 * r, 2);
  mine.fill_(r + 1);
  world().all_gather(mine, out);
  std::vector<double> want;
  for (int q = 0; q < n; ++q) want.insert(want.end(), {q + 1.0, q + 1.0});
  EXPECT_EQ(values(out), want);
}

TEST(Collectives, AllGatherVUnevenCounts) {
  const int r = world().rank(), n = world().size();
  // Rank q contributes q elements (rank 0 none): 10 q + i for i < q.
  std::vector<int64_t> counts;
  for (int q = 0; q < n; ++q) counts.push_back(q);
  for (at::ScalarType dt : all_dtypes()) {
    at::Tensor shard = at::arange(r, opts(dt)).add(10 * r);
    at::Tensor out = at::full({n * (n - 1) / 2}, -1, opts(dt));
    world().all_gather_v(shard, out, counts);
    std::vector<double> want;
    for (int q = 0; q < n; ++q)
      for (int i = 0; i < q; ++i) want.push_back(10 * q + i);
    EXPECT_EQ(values(out), want) << dt;
  }
}

TEST(Collectives, ReduceScatterSumGivesOwnSlice) {
  const int r = world().rank(), n = world().size();
  const int k = 3;
  for (at::ScalarType dt : all_dtypes()) {
    // in[j] = q + j on rank q  ->  out[i] on rank r = n(n-1)/2 + n (r k + i).
    at::Tensor in = at::arange(n * k, opts(dt)).add(r);
    at::Tensor out = at::full({k}, -1, opts(dt));
    world().reduce_scatter(in, out);
    std::vector<double> want;
    for (int i = 0; i < k; ++i) want.push_back(n * (n - 1) / 2.0 + n * (r * k + i));
    EXPECT_EQ(values(out), want) << dt;
  }
}

TEST(Collectives, ReduceScatterMax) {
  const int r = world().rank(), n = world().size();
  at::Tensor in = at::full({2 * n}, r, at::kFloat);
  at::Tensor out = at::zeros({2}, at::kFloat);
  world().reduce_scatter(in, out, ReduceOp::Max);
  EXPECT_EQ(values(out), (std::vector<double>{n - 1.0, n - 1.0}));
}

TEST(Collectives, ReduceScatterRejectsUnevenInput) {
  const int n = world().size();
  if (n < 2) GTEST_SKIP() << "every size divides by one rank";
  at::Tensor in = at::zeros({n + 1}, at::kFloat), out = at::zeros({1}, at::kFloat);
  EXPECT_THROW(world().reduce_scatter(in, out), InternalError);
}

TEST(Collectives, BroadcastFromEveryRoot) {
  const int r = world().rank(), n = world().size();
  for (at::ScalarType dt : all_dtypes()) {
    for (int root = 0; root < n; ++root) {
      at::Tensor t = at::arange(4, opts(dt)).add(7 * r);  // only root's values survive
      world().broadcast(t, root);
      EXPECT_EQ(values(t), (std::vector<double>{7.0 * root, 7.0 * root + 1, 7.0 * root + 2, 7.0 * root + 3}))
          << dt << " root " << root;
    }
  }
}

TEST(Collectives, SendRecvRing) {
  const int r = world().rank(), n = world().size();
  if (n < 2) GTEST_SKIP() << "a ring needs two ranks";
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  for (at::ScalarType dt : all_dtypes()) {
    at::Tensor out = at::arange(6, opts(dt)).add(10 * r).view({2, 3});
    at::Tensor in = at::full({2, 3}, -1, opts(dt));
    // Even ranks send first, odd ranks receive first: no rank waits on a peer that waits on it.
    if (r % 2 == 0) {
      world().send(out, next);
      world().recv(in, prev);
    } else {
      world().recv(in, prev);
      world().send(out, next);
    }
    std::vector<double> want;
    for (int i = 0; i < 6; ++i) want.push_back(10 * prev + i);
    EXPECT_EQ(values(in), want) << dt;
  }
}

TEST(Collectives, SendToSelfIsAnError) {
  at::Tensor t = at::zeros({1});
  EXPECT_THROW(world().send(t, world().rank()), InternalError);
  EXPECT_THROW(world().recv(t, world().size()), InternalError);
}

TEST(Collectives, BarrierHoldsEveryRankUntilTheLastArrives) {
  using Clock = std::chrono::steady_clock;
  world().barrier();  // every rank starts the clock together, not whenever its process got here
  const auto start = Clock::now();
  if (world().rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  world().barrier();
  const double waited = std::chrono::duration<double>(Clock::now() - start).count();
  EXPECT_GE(waited, 0.25);  // rank 0 arrived 300 ms late, so nobody left before that
  world().barrier();
}

}  // namespace
}  // namespace kiln::test
