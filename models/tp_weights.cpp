// Tensor-parallel slices of global tensors (see tp_weights.h).
#include "models/tp_weights.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "base/error.h"

namespace kiln {
namespace {

// Box b of a global tensor, read from a source that serves flat ranges: one range when the box
// spans whole trailing rows, else one range per row (2-D at most, as every parameter is).
at::Tensor read_box(WeightSource& src, const std::string& name, const std::vector<int64_t>& shape,
                    const Box& b) {
  KILN_CHECK(shape.size() <= 2, "tensor-parallel read of ", name, ": ", shape.size(), "-d");
  if (shape.size() == 1) return src.read(name, shape, b.offset[0], b.offset[0] + b.length[0]);
  const int64_t cols = shape[1];
  if (b.offset[1] == 0 && b.length[1] == cols)
    return src.read(name, shape, b.offset[0] * cols, (b.offset[0] + b.length[0]) * cols).view(b.length);
  at::Tensor out = at::empty(b.length, at::kFloat);
  for (int64_t r = 0; r < b.length[0]; ++r) {
    const int64_t start = (b.offset[0] + r) * cols + b.offset[1];
    out[r].copy_(src.read(name, shape, start, start + b.length[1]));
  }
  return out;
}

// Box b (in local coordinates) moved into the global tensor and clipped to it; nullopt when it
// lies wholly in the padding. `inner` is the clipped part in b's own coordinates.
std::optional<Box> to_global(const Box& b, const TpShard& s, Box* inner) {
  Box g = b;
  g.offset[s.dim] += s.offset;
  const int64_t end = std::min(g.offset[s.dim] + g.length[s.dim], s.global_shape[s.dim]);
  if (end <= g.offset[s.dim]) return std::nullopt;
  g.length[s.dim] = end - g.offset[s.dim];
  *inner = full_box(b.length);
  inner->length[s.dim] = g.length[s.dim];
  return g;
}

}  // namespace

const TpShard* find_shard(const TpShardMap& shards, const std::string& name) {
  auto it = shards.find(name);
  if (it == shards.end()) {
    const size_t slash = name.find('/');
    if (slash != std::string::npos) it = shards.find(name.substr(slash + 1));
  }
  return it == shards.end() ? nullptr : &it->second;
}

TpShardedSource::TpShardedSource(WeightSource& global, TpShardMap shards)
    : global_(global), shards_(std::move(shards)) {}
TpShardedSource::TpShardedSource(std::unique_ptr<WeightSource> global, TpShardMap shards)
    : owned_(std::move(global)), global_(*owned_), shards_(std::move(shards)) {}

std::string TpShardedSource::describe() const { return global_.describe(); }

at::Tensor TpShardedSource::read(const std::string& name, const std::vector<int64_t>& shape, int64_t begin,
                                 int64_t end) {
  const TpShard* s = find_shard(shards_, name);
  if (!s) return global_.read(name, shape, begin, end);
  KILN_CHECK(static_cast<int64_t>(shape.size()) == static_cast<int64_t>(s->global_shape.size()) &&
                 shape[s->dim] == s->len,
             "tensor-parallel read of ", name, ": local shape ", at::IntArrayRef(shape),
             " is not the shard's");
  at::Tensor out = at::zeros({end - begin}, at::kFloat);
  int64_t pos = 0;  // the boxes are consecutive runs of [begin, end)
  for (const Box& b : flat_range_boxes(shape, begin, end)) {
    Box inner;
    if (std::optional<Box> g = to_global(b, *s, &inner)) {
      at::Tensor dst = box_view(out.narrow(0, pos, b.numel()).view(b.length), inner);
      dst.copy_(read_box(global_, name, s->global_shape, *g).view(g->length));
    }
    pos += b.numel();
  }
  return out;
}

std::vector<TensorSlice> tp_global_slices(std::vector<TensorSlice> local, const TpShardMap& shards,
                                          int tp_rank) {
  std::vector<TensorSlice> out;
  for (TensorSlice& t : local) {
    const TpShard* s = find_shard(shards, t.name);
    if (!s) {
      if (tp_rank == 0) out.push_back(std::move(t));
      continue;
    }
    if (s->replica_index != 0) continue;
    Box inner;
    std::optional<Box> g = to_global(t.box, *s, &inner);
    if (!g) continue;
    t.data = box_view(t.data, inner);
    t.box = *g;
    t.global_shape = s->global_shape;
    out.push_back(std::move(t));
  }
  return out;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> tp_global_shapes(
    const std::vector<std::pair<std::string, std::vector<int64_t>>>& local, const TpShardMap& shards) {
  auto out = local;
  for (auto& [name, shape] : out)
    if (const TpShard* s = find_shard(shards, name)) shape = s->global_shape;
  return out;
}

std::map<std::string, double> tp_norm_weights(const std::vector<std::string>& names, const TpShardMap& shards,
                                              int tp_size) {
  std::map<std::string, double> out;
  for (const std::string& n : names) {
    const TpShard* s = find_shard(shards, n);
    out[n] = 1.0 / (s ? s->replicas : tp_size);
  }
  return out;
}

}  // namespace kiln
