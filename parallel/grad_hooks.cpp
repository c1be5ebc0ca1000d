// set_grad_accumulated_hook (see grad_hooks.h).
#include "parallel/grad_hooks.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <memory>
#include <utility>

#include "base/error.h"

namespace kiln {
namespace {

struct Callback : torch::autograd::PostAccumulateGradHook {
  explicit Callback(std::function<void()> f) : fn(std::move(f)) {}
  void operator()(const torch::autograd::Variable&) override { fn(); }
  std::function<void()> fn;
};

}  // namespace

void set_grad_accumulated_hook(const at::Tensor& leaf, std::function<void()> fn) {
  KILN_CHECK(leaf.is_leaf() && leaf.requires_grad(), "gradient hook on a tensor that is not a trained leaf");
  torch::autograd::impl::set_post_acc_grad_hooks(leaf, std::make_unique<Callback>(std::move(fn)));
}

}  // namespace kiln
