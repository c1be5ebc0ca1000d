// Mesh: world = tp x pp x dp in Megatron order, world_rank = tp_idx + tp * (dp_idx + dp * pp_idx).
// Each group is a split of the world: ranks that agree on the other two coordinates.
#include "parallel/mesh.h"

#include "base/error.h"

namespace kiln {

Mesh::Mesh(std::unique_ptr<Communicator> world, int tp, int pp) : tp_(tp), pp_(pp), dp_(0) {
  KILN_CHECK(world != nullptr, "Mesh needs a world communicator");
  const int n = world->size();
  if (tp < 1) user_error("parallel.tp: ", tp, " must be >= 1");
  if (pp < 1) user_error("parallel.pp: ", pp, " must be >= 1");
  if (n % (tp * pp) != 0)
    user_error("parallel.tp (", tp, ") x parallel.pp (", pp, ") = ", tp * pp,
               " does not divide the world size ", n, "; choose tp x pp among the divisors of ", n);
  dp_ = n / (tp * pp);
  const int r = world->rank();
  coords_.tp = r % tp_;
  coords_.dp = (r / tp_) % dp_;
  coords_.pp = r / (tp_ * dp_);
  world_ = std::move(world);
  // color: the index of the group among its kind; key: the position inside it.
  tp_group_ = world_->split(coords_.dp + dp_ * coords_.pp, coords_.tp, "tp");
  dp_group_ = world_->split(coords_.tp + tp_ * coords_.pp, coords_.dp, "dp");
  pp_group_ = world_->split(coords_.tp + tp_ * coords_.dp, coords_.pp, "pp");
}

int Mesh::rank_of(MeshCoords c) const {
  KILN_CHECK(c.tp >= 0 && c.tp < tp_ && c.dp >= 0 && c.dp < dp_ && c.pp >= 0 && c.pp < pp_,
             "mesh coordinates (tp ", c.tp, ", dp ", c.dp, ", pp ", c.pp, ") outside ", tp_, " x ", dp_,
             " x ", pp_);
  return c.tp + tp_ * (c.dp + dp_ * c.pp);
}

}  // namespace kiln
