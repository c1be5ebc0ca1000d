// recompute(): a torch::autograd::Function whose forward runs without grad and whose backward
// re-runs the function with grad and backpropagates through it (re-entrant backward, as
// torch.utils.checkpoint's reentrant variant does), with optional hooks around both runs.
#include "models/recompute.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

namespace kiln {
namespace {

struct FnHolder : torch::CustomClassHolder {
  FnHolder(TensorFn f, std::shared_ptr<const RecomputeHooks> h) : fn(std::move(f)), hooks(std::move(h)) {}
  TensorFn fn;
  std::shared_ptr<const RecomputeHooks> hooks;
  void call(const std::function<void()> RecomputeHooks::*which) const {
    if (hooks && hooks.get()->*which) (hooks.get()->*which)();
  }
};

struct RecomputeFunction : public torch::autograd::Function<RecomputeFunction> {
  // inputs as a TensorList: autograd counts each of its tensors as an input (a std::vector
  // would be taken for one non-tensor argument and the output would have no grad_fn). The
  // last input may be the anchor (always_backward), which fn does not see.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::TensorList inputs,
                            c10::intrusive_ptr<FnHolder> holder, bool anchored) {
    ctx->saved_data["fn"] = c10::IValue::make_capsule(holder);
    ctx->saved_data["anchored"] = anchored;
    std::vector<at::Tensor> in = inputs.vec();
    if (anchored) in.pop_back();
    ctx->save_for_backward(in);
    holder->call(&RecomputeHooks::before_forward);
    at::Tensor out;
    {
      at::NoGradGuard no_grad;
      out = holder->fn(in);
    }
    holder->call(&RecomputeHooks::after_forward);
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto holder = c10::static_intrusive_pointer_cast<FnHolder>(ctx->saved_data["fn"].toCapsule());
    const bool anchored = ctx->saved_data["anchored"].toBool();
    torch::autograd::variable_list saved = ctx->get_saved_variables();
    std::vector<at::Tensor> inputs;
    for (const auto& t : saved) {
      if (t.defined() && t.is_floating_point())
        inputs.push_back(t.detach().requires_grad_(t.requires_grad()));
      else
        inputs.push_back(t);
    }
    holder->call(&RecomputeHooks::before_backward);
    {
      at::AutoGradMode grad_on(true);
      at::Tensor out = holder->fn(inputs);
      // Nothing in fn trains (a frozen unit, such as a LoRA run's embedding): no backward to run.
      if (out.requires_grad()) torch::autograd::backward({out}, {grad_out[0]});
    }
    holder->call(&RecomputeHooks::after_backward);
    torch::autograd::variable_list grads;
    for (const auto& t : inputs) grads.push_back(t.defined() && t.requires_grad() ? t.grad() : at::Tensor());
    if (anchored) grads.push_back(at::Tensor());
    grads.push_back(at::Tensor());  // the holder
    grads.push_back(at::Tensor());  // anchored
    return grads;
  }
};

// A leaf that requires grad: as an extra input it makes autograd run the backward.
const at::Tensor& anchor() {
  static const at::Tensor a = at::zeros({}).requires_grad_(true);
  return a;
}

}  // namespace

at::Tensor recompute(const std::vector<at::Tensor>& inputs, TensorFn fn,
                     std::shared_ptr<const RecomputeHooks> hooks) {
  const bool anchored = hooks && hooks->always_backward;
  std::vector<at::Tensor> in = inputs;
  if (anchored) in.push_back(anchor());
  return RecomputeFunction::apply(at::TensorList(in), c10::make_intrusive<FnHolder>(std::move(fn), hooks),
                                  anchored);
}

}  // namespace kiln
