// Tensor-parallel layers built on the mappings of parallel/tp_mappings.h (Megatron-LM's layout):
//
//   column-parallel projection (ShardDim::Out: q, k, v, gate, up, lm_head): weight rows split,
//       y_local = copy_to_region(x) W_local^T   (sequence parallel: gather_seq(x) instead)
//   row-parallel projection (ShardDim::In: o, down): weight columns split,
//       y = reduce_from_region(x_local W_local^T)   (sequence parallel: reduce_scatter_seq)
//   replicated key/value heads (tp a multiple of num_kv_heads): each rank holds one kv head that
//       tp / num_kv_heads ranks share; the weight enters through copy_to_region over those
//       replicas, so its gradient is the sum of theirs on each of them.
//   vocab-parallel embedding: rank r holds rows [r*S, (r+1)*S), S = ceil(V / tp); ids outside
//       give zeros and the ranks' lookups are summed (reduce_from_region / reduce_scatter_seq).
//
// A vocabulary not divisible by tp is padded: the last rank's rows past V exist only locally
// (zeros, never looked up, masked out of the logits), so the global tensors, checkpoints and
// exports keep V rows whatever tp is.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/model_config.h"
#include "models/projection.h"

namespace kiln {

class Communicator;

// What a tensor-parallel model needs of its group. Shared by the factory and the model.
class TensorParallel {
 public:
  TensorParallel(Communicator& group, bool sequence_parallel);
  ~TensorParallel();
  Communicator& group() { return group_; }
  int rank() const;
  int size() const;
  bool sequence_parallel() const { return sequence_parallel_; }
  // The ranks that hold the same slice when `replicas` ranks share each one (consecutive tp
  // ranks). Collective over the tp group the first time a count is asked for.
  Communicator& replica_group(int replicas);

 private:
  Communicator& group_;
  bool sequence_parallel_;
  std::map<int, std::unique_ptr<Communicator>> replica_groups_;
};

// Rows [offset, offset + len) of a dimension of `total` elements split over `size` ranks in
// whole units of `unit`: an even split when the units divide, one unit shared by size/units
// ranks when the ranks are a multiple of the units (replicas > 1), else (unit 1 only) ceil-sized
// slices, the last one running past the end (padding).
struct DimShard {
  int64_t offset = 0, len = 0;
  int replicas = 1;
};
DimShard shard_dim(int64_t total, int64_t unit, int rank, int size);

// The parameters one rank of a tp group allocates (split tensors' slices, replicated kv heads,
// norms whole, vocabulary rows padded to ceil(V / tp)): what `kiln plan` counts per rank.
int64_t tp_rank_parameters(const ModelConfig& cfg, int tp);

// Column-parallel for ShardDim::Out, row-parallel for ShardDim::In, dense for ShardDim::None.
ProjectionFactory tensor_parallel_projections(std::shared_ptr<TensorParallel> tp);

// The vocab-parallel embedding's forward: weight (S, h) holds rows [offset, offset + S).
at::Tensor vocab_parallel_embedding(const at::Tensor& ids, const at::Tensor& weight, int64_t offset,
                                    TensorParallel& tp);

// Where a tensor-parallel parameter sits in its global tensor: `len` elements of dimension `dim`
// from `offset` (past global_shape[dim]: local padding); `replicas` ranks hold the same slice and
// this one is number `replica_index` among them. A parameter absent from the map is replicated
// over the whole tp group.
struct TpShard {
  std::vector<int64_t> global_shape;
  int64_t dim = 0, offset = 0, len = 0;
  int replicas = 1, replica_index = 0;
};
using TpShardMap = std::map<std::string, TpShard>;  // parameter name -> its slice

}  // namespace kiln
