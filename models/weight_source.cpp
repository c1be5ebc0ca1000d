// Seeded per-tensor random init, in-memory sources and materialize() (see weight_source.h).
#include "models/weight_source.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>
#include <xxhash.h>

#include <cmath>
#include <unordered_map>

#include "models/projection.h"
#include "base/error.h"

namespace kiln {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

class RandomInit : public WeightSource {
 public:
  RandomInit(const ModelConfig& cfg, uint64_t seed) : cfg_(cfg), seed_(seed) {}
  std::string describe() const override { return str("random init (seed ", seed_, ")"); }

  at::Tensor read(const std::string& name, const std::vector<int64_t>& shape, int64_t begin,
                  int64_t end) override {
    if (name != cached_name_ || shape != cached_shape_) {
      cached_ = generate(name, shape);
      cached_name_ = name;
      cached_shape_ = shape;
    }
    return cached_.narrow(0, begin, end - begin).clone();
  }

 private:
  at::Tensor generate(const std::string& name, const std::vector<int64_t>& shape) const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    if (shape.size() <= 1) return at::ones({n}, at::kFloat);  // norm weights
    const bool out_proj = ends_with(name, "o_proj.weight") || ends_with(name, "down_proj.weight");
    const double std = out_proj ? cfg_.init_std / std::sqrt(2.0 * cfg_.num_layers) : cfg_.init_std;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(tensor_seed(seed_, name));
    return at::normal(0.0, std, {n}, gen, at::TensorOptions().dtype(at::kFloat));
  }

  ModelConfig cfg_;
  uint64_t seed_;
  std::string cached_name_;
  std::vector<int64_t> cached_shape_;
  at::Tensor cached_;  // (numel) the last tensor generated
};

class InMemory : public WeightSource {
 public:
  InMemory(std::vector<std::pair<std::string, at::Tensor>> named, std::string what) : what_(std::move(what)) {
    for (auto& [n, t] : named) by_name_[n] = t;
  }
  std::string describe() const override { return what_; }
  at::Tensor read(const std::string& name, const std::vector<int64_t>& shape, int64_t begin,
                  int64_t end) override {
    auto it = by_name_.find(name);
    if (it == by_name_.end()) user_error(what_, ": has no tensor '", name, "' that the model needs");
    if (it->second.sizes().vec() != shape)
      user_error(what_, ": tensor '", name, "' has shape ", it->second.sizes(), ", the model needs ",
                 at::IntArrayRef(shape));
    return it->second.detach().reshape({-1}).narrow(0, begin, end - begin).to(at::kCPU, at::kFloat,
                                                                              false, /*copy=*/true);
  }

 private:
  std::string what_;
  std::unordered_map<std::string, at::Tensor> by_name_;
};

}  // namespace

uint64_t tensor_seed(uint64_t seed, const std::string& name) {
  return XXH64(name.data(), name.size(), seed);
}

at::Tensor WeightSource::read_full(const std::string& name, const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return read(name, shape, 0, n).view(shape);
}

std::unique_ptr<WeightSource> random_init_source(const ModelConfig& cfg, uint64_t seed) {
  return std::make_unique<RandomInit>(cfg, seed);
}

std::unique_ptr<WeightSource> tensors_source(std::vector<std::pair<std::string, at::Tensor>> named,
                                             const std::string& what) {
  return std::make_unique<InMemory>(std::move(named), what);
}

void materialize(torch::nn::Module& model, WeightSource& source) {
  at::NoGradGuard no_grad;
  for (auto& item : model.named_parameters()) {
    at::Tensor& p = item.value();
    at::Tensor value = source.read_full(item.key(), p.sizes().vec());
    if (is_shape_only(p) || p.numel() == 0)
      p.set_data(value);
    else
      p.copy_(value);  // an allocated parameter keeps its dtype and device
  }
}

}  // namespace kiln
