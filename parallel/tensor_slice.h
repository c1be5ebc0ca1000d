// Pieces of global tensors. Every sharded thing in kiln (a ZeRO shard, later a tensor-parallel
// shard, a checkpoint file's contents) is described the same way: a global tensor's name and
// shape, and an N-dimensional box (offset and length per dimension) of it.
//
// A ZeRO shard is a flat range [begin, end) of a tensor's row-major elements. A flat range is a
// union of at most 2 * ndim - 1 boxes (a partial first row, whole rows, a partial last row, and
// so on down the dimensions); flat_range_boxes() gives them in flat order, and each box is a
// contiguous run of the range, so the range's flat buffer splits into the boxes' data by narrow.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kiln {

struct Box {
  std::vector<int64_t> offset;  // [dim]
  std::vector<int64_t> length;  // [dim]
  int64_t numel() const;
  bool operator==(const Box& o) const { return offset == o.offset && length == o.length; }
};

// The whole tensor of `shape` as a box.
Box full_box(const std::vector<int64_t>& shape);
// Boxes covering elements [begin, end) of a row-major tensor of `shape`, in flat order.
std::vector<Box> flat_range_boxes(const std::vector<int64_t>& shape, int64_t begin, int64_t end);
// The part two boxes share, if any.
std::optional<Box> intersect(const Box& a, const Box& b);
// `inner` in the coordinates of `outer` (inner must lie inside outer).
Box relative_to(const Box& inner, const Box& outer);
// t narrowed to box b (b in t's own coordinates). A view.
at::Tensor box_view(const at::Tensor& t, const Box& b);
// True when b lies inside a tensor of `shape`.
bool box_inside(const Box& b, const std::vector<int64_t>& shape);
std::string box_str(const Box& b);  // "[0:4, 8:16]"

// A named piece of a global tensor, as checkpoints store optimizer state and weights:
// "master/model.layers.0.mlp.up_proj.weight" with its global shape and box.
struct TensorSlice {
  std::string name;
  std::vector<int64_t> global_shape;
  Box box;
  at::Tensor data;  // shape box.length, fp32, CPU
};

// The slices of elements [begin, end) of `flat` (the range's values, flat), one per box.
std::vector<TensorSlice> slices_of_range(const std::string& name, const std::vector<int64_t>& shape,
                                         int64_t begin, int64_t end, const at::Tensor& flat);
// Fills `out` (flat, elements [begin, end) of the global tensor `name`) from whichever slices
// overlap it; returns how many elements were covered.
int64_t fill_range_from_slices(const std::vector<const TensorSlice*>& slices, const std::vector<int64_t>& shape,
                               int64_t begin, int64_t end, at::Tensor& out);

}  // namespace kiln
