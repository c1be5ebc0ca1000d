// Column/row-parallel projections, replicated kv heads and the vocab-parallel embedding (see
// tp_layers.h).
#include "models/tp_layers.h"

#include <ATen/ATen.h>

#include "base/error.h"
#include "parallel/communicator.h"
#include "parallel/tp_mappings.h"

namespace kiln {

TensorParallel::TensorParallel(Communicator& group, bool sequence_parallel)
    : group_(group), sequence_parallel_(sequence_parallel) {}
TensorParallel::~TensorParallel() = default;
int TensorParallel::rank() const { return group_.rank(); }
int TensorParallel::size() const { return group_.size(); }

Communicator& TensorParallel::replica_group(int replicas) {
  auto it = replica_groups_.find(replicas);
  if (it == replica_groups_.end()) {
    // Consecutive tp ranks share a slice: colour = which slice.
    std::unique_ptr<Communicator> g = group_.split(rank() / replicas, rank(), str("tp-replicas", replicas));
    it = replica_groups_.emplace(replicas, std::move(g)).first;
  }
  return *it->second;
}

DimShard shard_dim(int64_t total, int64_t unit, int rank, int size) {
  KILN_CHECK(unit > 0 && total % unit == 0, "shard_dim: ", total, " is not a multiple of the unit ", unit);
  const int64_t units = total / unit;
  if (units % size == 0) return {rank * (total / size), total / size, 1};
  if (size % units == 0) {
    const int replicas = static_cast<int>(size / units);
    return {(rank / replicas) * unit, unit, replicas};
  }
  KILN_CHECK(unit == 1, "shard_dim: ", units, " units of ", unit, " cannot be split over ", size, " ranks");
  const int64_t len = (total + size - 1) / size;
  return {rank * len, len, 1};
}

int64_t tp_rank_parameters(const ModelConfig& c, int tp) {
  const int64_t h = c.hidden_size, D = c.head_dim();
  auto local = [&](int64_t total, int64_t unit) { return shard_dim(total, unit, 0, tp).len; };
  const int64_t per_layer = h * local(c.num_heads * D, D) * 2 /*q, o*/ + 2 * h * local(c.kv_heads() * D, D) /*k, v*/ +
                            3 * h * local(c.ffn_size(), 1) + 2 * h /*norms*/;
  const int64_t embed = local(c.padded_vocab(), 1) * h;
  return embed + c.num_layers * per_layer + h + (c.tie_embeddings ? 0 : embed);
}

namespace {

// Weight rows split: the input is replicated over tp (or, sequence parallel, gathered from the
// ranks' sequence slices); the output is this rank's slice of the features.
class ColumnParallelImpl : public ProjectionImpl {
 public:
  ColumnParallelImpl(const ProjectionSpec& spec, std::shared_ptr<TensorParallel> tp)
      : ProjectionImpl(spec), tp_(std::move(tp)) {}
  at::Tensor enter(const at::Tensor& x) override {
    Communicator& g = tp_->group();
    return tp_->sequence_parallel() ? gather_seq(x, g) : copy_to_region(x, g);
  }
  at::Tensor local_weight() override {
    // Replicated kv heads: each replica's gradient is the sum over the ranks sharing the head.
    return spec_.replicas > 1 ? copy_to_region(weight, tp_->replica_group(spec_.replicas)) : weight;
  }

 private:
  std::shared_ptr<TensorParallel> tp_;
};

// Weight columns split: the input is this rank's slice of the features; the ranks' partial
// products are summed (sequence parallel: summed and scattered along the sequence).
class RowParallelImpl : public ProjectionImpl {
 public:
  RowParallelImpl(const ProjectionSpec& spec, std::shared_ptr<TensorParallel> tp)
      : ProjectionImpl(spec), tp_(std::move(tp)) {}
  at::Tensor leave(const at::Tensor& partial) override {
    Communicator& g = tp_->group();
    return tp_->sequence_parallel() ? reduce_scatter_seq(partial, g) : reduce_from_region(partial, g);
  }

 private:
  std::shared_ptr<TensorParallel> tp_;
};

}  // namespace

ProjectionFactory tensor_parallel_projections(std::shared_ptr<TensorParallel> tp) {
  return [tp](const ProjectionSpec& base) -> Projection {
    if (base.shard == ShardDim::None) return Projection(base);
    ProjectionSpec spec = base;
    const DimShard s =
        shard_dim(spec.shard == ShardDim::Out ? spec.out : spec.in, spec.shard_unit, tp->rank(), tp->size());
    KILN_CHECK(spec.shard == ShardDim::Out || s.replicas == 1, spec.name,
               ": a row-parallel weight cannot be replicated");
    spec.tp_size = tp->size();
    spec.shard_offset = s.offset;
    spec.shard_len = s.len;
    spec.replicas = s.replicas;
    if (spec.shard == ShardDim::Out)
      return Projection(std::shared_ptr<ProjectionImpl>(std::make_shared<ColumnParallelImpl>(spec, tp)));
    return Projection(std::shared_ptr<ProjectionImpl>(std::make_shared<RowParallelImpl>(spec, tp)));
  };
}

at::Tensor vocab_parallel_embedding(const at::Tensor& ids, const at::Tensor& weight, int64_t offset,
                                    TensorParallel& tp) {
  const int64_t rows = weight.size(0);
  at::Tensor outside = ids.lt(offset).logical_or(ids.ge(offset + rows));  // (B, T)
  at::Tensor local = (ids - offset).masked_fill(outside, 0);
  at::Tensor e = at::embedding(weight, local).masked_fill(outside.unsqueeze(-1), 0.0);  // (B, T, h)
  return tp.sequence_parallel() ? reduce_scatter_seq(e, tp.group()) : reduce_from_region(e, tp.group());
}

}  // namespace kiln
