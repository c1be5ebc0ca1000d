// Trainable parameter sets and resuming across a change of them (see trainable.h).
#include "trainer/trainable.h"

#include <ATen/ATen.h>
#include <fnmatch.h>

#include "models/llama.h"
#include "models/vocab_resize.h"
#include "models/weight_source.h"
#include "trainer/checkpoint.h"
#include "base/error.h"
#include "trainer/vocab_setup.h"

namespace kiln {
namespace {

class WidenedState : public WeightSource {
 public:
  WidenedState(std::unique_ptr<WeightSource> state, std::set<std::string> before,
               std::unique_ptr<WeightSource> w)
      : state_(std::move(state)), before_(std::move(before)), weights_(std::move(w)) {}
  std::string describe() const override { return state_->describe(); }
  at::Tensor read(const std::string& key, const std::vector<int64_t>& shape, int64_t begin,
                  int64_t end) override {
    const size_t slash = key.find('/');
    const std::string kind = key.substr(0, slash + 1), name = key.substr(slash + 1);
    if (slash == std::string::npos || before_.count(name)) return state_->read(key, shape, begin, end);
    if (kind == "master/") return weights_->read(name, shape, begin, end);
    return at::zeros({end - begin}, at::kFloat);  // exp_avg/, exp_avg_sq/: a fresh parameter's moments
  }

 private:
  std::unique_ptr<WeightSource> state_;
  std::set<std::string> before_;
  std::unique_ptr<WeightSource> weights_;
};

}  // namespace

bool trainable_pattern_matches(const std::string& pattern, const std::string& name) {
  if (pattern.find_first_of("*?[") != std::string::npos)
    return fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
  return name.find(pattern) != std::string::npos;
}

TrainableSet apply_trainable(LlamaImpl& model, const Config& cfg) {
  const std::vector<std::string>& patterns = cfg.train.trainable;
  if (patterns.empty()) user_error("train.trainable: empty; list parameter-name patterns, or '*' for all");
  TrainableSet out;
  std::set<std::string> used;
  for (auto& item : model.named_parameters()) {
    bool on = false;
    for (const std::string& p : patterns)
      if (trainable_pattern_matches(p, item.key())) on = true, used.insert(p);
    item.value().requires_grad_(on);
    (on ? out.trained : out.frozen).push_back(item.key());
    out.total_elements += item.value().numel();
    if (on) out.trained_elements += item.value().numel();
  }
  for (const std::string& p : patterns)
    if (!used.count(p))
      user_error("train.trainable: '", p,
                 "' matches no parameter; valid: names such as embed_tokens, lm_head, layers.0., "
                 "or globs such as 'model.layers.*.mlp.*'");
  if (cfg.train.trainable_new_rows_only) {
    const int64_t old_rows = init_vocab_rows(cfg.model);
    if (old_rows <= 0 || old_rows >= cfg.model.vocab_size)
      user_error("train.trainable_new_rows_only: model.vocab_size (", cfg.model.vocab_size,
                 ") adds no rows to model.init_from's (", old_rows,
                 "); it needs an extended vocabulary (model.vocab_size larger than the checkpoint's)");
    for (auto& item : model.named_parameters()) {
      if (!is_vocab_tensor(item.key()) || !item.value().requires_grad()) continue;
      out.frozen_leading[item.key()] = old_rows * item.value().size(1);
      out.trained_elements -= old_rows * item.value().size(1);
    }
    if (out.frozen_leading.empty())
      user_error("train.trainable_new_rows_only: neither embed_tokens nor lm_head is in train.trainable");
  }
  return out;
}

std::unique_ptr<WeightSource> widened_state_source(std::unique_ptr<WeightSource> state,
                                                   std::set<std::string> trained_before,
                                                   std::unique_ptr<WeightSource> weights) {
  return std::make_unique<WidenedState>(std::move(state), std::move(trained_before), std::move(weights));
}

std::unique_ptr<WeightSource> resume_state_source(const std::string& dir) {
  const std::vector<std::string> trained = checkpoint_trained(dir);
  return widened_state_source(checkpoint_state_source(dir),
                              std::set<std::string>(trained.begin(), trained.end()),
                              checkpoint_weights_source(dir));
}

}  // namespace kiln
