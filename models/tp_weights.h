// A tensor-parallel rank's view of global tensors: its parameters are slices (TpShardMap,
// models/tp_layers.h) of tensors that weight sources and checkpoints know by global name and
// global shape. TpShardedSource serves the rank's slice of each (reading only those elements:
// row ranges of a memory-mapped file, the boxes of a checkpoint that overlap); tp_global_slices()
// turns the rank's optimizer-state slices into boxes of the global tensors for a checkpoint, each
// element written by exactly one rank of the tp group.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/weight_source.h"
#include "parallel/tensor_slice.h"
#include "models/tp_layers.h"

namespace kiln {

// Serves parameter NAME (or PREFIX/NAME: "master/...", "exp_avg/...") of the rank's local shape
// from `global`'s tensor of the global shape. Elements past the global tensor (vocabulary
// padding) read as zeros.
class TpShardedSource : public WeightSource {
 public:
  TpShardedSource(WeightSource& global, TpShardMap shards);
  TpShardedSource(std::unique_ptr<WeightSource> global, TpShardMap shards);  // owning `global`
  std::string describe() const override;
  at::Tensor read(const std::string& name, const std::vector<int64_t>& shape, int64_t begin,
                  int64_t end) override;

 private:
  std::unique_ptr<WeightSource> owned_;
  WeightSource& global_;
  TpShardMap shards_;
};

// The shard of a parameter name (PREFIX/NAME too); nullptr when it is replicated over tp.
const TpShard* find_shard(const TpShardMap& shards, const std::string& name);

// Local state slices (ZeroOptimizer::state_slices()) -> global boxes: sharded tensors shifted to
// their place and clipped to the global shape, replicated ones kept by the first rank holding
// them only (tp rank 0, or replica 0).
std::vector<TensorSlice> tp_global_slices(std::vector<TensorSlice> local, const TpShardMap& shards,
                                          int tp_rank);
// Local shapes -> global shapes.
std::vector<std::pair<std::string, std::vector<int64_t>>> tp_global_shapes(
    const std::vector<std::pair<std::string, std::vector<int64_t>>>& local, const TpShardMap& shards);
// For the global gradient norm: 1 / (the number of tp ranks holding the same elements) per
// parameter: 1 for a split one, 1 / replicas for replicated kv heads, 1 / tp for the rest.
std::map<std::string, double> tp_norm_weights(const std::vector<std::string>& names, const TpShardMap& shards,
                                              int tp_size);

}  // namespace kiln
