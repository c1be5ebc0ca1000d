// Projections: every linear map of the model (q, k, v, o, gate, up, down and the LM head) is made
// by one factory from a spec, so tensor parallelism (column / row parallel) and adapters (LoRA,
// an NF4 base) change what the factory returns while attention and MLP code stay as they are
// (STYLE.md 13). The dense projection holds `weight` (out, in) and computes x W^T.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kiln {

// Which dimension of the weight a tensor-parallel layout splits (none = replicated).
enum class ShardDim { None, Out, In };

struct ProjectionSpec {
  std::string name;  // Hugging Face's short name: q_proj, ..., down_proj, lm_head
  int64_t layer = -1;  // global decoder layer index (-1: not in a layer, e.g. lm_head)
  int64_t in = 0, out = 0;
  ShardDim shard = ShardDim::None;
  int64_t shard_unit = 1;  // the sharded dimension splits in whole units (head_dim for attention)
  // Filled by a tensor-parallel factory (models/tp_layers.h): this rank holds elements
  // [shard_offset, shard_offset + shard_len) of the sharded dimension (shard_len 0: all of it;
  // the slice may run past the end of the dimension, for vocabulary padding), and `replicas` ranks
  // of the tp group hold the same slice (replicated key/value heads).
  int tp_size = 1;
  int64_t shard_offset = 0, shard_len = 0;
  int replicas = 1;
  // The weight this rank allocates: (local_out(), local_in()).
  int64_t local_out() const { return shard == ShardDim::Out && shard_len > 0 ? shard_len : out; }
  int64_t local_in() const { return shard == ShardDim::In && shard_len > 0 ? shard_len : in; }
};

class ProjectionImpl : public torch::nn::Module {
 public:
  // The weight starts as a shape_only() placeholder; materialize() or an optimizer fills it.
  explicit ProjectionImpl(const ProjectionSpec& spec);
  // (..., in) -> (..., out): leave(local(enter(x))).
  virtual at::Tensor forward(const at::Tensor& x);
  // The three parts of forward. A tensor-parallel projection maps its input into the region its
  // slice of the weight works in (enter: replicated over tp, or gathered from the sequence
  // slices), multiplies by that slice (local) and maps the product out (leave: the row-parallel
  // sum over tp); a dense one is local alone. An adapter (models/lora_projection.h) adds its term
  // between local and leave, on the same slices, so it costs no collective of its own.
  virtual at::Tensor enter(const at::Tensor& x) { return x; }
  virtual at::Tensor local(const at::Tensor& x);  // x local_weight()^T
  // This rank's W as local() uses it (a replicated kv head's enters through the sum over its
  // replicas' gradients), for an adapter that multiplies by the base weight itself (DoRA).
  virtual at::Tensor local_weight() { return weight; }
  virtual at::Tensor leave(const at::Tensor& y) { return y; }
  // Tensor parallel: parameter `param`'s global shape and the dimension along which this rank
  // holds elements [spec().shard_offset, + shard_len) of it; dim -1 when it holds it whole.
  struct GlobalShape {
    std::vector<int64_t> shape;
    int64_t dim = -1;
  };
  virtual GlobalShape global_shape(const std::string& param) const;
  const ProjectionSpec& spec() const { return spec_; }
  at::Tensor weight;  // (local_out, local_in): (out, in) unless tensor-parallel

 protected:
  // For projections that wrap another (models/lora_projection.h): no `weight` of its own is
  // registered; the wrapper registers the wrapped projection's tensors under their own names.
  struct NoWeight {};
  ProjectionImpl(const ProjectionSpec& spec, NoWeight) : spec_(spec) {}
  ProjectionSpec spec_;
};
TORCH_MODULE(Projection);

using ProjectionFactory = std::function<Projection(const ProjectionSpec&)>;
// Plain dense projections.
ProjectionFactory dense_projections();

// A placeholder of `shape` without storage of its own (one fp32 zero, expanded), for a parameter
// to be materialised later with set_data(). (Not the meta device: set_data() cannot turn a meta
// tensor into a CPU one.)
at::Tensor shape_only(at::IntArrayRef shape);
bool is_shape_only(const at::Tensor& t);

}  // namespace kiln
