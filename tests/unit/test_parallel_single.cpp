// The single-process communicator, the backend factory and Mesh without mpirun.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "parallel/communicator.h"
#include "parallel/communicator_backends.h"
#include "parallel/mesh.h"
#include "base/error.h"

namespace kiln {
namespace {

std::unique_ptr<Communicator> single() { return make_world_communicator("auto", false, 5.0); }

TEST(ParallelSingle, LaunchWithoutMpirunIsRankZeroOfOne) {
  const LaunchInfo& li = launch_info();
  EXPECT_FALSE(li.under_mpi);
  EXPECT_EQ(li.world_rank, 0);
  EXPECT_EQ(li.world_size, 1);
  EXPECT_EQ(li.local_rank, 0);
  EXPECT_EQ(li.local_size, 1);
  EXPECT_FALSE(li.host.empty());
  EXPECT_EQ(launch_layout(), "1 process on 1 host: " + li.host + " [0] (no mpirun)");
}

TEST(ParallelSingle, FactoryPicksSingleWithoutMpirun) {
  auto c = single();
  EXPECT_EQ(c->backend(), "single");
  EXPECT_EQ(c->name(), "world");
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  EXPECT_EQ(make_world_communicator("mpi", false, 5.0)->backend(), "single");
}

TEST(ParallelSingle, FactoryRejectsBadBackendAndTimeout) {
  try {
    make_world_communicator("gloo", false, 5.0);
    FAIL() << "expected UserError";
  } catch (const UserError& e) {
    EXPECT_STREQ(e.what(), "parallel.backend: 'gloo' is not one of auto | nccl | mpi");
  }
  EXPECT_THROW(make_world_communicator("auto", false, 0.0), UserError);
  EXPECT_THROW(make_world_communicator("auto", false, -1.0), UserError);
  EXPECT_THROW(make_world_communicator("nccl", /*cuda=*/false, 5.0), UserError);
}

TEST(ParallelSingle, CollectivesAreIdentities) {
  auto c = single();
  at::Tensor t = at::arange(6, at::kFloat);
  c->all_reduce(t, ReduceOp::Sum);
  EXPECT_TRUE(t.equal(at::arange(6, at::kFloat)));
  c->all_reduce(t, ReduceOp::Max);
  EXPECT_TRUE(t.equal(at::arange(6, at::kFloat)));
  c->broadcast(t, 0);
  EXPECT_TRUE(t.equal(at::arange(6, at::kFloat)));

  at::Tensor out = at::zeros({6}, at::kFloat);
  c->all_gather(t.view({2, 3}), out);
  EXPECT_TRUE(out.equal(t));
  at::Tensor out_v = at::zeros({6}, at::kFloat);
  c->all_gather_v(t, out_v, {6});
  EXPECT_TRUE(out_v.equal(t));
  at::Tensor rs = at::zeros({6}, at::kFloat);
  c->reduce_scatter(t, rs);
  EXPECT_TRUE(rs.equal(t));
  c->barrier();
}

TEST(ParallelSingle, WrongCallsAreChecked) {
  auto c = single();
  at::Tensor t = at::ones({4}, at::kFloat);
  at::Tensor small = at::zeros({3}, at::kFloat);
  EXPECT_THROW(c->all_gather(t, small), InternalError);
  EXPECT_THROW(c->all_gather_v(t, small, {4}), InternalError);
  EXPECT_THROW(c->all_gather_v(t, t, {3}), InternalError);
  EXPECT_THROW(c->reduce_scatter(t, small), InternalError);
  EXPECT_THROW(c->broadcast(t, 1), InternalError);
  EXPECT_THROW(c->send(t, 0), InternalError);  // no peer in a group of one
  EXPECT_THROW(c->recv(t, 0), InternalError);
}

TEST(ParallelSingle, SplitGivesNamedGroupOfOne) {
  auto c = single();
  auto sub = c->split(/*color=*/3, /*key=*/0, "dp");
  EXPECT_EQ(sub->name(), "dp");
  EXPECT_EQ(sub->size(), 1);
  EXPECT_EQ(sub->rank(), 0);
}

TEST(ParallelSingle, TimeoutMessageNamesCollectiveGroupAndRank) {
  auto dp = single()->split(/*color=*/0, /*key=*/0, "dp");
  EXPECT_EQ(timeout_message("all_reduce", *dp, 3.0),
            "kiln: timeout after 3s in all_reduce on group dp (rank 0 of 1, world rank 0)");
  EXPECT_EQ(timeout_message("reduce_scatter", *dp, 0.5),
            "kiln: timeout after 0.5s in reduce_scatter on group dp (rank 0 of 1, world rank 0)");
}

TEST(ParallelSingle, MeshOfOne) {
  Mesh mesh(single(), /*tp=*/1, /*pp=*/1);
  EXPECT_EQ(mesh.tp_size(), 1);
  EXPECT_EQ(mesh.pp_size(), 1);
  EXPECT_EQ(mesh.dp_size(), 1);
  EXPECT_EQ(mesh.coords().tp, 0);
  EXPECT_EQ(mesh.coords().dp, 0);
  EXPECT_EQ(mesh.coords().pp, 0);
  EXPECT_EQ(mesh.rank_of({0, 0, 0}), 0);
  EXPECT_EQ(mesh.dp().name(), "dp");
  EXPECT_EQ(mesh.tp().name(), "tp");
  EXPECT_EQ(mesh.pp().name(), "pp");
  EXPECT_EQ(mesh.world().size(), 1);
  EXPECT_THROW(mesh.rank_of({1, 0, 0}), InternalError);
}

TEST(ParallelSingle, MeshRejectsLayoutsThatDoNotFit) {
  try {
    Mesh mesh(single(), /*tp=*/2, /*pp=*/1);
    FAIL() << "expected UserError";
  } catch (const UserError& e) {
    EXPECT_STREQ(e.what(),
                 "parallel.tp (2) x parallel.pp (1) = 2 does not divide the world size 1; choose "
                 "tp x pp among the divisors of 1");
  }
  EXPECT_THROW(Mesh(single(), 0, 1), UserError);
  EXPECT_THROW(Mesh(single(), 1, 0), UserError);
}

}  // namespace
}  // namespace kiln
