// Tensor- and sequence-parallel region boundaries as conjugate autograd pairs over the tp
// Communicator (STYLE.md 11, after Megatron-LM's tensor_parallel/mappings.py). Each boundary is
// written once, with its backward:
//
//   copy_to_region      forward identity                     backward all-reduce (sum)
//   reduce_from_region  forward all-reduce (sum)             backward identity
//   scatter_last_dim    forward this rank's slice (last dim) backward all-gather (last dim)
//   gather_last_dim     forward all-gather (last dim)        backward this rank's slice
//   scatter_seq         forward this rank's slice (dim 1)    backward all-gather (dim 1)
//   gather_seq          forward all-gather (dim 1)           backward reduce-scatter (dim 1)
//   reduce_scatter_seq  forward reduce-scatter (dim 1)       backward all-gather (dim 1)
//
// The parallel layers (models/tp_layers.h) only compose these. With a group of size 1 each is
// the identity. Slices are equal: the split dimension must be divisible by the group size.
#pragma once
#include <ATen/core/Tensor.h>

namespace kiln {

class Communicator;

at::Tensor copy_to_region(const at::Tensor& x, Communicator& tp);
at::Tensor reduce_from_region(const at::Tensor& x, Communicator& tp);
at::Tensor scatter_last_dim(const at::Tensor& x, Communicator& tp);
at::Tensor gather_last_dim(const at::Tensor& x, Communicator& tp);
// Sequence parallel: x is (B, T, ...) and the slices are along T.
at::Tensor scatter_seq(const at::Tensor& x, Communicator& tp);
at::Tensor gather_seq(const at::Tensor& x, Communicator& tp);
at::Tensor reduce_scatter_seq(const at::Tensor& x, Communicator& tp);

}  // namespace kiln
