// Mesh: world = tp x pp x dp in Megatron order (tp fastest, then dp, then pp); owns the world
// communicator and one sub-communicator per group. The only place rank arithmetic lives.
#pragma once
#include <memory>

#include "parallel/communicator.h"

namespace kiln {

struct MeshCoords {
  int tp = 0, dp = 0, pp = 0;
};

class Mesh {
 public:
  // world->size() must equal tp * pp * dp (dp derived); throws UserError naming the keys.
  Mesh(std::unique_ptr<Communicator> world, int tp, int pp);

  int tp_size() const { return tp_; }
  int pp_size() const { return pp_; }
  int dp_size() const { return dp_; }
  MeshCoords coords() const { return coords_; }
  // The world rank at given coordinates.
  int rank_of(MeshCoords c) const;

  Communicator& world() { return *world_; }
  Communicator& tp() { return *tp_group_; }
  Communicator& dp() { return *dp_group_; }
  Communicator& pp() { return *pp_group_; }

 private:
  int tp_, pp_, dp_;
  MeshCoords coords_;
  std::unique_ptr<Communicator> world_, tp_group_, dp_group_, pp_group_;
};

}  // namespace kiln
