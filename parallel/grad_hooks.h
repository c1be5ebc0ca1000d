// A callback run each time autograd has accumulated a leaf's gradient into its .grad (torch's
// post-accumulate-grad hook, the C++ side of Tensor.register_post_accumulate_grad_hook). ZeRO-2
// reduce-scatters a unit's gradients and frees them from there, during backward, instead of
// holding the whole model's gradients until the step. One callback per leaf: setting another
// replaces it. The callback may read, replace or reset the leaf's .grad.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>

namespace kiln {

void set_grad_accumulated_hook(const at::Tensor& leaf, std::function<void()> fn);

}  // namespace kiln
