// LoRA / rsLoRA / DoRA adapter of one projection, with counter-based dropout masks.
#include "models/lora.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <mutex>

#include "base/error.h"
#include "base/hash.h"

namespace kiln {
namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// A fresh generator for `device` seeded with `seed`: mt19937 on the CPU (as torch.manual_seed
// seeds it), Philox with offset 0 on CUDA.
at::Generator seeded_generator(const at::Device& device, uint64_t seed) {
  if (device.is_cpu()) return at::detail::createCPUGenerator(seed);
  at::Generator def = at::globalContext().defaultGenerator(device);
  at::Generator g;
  {
    std::lock_guard<std::mutex> lock(def.mutex());
    g = def.clone();
  }
  g.set_current_seed(seed);
  return g;
}

}  // namespace

uint64_t lora_dropout_seed(const LoraDropoutClock& clock, const std::string& name) {
  uint64_t h = splitmix64(clock.seed);
  h = splitmix64(h ^ static_cast<uint64_t>(clock.step));
  h = splitmix64(h ^ static_cast<uint64_t>(clock.micro_batch));
  h = splitmix64(h ^ fnv1a(name));
  // The CPU generator (mt19937) keeps only the low 32 bits of a seed: fold the high half in.
  return h ^ (h >> 32);
}

at::Tensor LoraBase::weight(at::ScalarType dtype) const {
  KILN_CHECK(dense.defined() != (nf4 != nullptr), "LoraBase needs exactly one of dense / nf4");
  return nf4 ? nf4_dequantize(*nf4, dtype) : dense.to(dtype);
}

at::Tensor LoraBase::matmul(const at::Tensor& x) const {
  KILN_CHECK(dense.defined() != (nf4 != nullptr), "LoraBase needs exactly one of dense / nf4");
  return nf4 ? nf4_linear(x, *nf4) : at::linear(x, dense.to(x.scalar_type()));
}

double lora_plus_lr_scale(LoraRole role, double lr_ratio) { return role == LoraRole::A ? 1.0 : lr_ratio; }

LoraAdapterImpl::LoraAdapterImpl(const LoraOptions& options) : options_(options) {
  const LoraOptions& o = options_;
  KILN_CHECK(o.rank() > 0 && o.in_features() > 0 && o.out_features() > 0, "LoRA shape: rank ", o.rank(),
             ", in ", o.in_features(), ", out ", o.out_features());
  KILN_CHECK(o.dropout() >= 0 && o.dropout() < 1, "LoRA dropout ", o.dropout());
  KILN_CHECK(o.init() == "kaiming" || o.init() == "gaussian", "LoRA init '", o.init(), "'");
  lora_A = register_parameter("lora_A", torch::zeros({o.rank(), o.in_features()}));
  lora_B = register_parameter("lora_B", torch::zeros({o.out_features(), o.rank()}));
  if (o.dora())
    lora_magnitude_vector = register_parameter("lora_magnitude_vector", torch::ones({o.out_features()}));
  reset_parameters(at::detail::createCPUGenerator(fnv1a(o.name())));
}

double LoraAdapterImpl::scaling() const {
  const double r = static_cast<double>(options_.rank());
  return options_.rslora() ? options_.alpha() / std::sqrt(r) : options_.alpha() / r;
}

LoraRole LoraAdapterImpl::role(const std::string& parameter_name) const {
  if (parameter_name == "lora_A") return LoraRole::A;
  if (parameter_name == "lora_B") return LoraRole::B;
  KILN_CHECK(parameter_name == "lora_magnitude_vector", "not a LoRA parameter: ", parameter_name);
  return LoraRole::Magnitude;
}

void LoraAdapterImpl::reset_parameters(at::Generator gen) {
  torch::NoGradGuard no_grad;
  if (options_.init() == "kaiming") {
    // torch.nn.init.kaiming_uniform_(a=sqrt(5)) in fan_in mode, with its arithmetic:
    // gain = sqrt(2 / (1 + a^2)), std = gain / sqrt(fan_in), bound = sqrt(3) * std.
    const double a = std::sqrt(5.0);
    const double gain = std::sqrt(2.0 / (1 + a * a));
    const double bound = std::sqrt(3.0) * (gain / std::sqrt(static_cast<double>(options_.in_features())));
    lora_A.uniform_(-bound, bound, gen);
  } else {
    lora_A.normal_(0.0, 1.0 / static_cast<double>(options_.rank()), gen);
  }
  lora_B.zero_();
}

void LoraAdapterImpl::init_magnitude(const LoraBase& base) {
  KILN_CHECK(options_.dora(), "init_magnitude on an adapter without DoRA");
  torch::NoGradGuard no_grad;
  lora_magnitude_vector.copy_(row_norms(base.weight(lora_A.scalar_type())));
}

at::Tensor LoraAdapterImpl::row_norms(const at::Tensor& w) const {
  torch::NoGradGuard no_grad;
  const at::ScalarType dt = w.scalar_type();
  at::Tensor merged = w + scaling() * lora_B.to(dt).matmul(lora_A.to(dt));  // (out, in), this rank's
  if (!tp_ || !tp_->row) return at::linalg_vector_norm(merged, 2, {1});
  return tp_->sum(merged.square().sum(1)).sqrt();  // a row-parallel base: the input is split
}

void LoraAdapterImpl::shard(LoraTensorParallel tp) {
  KILN_CHECK(!tp_, "LoRA ", options_.name(), ": already sharded");
  KILN_CHECK(tp.sum_grad && tp.sum, "LoRA ", options_.name(), ": tensor-parallel maps missing");
  torch::NoGradGuard no_grad;
  const int64_t total = tp.row ? options_.in_features() : options_.out_features();
  KILN_CHECK(tp.offset >= 0 && tp.len > 0 && tp.offset + tp.len <= total, "LoRA ", options_.name(),
             ": slice [", tp.offset, ", ", tp.offset + tp.len, ") of ", total);
  if (tp.row) {
    lora_A.set_data(lora_A.narrow(1, tp.offset, tp.len).clone());
  } else {
    lora_B.set_data(lora_B.narrow(0, tp.offset, tp.len).clone());
    if (options_.dora())
      lora_magnitude_vector.set_data(lora_magnitude_vector.narrow(0, tp.offset, tp.len).clone());
  }
  tp_ = std::move(tp);
}

std::vector<int64_t> LoraAdapterImpl::global_shape(LoraRole role) const {
  switch (role) {
    case LoraRole::A:
      return {options_.rank(), options_.in_features()};
    case LoraRole::B:
      return {options_.out_features(), options_.rank()};
    case LoraRole::Magnitude:
      return {options_.out_features()};
  }
  return {};
}

at::Tensor LoraAdapterImpl::local_slice(LoraRole role, const at::Tensor& global) const {
  KILN_CHECK(global.sizes() == at::IntArrayRef(global_shape(role)), "LoRA ", options_.name(), ": shape ",
             global.sizes(), " is not the adapter's ", at::IntArrayRef(global_shape(role)));
  if (!tp_) return global;
  if (tp_->row) return role == LoraRole::A ? global.narrow(1, tp_->offset, tp_->len) : global;
  return role == LoraRole::A ? global : global.narrow(0, tp_->offset, tp_->len);
}

at::Tensor LoraAdapterImpl::dropout_mask(const at::Tensor& x) const {
  KILN_CHECK(clock_, "LoRA dropout needs a LoraDropoutClock (set_dropout_clock)");
  const double p = options_.dropout();
  // torch.nn.Dropout's draw: bernoulli(1 - p) into a tensor like x, divided by 1 - p.
  // A row-parallel slice: the whole input's mask, of which this rank keeps its features.
  const bool slice = tp_ && tp_->row;
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = options_.in_features();
  at::Tensor noise = slice ? at::empty(shape, x.options()) : at::empty_like(x);
  noise.bernoulli_(1 - p, seeded_generator(x.device(), lora_dropout_seed(*clock_, options_.name())));
  noise.div_(1 - p);
  return slice ? noise.narrow(-1, tp_->offset, tp_->len) : noise;
}

at::Tensor LoraAdapterImpl::forward(const at::Tensor& x, const at::Tensor& base_out, const LoraBase& base) {
  KILN_CHECK(x.size(-1) == lora_A.size(1) && base_out.size(-1) == lora_B.size(0), "LoRA ", options_.name(),
             ": x (..., ", x.size(-1), "), base_out (..., ", base_out.size(-1), ") for in ", lora_A.size(1),
             ", out ", lora_B.size(0));
  const bool drop = is_training() && options_.dropout() > 0;
  at::Tensor xd = drop ? x * dropout_mask(x) : x;
  const at::ScalarType dt = x.scalar_type();
  // Tensor parallel: the whole tensors' gradients are summed where each rank sees a part of them.
  at::Tensor A = lora_A, B = lora_B, m = lora_magnitude_vector;
  if (tp_ && tp_->row) {
    B = tp_->sum_grad(B);
    if (m.defined()) m = tp_->sum_grad(m);
  } else if (tp_) {
    A = tp_->sum_grad(A);
    if (tp_->sum_grad_replicas) {
      B = tp_->sum_grad_replicas(B);
      if (m.defined()) m = tp_->sum_grad_replicas(m);
    }
  }
  at::Tensor lora = at::linear(at::linear(xd, A.to(dt)), B.to(dt));  // (..., out)
  const double s = scaling();
  if (!options_.dora()) return base_out + lora * s;

  // DoRA (PEFT's DoraLinearLayer.forward): the norm of W + s B A is a constant for autograd.
  const at::Tensor norm = row_norms(base.weight(dt));  // (out)
  at::Tensor mag_norm_scale = (m.to(dt) / norm).view({1, -1});
  // W x' without the bias: recomputed on the dropped input, else the base output minus its bias.
  at::Tensor base_result = drop ? base.matmul(xd) : (base.bias.defined() ? base_out - base.bias : base_out);
  return base_out + ((mag_norm_scale - 1) * base_result + mag_norm_scale * lora * s);
}

}  // namespace kiln
