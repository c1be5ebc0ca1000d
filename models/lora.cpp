// LoRA / rsLoRA / DoRA adapter of one projection, with counter-based dropout masks.
#include "models/lora.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <mutex>

#include "base/error.h"

namespace kiln {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

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
  at::Tensor w = base.weight(lora_A.scalar_type());
  at::Tensor delta = lora_B.matmul(lora_A);  // (out, in)
  lora_magnitude_vector.copy_(at::linalg_vector_norm(w + scaling() * delta, 2, {1}));
}

at::Tensor LoraAdapterImpl::dropout_mask(const at::Tensor& x) const {
  KILN_CHECK(clock_, "LoRA dropout needs a LoraDropoutClock (set_dropout_clock)");
  const double p = options_.dropout();
  // torch.nn.Dropout's draw: bernoulli(1 - p) into a tensor like x, divided by 1 - p.
  at::Tensor noise = at::empty_like(x);
  noise.bernoulli_(1 - p, seeded_generator(x.device(), lora_dropout_seed(*clock_, options_.name())));
  noise.div_(1 - p);
  return noise;
}

at::Tensor LoraAdapterImpl::forward(const at::Tensor& x, const at::Tensor& base_out, const LoraBase& base) {
  KILN_CHECK(x.size(-1) == options_.in_features() && base_out.size(-1) == options_.out_features(), "LoRA ",
             options_.name(), ": x (..., ", x.size(-1), "), base_out (..., ", base_out.size(-1), ") for in ",
             options_.in_features(), ", out ", options_.out_features());
  const bool drop = is_training() && options_.dropout() > 0;
  at::Tensor xd = drop ? x * dropout_mask(x) : x;
  const at::ScalarType dt = x.scalar_type();
  at::Tensor lora = at::linear(at::linear(xd, lora_A.to(dt)), lora_B.to(dt));  // (..., out)
  const double s = scaling();
  if (!options_.dora()) return base_out + lora * s;

  // DoRA (PEFT's DoraLinearLayer.forward): the norm of W + s B A is a constant for autograd.
  at::Tensor norm;
  {
    torch::NoGradGuard no_grad;
    at::Tensor delta = lora_B.to(dt).matmul(lora_A.to(dt));
    norm = at::linalg_vector_norm(base.weight(dt) + s * delta, 2, {1});  // (out)
  }
  at::Tensor mag_norm_scale = (lora_magnitude_vector.to(dt) / norm).view({1, -1});
  // W x' without the bias: recomputed on the dropped input, else the base output minus its bias.
  at::Tensor base_result = drop ? base.matmul(xd) : (base.bias.defined() ? base_out - base.bias : base_out);
  return base_out + ((mag_norm_scale - 1) * base_result + mag_norm_scale * lora * s);
}

}  // namespace kiln
