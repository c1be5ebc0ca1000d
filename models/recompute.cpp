// recompute(): a torch::autograd::Function whose forward runs without grad and whose backward
// re-runs the function with grad and backpropagates through it (re-entrant backward, as
// torch.utils.checkpoint's reentrant variant does).
#include "models/recompute.h"

#include <torch/autograd.h>

namespace kiln {
namespace {

struct FnHolder : torch::CustomClassHolder {
  explicit FnHolder(TensorFn f) : fn(std::move(f)) {}
  TensorFn fn;
};

struct RecomputeFunction : public torch::autograd::Function<RecomputeFunction> {
  // inputs as a TensorList: autograd counts each of its tensors as an input (a std::vector
  // would be taken for one non-tensor argument and the output would have no grad_fn).
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::TensorList inputs,
                            c10::intrusive_ptr<FnHolder> holder) {
    ctx->saved_data["fn"] = c10::IValue::make_capsule(holder);
    ctx->save_for_backward(inputs.vec());
    at::NoGradGuard no_grad;
    return holder->fn(inputs.vec());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto holder = c10::static_intrusive_pointer_cast<FnHolder>(ctx->saved_data["fn"].toCapsule());
    torch::autograd::variable_list saved = ctx->get_saved_variables();
    std::vector<at::Tensor> inputs;
    std::vector<at::Tensor> need_grad;  // detached copies that require grad
    for (const auto& t : saved) {
      if (t.defined() && t.is_floating_point()) {
        at::Tensor d = t.detach().requires_grad_(t.requires_grad());
        inputs.push_back(d);
        if (t.requires_grad()) need_grad.push_back(d);
      } else {
        inputs.push_back(t);
      }
    }
    at::Tensor out;
    {
      at::AutoGradMode grad_on(true);
      out = holder->fn(inputs);
    }
    torch::autograd::backward({out}, {grad_out[0]});
    torch::autograd::variable_list grads;
    for (const auto& t : inputs) grads.push_back(t.defined() && t.requires_grad() ? t.grad() : at::Tensor());
    grads.push_back(at::Tensor());  // the holder
    return grads;
  }
};

}  // namespace

at::Tensor recompute(const std::vector<at::Tensor>& inputs, TensorFn fn) {
  return RecomputeFunction::apply(at::TensorList(inputs), c10::make_intrusive<FnHolder>(std::move(fn)));
}

}  // namespace kiln
